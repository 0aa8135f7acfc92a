//! The one error type of hermes-logger: everything that stops the logger from starting or
//! running. Per-event problems (malformed payloads, a failed file write) are not errors: they
//! are shown on the console and the logger keeps going.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// A flag or environment variable has a value we cannot use.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The log file (or its directory) cannot be created or opened.
    #[error(
        "cannot open log file {path}: {source} (set LOGGER_FILE / --file to a writable path, or --no-file)"
    )]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The health listener cannot bind.
    #[error("cannot listen on {addr} for /healthz: {source} (set LOGGER_HEALTH_LISTEN, or `off`)")]
    HealthListen {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// Building the Redis client failed (bad URL and the like); connection loss is not an error.
    #[error("Redis: {0}")]
    Redis(#[from] fred::error::Error),

    /// Writing to the console failed for a reason other than a closed pipe.
    #[error("writing to stdout: {0}")]
    Stdout(#[source] std::io::Error),
}
