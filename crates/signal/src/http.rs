//! The HTTP face of a replica: the router (`/ws` upgrade with its origin check and buffer sizes,
//! `/healthz`, `/readyz`, `/metrics`). Each WebSocket becomes a [`crate::session`] task tracked
//! for the drain.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::session;
use crate::state::AppState;

/// Largest WebSocket message tungstenite buffers before giving up on the connection (1009).
/// Messages between [`hermes_proto::signal::MAX_FRAME_BYTES`] and this get a `too-large`
/// error and the connection stays.
pub const HARD_MESSAGE_LIMIT: usize = 4 * hermes_proto::signal::MAX_FRAME_BYTES;

/// How long `/readyz` waits for its pub/sub probe to come back (under the 2 s timeout of the
/// Kubernetes readiness probe, so a slow pub/sub is answered 503, not left to time out).
const READY_PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

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
    // The connection of relays that wait for a replica too, when there is one.
    let (commands, replicated) =
        tokio::join!(hermes_service::redis::is_ready(state.hub.client()), async {
            match state.hub.replicated_client() {
                Some(client) => hermes_service::redis::is_ready(client).await,
                None => true,
            }
        });
    if !(commands && replicated) {
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
