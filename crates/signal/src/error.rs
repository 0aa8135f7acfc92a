//! The one error type of hermes-signal (start-up and Redis failures; protocol errors go back
//! to the client on the wire as `error` messages, see [`crate::room`]).

use hermes_service::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
