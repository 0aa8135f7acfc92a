//! TURNS certificates: loaded from PEM files at start, reloaded without restart when the
//! files change (checked every few seconds) or on SIGHUP. A broken new pair is logged and the
//! old one kept, so a half-written renewal never takes the listener down.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::error::TurnError;

/// How often the files' modification times are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

pub struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(TlsAcceptor, Option<SystemTime>)>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

pub fn load(cert: &Path, key: &Path) -> Result<TlsAcceptor, TurnError> {
    let err =
        |what: &str, p: &Path, e: String| TurnError::Tls(format!("{what} {}: {e}", p.display()));
    let certs = {
        let f = std::fs::File::open(cert).map_err(|e| err("reading", cert, e.to_string()))?;
        rustls_pemfile::certs(&mut BufReader::new(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("parsing", cert, e.to_string()))?
    };
    if certs.is_empty() {
        return Err(err("parsing", cert, "no certificate".into()));
    }
    let key_der = {
        let f = std::fs::File::open(key).map_err(|e| err("reading", key, e.to_string()))?;
        rustls_pemfile::private_key(&mut BufReader::new(f))
            .map_err(|e| err("parsing", key, e.to_string()))?
            .ok_or_else(|| err("parsing", key, "no private key".into()))?
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TurnError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TurnError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl TlsReloader {
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<Self>, TurnError> {
        let acceptor = load(&cert, &key)?;
        let stamp = mtime(&cert).max(mtime(&key));
        Ok(Arc::new(Self {
            cert,
            key,
            current: RwLock::new((acceptor, stamp)),
        }))
    }

    /// The acceptor for a new connection (one read lock per connection, never per packet).
    pub fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(g) => g.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        }
    }

    /// Reload when the files changed (or always with `force`); returns whether it did.
    pub fn reload(&self, force: bool) -> bool {
        let stamp = mtime(&self.cert).max(mtime(&self.key));
        let old = match self.current.read() {
            Ok(g) => g.1,
            Err(p) => p.into_inner().1,
        };
        if !force && stamp == old {
            return false;
        }
        match load(&self.cert, &self.key) {
            Ok(acceptor) => {
                if let Ok(mut g) = self.current.write() {
                    *g = (acceptor, stamp);
                }
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one");
                false
            }
        }
    }

    /// Watch for changes and SIGHUP until aborted.
    pub async fn watch(self: Arc<Self>) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            #[cfg(unix)]
            let force = match hup.as_mut() {
                Some(h) => tokio::select! {
                    _ = tick.tick() => false,
                    _ = h.recv() => true,
                },
                None => {
                    tick.tick().await;
                    false
                }
            };
            #[cfg(not(unix))]
            let force = {
                tick.tick().await;
                false
            };
            self.reload(force);
        }
    }
}
