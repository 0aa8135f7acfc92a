//! Signaling messages exchanged over the WebSocket between browsers and the signal service.
//!
//! JSON objects tagged by `"type"` (kebab-case), fields camelCase. The client authenticates
//! with its first message (`join`), never in the URL. Messages relayed between the two
//! participants carry `from` and a per-call `seq`; clients acknowledge what they received
//! (`ack`) so that after a reconnect the server replays exactly what was missed.

use serde::{Deserialize, Serialize};

use crate::ids::{CallId, ParticipantId};
use crate::token::Role;

/// Largest text frame the signal service accepts (SDP with many candidates fits easily).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest sequence number: `seq` and `lastSeq` are integers from 0 to 2^53 − 1, so that
/// JavaScript clients (IEEE doubles) hold them exactly. A `join` with a larger `lastSeq` is
/// refused with `bad-message`.
pub const MAX_SEQ: u64 = (1 << 53) - 1;
/// Close code when the server restarts (RFC 6455 1012): clients reconnect and resume.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// Close code for policy violations (persistent abuse, bad auth).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close code sent to a third media participant.
pub const CLOSE_CALL_FULL: u16 = 4001;
/// Close code when a newer connection with the same identity took over.
pub const CLOSE_REPLACED: u16 = 4002;
/// Close code when the call has ended.
pub const CLOSE_CALL_ENDED: u16 = 4003;
/// Close code for a refused token.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;

/// `RTCIceCandidateInit` as the browser produces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A small periodic quality summary from a client's `getStats()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CallStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Fraction 0..1 of inbound packets lost since the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_in_kbps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_out_kbps: Option<f64>,
    /// `host`, `srflx`, `prflx` or `relay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_decoded: Option<u64>,
}

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on a connection: authenticate. `lastSeq` (resume) is the highest `seq`
    /// this participant has processed; the server replays everything after it. Numbers are
    /// per sender (`from`): a media participant receives from one sender at a time, so one
    /// number says it; a client that receives from several (an observer) sends `lastSeqs`,
    /// sender → highest `seq` processed from it, which takes precedence (a sender it does not
    /// list is replayed from its start).
    #[serde(rename_all = "camelCase")]
    Join {
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seqs: Option<std::collections::BTreeMap<ParticipantId, u64>>,
        /// The call the client means to join (from its URL); when present, a token for any
        /// other call is refused with `unauthorized`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<CallId>,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    IceCandidate {
        #[serde(deserialize_with = "crate::json::object_only")]
        candidate: IceCandidate,
    },
    /// End the call for both participants.
    Hangup,
    /// Leave without ending the call: the seat is freed at once and the others hear
    /// `peer-left {reason: "left"}`; the same token may join again while the call lasts.
    Leave,
    /// Acknowledge every relayed message up to and including `seq`.
    Ack {
        seq: u64,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
    },
    /// Quality summary, published as a log event; not relayed.
    Stats(CallStats),
}

/// A participant as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub participant_id: ParticipantId,
    pub role: Role,
    /// False while the peer is within its reconnect grace window.
    pub connected: bool,
}

/// Machine-readable signaling error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalErrorCode {
    /// The frame was not JSON or not a known message.
    BadMessage,
    /// The frame exceeded [`MAX_FRAME_BYTES`].
    TooLarge,
    /// Missing, bad or expired token, or a message before `join`.
    Unauthorized,
    /// Two media participants are already in the call.
    CallFull,
    /// Observers may not send SDP or ICE.
    Forbidden,
    /// Too many messages per second.
    RateLimited,
    /// The call has ended.
    CallEnded,
    /// Temporary server problem (e.g. Redis unreachable); retry.
    Unavailable,
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ServerMessage {
    /// Answer to `join`: who you are and who else is there.
    #[serde(rename_all = "camelCase")]
    Joined {
        call_id: CallId,
        participant_id: ParticipantId,
        role: Role,
        peers: Vec<PeerInfo>,
        /// True when this connection resumed an earlier one within the grace window.
        resumed: bool,
    },
    #[serde(rename_all = "camelCase")]
    PeerJoined {
        participant_id: ParticipantId,
        role: Role,
    },
    #[serde(rename_all = "camelCase")]
    PeerReconnecting {
        participant_id: ParticipantId,
    },
    #[serde(rename_all = "camelCase")]
    PeerResumed {
        participant_id: ParticipantId,
    },
    #[serde(rename_all = "camelCase")]
    PeerLeft {
        participant_id: ParticipantId,
        reason: String,
    },
    Offer {
        from: ParticipantId,
        seq: u64,
        sdp: String,
    },
    Answer {
        from: ParticipantId,
        seq: u64,
        sdp: String,
    },
    IceCandidate {
        from: ParticipantId,
        seq: u64,
        candidate: IceCandidate,
    },
    Hangup {
        from: ParticipantId,
        seq: u64,
    },
    /// The call is over (hangup, API end, or expiry); the server closes afterwards.
    CallEnded {
        reason: String,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
    },
    Error {
        code: SignalErrorCode,
        message: String,
    },
}

