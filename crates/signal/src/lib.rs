//! hermes-signal: the WebSocket signaling service.
//!
//! Browsers connect to `/ws`, authenticate with their first message (`join` with the join
//! token from the API; never in the URL), and exchange SDP and ICE with the other participant
//! of their call. State and fan-out live in Redis, so replicas behind a load balancer act as
//! one and a participant can resume on any replica.
//!
//! Map: [`config`] (flags/env), [`room`] (sans-IO per-connection rules and seat logic),
//! [`hub`] (Redis scripts, pub/sub router, leases), [`session`] (one WebSocket task),
//! [`metrics`]. Entry points: [`app`] (the router, for tests), [`serve`] (on a bound
//! listener) and [`run`] (binds `SIGNAL_LISTEN`).

pub mod config;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod room;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hermes_proto::JoinTokenKeys;
use hermes_service::EventPublisher;
use hermes_service::shutdown::{CancellationToken, TaskTracker};
use tokio::net::TcpListener;

pub use config::{Cli, Config};
pub use error::SignalError;

use hub::{Hub, HubTimes};
use metrics::Metrics;

/// Largest WebSocket message tungstenite buffers before giving up on the connection (1009).
/// Messages between [`hermes_proto::signal::MAX_FRAME_BYTES`] and this get a `too-large`
/// error and the connection stays.
pub const HARD_MESSAGE_LIMIT: usize = 4 * hermes_proto::signal::MAX_FRAME_BYTES;

/// How long `/readyz` waits for its pub/sub probe to come back (under the 2 s timeout of the
/// Kubernetes readiness probe, so a slow pub/sub is answered 503, not left to time out).
const READY_PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

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
    sessions: TaskTracker,
    next_id: AtomicU64,
}

impl AppState {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn draining(&self) -> bool {
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
    let hub = Hub::start(&config.redis_url, client.clone(), times, metrics.clone()).await?;
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

/// The HTTP router: `/ws`, `/healthz`, `/readyz`, `/metrics`.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn ws(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "restarting; reconnect").into_response();
    }
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if !state.config.origin_allowed(origin) {
        state.metrics.refused.inc();
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    upgrade
        // Small buffers: an idle connection should cost little (10k idle < 300 MiB).
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(HARD_MESSAGE_LIMIT)
        .max_frame_size(HARD_MESSAGE_LIMIT)
        .on_upgrade(move |socket| {
            let sessions = state.sessions.clone();
            sessions.track_future(session::run(socket, state))
        })
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if !hermes_service::redis::is_ready(state.hub.client()).await {
        return (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable").into_response();
    }
    // Pub/sub proven end to end (a probe came back through the subscriber), not merely a
    // connected socket: a replica whose subscriptions do not apply cannot deliver anything.
    if state.hub.subscriber_ready(READY_PROBE_TIMEOUT).await {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "redis pub/sub not ready").into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, hermes_service::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// Serve on a bound listener until `shutdown`, then drain: refuse new connections, close every
/// socket with 1012 (clients reconnect elsewhere and resume), wait up to `SIGNAL_DRAIN_MS`.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), SignalError> {
    let addr = listener.local_addr()?;
    let drain = config.drain;
    let state = state(config, shutdown.clone()).await?;
    tracing::info!("listening on {addr}");
    let app = app(state.clone());

    // Signaling frames are small and latency-bound: no Nagle delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let drained = {
        let state = state.clone();
        async move {
            shutdown.cancelled().await;
            state.sessions.close();
            // Sessions watch the same shutdown and close themselves with 1012.
            if tokio::time::timeout(drain, state.sessions.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    open = state.sessions.len(),
                    "drain timeout; exiting with connections open"
                );
            }
        }
    };
    let (served, ()) = tokio::join!(server.into_future(), drained);
    served?;
    tracing::info!("signal stopped");
    Ok(())
}

/// Bind `SIGNAL_LISTEN` and [`serve`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), SignalError> {
    let listener = TcpListener::bind(config.listen).await?;
    serve(listener, config, shutdown).await
}
