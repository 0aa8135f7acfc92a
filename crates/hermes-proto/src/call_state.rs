//! The values a call keeps in Redis, as types: a seat in `call:{id}:peers` ([`SeatEntry`]) and
//! the `status` field of `call:{id}` ([`CallStatus`]).
//!
//! hermes-api writes a call as `created`; hermes-signal's Lua scripts take seats, mark them away,
//! free them and end the call; the api counts seats and reads the status. Both sides read and
//! write these strings, so their format is defined once, here. The presence rule
//! ([`SeatEntry::presence`]) is the one the scripts apply atomically inside Redis; the unit
//! tests pin it and signal's integration tests check that the scripts agree.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Role;

/// One seat in `call:{id}:peers`, stored as `role|state|expiryMs|conn`: state `L` means a live
/// connection renews the lease until `expiryMs`; `A` means the participant is away
/// (disconnected) and may resume until `expiryMs`. `conn` is the connection id that holds the
/// seat (it may itself contain `|`: it is the last field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatEntry {
    pub role: Role,
    pub live: bool,
    pub expiry_ms: u64,
    pub conn: String,
}

/// What a seat means at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// A live connection renews the lease.
    Live,
    /// Disconnected (or its replica stopped renewing) but within the grace window: seat held.
    Away,
    /// Grace window over: the seat is free.
    Gone,
}

impl SeatEntry {
    /// The stored letter of a live seat.
    pub const LIVE: &'static str = "L";
    /// The stored letter of an away seat.
    pub const AWAY: &'static str = "A";

    /// Parse a stored value; None for anything not in the format.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.splitn(4, '|');
        let role = match parts.next()? {
            "offerer" => Role::Offerer,
            "answerer" => Role::Answerer,
            "observer" => Role::Observer,
            _ => return None,
        };
        let live = match parts.next()? {
            Self::LIVE => true,
            Self::AWAY => false,
            _ => return None,
        };
        let expiry_ms = parts.next()?.parse().ok()?;
        let conn = parts.next()?.to_owned();
        Some(Self {
            role,
            live,
            expiry_ms,
            conn,
        })
    }

    /// The stored value.
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.role,
            if self.live { Self::LIVE } else { Self::AWAY },
            self.expiry_ms,
            self.conn
        )
    }

    /// The presence rule: a live lease that lapsed (its replica died) still holds the seat for
    /// `grace_ms` after the lapse; an away entry holds it until its expiry.
    pub fn presence(&self, now_ms: u64, grace_ms: u64) -> Presence {
        if self.live && self.expiry_ms >= now_ms {
            Presence::Live
        } else if (self.live && self.expiry_ms.saturating_add(grace_ms) >= now_ms)
            || (!self.live && self.expiry_ms >= now_ms)
        {
            Presence::Away
        } else {
            Presence::Gone
        }
    }
}

/// The `status` field of `call:{id}`, also the `status` of the api's call status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    /// Created by the api; nobody has joined signaling yet.
    Created,
    /// Someone joined (set by signal's join script, kept by its lease tick).
    Active,
    /// Ended by the api or by a participant; `endedAt` is set beside it.
    Ended,
}

impl CallStatus {
    pub const ALL: [CallStatus; 3] = [CallStatus::Created, CallStatus::Active, CallStatus::Ended];

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Created => "created",
            CallStatus::Active => "active",
            CallStatus::Ended => "ended",
        }
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored status word that is none of [`CallStatus`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown call status {0:?}")]
pub struct UnknownCallStatus(pub String);

impl FromStr for CallStatus {
    type Err = UnknownCallStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallStatus::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCallStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn seat_entries_round_trip_and_reject_garbage() {
        let e = SeatEntry {
            role: Role::Answerer,
            live: true,
            expiry_ms: T0,
            conn: "c1|x".into(),
        };
        assert_eq!(e.encode(), format!("answerer|L|{T0}|c1|x"));
        assert_eq!(SeatEntry::parse(&e.encode()), Some(e));
        for bad in [
            "",
            "offerer",
            "offerer|L",
            "offerer|L|1",
            "king|L|1|c",
            "offerer|Z|1|c",
            "offerer|L|x|c",
            "offerer|L|-1|c",
        ] {
            assert_eq!(SeatEntry::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn presence_follows_lease_then_grace() {
        let grace = 30_000;
        let live = SeatEntry {
            role: Role::Offerer,
            live: true,
            expiry_ms: T0,
            conn: "c".into(),
        };
        assert_eq!(live.presence(T0, grace), Presence::Live);
        assert_eq!(live.presence(T0 + 1, grace), Presence::Away, "lease lapsed");
        assert_eq!(live.presence(T0 + grace, grace), Presence::Away);
        assert_eq!(live.presence(T0 + grace + 1, grace), Presence::Gone);
        let away = SeatEntry {
            live: false,
            ..live.clone()
        };
        assert_eq!(away.presence(T0 - 5, grace), Presence::Away);
        assert_eq!(away.presence(T0 + 1, grace), Presence::Gone);
    }

    #[test]
    fn call_status_words() {
        for s in CallStatus::ALL {
            assert_eq!(s.as_str().parse::<CallStatus>(), Ok(s));
        }
        assert_eq!(
            ["created", "active", "ended"].map(|w| w.parse::<CallStatus>().unwrap()),
            CallStatus::ALL
        );
        for s in CallStatus::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""), "serde and the stored word agree");
        }
        assert_eq!(
            "Ended".parse::<CallStatus>(),
            Err(UnknownCallStatus("Ended".into()))
        );
    }
}
