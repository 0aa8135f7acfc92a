//! hermes-turn: a STUN/TURN relay (RFC 5389/8489, 5766/8656) for Hermes.
//!
//! Codemap:
//! - [`wire`]: zero-copy framing, attribute walker, in-place data headers (the data path).
//! - [`auth`]: REST long-term keys and stateless nonces.
//! - [`peer_filter`]: which peers may be relayed to (special-purpose ranges refused).
//! - [`server`]: the sans-IO TURN core; its `request` module decodes control requests once,
//!   with the `stun`/`turn` crates, into a typed request.
//! - [`config`]: flags/env and coturn `turnserver.conf`.
//! - [`io`]: the mio data-plane workers (one per core, SO_REUSEPORT) and the threads that run
//!   them, TCP/TLS clients, metrics HTTP.
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
use hermes_service::shutdown::CancellationToken;
use tokio::net::TcpListener;

pub use config::{Config, Settings};
pub use error::TurnError;

use crate::io::engine::{Engine, EngineMsg, Engines, udp_socket};
use crate::io::tls::TlsReloader;
use crate::metrics::Metrics;
use crate::server::{AllocationLedger, Server};

/// How long start-up waits for Redis before going on without it (events are then published
/// once it connects; the relay never depends on it).
const REDIS_WAIT: Duration = Duration::from_millis(300);

/// The addresses a running relay listens on. Ports configured as 0 are the ones the OS
/// picked, so a caller (the scenario tests) can start the relay on port 0 in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// STUN/TURN over UDP.
    pub udp: SocketAddr,
    /// STUN/TURN over TCP (the UDP port, on TCP).
    pub tcp: SocketAddr,
    /// TURNS, when a certificate is configured.
    pub tls: Option<SocketAddr>,
    /// `/metrics`, `/healthz`.
    pub metrics: SocketAddr,
}

/// Run the relay until `shutdown` fires, then drain: refuse new allocations, keep relaying
/// existing ones until they end or `TURN_DRAIN_SECS` passes, and return.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), TurnError> {
    run_and_report(settings, shutdown, |_| {}).await
}

