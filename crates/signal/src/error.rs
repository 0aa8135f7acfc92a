//! The errors of hermes-signal: [`SignalError`] for start-up and serving, [`HubError`] for the
//! hub's Redis work (protocol errors go back to the client on the wire as `error` messages, see
//! [`crate::room`]).

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
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// Why a [`crate::hub::Hub`] call failed: Redis itself, or a condition of the hub's own (it
/// stopped, a subscription was not confirmed, a script answered something unexpected). Clone,
/// so one failed batch answers every relay in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("hub stopped")]
    Stopped,
    #[error("the call's subscription was not confirmed in time")]
    SubscribeTimeout,
    #[error("unexpected reply from the {0} script")]
    BadReply(&'static str),
    /// A script refused the operation with a message of its own (e.g. its log write failed).
    #[error("script: {0}")]
    Script(String),
    #[error("message is not relayable (no seq)")]
    NotRelayable,
    #[error("encoding: {0}")]
    Encode(String),
}
