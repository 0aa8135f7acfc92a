//! The call store: the api's typed view of a call's state in Redis. Handlers say what they
//! want (claim a code for a new call, resolve a code, end a call…) and get typed answers; the
//! KEYS and ARGV each Lua script expects are built here and only here, next to the script.
//!
//! A flow across a code and a call (create, resolve, new code) runs in one of two shapes:
//! - on a single Redis (or Sentinel), one script touches both the code and the call, so the
//!   flow is one atomic step and one round trip, as it always was;
//! - on Redis Cluster, where a script may touch one slot only (one call's `call:{<id>}…` keys,
//!   or one code), it is two single-slot steps, ordered so that what must be atomic is one
//!   step: a code is claimed with one `SET NX` and consumed with one script (GET + DEL), so it
//!   stays single use; a call record written before its code was claimed only expires unused.
//!
//! The split costs one more round trip per flow (measured in docs/operations.md), which is why a
//! single Redis keeps the one-script shape. Which shape runs is the client's to say
//! ([`Client::is_clustered`]); both are tested (tests/flow.rs, tests/cluster.rs).
//!
//! The scripts of `create`, `resolve`, `new_code` and `join_status` apply the request's rate
//! limits first (see [`Limiter::guarded`]: in the same script on a single Redis, one step
//! before it on a cluster).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use hermes_proto::api::{CallStatus, CallStatusResponse};
use hermes_proto::signal::CallControl;
use hermes_proto::{CallId, OneTimeCode, Role, SeatEntry, keys};
use hermes_service::redis::{AckPolicy, Script};

use crate::metrics::Metrics;
use crate::ratelimit::{GUARD_PRELUDE, GuardError, Limit, Limiter};

/// After [`GUARD_PRELUDE`], single Redis only (two slots): KEYS otc, call; ARGV callId, code
/// TTL ms, now (unix s), call TTL s. Claims the code with SET NX and, only if it was free,
/// writes the call record. `{'ok', 1}` created, `{'ok', 0}` code taken.
const CREATE_WITH_CODE_BODY: &str = r#"
if not redis.call('SET', KEYS[K + 1], ARGV[A + 1], 'NX', 'PX', ARGV[A + 2]) then return {'ok', 0} end
redis.call('HSET', KEYS[K + 2], 'status', 'created', 'createdAt', ARGV[A + 3])
redis.call('EXPIRE', KEYS[K + 2], ARGV[A + 4])
return {'ok', 1}
"#;

/// After [`GUARD_PRELUDE`], single Redis only (two slots): KEYS otc, call; ARGV otc value,
/// code TTL ms. A fresh code for a live call: `{'ok', 1}` stored, `{'ok', 0}` code taken,
/// `{'ok', -1}` no such call, `{'ok', -2}` call ended.
const NEW_CODE_BODY: &str = r#"
local status = redis.call('HGET', KEYS[K + 2], 'status')
if not status then return {'ok', -1} end
if status == 'ended' then return {'ok', -2} end
if not redis.call('SET', KEYS[K + 1], ARGV[A + 1], 'NX', 'PX', ARGV[A + 2]) then return {'ok', 0} end
return {'ok', 1}
"#;

/// After [`GUARD_PRELUDE`], single Redis only (it reads a call key it builds from the code's
/// value, in another slot): KEYS otc; ARGV the call key's prefix and suffix around the id
/// (see [`call_key_affixes`]). [`RESOLVE_BODY`] and the call's status in one atomic step:
/// `{'ok'}` for an unknown or used code, else `{'ok', value, remaining ms, status or ''}`.
const RESOLVE_WITH_STATUS_BODY: &str = r#"
local value = redis.call('GET', KEYS[K + 1])
if not value then return {'ok'} end
local ttl = redis.call('PTTL', KEYS[K + 1])
redis.call('DEL', KEYS[K + 1])
local id = string.match(value, '^([^|]*)')
local status = redis.call('HGET', ARGV[A + 1] .. id .. ARGV[A + 2], 'status')
return {'ok', value, tostring(ttl), status or ''}
"#;

/// After [`GUARD_PRELUDE`]: KEYS call; ARGV now (unix s), call TTL s. Writes a new call's
/// record (the first step of a create on a cluster). `{'ok'}`.
const CREATE_BODY: &str = r#"
redis.call('HSET', KEYS[K + 1], 'status', 'created', 'createdAt', ARGV[A + 1])
redis.call('EXPIRE', KEYS[K + 1], ARGV[A + 2])
return {'ok'}
"#;

