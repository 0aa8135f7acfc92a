//! `/healthz` for orchestrators: 200 `ok` while the process runs. Liveness only; a Redis
//! outage is shown on the console, and the logger recovers from it by itself.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use hermes_service::shutdown::CancellationToken;

use crate::config::HealthListen;
use crate::error::LoggerError;

/// Bind and serve `/healthz` until shutdown; returns the bound address (None when off, or
/// when the default address is taken).
pub async fn start(
    listen: &HealthListen,
    shutdown: CancellationToken,
) -> Result<Option<SocketAddr>, LoggerError> {
    let (addr, explicit) = match listen {
        HealthListen::Off => return Ok(None),
        HealthListen::Default(addr) => (addr.as_str(), false),
        HealthListen::Explicit(addr) => (addr.as_str(), true),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) if !explicit => {
            tracing::warn!(%addr, error = %e,
                "default /healthz address unavailable (another logger on this host?); running without it");
            return Ok(None);
        }
        Err(source) => {
            return Err(LoggerError::HealthListen {
                addr: addr.to_owned(),
                source,
            });
        }
    };
    let local = listener
        .local_addr()
        .map_err(|source| LoggerError::HealthListen {
            addr: addr.to_owned(),
            source,
        })?;
    tracing::info!("listening on {local}");
    let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "/healthz server stopped");
        }
    });
    Ok(Some(local))
}
