//! The call store: the api's typed view of a call's state in Redis. Handlers say what they
//! want (claim a code for a new call, resolve a code, end a call…) and get typed answers; the
//! KEYS and ARGV each Lua script expects are built here and only here, next to the script.
//!
//! The scripts of `create`, `resolve`, `new_code` and `join_status` apply the request's rate
//! limits first, in the same round trip (see [`Limiter::guarded`]).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use hermes_proto::api::{CallStatus, CallStatusResponse};
use hermes_proto::signal::CallControl;
use hermes_proto::{CallId, OneTimeCode, Role, SeatEntry, keys};
use hermes_service::redis::Script;

use crate::metrics::Metrics;
use crate::ratelimit::{GUARD_PRELUDE, GuardError, Limit, Limiter};

/// After [`GUARD_PRELUDE`]: KEYS otc, call; ARGV callId, code TTL ms, now (unix s), call TTL s.
/// Claims the code with SET NX and, only if it was free, writes the call record.
/// `{'ok', 1}` created, `{'ok', 0}` code taken.
const CREATE_BODY: &str = r#"
if not redis.call('SET', KEYS[K + 1], ARGV[A + 1], 'NX', 'PX', ARGV[A + 2]) then return {'ok', 0} end
redis.call('HSET', KEYS[K + 2], 'status', 'created', 'createdAt', ARGV[A + 3])
redis.call('EXPIRE', KEYS[K + 2], ARGV[A + 4])
return {'ok', 1}
"#;

/// After [`GUARD_PRELUDE`]: KEYS otc; ARGV prefix of call keys (`call:`). Consumes the code
/// (GET + DEL in one atomic step) and reads the call's status in the same round trip.
/// `{'ok'}` for an unknown or used code, else `{'ok', callId, status or '', role or ''}`
/// (the value is `callId`, or `callId|offerer` for a code minted by an answerer).
const RESOLVE_BODY: &str = r#"
local value = redis.call('GET', KEYS[K + 1])
if not value then return {'ok'} end
redis.call('DEL', KEYS[K + 1])
local id, role = string.match(value, '^([^|]*)|?(.*)$')
local status = redis.call('HGET', ARGV[A + 1] .. id, 'status')
return {'ok', id, status or '', role}
"#;

/// After [`GUARD_PRELUDE`]: KEYS otc, call; ARGV otc value, code TTL ms. A fresh code for a
/// live call: `{'ok', 1}` stored, `{'ok', 0}` code taken, `{'ok', -1}` no such call,
/// `{'ok', -2}` call ended.
const NEW_CODE_BODY: &str = r#"
local status = redis.call('HGET', KEYS[K + 2], 'status')
if not status then return {'ok', -1} end
if status == 'ended' then return {'ok', -2} end
if not redis.call('SET', KEYS[K + 1], ARGV[A + 1], 'NX', 'PX', ARGV[A + 2]) then return {'ok', 0} end
return {'ok', 1}
"#;

/// After [`GUARD_PRELUDE`]: KEYS call. `{'ok', status or ''}`.
const STATUS_BODY: &str = r#"
return {'ok', redis.call('HGET', KEYS[K + 1], 'status') or ''}
"#;

static CREATE_LUA: LazyLock<String> = LazyLock::new(|| format!("{GUARD_PRELUDE}{CREATE_BODY}"));
static RESOLVE_LUA: LazyLock<String> = LazyLock::new(|| format!("{GUARD_PRELUDE}{RESOLVE_BODY}"));
static STATUS_LUA: LazyLock<String> = LazyLock::new(|| format!("{GUARD_PRELUDE}{STATUS_BODY}"));
static NEW_CODE_LUA: LazyLock<String> = LazyLock::new(|| format!("{GUARD_PRELUDE}{NEW_CODE_BODY}"));

/// KEYS: call, call channel, call peers. ARGV: now (unix s), end-call control JSON.
/// -1: no such call; 0: already ended; 1: ended now (and the notice was published).
/// The seats go in the same step: hermes-signal's relay reads the call's status only when the
/// sender has no seat (the signal replicas then drop the call's log and acks).
const END_LUA: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'ended' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'ended', 'endedAt', ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"#;

/// Fresh codes tried before giving up. With 2^30 codes a collision needs millions of live
/// codes; five misses in a row means something else is wrong.
const MAX_CODE_ATTEMPTS: usize = 5;

/// Suffix of an `otc:{code}` value whose code hands out the offerer's seat (see
/// [`hermes_proto::keys`]); a bare call id hands out the answerer's.
const OFFERER_SEAT: &str = "|offerer";

