//! The Redis key schema (seed 000 "Структура ключей"), the only place key names are spelled.
//!
//! Every key of one call carries the call id as a Redis Cluster hash tag (`{…}`, literal
//! braces), so all of them live in one cluster slot and a script may touch them together; keys
//! that no script combines with others (codes, rate limits) carry no tag. Below, `<x>` stands
//! for a value and braces are part of the key.
//!
//! | key | type | written by | lifetime |
//! |---|---|---|---|
//! | `call:{<callId>}` | hash: status, createdAt, endedAt | api, signal | call TTL (24 h) |
//! | `call:{<callId>}:peers` | hash: participantId → lease expiry (unix ms) + role | signal | renewed by live connections |
//! | `call:{<callId>}:seq` | counter of relayed messages | signal | call TTL |
//! | `call:{<callId>}:seq-epoch` | replication id of the primary that issued the last `seq` | signal | call TTL |
//! | `call:{<callId>}:log` | capped stream of the call's relayed messages (entry id `seq-1`; fields `f` sender, `m` message), read by a resuming participant | signal | renewed by live connections |
//! | `call:{<callId>}:fences` | hash: participantId → the newest fences of its sender log (`stored:first,…`), written when a join replaces a connection | signal | call TTL from the last takeover |
//! | `call:{<callId>}:acks` | hash: participantId → highest `seq` acknowledged (trims the log) | signal | call TTL |
//! | `call:{<callId>}:inbox:<participantId>` | per-participant stream of messages, before issue 23 (no longer written) | — | — |
//! | `call:{<callId>}:events` | pub/sub channel of the call (same slot: sharded, `SPUBLISH`/`SSUBSCRIBE`, on a cluster) | api, signal | — |
//! | `otc:<code>` | string: callId, or `callId|offerer` for a code that hands out the offerer's seat | api | 15 min, deleted on use |
//! | `rl:ip:<ip>:<bucket>` | counter | api | window |
//! | `rl:code:<hash>` | counter | api | window |
//! | `rl:call:{<callId>}:<bucket>` | counter | api | window |
//! | `logs:<service>` | pub/sub channel of [`crate::LogEvent`] JSON | all | — |
//! | `logs-history` | capped stream of the same events | all | capped length |
//!
//! The schema before hash tags spelled call keys `call:<callId>…`; docs/operations.md
//! ("Redis Cluster") says what switching means for calls in progress.

use crate::ids::{CallId, ParticipantId};

/// Prefix of the pub/sub channels that carry log events; the logger PSUBSCRIBEs `logs:*`.
pub const LOG_CHANNEL_PATTERN: &str = "logs:*";
/// Capped stream holding recent log events for `hermes-logger --since`.
/// Deliberately outside the `logs:` prefix: it is a key, not a channel.
pub const LOG_HISTORY_STREAM: &str = "logs-history";
/// Approximate cap (`XADD MAXLEN ~`) of the history stream.
pub const LOG_HISTORY_MAXLEN: u64 = 100_000;

pub fn call(call: &CallId) -> String {
    format!("call:{{{call}}}")
}

/// Hash of a call's seats: participant id → [`crate::SeatEntry`] (`role|state|expiryMs|conn`),
/// written by hermes-signal, counted by hermes-api.
pub fn call_peers(call: &CallId) -> String {
    format!("call:{{{call}}}:peers")
}

/// The per-call counter of issue 23's first two rounds (numbers are per sender since, kept by
/// each connection); nothing writes it any more.
pub fn call_seq(call: &CallId) -> String {
    format!("call:{{{call}}}:seq")
}

/// Replication id of the Redis primary of the call's last join: the first join on another
/// primary (after a failover) lifts the new connection's numbering past numbers the old one
/// may have issued without replicating them.
pub fn call_seq_epoch(call: &CallId) -> String {
    format!("call:{{{call}}}:seq-epoch")
}

/// The per-participant resume inbox of hermes-signal before issue 23, replaced by
/// [`call_log`]; nothing writes it any more.
pub fn call_inbox(call: &CallId, participant: &ParticipantId) -> String {
    format!("{}{participant}", call_inbox_prefix(call))
}

/// What every inbox key of the call starts with (the participant id follows), for scripts
/// that find a call's inboxes from its seats.
pub fn call_inbox_prefix(call: &CallId) -> String {
    format!("call:{{{call}}}:inbox:")
}

/// The call-wide resume log of issue 23's first two rounds (one entry per message, numbered by
/// the call's counter [`call_seq`]), replaced by the per-sender logs ([`call_sender_log`]);
/// nothing writes it any more, ending a call still deletes it.
pub fn call_log(call: &CallId) -> String {
    format!("call:{{{call}}}:log")
}

/// One sender's resume log in a call (issue 23, third round): a capped stream of the messages
/// `participant` relayed, entry id = the message's `seq` (`seq-0`, numbered per sender), one
/// field `m` = the message text. The stream's last id is the fence: a connection that was
/// replaced finds its next id refused. Readers are every other participant of the call.
pub fn call_sender_log(call: &CallId, participant: &ParticipantId) -> String {
    format!("{}{participant}", call_sender_log_prefix(call))
}

/// What every sender log key of the call starts with (the participant id follows), for
/// scripts that find a call's logs from [`call_senders`].
pub fn call_sender_log_prefix(call: &CallId) -> String {
    format!("call:{{{call}}}:log:")
}