/// Messages between services on a call's pub/sub channel ([`crate::keys::call_channel`]),
/// never sent to browsers. The channel also carries [`ServerMessage`]s that signal replicas fan
/// out to their local participants; the `type` values of the two enums are disjoint.
///
/// The API publishes [`CallControl::EndCall`] after `POST /api/call/end` (having set `call:{id}`
/// `status=ended`, `endedAt`): every signal replica then sends `call-ended` to its participants of
/// that call and closes their sockets with [`CLOSE_CALL_ENDED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CallControl {
    /// End the call everywhere; `reason` is forwarded as `call-ended.reason` (e.g. `"api"`).
    EndCall { reason: String },
    /// A newer connection (`conn`) took over `participantId`: any replica holding another
    /// connection of that participant closes it with [`CLOSE_REPLACED`]. Signal-internal.
    #[serde(rename_all = "camelCase")]
    Replaced {
        participant_id: ParticipantId,
        conn: String,
    },
    /// Connection `conn` now holds `participantId`'s seat (published by the join script after
    /// the seat is written): the replica holding that connection knows from here on that
    /// anything relayed to the participant reaches it live. Signal-internal.
    #[serde(rename_all = "camelCase")]
    Seat {
        participant_id: ParticipantId,
        conn: String,
        /// When the join replaced (fenced off) an older connection of the participant:
        /// `<last number its log held>:<the new connection's first number>`. Numbers from it
        /// strictly between the two can only be the old connection's refused writes, which
        /// the receiving replicas drop.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<String>,
    },
    /// A replica's subscription check: the replica that subscribed publishes `probe` on the
    /// channel and knows it is subscribed when the probe comes back. Signal-internal.
    Probe { replica: String, probe: u64 },
}

impl CallControl {
    /// The JSON published on the call channel.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("CallControl serialises to JSON")
    }
}

impl ServerMessage {
    /// The per-call sequence number of a relayed message.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ServerMessage::Offer { seq, .. }
            | ServerMessage::Answer { seq, .. }
            | ServerMessage::IceCandidate { seq, .. }
            | ServerMessage::Hangup { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

/// Decode a client frame, refusing oversized ones before parsing.
pub fn decode_client(frame: &str) -> Result<ClientMessage, (SignalErrorCode, String)> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err((
            SignalErrorCode::TooLarge,
            format!("frame of {} bytes exceeds {MAX_FRAME_BYTES}", frame.len()),
        ));
    }
    crate::json::from_object_str(frame).map_err(|e| (SignalErrorCode::BadMessage, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decode_errors_are_classified() {
        assert_eq!(
            decode_client("{").map_err(|e| e.0),
            Err(SignalErrorCode::BadMessage)
        );
        assert_eq!(
            decode_client(r#"{"type":"warp-drive"}"#).map_err(|e| e.0),
            Err(SignalErrorCode::BadMessage)
        );
        let big = format!(
            r#"{{"type":"offer","sdp":"{}"}}"#,
            "a".repeat(MAX_FRAME_BYTES)
        );
        assert_eq!(
            decode_client(&big).map_err(|e| e.0),
            Err(SignalErrorCode::TooLarge)
        );
        assert_eq!(
            decode_client(r#"{"type":"hangup"}"#),
            Ok(ClientMessage::Hangup)
        );
        assert_eq!(
            decode_client(r#"{"type":"leave"}"#),
            Ok(ClientMessage::Leave)
        );
    }

    #[test]
    fn arrays_are_not_objects() {
        for frame in [
            r#"["hangup"]"#,
            r#"["offer","v=0"]"#,
            r#"["join","t"]"#,
            r#"["ack",1]"#,
            r#"{"type":"ice-candidate","candidate":["candidate:1",null,null,null]}"#,
            r#"{"type":"ice-candidate","candidate":["candidate:1"]}"#,
            r#""hangup""#,
            "null",
            "7",
        ] {
            assert_eq!(
                decode_client(frame).map_err(|e| e.0),
                Err(SignalErrorCode::BadMessage),
                "{frame}"
            );
        }
        assert!(decode_client(r#" {"type":"ack","seq":1}"#).is_ok());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(s in ".{0,300}") {
            let _ = decode_client(&s);
        }

        #[test]
        fn decoder_never_panics_on_json_like(
            t in prop::sample::select(vec!["join","offer","answer","ice-candidate","hangup","ack","ping","stats","x"]),
            body in "[a-zA-Z0-9\":,{}\\[\\] ]{0,80}")
        {
            let _ = decode_client(&format!(r#"{{"type":"{t}",{body}}}"#));
        }
    }
}
