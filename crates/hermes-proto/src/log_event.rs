//! The call log event every service publishes on `logs:{service}` and appends to the
//! `logs-history` stream; the logger renders it.
//!
//! Events name lifecycle steps (`call.created`, `peer.joined`, `turn.allocation.created`, …),
//! never carry tokens, codes or TURN passwords, and are emitted per lifecycle step, not per packet.
//! [`CallEvent`] has one variant per event with its fields, so every service spells an event
//! the same way. Participant ids are always the full id (never `short()`), in every service,
//! so one participant's api, signal and turn events can be matched up.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{CallId, ParticipantId};
use crate::signal::SignalErrorCode;
use crate::token::Role;

/// Severity of a log event, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            other => Err(format!(
                "unknown level {other:?} (debug, info, warn, error)"
            )),
        }
    }
}

/// One call log event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEvent {
    /// Unix milliseconds.
    pub ts: u64,
    /// Publishing service: `api`, `signal`, `turn`, `logger`.
    pub service: String,
    pub level: LogLevel,
    /// Dotted event name, e.g. `call.created`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<CallId>,
    /// Event-specific fields (a JSON object), or null.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl LogEvent {
    pub fn new(ts: u64, service: &str, level: LogLevel, event: &str) -> Self {
        Self {
            ts,
            service: service.to_owned(),
            level,
            event: event.to_owned(),
            call_id: None,
            detail: serde_json::Value::Null,
        }
    }

    pub fn call(mut self, call: &CallId) -> Self {
        self.call_id = Some(call.clone());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The pub/sub channel this event goes to.
    pub fn channel(&self) -> String {
        crate::keys::log_channel(&self.service)
    }
}

/// Every call log event a service publishes, one variant each, with its fields. Serialized as
/// the event's name and its `detail` object (see [`CallEvent::into_log_event`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "detail", rename_all_fields = "camelCase")]
pub enum CallEvent {
    /// api: a call was created; its creator holds the offerer seat.
    #[serde(rename = "call.created")]
    CallCreated {
        participant_id: ParticipantId,
        role: Role,
    },
    /// api: a one-time code was traded for a join token.
    #[serde(rename = "call.resolved")]
    CallResolved {
        participant_id: ParticipantId,
        role: Role,
    },
    /// api: a participant fetched its join details (ICE servers, TURN credentials).
    #[serde(rename = "call.joined")]
    CallJoined {
        participant_id: ParticipantId,
        role: Role,
    },
    /// api (by a participant, `reason` `api`) or signal (`hangup`): the call ended.
    #[serde(rename = "call.ended")]
    CallEnded {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        participant_id: Option<ParticipantId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        reason: String,
    },
    /// api: a participant minted a fresh one-time code for its call.
    #[serde(rename = "code.minted")]
    CodeMinted {
        participant_id: ParticipantId,
        role: Role,
    },
    /// api: a resolve named an unknown or used code.
    #[serde(rename = "code.not-found")]
    CodeNotFound {},
    /// api: a request was refused with 429.
    #[serde(rename = "ratelimit.hit")]
    RateLimitHit { limit: String, route: String },
    /// signal: a participant took its seat.
    #[serde(rename = "peer.joined")]
    PeerJoined {
        participant_id: ParticipantId,
        role: Role,
        resumed: bool,
        replayed: u64,
    },
    /// signal: a participant took its seat again and resumed from the call's log.
    #[serde(rename = "peer.resumed")]
    PeerResumed {
        participant_id: ParticipantId,
        role: Role,
        resumed: bool,
        replayed: u64,
    },
    /// signal: a participant's connection ended (`final`: it left for good).
    #[serde(rename = "peer.left")]
    PeerLeft {
        participant_id: ParticipantId,
        relayed: u64,
        delivered: u64,
        #[serde(rename = "final")]
        final_: bool,
    },
    /// signal: a join was refused.
    #[serde(rename = "peer.refused")]
    PeerRefused {
        code: SignalErrorCode,
        reason: String,
    },
    /// signal: a connection was closed for abuse.
    #[serde(rename = "peer.abuse")]
    PeerAbuse { reason: String },
    /// signal: a client's connection statistics (the client's own fields).
    #[serde(rename = "call.stats")]
    CallStats(serde_json::Map<String, serde_json::Value>),
    /// turn: an allocation was created. `participant_id` is the user part of the TURN REST
    /// username, which the api mints from the participant's full id.
    #[serde(rename = "turn.allocation.created")]
    TurnAllocationCreated {
        participant_id: String,
        relay_port: u16,
        lifetime: u32,
    },
    /// turn: an allocation ended.
    #[serde(rename = "turn.allocation.ended")]
    TurnAllocationEnded {
        participant_id: String,
        relay_port: u16,
        reason: String,
        packets: u64,
        bytes: u64,
    },
    /// turn: an allocation request was refused.
    #[serde(rename = "turn.allocation.refused")]
    TurnAllocationRefused { code: u16, reason: String },
}

