//! Shutdown and drain, with tokio-util's primitives: a [`CancellationToken`] that services
//! and tests cancel to ask `run()` to drain and return, and a [`TaskTracker`] that a service
//! closes and waits on to drain its in-flight work. This module adds only the signal side:
//! a future for SIGINT/SIGTERM and a token cancelled by it.

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A token cancelled by SIGINT/SIGTERM, for `main.rs`.
pub fn on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        signal().await;
        cancel.cancel();
    });
    shutdown
}
