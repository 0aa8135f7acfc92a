//! hermes-turn: a STUN/TURN relay (RFC 5389/8489, 5766/8656) for Hermes.
//!
//! Codemap:
//! - [`wire`]: zero-copy framing, attribute walker, integrity/fingerprint, in-place data headers.
//! - [`auth`]: REST long-term keys and stateless nonces.
//! - [`peer_filter`]: which peers may be relayed to (special-purpose ranges refused).
//! - [`server`]: the sans-IO TURN core.
//! - [`config`]: flags/env and coturn `turnserver.conf`.
//! - [`io`]: the mio data-plane thread, TCP/TLS clients, metrics HTTP.
//! - [`metrics`]: live counters for `/metrics`.
//!
//! Architecture invariant: the core (`server`, `wire`, `auth`, `peer_filter`) does no I/O and
//! reads no clock; only `io/` and [`run`] touch sockets, time and threads.

pub mod auth;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod metrics;
pub mod peer_filter;
pub mod server;
pub mod wire;

#[cfg(test)]
mod server_tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hermes_service::EventPublisher;
use hermes_service::shutdown::Shutdown;
use tokio::net::TcpListener;

pub use config::{Config, Settings};
pub use error::TurnError;

use crate::io::engine::{Engine, EngineMsg, udp_socket};
use crate::io::tls::TlsReloader;
use crate::metrics::Metrics;
use crate::server::Server;

/// How long start-up waits for Redis before going on without it (events are then published
/// once it connects; the relay never depends on it).
const REDIS_WAIT: Duration = Duration::from_millis(300);

/// Run the relay until `shutdown` fires, then drain: refuse new allocations, keep relaying
/// existing ones until they end or `TURN_DRAIN_SECS` passes, and return.
pub async fn run(settings: Settings, mut shutdown: Shutdown) -> Result<(), TurnError> {
    let metrics = Arc::new(Metrics::default());

    let udp = udp_socket(settings.listen, settings.socket_buffer)
        .map_err(TurnError::io(format!("binding UDP {}", settings.listen)))?;
    let udp_addr = udp
        .local_addr()
        .map_err(TurnError::io("UDP local address"))?;
    tracing::info!("listening on {udp_addr} (udp)");
    let tcp_addr = SocketAddr::new(settings.listen.ip(), udp_addr.port());
    let tcp = TcpListener::bind(tcp_addr)
        .await
        .map_err(TurnError::io(format!("binding TCP {tcp_addr}")))?;
    tracing::info!("listening on {tcp_addr} (tcp)");
    let tls = match &settings.tls {
        Some(t) => {
            let reloader = TlsReloader::new(t.cert.clone(), t.key.clone())?;
            let l = TcpListener::bind(t.listen)
                .await
                .map_err(TurnError::io(format!("binding TLS {}", t.listen)))?;
            tracing::info!("listening on {} (tls)", t.listen);
            Some((l, reloader))
        }
        None => None,
    };
    let http = TcpListener::bind(settings.metrics_listen)
        .await
        .map_err(TurnError::io(format!(
            "binding metrics {}",
            settings.metrics_listen
        )))?;
    tracing::info!(
        "listening on {} (metrics)",
        http.local_addr()
            .map_err(TurnError::io("metrics local address"))?
    );

    let events = if settings.redis_url.trim().is_empty() {
        None
    } else {
        match hermes_service::redis::connect(&settings.redis_url, REDIS_WAIT).await {
            Ok(client) => Some(EventPublisher::spawn(client, "turn")),
            Err(e) => {
                tracing::warn!(error = %e, "REDIS_URL unusable: allocation events are not published");
                None
            }
        }
    };

    let core = Server::new(
        settings.core.clone(),
        rand::random::<[u8; 32]>(),
        rand::random::<u64>(),
        metrics.clone(),
    );
    let (engine, handle) = Engine::new(core, udp, events, settings.relay_socket_buffer)
        .map_err(TurnError::io("starting the relay engine"))?;
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("turn-relay".into())
        .spawn(move || {
            engine.run();
            let _ = done_tx.send(());
        })
        .map_err(TurnError::io("spawning the relay thread"))?;

    let mut tasks = tokio::task::JoinSet::new();
    // One budget for TCP and TLS clients together.
    let stream_slots = Arc::new(tokio::sync::Semaphore::new(settings.max_stream_connections));
    tasks.spawn(io::stream::accept_loop(
        tcp,
        handle.clone(),
        metrics.clone(),
        None,
        stream_slots.clone(),
    ));
    if let Some((listener, reloader)) = tls {
        tasks.spawn(reloader.clone().watch());
        tasks.spawn(io::stream::accept_loop(
            listener,
            handle.clone(),
            metrics.clone(),
            Some(reloader),
            stream_slots,
        ));
    }
    let router = io::http::router(metrics.clone());
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(http, router).await;
    });

    tokio::select! {
        () = shutdown.wait() => {}
        _ = &mut done_rx => {
            tasks.abort_all();
            http_task.abort();
            return Err(TurnError::Config("relay engine stopped unexpectedly".into()));
        }
    }
    // Drain: no new connections; the engine refuses new allocations and returns when the
    // last allocation ends or at the deadline.
    tasks.abort_all();
    let deadline_ms = hermes_service::unix_now_ms() + settings.drain_secs * 1000;
    handle.send(EngineMsg::Drain { deadline_ms });
    let _ = done_rx.await;
    http_task.abort();
    tracing::info!("hermes-turn stopped");
    Ok(())
}
