//! Request and response bodies of the REST API (`/api/*`), and the one error body shape.
//!
//! Field names are camelCase on the wire and fixed: the web client and tests rely on them.

use serde::{Deserialize, Serialize};

use crate::ids::{CallId, ParticipantId};
use crate::token::Role;
use crate::turn_credentials::TurnCredentials;

/// `201` answer of `POST /api/call/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateCallResponse {
    pub call_id: CallId,
    /// The 6-character one-time code, plain string (it is only ever shown to its creator).
    pub code: String,
    /// The creator's join token (role offerer).
    pub token: String,
    /// When the code stops working, unix seconds.
    pub code_expires_at: u64,
}

/// Body of `POST /api/call/resolve`. The code is taken as typed and normalised by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolveRequest {
    pub code: String,
}

/// `200` answer of `POST /api/call/resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolveResponse {
    pub call_id: CallId,
    /// The joiner's token (role answerer).
    pub token: String,
}

/// `201` answer of `POST /api/call/code`: a fresh one-time code for the caller's own call.
/// Whoever resolves it joins in the role the caller does not have (the creator's new code
/// lets an answerer in; an answerer left alone hands out the offerer's seat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewCodeResponse {
    pub call_id: CallId,
    /// The 6-character one-time code, plain string (shown only to the participant who asked).
    pub code: String,
    /// When the code stops working, unix seconds.
    pub code_expires_at: u64,
}

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<TurnCredentials>,
}

/// `RTCConfiguration.iceTransportPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IceTransportPolicy {
    #[default]
    All,
    Relay,
}

/// `200` answer of `POST /api/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinResponse {
    pub call_id: CallId,
    pub participant_id: ParticipantId,
    pub role: Role,
    /// WebSocket URL of the signal service (absolute `wss://…`, or a path like `/ws` that the
    /// client resolves against the page's origin).
    pub signal_url: String,
    pub ice_servers: Vec<IceServer>,
    pub ice_transport_policy: IceTransportPolicy,
}

/// Lifecycle state of a call (the stored `status` word, also sent in [`CallStatusResponse`]).
pub use crate::call_state::CallStatus;

/// `200` answer of `GET /api/call/{callId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallStatusResponse {
    pub call_id: CallId,
    pub status: CallStatus,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, once ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ended_at: Option<u64>,
    /// Media participants (offerer, answerer) holding a seat, live or away; 0 once ended.
    pub participants: u32,
    /// Observers connected (they take no seat); 0 once ended.
    pub observers: u32,
}

/// Body of every 4xx/5xx answer: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Machine-readable, kebab-case (e.g. `code-not-found`, `rate-limited`).
    pub code: String,
    /// For people; never contains internals, tokens or codes.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}
