//! Configuration every service takes: environment mode, Redis URL, server name.
//!
//! Services `#[command(flatten)]` [`CommonArgs`] into their own clap struct.

use clap::{Args, ValueEnum};

/// Development accepts generated secrets and the dev origin; production refuses weak secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum HermesEnv {
    #[default]
    Development,
    Production,
}

impl HermesEnv {
    pub fn is_production(self) -> bool {
        self == HermesEnv::Production
    }
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// `development` (readable logs, generated secrets allowed) or `production` (JSON logs,
    /// strong secrets required).
    #[arg(long, env = "HERMES_ENV", value_enum, default_value_t = HermesEnv::Development)]
    pub hermes_env: HermesEnv,

    /// Redis URL (redis://, rediss:// for TLS, redis-sentinel:// for Sentinel, e.g.
    /// `redis-sentinel://s1:26379?sentinelServiceName=hermes&node=s2:26379&node=s3:26379`;
    /// redis-cluster://h1:7000?node=h2:7000 for Redis Cluster).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Public domain name of the deployment (used for CORS, Origin checks and ICE URLs).
    #[arg(long, env = "SERVER_NAME", default_value = "localhost")]
    pub server_name: String,
}
