//! Shared state of the service: settings, the Redis client, token keys, the event publisher,
//! the limiter and metrics. One `Arc` cloned into every handler.

use std::sync::{Arc, LazyLock};

use fred::prelude::*;
use hermes_proto::{JoinTokenKeys, keys};
use hermes_service::EventPublisher;

use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ratelimit::{GUARD_PRELUDE, GuardError, Limiter, Rejected};
use hermes_service::redis::Script;

/// Name under which this service publishes log events (`logs:api`).
pub const SERVICE: &str = "api";

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

/// KEYS: call, call channel. ARGV: now (unix s), end-call control JSON.
/// -1: no such call; 0: already ended; 1: ended now (and the notice was published).
const END_LUA: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'ended' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'ended', 'endedAt', ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"#;

/// The Lua scripts; `create`, `resolve` and `status` apply rate limits first (see
/// [`Limiter::guarded`](crate::ratelimit::Limiter::guarded)).
pub struct Scripts {
    pub create: Script,
    pub resolve: Script,
    pub status: Script,
    pub end: Script,
    pub new_code: Script,
}

/// The `call:{id}` key with the id cut off, for the one script that builds a call key from a
/// value it read (derived from [`keys::call`] so the schema stays spelled in one place).
pub fn call_key_prefix() -> String {
    let id = hermes_proto::CallId::parse(&"0".repeat(hermes_proto::ids::ID_LEN))
        .expect("26 zeros are a valid id");
    let key = keys::call(&id);
    key.strip_suffix(id.as_str())
        .expect("call keys end with the id")
        .to_owned()
}

pub struct Inner {
    pub settings: Settings,
    redis: Client,
    pub tokens: JoinTokenKeys,
    pub events: EventPublisher,
    pub limiter: Limiter,
    pub metrics: Metrics,
    pub scripts: Scripts,
    /// Key of the hash that names per-code rate-limit counters (derived from JWT_SECRET so
    /// that all replicas agree, and distinct from it by a label).
    pub code_hash_key: Vec<u8>,
    pub openapi: bytes::Bytes,
    /// See [`call_key_prefix`].
    pub call_prefix: String,
}

pub type AppState = Arc<Inner>;

impl Inner {
    /// Build the state around a (possibly still connecting) Redis client. Must run inside a
    /// tokio runtime: it starts the event publisher task.
    pub fn new(settings: Settings, redis: Client) -> AppState {
        let tokens = JoinTokenKeys::new(settings.jwt_secret.expose());
        let mut code_hash_key = b"hermes-api rl:code v1 ".to_vec();
        code_hash_key.extend_from_slice(settings.jwt_secret.expose());
        Arc::new(Self {
            events: EventPublisher::spawn(redis.clone(), SERVICE),
            tokens,
            limiter: Limiter::default(),
            metrics: Metrics::default(),
            scripts: Scripts {
                create: Script::new(CREATE_LUA.as_str()),
                resolve: Script::new(RESOLVE_LUA.as_str()),
                status: Script::new(STATUS_LUA.as_str()),
                end: Script::new(END_LUA),
                new_code: Script::new(NEW_CODE_LUA.as_str()),
            },
            code_hash_key,
            openapi: crate::openapi::document_bytes(),
            call_prefix: call_key_prefix(),
            settings,
            redis,
        })
    }

    /// The Redis client for a request that needs state: fails at once with 503 while the
    /// connection is down, instead of queueing the command behind a reconnect.
    pub fn redis(&self) -> Result<&Client, ApiError> {
        if self.redis.is_connected() {
            Ok(&self.redis)
        } else {
            self.metrics.redis_errors.inc();
            Err(ApiError::Unavailable)
        }
    }

    /// The client regardless of connection state (readiness probe, limiter).
    pub fn redis_raw(&self) -> &Client {
        &self.redis
    }

    /// Map a guarded script's failure to 429 or 503.
    pub fn guard_err(&self, e: GuardError, route: &str) -> ApiError {
        match e {
            GuardError::Limited(r) => self.rate_limited(r, route),
            GuardError::Redis(e) => self.redis_err(e),
        }
    }

    /// Record a 429: metric, log line, log event.
    pub fn rate_limited(&self, rejected: Rejected, route: &str) -> ApiError {
        self.metrics.rate_limited(rejected.limit);
        tracing::info!(limit = rejected.limit, route, "rate limit hit");
        self.events.publish(
            None,
            hermes_proto::CallEvent::RateLimitHit {
                limit: rejected.limit.to_owned(),
                route: route.to_owned(),
            },
        );
        ApiError::RateLimited {
            retry_after_secs: rejected.retry_after_secs,
        }
    }

    /// The per-IP request limit every /api request counts against.
    pub fn request_limit(&self, ip: &std::net::IpAddr) -> (String, crate::ratelimit::Limit) {
        (keys::rl_ip(ip, "req"), self.settings.request_limit)
    }

    /// Map a Redis error to 503, counting and logging it.
    pub fn redis_err(&self, e: fred::error::Error) -> ApiError {
        ApiError::redis(&e, &self.metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_prefix_matches_the_key_schema() {
        let id = hermes_proto::CallId::random(&mut rand::rng());
        assert_eq!(format!("{}{id}", call_key_prefix()), keys::call(&id));
    }
}
