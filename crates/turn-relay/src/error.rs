//! The one error type of hermes-turn (start-up and I/O failures). Protocol failures never
//! become Rust errors: the core answers them with STUN error responses.

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Secret(#[from] hermes_service::SecretError),
    #[error(transparent)]
    PeerRule(#[from] crate::peer_filter::CidrError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

impl TurnError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TurnError {
        let what = what.into();
        move |source| TurnError::Io { what, source }
    }
}
