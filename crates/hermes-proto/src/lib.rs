//! Hermes wire types: the one place where anything that crosses a process boundary is defined.
//!
//! Services (api, signal, turn-relay, logger) and the web client agree on these shapes; the
//! golden fixtures under `fixtures/` pin their JSON form for both Rust and JavaScript tests.
//! Nothing here does I/O: time and randomness are parameters.

pub mod api;
pub mod call_state;
pub mod code;
pub mod error;
pub mod ids;
pub mod json;
pub mod keys;
pub mod log_event;
pub mod signal;
pub mod token;
pub mod turn_credentials;

pub use call_state::{CallStatus, SeatEntry};
pub use code::OneTimeCode;
pub use error::ProtoError;
pub use ids::{CallId, ParticipantId};
pub use log_event::{CallEvent, LogEvent, LogLevel};
pub use token::{JoinClaims, JoinTokenKeys, Role};
pub use turn_credentials::TurnCredentials;