/// After [`GUARD_PRELUDE`]: KEYS otc. Consumes the code (GET + DEL in one atomic step).
/// `{'ok'}` for an unknown or used code, else `{'ok', value, remaining ms}` (the value is
/// `callId`, or `callId|offerer` for a code minted by an answerer; value and remaining lifetime
/// let [`RESTORE_LUA`] put the code back).
const RESOLVE_BODY: &str = r#"
local value = redis.call('GET', KEYS[K + 1])
if not value then return {'ok'} end
local ttl = redis.call('PTTL', KEYS[K + 1])
redis.call('DEL', KEYS[K + 1])
return {'ok', value, tostring(ttl)}
"#;

/// KEYS otc; ARGV value, remaining ms. Puts back a code whose consumption no replica
/// acknowledged under `REDIS_REPLICA_ACK=required` (the client got 503, not a token), unless
/// the key exists again. Whatever of the two writes a failover keeps, the code was never
/// handed out: at worst it is gone and the caller creates another.
const RESTORE_LUA: &str = r#"
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
end
return 1
"#;

/// After [`GUARD_PRELUDE`]: KEYS call. `{'ok', status or ''}`.
const STATUS_BODY: &str = r#"
return {'ok', redis.call('HGET', KEYS[K + 1], 'status') or ''}
"#;

static CREATE_LUA: LazyLock<String> = LazyLock::new(|| format!("{GUARD_PRELUDE}{CREATE_BODY}"));
static RESOLVE_LUA: LazyLock<String> = LazyLock::new(|| format!("{GUARD_PRELUDE}{RESOLVE_BODY}"));
static STATUS_LUA: LazyLock<String> = LazyLock::new(|| format!("{GUARD_PRELUDE}{STATUS_BODY}"));
static CREATE_WITH_CODE_LUA: LazyLock<String> =
    LazyLock::new(|| format!("{GUARD_PRELUDE}{CREATE_WITH_CODE_BODY}"));
static NEW_CODE_LUA: LazyLock<String> = LazyLock::new(|| format!("{GUARD_PRELUDE}{NEW_CODE_BODY}"));
static RESOLVE_WITH_STATUS_LUA: LazyLock<String> =
    LazyLock::new(|| format!("{GUARD_PRELUDE}{RESOLVE_WITH_STATUS_BODY}"));

/// KEYS: call, call channel, call peers, call senders, call fences. ARGV: now (unix s),
/// end-call control JSON, '1' to publish sharded (`SPUBLISH`, on a cluster, where
/// hermes-signal subscribes to call channels sharded: allowed in the script, the channel is in
/// the call's slot), '0' for `PUBLISH`, the prefix of the call's sender log keys.
/// -1: no such call; 0: already ended; 1: ended now (and the notice was published).
/// The seats (with hermes-signal's fences of the call) and the senders' logs go in the same
/// step: hermes-signal's relay writes its log with `NOMKSTREAM`, and one that finds no log and
/// no seat reads the call's status (the signal replicas then drop the call's acks).
const END_LUA: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'ended' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'ended', 'endedAt', ARGV[1])
for _, s in ipairs(redis.call('SMEMBERS', KEYS[4])) do redis.call('DEL', ARGV[4] .. s) end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call(ARGV[3] == '1' and 'SPUBLISH' or 'PUBLISH', KEYS[2], ARGV[2])
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
    /// The write ran on the primary but no replica acknowledged it in time, and the policy
    /// (`REDIS_REPLICA_ACK=required`) does not answer without one.
    NotReplicated,
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
    restore: Script,
    create_with_code: Script,
    new_code: Script,
    resolve_with_status: Script,
    /// See [`call_key_affixes`].
    call_affixes: (String, String),
}

impl Default for CallStore {
    fn default() -> Self {
        Self {
            create: Script::new(CREATE_LUA.as_str()),
            resolve: Script::new(RESOLVE_LUA.as_str()),
            status: Script::new(STATUS_LUA.as_str()),
            end: Script::new(END_LUA),
            restore: Script::new(RESTORE_LUA),
            create_with_code: Script::new(CREATE_WITH_CODE_LUA.as_str()),
            new_code: Script::new(NEW_CODE_LUA.as_str()),
            resolve_with_status: Script::new(RESOLVE_WITH_STATUS_LUA.as_str()),
            call_affixes: call_key_affixes(),
        }
    }
}

