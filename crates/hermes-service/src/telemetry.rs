//! Process logging: JSON lines in production, readable lines in development, `RUST_LOG`
//! respected (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::HermesEnv;

/// Install the global tracing subscriber. Safe to call more than once (later calls no-op).
pub fn init(env: HermesEnv) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match env {
        HermesEnv::Production => builder.json().flatten_event(true).try_init(),
        HermesEnv::Development => builder.with_target(false).try_init(),
    };
}