impl CallEvent {
    /// The event's severity: refusals and abuse warn, the rest inform.
    pub fn level(&self) -> LogLevel {
        match self {
            CallEvent::RateLimitHit { .. }
            | CallEvent::PeerRefused { .. }
            | CallEvent::PeerAbuse { .. }
            | CallEvent::TurnAllocationRefused { .. } => LogLevel::Warn,
            _ => LogLevel::Info,
        }
    }

    /// The [`LogEvent`] a service publishes for this event.
    pub fn into_log_event(self, ts: u64, service: &str, call: Option<&CallId>) -> LogEvent {
        let level = self.level();
        let (event, detail) = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut tagged)) => (
                tagged.remove("event"),
                tagged.remove("detail").unwrap_or_default(),
            ),
            _ => (None, serde_json::Value::Null),
        };
        let name = event
            .as_ref()
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown");
        let mut log = LogEvent::new(ts, service, level, name).detail(detail);
        log.call_id = call.cloned();
        log
    }

    /// The typed event inside a [`LogEvent`] (None for events this enum does not know, such
    /// as the logger's own).
    pub fn from_log_event(log: &LogEvent) -> Option<Self> {
        serde_json::from_value(serde_json::json!({ "event": log.event, "detail": log.detail })).ok()
    }
}

#[cfg(test)]
mod call_event_tests {
    use super::*;

    fn pid() -> ParticipantId {
        ParticipantId::parse("p0p0p0p0p0p0p0p0p0p0p0p0p0").expect("id")
    }

    fn every_event() -> Vec<CallEvent> {
        let p = pid;
        vec![
            CallEvent::CallCreated {
                participant_id: p(),
                role: Role::Offerer,
            },
            CallEvent::CallResolved {
                participant_id: p(),
                role: Role::Answerer,
            },
            CallEvent::CallJoined {
                participant_id: p(),
                role: Role::Observer,
            },
            CallEvent::CallEnded {
                participant_id: Some(p()),
                role: Some(Role::Offerer),
                reason: "api".into(),
            },
            CallEvent::CallEnded {
                participant_id: None,
                role: None,
                reason: "hangup".into(),
            },
            CallEvent::CodeMinted {
                participant_id: p(),
                role: Role::Answerer,
            },
            CallEvent::CodeNotFound {},
            CallEvent::RateLimitHit {
                limit: "req".into(),
                route: "/api/call/create".into(),
            },
            CallEvent::PeerJoined {
                participant_id: p(),
                role: Role::Offerer,
                resumed: false,
                replayed: 0,
            },
            CallEvent::PeerResumed {
                participant_id: p(),
                role: Role::Offerer,
                resumed: true,
                replayed: 3,
            },
            CallEvent::PeerLeft {
                participant_id: p(),
                relayed: 4,
                delivered: 5,
                final_: true,
            },
            CallEvent::PeerRefused {
                code: SignalErrorCode::CallFull,
                reason: "full".into(),
            },
            CallEvent::PeerAbuse {
                reason: "flood".into(),
            },
            CallEvent::CallStats(serde_json::Map::from_iter([(
                "rttMs".to_owned(),
                serde_json::json!(12),
            )])),
            CallEvent::TurnAllocationCreated {
                participant_id: p().to_string(),
                relay_port: 50000,
                lifetime: 600,
            },
            CallEvent::TurnAllocationEnded {
                participant_id: p().to_string(),
                relay_port: 50000,
                reason: "expired".into(),
                packets: 1,
                bytes: 2,
            },
            CallEvent::TurnAllocationRefused {
                code: 486,
                reason: "quota".into(),
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_its_log_event_json() {
        let call = CallId::parse("c0ffee0c0ffee0c0ffee0c0ffe").expect("id");
        for event in every_event() {
            let log = event.clone().into_log_event(1, "api", Some(&call));
            assert_ne!(log.event, "unknown");
            let json = serde_json::to_string(&log).expect("json");
            let back: LogEvent = serde_json::from_str(&json).expect("LogEvent");
            assert_eq!(back.call_id.as_ref(), Some(&call));
            assert_eq!(CallEvent::from_log_event(&back), Some(event), "{json}");
        }
    }

    #[test]
    fn participant_ids_are_full_in_every_event() {
        for event in every_event() {
            let log = event.into_log_event(1, "signal", None);
            if let Some(id) = log.detail.get("participantId") {
                assert_eq!(id, pid().as_str(), "{}: {}", log.event, log.detail);
            }
        }
    }

    #[test]
    fn golden_wire_form() {
        let log = CallEvent::PeerLeft {
            participant_id: pid(),
            relayed: 4,
            delivered: 5,
            final_: false,
        }
        .into_log_event(7, "signal", None);
        assert_eq!(
            serde_json::to_value(&log).expect("json"),
            serde_json::json!({
                "ts": 7, "service": "signal", "level": "info", "event": "peer.left",
                "detail": {"participantId": "p0p0p0p0p0p0p0p0p0p0p0p0p0", "relayed": 4, "delivered": 5, "final": false}
            })
        );
        let warn = CallEvent::RateLimitHit {
            limit: "code".into(),
            route: "/api/call/resolve".into(),
        };
        assert_eq!(warn.level(), LogLevel::Warn);
    }
}