/// What every guarded script runs with: the client, the limiter and its metrics.
#[derive(Clone, Copy)]
pub struct Guard<'a> {
    pub redis: &'a Client,
    /// The connection of writes that wait for a replica (a client of its own, see
    /// [`hermes_service::redis::twin_without_resends`]; `redis` itself when the policy is off).
    pub durable: &'a Client,
    pub replica_ack: AckPolicy,
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
        let (reply, _) = self
            .limiter
            .guarded(self.redis, script, limits, keys, args, self.metrics, None)
            .await?;
        Ok(reply)
    }

    /// [`Self::run`] for a write that must survive a failover: under a waiting
    /// [`AckPolicy`] it answers only once a replica holds the write, or (best-effort) once
    /// the timeout passed. The flag is true when `required` refuses the reply (no replica
    /// acknowledged): the caller undoes what it can and answers [`StoreError::NotReplicated`].
    async fn run_durable(
        &self,
        script: &Script,
        limits: &Limits,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<(Vec<Value>, bool), StoreError> {
        let Some(timeout) = self.replica_ack.timeout() else {
            return Ok((self.run(script, limits, keys, args).await?, false));
        };
        let (reply, acked) = self
            .limiter
            .guarded(
                self.durable,
                script,
                limits,
                keys,
                args,
                self.metrics,
                Some(timeout),
            )
            .await?;
        if acked.unwrap_or(0) == 0 {
            self.metrics.replica_ack_missing.inc();
            if let AckPolicy::Required(_) = self.replica_ack {
                tracing::warn!(
                    ?timeout,
                    "no Redis replica acknowledged a consumed code: answering unavailable"
                );
                return Ok((reply, true));
            }
            tracing::warn!(
                ?timeout,
                "no Redis replica acknowledged a consumed code: answering anyway (best-effort)"
            );
        }
        Ok((reply, false))
    }
}