/// [`run`], calling `listening` with the bound addresses once every listener is bound and
/// every worker runs (before the first client is served).
pub async fn run_and_report(
    settings: Settings,
    shutdown: CancellationToken,
    listening: impl FnOnce(Listening),
) -> Result<(), TurnError> {
    let metrics = Arc::new(Metrics::default());

    // One UDP listener socket per worker, all on one address (SO_REUSEPORT): the first picks
    // the port when the configured one is 0, the others join it.
    let workers = settings.workers;
    let reuse = workers > 1;
    let first = udp_socket(settings.listen, settings.socket_buffer, reuse)
        .map_err(TurnError::io(format!("binding UDP {}", settings.listen)))?;
    let udp_addr = first
        .local_addr()
        .map_err(TurnError::io("UDP local address"))?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(udp_socket(udp_addr, settings.socket_buffer, true).map_err(
            TurnError::io(format!("binding UDP {udp_addr} (SO_REUSEPORT)")),
        )?);
    }
    tracing::info!(
        "listening on {udp_addr} (udp, {workers} workers, {} threads)",
        if settings.adaptive_threads {
            "adaptive"
        } else {
            "fixed"
        }
    );
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
            let addr = l.local_addr().map_err(TurnError::io("TLS local address"))?;
            tracing::info!("listening on {addr} (tls)");
            Some((l, reloader, addr))
        }
        None => None,
    };
    let http = TcpListener::bind(settings.metrics_listen)
        .await
        .map_err(TurnError::io(format!(
            "binding metrics {}",
            settings.metrics_listen
        )))?;
    let metrics_addr = http
        .local_addr()
        .map_err(TurnError::io("metrics local address"))?;
    tracing::info!("listening on {metrics_addr} (metrics)");
    let bound = Listening {
        udp: udp_addr,
        tcp: tcp_addr,
        tls: tls.as_ref().map(|(_, _, addr)| *addr),
        metrics: metrics_addr,
    };

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

    // Workers share the nonce key (a client's retry may land on another worker), the metrics
    // and the allocation ledger (quotas are per process); each owns a slice of the port range.
    let nonce_key = rand::random::<[u8; 32]>();
    let gso = settings.gso && io::gso::supported();
    tracing::info!(gso, "UDP segmentation offload");
    let ledger = Arc::new(AllocationLedger::default());
    let mut handles = Vec::with_capacity(workers);
    let mut shards = Vec::with_capacity(workers);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(workers);
    for (index, udp) in listeners.into_iter().enumerate() {
        let mut cfg = settings.core.clone();
        (cfg.min_port, cfg.max_port) =
            config::worker_ports(cfg.min_port, cfg.max_port, index, workers);
        let core = Server::new(cfg, nonce_key, rand::random::<u64>(), metrics.clone())
            .with_ledger(ledger.clone())
            .with_worker(u8::try_from(index).unwrap_or(u8::MAX));
        let (engine, handle) =
            Engine::new(core, udp, events.clone(), settings.relay_socket_buffer, gso)
                .map_err(TurnError::io("starting a relay worker"))?;
        let engine = engine
            .with_stream_stall_ms(settings.stream_stall.as_millis() as u64)
            .with_io_uring(settings.io_uring);
        handles.push(handle);
        if settings.adaptive_threads {
            shards.push(engine);
            continue;
        }
        let done_tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("turn-relay-{index}"))
            .spawn(move || {
                engine.run();
                let _ = done_tx.try_send(());
            })
            .map_err(TurnError::io("spawning a relay worker thread"))?;
        metrics.worker_threads.inc();
    }
    if settings.adaptive_threads {
        let done_tx = done_tx.clone();
        io::runner::spawn(
            shards,
            io::runner::Balancer::new(settings.split_permille),
            metrics.clone(),
            move || {
                let _ = done_tx.try_send(());
            },
        )
        .map_err(TurnError::io("spawning relay worker threads"))?;
    }
    drop(done_tx);
    let engines = Engines::new(handles);

    let mut tasks = tokio::task::JoinSet::new();
    // One budget for TCP and TLS clients together.
    let stream_slots = Arc::new(tokio::sync::Semaphore::new(settings.max_stream_connections));
    tasks.spawn(io::stream::accept_loop(
        tcp,
        engines.clone(),
        metrics.clone(),
        None,
        stream_slots.clone(),
        settings.stream_stall,
    ));
    if let Some((listener, reloader, _)) = tls {
        tasks.spawn(reloader.clone().watch());
        tasks.spawn(io::stream::accept_loop(
            listener,
            engines.clone(),
            metrics.clone(),
            Some(reloader),
            stream_slots,
            settings.stream_stall,
        ));
    }
    let router = io::http::router(metrics.clone());
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(http, router).await;
    });

    listening(bound);

    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = done_rx.recv() => {
            // Any worker stopping on its own is a failure: stop the others too.
            engines.broadcast(|| EngineMsg::Stop);
            tasks.abort_all();
            http_task.abort();
            return Err(TurnError::Config("a relay worker stopped unexpectedly".into()));
        }
    }
    // Drain: no new connections; the engine refuses new allocations and returns when the
    // last allocation ends or at the deadline.
    tasks.abort_all();
    let deadline_ms = hermes_service::unix_now_ms() + settings.drain_secs * 1000;
    engines.broadcast(|| EngineMsg::Drain { deadline_ms });
    // Every worker returns once its own allocations are gone or the deadline passes.
    for _ in 0..workers {
        if done_rx.recv().await.is_none() {
            break;
        }
    }
    http_task.abort();
    tracing::info!("hermes-turn stopped");
    Ok(())
}
