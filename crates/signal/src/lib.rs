//! hermes-signal: the WebSocket signaling service.
//!
//! Browsers connect to `/ws`, authenticate with their first message (`join` with the join
//! token from the API; never in the URL), and exchange SDP and ICE with the other participant
//! of their call. State and fan-out live in Redis, so replicas behind a load balancer act as
//! one and a participant can resume on any replica.
//!
//! Map: [`config`] (flags/env), [`room`] (sans-IO per-connection rules and seat logic),
//! [`hub`] (Redis scripts, leases), [`router`] (pub/sub subscriptions and fan-out to local
//! sessions), [`session`] (one WebSocket task),
//! [`metrics`], [`state`](mod@state) (the replica's shared state), [`http`] (the router). Entry points:
//! [`app`] (the router, for tests), [`serve`] (on a bound listener) and [`run`] (binds
//! `SIGNAL_LISTEN`).

pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod room;
pub mod router;
pub mod session;
pub mod state;

use hermes_service::shutdown::CancellationToken;
use tokio::net::TcpListener;

pub use config::{Cli, Config};
pub use error::SignalError;
pub use http::{HARD_MESSAGE_LIMIT, app};
pub use state::{AppState, SessionGuard, state};

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