/// Set of the participant ids that have a sender log in the call ([`call_sender_log`]): the
/// logs a catch-up reads, an ack trims and the end of the call deletes.
pub fn call_senders(call: &CallId) -> String {
    format!("call:{{{call}}}:senders")
}

/// Hash of the call's fences (docs/signal.md, "The receivers' side of the fence"): participant
/// id → the newest fences of its sender log, oldest first, `<stored>:<first>,…`. A join that
/// replaces a connection writes one (numbers strictly between the last one its log held and the
/// new connection's first are that connection's refused writes, which its relay pipeline
/// publishes all the same) in the same script run as the `seat` marker that carries it, and
/// every join returns them, so a replica that starts following the call later drops those
/// writes too. Deleted with the seats when the call ends.
pub fn call_fences(call: &CallId) -> String {
    format!("call:{{{call}}}:fences")
}

/// Hash of each participant's highest acknowledged `seq`: the call's log is trimmed up to the
/// lowest of its seated participants.
pub fn call_acks(call: &CallId) -> String {
    format!("call:{{{call}}}:acks")
}

/// Pub/sub channel on which signal replicas fan out a call's messages.
pub fn call_channel(call: &CallId) -> String {
    format!("call:{{{call}}}:events")
}

/// `code` must be the normalised code (see [`crate::OneTimeCode`]).
pub fn otc(code: &crate::OneTimeCode) -> String {
    format!("otc:{code}")
}

/// Rate-limit counter for a client IP; `bucket` names the limit (e.g. `req`, `resolve`).
pub fn rl_ip(ip: &std::net::IpAddr, bucket: &str) -> String {
    format!("rl:ip:{ip}:{bucket}")
}

/// Rate-limit counter for a code, keyed by its keyed hash, never the code itself.
pub fn rl_code(code_hash: &str) -> String {
    format!("rl:code:{code_hash}")
}

/// Rate-limit counter for a call; `bucket` names the limit (e.g. `newcode`).
pub fn rl_call(call: &CallId, bucket: &str) -> String {
    format!("rl:call:{{{call}}}:{bucket}")
}

/// Pub/sub channel for a service's log events.
pub fn log_channel(service: &str) -> String {
    format!("logs:{service}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn key_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let c = CallId::random(&mut rng);
        assert_eq!(call(&c), format!("call:{{{c}}}"));
        assert_eq!(call_peers(&c), format!("call:{{{c}}}:peers"));
        assert_eq!(call_seq(&c), format!("call:{{{c}}}:seq"));
        assert_eq!(call_seq_epoch(&c), format!("call:{{{c}}}:seq-epoch"));
        assert_eq!(call_channel(&c), format!("call:{{{c}}}:events"));
        let p = ParticipantId::random(&mut rng);
        assert_eq!(call_inbox(&c, &p), format!("call:{{{c}}}:inbox:{p}"));
        assert_eq!(call_inbox(&c, &p), format!("{}{p}", call_inbox_prefix(&c)));
        assert_eq!(call_log(&c), format!("call:{{{c}}}:log"));
        assert_eq!(call_acks(&c), format!("call:{{{c}}}:acks"));
        assert_eq!(call_sender_log(&c, &p), format!("call:{{{c}}}:log:{p}"));
        assert_eq!(
            call_sender_log(&c, &p),
            format!("{}{p}", call_sender_log_prefix(&c))
        );
        assert_eq!(call_senders(&c), format!("call:{{{c}}}:senders"));
        assert_eq!(call_fences(&c), format!("call:{{{c}}}:fences"));
        let code = crate::OneTimeCode::parse("abcdef").expect("valid");
        assert_eq!(otc(&code), "otc:ABCDEF");
        let ip: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(rl_ip(&ip, "req"), "rl:ip:192.0.2.1:req");
        assert_eq!(rl_code("ab12"), "rl:code:ab12");
        assert_eq!(rl_call(&c, "newcode"), format!("rl:call:{{{c}}}:newcode"));
        assert_eq!(log_channel("api"), "logs:api");
        assert!(!LOG_HISTORY_STREAM.starts_with("logs:"));
    }

    /// The slot Redis Cluster computes for a key: CRC16 (XMODEM) of the hash tag when the key
    /// has a non-empty `{…}`, else of the whole key, modulo 16384.
    fn cluster_slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = key.find('{').and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &bytes[open + 1..close])
        });
        let mut crc: u16 = 0;
        for &b in tagged.unwrap_or(bytes) {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn every_key_of_a_call_lives_in_one_cluster_slot() {
        // Known slots from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(cluster_slot("foo"), 12182);
        assert_eq!(cluster_slot("{user1000}.following"), 3443);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let c = CallId::random(&mut rng);
            let p = ParticipantId::random(&mut rng);
            let slot = cluster_slot(&call(&c));
            for key in [
                call_peers(&c),
                call_seq(&c),
                call_seq_epoch(&c),
                call_inbox(&c, &p),
                call_log(&c),
                call_sender_log(&c, &p),
                call_senders(&c),
                call_fences(&c),
                call_acks(&c),
                call_channel(&c),
                rl_call(&c, "newcode"),
            ] {
                assert_eq!(cluster_slot(&key), slot, "{key}");
            }
        }
    }
}
