//! The replica's shared state: what every session needs (config, token keys, the hub, the event
//! publisher, metrics, the shutdown signal) and the drain's session tracker, built once at start
//! by [`state`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hermes_proto::JoinTokenKeys;
use hermes_service::EventPublisher;
use hermes_service::shutdown::{CancellationToken, TaskTracker};

use crate::hub::{Hub, HubTimes};
use crate::metrics::Metrics;
use crate::{Config, SignalError};

/// Everything a session needs, shared by all sessions of the replica.
pub struct AppState {
    pub config: Config,
    pub keys: JoinTokenKeys,
    pub hub: Arc<Hub>,
    pub events: EventPublisher,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Every WebSocket session; closed when the drain starts (then new ones are refused), and
    /// the drain waits for it to empty.
    pub(crate) sessions: TaskTracker,
    next_id: AtomicU64,
}

impl AppState {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn draining(&self) -> bool {
        self.sessions.is_closed()
    }
}

/// Counts a live session in the connections gauge (the drain tracks the session task itself).
pub struct SessionGuard(Arc<AppState>);

impl SessionGuard {
    pub fn new(state: Arc<AppState>) -> Self {
        state.metrics.connections.inc();
        Self(state)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

/// Connect to Redis and build the shared state.
pub async fn state(
    config: Config,
    shutdown: CancellationToken,
) -> Result<Arc<AppState>, SignalError> {
    let client = hermes_service::redis::connect(&config.redis_url, Duration::from_secs(5)).await?;
    let events = EventPublisher::spawn(client.clone(), "signal");
    let metrics = Arc::new(Metrics::new(events.dropped_counter()));
    let times = HubTimes {
        lease_ms: config.lease.as_millis() as u64,
        grace_ms: config.grace.as_millis() as u64,
        inbox_maxlen: config.inbox_maxlen,
    };
    let hub = Hub::start_with_replica_ack(
        &config.redis_url,
        client.clone(),
        times,
        metrics.clone(),
        config.replica_ack,
    )
    .await?;
    let keys = JoinTokenKeys::new(config.jwt_secret.expose());
    Ok(Arc::new(AppState {
        config,
        keys,
        hub,
        events,
        metrics,
        shutdown,
        sessions: TaskTracker::new(),
        next_id: AtomicU64::new(1),
    }))
}