impl CallStore {
    /// Store a fresh random one-time code for `what`, drawing another while the code is taken.
    /// On a single Redis one script per attempt does it all (the limits count once, on the
    /// first attempt); on a cluster see [`Self::claim_code_in_steps`].
    pub async fn claim_code(
        &self,
        guard: Guard<'_>,
        limits: &Limits,
        what: CodeFor<'_>,
    ) -> Result<(OneTimeCode, Claimed), StoreError> {
        if guard.redis.is_clustered() {
            return self.claim_code_in_steps(guard, limits, what).await;
        }
        let (script, call, args) = match what {
            CodeFor::NewCall {
                call,
                now,
                code_ttl,
                call_ttl,
            } => (
                &self.create_with_code,
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
            } => (
                &self.new_code,
                call,
                vec![code_value(call, seat), code_ttl.as_millis().to_string()],
            ),
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

    /// [`Self::claim_code`] on a cluster: first, counting `limits`, the call's side (a new
    /// call's record is written; an existing call must be live), then the code alone with
    /// `SET NX`.
    async fn claim_code_in_steps(
        &self,
        guard: Guard<'_>,
        limits: &Limits,
        what: CodeFor<'_>,
    ) -> Result<(OneTimeCode, Claimed), StoreError> {
        let (value, code_ttl) = match what {
            CodeFor::NewCall {
                call,
                now,
                code_ttl,
                call_ttl,
            } => {
                guard
                    .run(
                        &self.create,
                        limits,
                        vec![keys::call(call)],
                        vec![now.to_string(), call_ttl.as_secs().max(1).to_string()],
                    )
                    .await?;
                (call.to_string(), code_ttl)
            }
            CodeFor::Invite {
                call,
                seat,
                code_ttl,
            } => {
                let reply = guard
                    .run(&self.status, limits, vec![keys::call(call)], Vec::new())
                    .await?;
                match reply.first().and_then(Value::as_str).as_deref() {
                    Some("") => {
                        return Ok((OneTimeCode::random(&mut rand::rng()), Claimed::CallNotFound));
                    }
                    Some("ended") => {
                        return Ok((OneTimeCode::random(&mut rand::rng()), Claimed::CallEnded));
                    }
                    Some(_) => {}
                    None => return Err(StoreError::Unexpected("reply of the status script")),
                }
                (code_value(call, seat), code_ttl)
            }
        };
        let ttl_ms = i64::try_from(code_ttl.as_millis()).unwrap_or(i64::MAX);
        for _ in 0..MAX_CODE_ATTEMPTS {
            let code = OneTimeCode::random(&mut rand::rng());
            let stored: Option<String> = guard
                .redis
                .set(
                    keys::otc(&code),
                    value.as_str(),
                    Some(Expiration::PX(ttl_ms)),
                    Some(SetOptions::NX),
                    false,
                )
                .await?;
            if stored.is_some() {
                return Ok((code, Claimed::Stored));
            }
            tracing::debug!("one-time code collision, drawing another");
        }
        tracing::error!("no free one-time code after {MAX_CODE_ATTEMPTS} attempts");
        Err(StoreError::Unexpected("no free one-time code"))
    }

    /// Consume `code` (one atomic step, counting `limits`) and read its call's status: in the
    /// same script on a single Redis, one step after it on a cluster. None for an unknown or
    /// used code. The consumption must survive a failover, so it waits for a replica as the
    /// guard's [`AckPolicy`] says (see [`Guard::run_durable`]).
    pub async fn resolve(
        &self,
        guard: Guard<'_>,
        limits: &Limits,
        code: &OneTimeCode,
    ) -> Result<Option<Resolved>, StoreError> {
        let in_steps = guard.redis.is_clustered();
        let (script, args) = if in_steps {
            (&self.resolve, Vec::new())
        } else {
            let (prefix, suffix) = &self.call_affixes;
            (
                &self.resolve_with_status,
                vec![prefix.clone(), suffix.clone()],
            )
        };
        let (reply, refused) = guard
            .run_durable(script, limits, vec![keys::otc(code)], args)
            .await?;
        let found: Vec<String> = reply.iter().filter_map(Value::as_string).collect();
        let (value, ttl_ms, status) = match found.as_slice() {
            [value, ttl_ms] if in_steps => (value, ttl_ms, None),
            [value, ttl_ms, status] if !in_steps => (value, ttl_ms, Some(status)),
            // Unknown or used: nothing was consumed, so nothing needs a replica.
            [] => return Ok(None),
            _ => return Err(StoreError::Unexpected("reply of the resolve script")),
        };
        if refused {
            let _: i64 = self
                .restore
                .run(
                    guard.durable,
                    vec![keys::otc(code)],
                    vec![value.clone(), ttl_ms.clone()],
                )
                .await?;
            return Err(StoreError::NotReplicated);
        }
        let (call_id, role) = match value.strip_suffix(OFFERER_SEAT) {
            Some(id) => (id, Role::Offerer),
            None => (value.as_str(), Role::Answerer),
        };
        let call = CallId::parse(call_id)
            .map_err(|_| StoreError::Unexpected("otc entry with a malformed call id"))?;
        let status: Option<String> = match status {
            Some(status) => (!status.is_empty()).then(|| status.clone()),
            None => guard.redis.hget(keys::call(&call), "status").await?,
        };
        Ok(Some(Resolved { call, status, role }))
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
                    keys::call_senders(call),
                    keys::call_fences(call),
                ],
                vec![
                    now.to_string(),
                    notice,
                    if redis.is_clustered() { "1" } else { "0" }.to_owned(),
                    keys::call_sender_log_prefix(call),
                ],
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

/// The value of a code that admits `seat` to `call`.
fn code_value(call: &CallId, seat: Role) -> String {
    match seat {
        Role::Offerer => format!("{call}{OFFERER_SEAT}"),
        _ => call.to_string(),
    }
}

/// The `call:{id}` key's text before and after the id, for the one script that builds a call
/// key from a value it read (derived from [`keys::call`] so the schema stays spelled in one
/// place).
fn call_key_affixes() -> (String, String) {
    let id =
        CallId::parse(&"0".repeat(hermes_proto::ids::ID_LEN)).expect("26 zeros are a valid id");
    let key = keys::call(&id);
    let (prefix, suffix) = key
        .split_once(id.as_str())
        .expect("call keys hold the id once");
    (prefix.to_owned(), suffix.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_key_affixes_match_the_key_schema() {
        let id = CallId::random(&mut rand::rng());
        let (prefix, suffix) = call_key_affixes();
        assert_eq!(format!("{prefix}{id}{suffix}"), keys::call(&id));
    }
}
