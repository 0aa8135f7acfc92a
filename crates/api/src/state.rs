//! Shared state of the service: settings, the Redis client, token keys, the event publisher,
//! the limiter and metrics. One `Arc` cloned into every handler.

use std::sync::Arc;

use fred::prelude::*;
use hermes_proto::{JoinTokenKeys, keys};
use hermes_service::EventPublisher;

use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ratelimit::{GuardError, Limiter, Rejected};
use crate::store::{CallStore, Guard, StoreError};

/// Name under which this service publishes log events (`logs:api`).
pub const SERVICE: &str = "api";

pub struct Inner {
    pub settings: Settings,
    redis: Client,
    /// The connection of writes that wait for a replica (`REDIS_REPLICA_ACK`); `redis` itself
    /// when the policy does not wait.
    durable: Client,
    pub tokens: JoinTokenKeys,
    pub events: EventPublisher,
    pub limiter: Limiter,
    pub metrics: Metrics,
    pub calls: CallStore,
    /// Key of the hash that names per-code rate-limit counters (derived from JWT_SECRET so
    /// that all replicas agree, and distinct from it by a label).
    pub code_hash_key: Vec<u8>,
    pub openapi: bytes::Bytes,
}

pub type AppState = Arc<Inner>;

impl Inner {
    /// Build the state around a (possibly still connecting) Redis client. Must run inside a
    /// tokio runtime: it starts the event publisher task.
    pub fn new(settings: Settings, redis: Client) -> AppState {
        let tokens = JoinTokenKeys::new(settings.jwt_secret.expose());
        let mut code_hash_key = b"hermes-api rl:code v1 ".to_vec();
        code_hash_key.extend_from_slice(settings.jwt_secret.expose());
        let durable = match settings.replica_ack.timeout() {
            None => redis.clone(),
            Some(_) => {
                let twin = hermes_service::redis::twin_without_resends(&redis)
                    .expect("the twin has the configuration its client was built with");
                twin.connect();
                twin
            }
        };
        let state = Arc::new(Self {
            durable,
            events: EventPublisher::spawn(redis.clone(), SERVICE),
            tokens,
            limiter: Limiter::default(),
            metrics: Metrics::default(),
            calls: CallStore::default(),
            code_hash_key,
            openapi: crate::openapi::document_bytes(),
            settings,
            redis,
        });
        // A hung primary keeps its connections open: without this watch both clients would
        // send its slots' commands there after the failover, for as long as it hangs.
        let weak = Arc::downgrade(&state);
        let mut clients = vec![state.redis.clone()];
        clients.extend(state.durable_twin().cloned());
        hermes_service::redis::spawn_hung_primary_watch(clients, Vec::new(), move || {
            weak.strong_count() > 0
        });
        state
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

    /// The connection of writes that wait for a replica, when it is a client of its own
    /// (readiness probe).
    pub fn durable_twin(&self) -> Option<&Client> {
        self.settings.replica_ack.timeout().map(|_| &self.durable)
    }

    /// The client regardless of connection state (readiness probe, limiter).
    pub fn redis_raw(&self) -> &Client {
        &self.redis
    }

    /// The client, limiter and metrics a guarded call-store operation runs with.
    pub fn guard(&self) -> Guard<'_> {
        Guard {
            redis: &self.redis,
            durable: &self.durable,
            replica_ack: self.settings.replica_ack,
            limiter: &self.limiter,
            metrics: &self.metrics,
        }
    }

    /// Map a call-store failure to 429, 503 or 500.
    pub fn store_err(&self, e: StoreError, route: &str) -> ApiError {
        match e {
            StoreError::Guard(e) => self.guard_err(e, route),
            StoreError::Redis(e) => self.redis_err(e),
            StoreError::NotReplicated => ApiError::Unavailable,
            StoreError::Unexpected(what) => {
                tracing::error!(route, "unexpected answer from Redis: {what}");
                ApiError::Internal
            }
        }
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
