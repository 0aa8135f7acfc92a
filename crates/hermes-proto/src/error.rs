//! The one error enum of hermes-proto: everything that can be wrong with a wire value.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtoError {
    #[error("a code has {expected} characters from 0-9 and A-Z without I, L, O, U; got {got:?}")]
    BadCode { expected: usize, got: String },
    #[error("malformed id: {0}")]
    BadId(String),
    #[error("invalid token: {0}")]
    BadToken(&'static str),
    #[error("token expired")]
    TokenExpired,
    #[error("malformed TURN username: expected \"<unix-expiry>:<user>\"")]
    BadTurnUsername,
    #[error("TURN credentials expired")]
    TurnCredentialsExpired,
    #[error("TURN password does not match")]
    TurnPasswordMismatch,
}