/// The rate limits a request counts against, with their Redis keys.
pub type Limits = [(String, Limit)];

/// What a fresh one-time code is for.
#[derive(Debug, Clone, Copy)]
pub enum CodeFor<'a> {
    /// A new call, created with the code (its creator is the offerer; the code admits the
    /// answerer).
    NewCall {
        call: &'a CallId,
        now: u64,
        code_ttl: Duration,
        call_ttl: Duration,
    },
    /// An existing live call: the code admits `seat`.
    Invite {
        call: &'a CallId,
        seat: Role,
        code_ttl: Duration,
    },
}

/// How claiming a code ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    Stored,
    CallNotFound,
    CallEnded,
}

/// A resolved one-time code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub call: CallId,
    /// The call's status word as stored (`created`, `active`, `ended`), or None when the call
    /// record is gone.
    pub status: Option<String>,
    /// The seat the code admits.
    pub role: Role,
}

/// How ending a call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Now,
    Already,
    NoSuchCall,
}

/// Failures of the store, mapped to HTTP in `error`.
#[derive(Debug)]
pub enum StoreError {
    Guard(GuardError),
    Redis(Error),
    /// A script or record answered something the store does not know.
    Unexpected(&'static str),
}

impl From<GuardError> for StoreError {
    fn from(e: GuardError) -> Self {
        StoreError::Guard(e)
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        StoreError::Redis(e)
    }
}

/// The scripts and the rate limiter they run under.
pub struct CallStore {
    create: Script,
    resolve: Script,
    status: Script,
    end: Script,
    new_code: Script,
    /// See [`call_key_prefix`].
    call_prefix: String,
}

impl Default for CallStore {
    fn default() -> Self {
        Self {
            create: Script::new(CREATE_LUA.as_str()),
            resolve: Script::new(RESOLVE_LUA.as_str()),
            status: Script::new(STATUS_LUA.as_str()),
            end: Script::new(END_LUA),
            new_code: Script::new(NEW_CODE_LUA.as_str()),
            call_prefix: call_key_prefix(),
        }
    }
}

/// What every guarded script runs with: the client, the limiter and its metrics.
#[derive(Clone, Copy)]
pub struct Guard<'a> {
    pub redis: &'a Client,
    pub limiter: &'a Limiter,
    pub metrics: &'a Metrics,
}

impl Guard<'_> {
    async fn run(
        &self,
        script: &Script,
        limits: &Limits,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<Value>, GuardError> {
        self.limiter
            .guarded(self.redis, script, limits, keys, args, self.metrics)
            .await
    }
}

impl CallStore {
    /// Store a fresh random one-time code for `what`, drawing another while the code is taken.
    /// The limits count once, on the first attempt.
    pub async fn claim_code(
        &self,
        guard: Guard<'_>,
        limits: &Limits,
        what: CodeFor<'_>,
    ) -> Result<(OneTimeCode, Claimed), StoreError> {
        let (script, call, args) = match what {
            CodeFor::NewCall {
                call,
                now,
                code_ttl,
                call_ttl,
            } => (
                &self.create,
                call,
                vec![
                    call.to_string(),
                    code_ttl.as_millis().to_string(),
                    now.to_string(),
                    call_ttl.as_secs().max(1).to_string(),
                ],
            ),
            CodeFor::Invite {
                call,
                seat,
                code_ttl,
            } => {
                let value = match seat {
                    Role::Offerer => format!("{call}{OFFERER_SEAT}"),
                    _ => call.to_string(),
                };
                (
                    &self.new_code,
                    call,
                    vec![value, code_ttl.as_millis().to_string()],
                )
            }
        };
        let mut limits = limits;
        for _ in 0..MAX_CODE_ATTEMPTS {
            let code = OneTimeCode::random(&mut rand::rng());
            let reply = guard
                .run(
                    script,
                    limits,
                    vec![keys::otc(&code), keys::call(call)],
                    args.clone(),
                )
                .await?;
            limits = &[];
            match reply.first().and_then(Value::as_i64) {
                Some(0) => tracing::debug!("one-time code collision, drawing another"),
                Some(1) => return Ok((code, Claimed::Stored)),
                Some(-1) => return Ok((code, Claimed::CallNotFound)),
                Some(-2) => return Ok((code, Claimed::CallEnded)),
                _ => return Err(StoreError::Unexpected("reply of a code script")),
            }
        }
        tracing::error!("no free one-time code after {MAX_CODE_ATTEMPTS} attempts");
        Err(StoreError::Unexpected("no free one-time code"))
    }

