//! A Lua script run with EVALSHA, falling back to EVAL when Redis does not know it yet
//! (first use, or after a Redis restart emptied the script cache).

use fred::prelude::*;
use fred::types::FromValue;
use sha1::{Digest, Sha1};

#[derive(Debug)]
pub struct Script {
    lua: &'static str,
    sha: String,
}

impl Script {
    pub fn new(lua: &'static str) -> Self {
        let sha = Sha1::digest(lua.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self { lua, sha }
    }

    pub async fn run<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, Error> {
        match client
            .evalsha::<R, _, _, _>(self.sha.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval::<R, _, _, _>(self.lua, keys, args).await
            }
            other => other,
        }
    }
}
