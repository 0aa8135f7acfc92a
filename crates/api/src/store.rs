//! The call store: the api's typed view of a call's state in Redis. Handlers say what they
//! want (claim a code for a new call, resolve a code, end a call…) and get typed answers; the
//! KEYS and ARGV each Lua script expects are built here and only here, next to the script.
//!
//! Every script touches the keys of one cluster slot only (one call's `call:{<id>}…` keys, or
//! one code), so the same scripts run on a single Redis and on Redis Cluster. A flow across a
//! code and a call is two single-slot steps, ordered so that what must be atomic is one step:
//! a code is claimed with one `SET NX` and consumed with one script (GET + DEL), so it stays
//! single use; a call record written before its code was claimed only expires unused.
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

/// After [`GUARD_PRELUDE`]: KEYS call; ARGV now (unix s), call TTL s. Writes a new call's
/// record. `{'ok'}`.
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
}

impl Default for CallStore {
    fn default() -> Self {
        Self {
            create: Script::new(CREATE_LUA.as_str()),
            resolve: Script::new(RESOLVE_LUA.as_str()),
            status: Script::new(STATUS_LUA.as_str()),
            end: Script::new(END_LUA),
            restore: Script::new(RESTORE_LUA),
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
    /// First, counting `limits`, the call's side (a new call's record is written; an existing
    /// call must be live), then the code alone with `SET NX`.
    pub async fn claim_code(
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
                let value = match seat {
                    Role::Offerer => format!("{call}{OFFERER_SEAT}"),
                    _ => call.to_string(),
                };
                (value, code_ttl)
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

    /// Consume `code` (one atomic step, counting `limits`), then read its call's status. None
    /// for an unknown or used code. The consumption must survive a failover, so it waits for a
    /// replica as the guard's [`AckPolicy`] says (see [`Guard::run_durable`]).
    pub async fn resolve(
        &self,
        guard: Guard<'_>,
        limits: &Limits,
        code: &OneTimeCode,
    ) -> Result<Option<Resolved>, StoreError> {
        let (reply, refused) = guard
            .run_durable(&self.resolve, limits, vec![keys::otc(code)], Vec::new())
            .await?;
        let found: Vec<String> = reply.iter().filter_map(Value::as_string).collect();
        let [value, ttl_ms] = found.as_slice() else {
            // Unknown or used: nothing was consumed, so nothing needs a replica.
            return Ok(None);
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
        let status: Option<String> = guard.redis.hget(keys::call(&call), "status").await?;
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