    /// Consume `code` and read its call's status, in one round trip. None for an unknown or
    /// used code.
    pub async fn resolve(
        &self,
        guard: Guard<'_>,
        limits: &Limits,
        code: &OneTimeCode,
    ) -> Result<Option<Resolved>, StoreError> {
        let reply = guard
            .run(
                &self.resolve,
                limits,
                vec![keys::otc(code)],
                vec![self.call_prefix.clone()],
            )
            .await?;
        let found: Vec<String> = reply.iter().filter_map(Value::as_string).collect();
        let [call_id, status, seat] = found.as_slice() else {
            return Ok(None);
        };
        let call = CallId::parse(call_id)
            .map_err(|_| StoreError::Unexpected("otc entry with a malformed call id"))?;
        let role = if format!("|{seat}") == OFFERER_SEAT {
            Role::Offerer
        } else {
            Role::Answerer
        };
        Ok(Some(Resolved {
            call,
            status: (!status.is_empty()).then(|| status.clone()),
            role,
        }))
    }

    /// The call's status word (None when the call record is gone), counting `limits`.
    pub async fn join_status(
        &self,
        guard: Guard<'_>,
        limits: &Limits,
        call: &CallId,
    ) -> Result<Option<String>, StoreError> {
        let reply = guard
            .run(&self.status, limits, vec![keys::call(call)], Vec::new())
            .await?;
        Ok(reply
            .first()
            .and_then(Value::as_string)
            .filter(|s| !s.is_empty()))
    }

    /// Mark the call ended at `now` and tell the signal replicas (the end-call notice on the
    /// call's channel), in one atomic step.
    pub async fn end(
        &self,
        redis: &Client,
        call: &CallId,
        now: u64,
        reason: &str,
    ) -> Result<Ended, StoreError> {
        let notice = CallControl::EndCall {
            reason: reason.to_owned(),
        }
        .to_json();
        let ended: i64 = self
            .end
            .run(
                redis,
                vec![
                    keys::call(call),
                    keys::call_channel(call),
                    keys::call_peers(call),
                ],
                vec![now.to_string(), notice],
            )
            .await?;
        match ended {
            1 => Ok(Ended::Now),
            0 => Ok(Ended::Already),
            -1 => Ok(Ended::NoSuchCall),
            _ => Err(StoreError::Unexpected("reply of the end script")),
        }
    }

    /// Read `call:{id}` and count its media participants and observers apart. None when the
    /// call record is gone.
    pub async fn load(
        &self,
        redis: &Client,
        call: &CallId,
    ) -> Result<Option<CallStatusResponse>, StoreError> {
        let pipeline = redis.pipeline();
        let _: () = pipeline.hgetall(keys::call(call)).await?;
        let _: () = pipeline.hvals(keys::call_peers(call)).await?;
        let (fields, peers): (HashMap<String, String>, Vec<String>) = pipeline.all().await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let Some(status) = fields
            .get("status")
            .and_then(|s| s.parse::<CallStatus>().ok())
        else {
            return Err(StoreError::Unexpected("call record without a known status"));
        };
        let num = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
        let (mut media, mut observers) = (0u32, 0u32);
        if status != CallStatus::Ended {
            for role in peers
                .iter()
                .filter_map(|v| SeatEntry::parse(v).map(|e| e.role))
            {
                if role.is_media() {
                    media = media.saturating_add(1);
                } else {
                    observers = observers.saturating_add(1);
                }
            }
        }
        Ok(Some(CallStatusResponse {
            call_id: call.clone(),
            status,
            created_at: num("createdAt").unwrap_or(0),
            ended_at: num("endedAt"),
            participants: media,
            observers,
        }))
    }
}

/// The `call:{id}` key with the id cut off, for the one script that builds a call key from a
/// value it read (derived from [`keys::call`] so the schema stays spelled in one place).
pub fn call_key_prefix() -> String {
    let id =
        CallId::parse(&"0".repeat(hermes_proto::ids::ID_LEN)).expect("26 zeros are a valid id");
    let key = keys::call(&id);
    key.strip_suffix(id.as_str())
        .expect("call keys end with the id")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_prefix_matches_the_key_schema() {
        let id = CallId::random(&mut rand::rng());
        assert_eq!(format!("{}{id}", call_key_prefix()), keys::call(&id));
    }
}
