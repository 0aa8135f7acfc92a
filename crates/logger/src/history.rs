//! `--since`: replay the capped `logs-history` stream, then follow live with neither
//! duplicates nor a gap at the seam.
//!
//! The seam, step by step (services PUBLISH an event, then XADD the same JSON to the stream):
//! 1. read the stream's last id `L0`;
//! 2. PSUBSCRIBE: from now on every published event also arrives live (fred buffers it);
//! 3. XRANGE from `now - since` to the end, in pages, until a short page: print each entry
//!    and remember the ones with an id after `L0` in [`SeamDedup`];
//! 4. PUBLISH a marker on the logger's private seam channel (SUBSCRIBEd on the same
//!    connection before step 3);
//! 5. follow live: a live event whose exact payload was remembered was already printed from
//!    history, so it is skipped once (a count per payload, so identical events are not
//!    merged), until the marker arrives.
//!
//! No gap: anything published after step 2 arrives live; anything XADDed before step 3's last
//! page is replayed. No duplicate: an event that arrives live was published after step 2, so
//! its XADD came after `L0` and, if it was replayed, it was remembered. Payloads are compared
//! by a 64-bit hash, the JSON as published (it carries the ms timestamp and the content).
//!
//! When the dedup ends: a replayed event was PUBLISHed before its XADD, which came before the
//! XRANGE that read it, which came before the marker's PUBLISH. Redis writes a connection's
//! messages in the order it executed the PUBLISHes, so once the marker arrives every live copy
//! of a replayed event has arrived too, however far behind the reader is. (Ending it a fixed
//! time after the live queue first ran empty, as before, let a reader lagging by more than
//! that print a late copy twice under heavy load; that time window remains only as the
//! fallback when the marker cannot be sent, e.g. an ACL without rights on the channel.)

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use fred::prelude::*;
use hermes_proto::keys::LOG_HISTORY_STREAM;

/// Entries per XRANGE page: large enough to be few round trips, small enough that live
/// messages keep flowing into fred's buffer between pages.
pub const PAGE: u64 = 1000;
/// The field holding the event JSON in each stream entry.
pub const EVENT_FIELD: &str = "event";

/// A stream entry id `ms-seq`, ordered like Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The replayed payloads a live copy of which may still arrive.
#[derive(Debug, Default)]
pub struct SeamDedup {
    counts: HashMap<u64, u32>,
}

fn payload_hash(payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

impl SeamDedup {
    /// A replayed payload that may also arrive live.
    pub fn remember(&mut self, payload: &[u8]) {
        *self.counts.entry(payload_hash(payload)).or_insert(0) += 1;
    }

    /// True (once per remembered copy) when a live payload was already printed from history.
    pub fn take(&mut self, payload: &[u8]) -> bool {
        if self.counts.is_empty() {
            return false;
        }
        let key = payload_hash(payload);
        match self.counts.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.counts.remove(&key);
                true
            }
            None => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn len(&self) -> usize {
        self.counts.values().map(|&n| n as usize).sum()
    }
}

/// One history entry: its id and the event JSON (`None` when the entry has no `event` field).
pub type Entry = (StreamId, Option<fred::bytes::Bytes>);

/// The id of the newest entry, or `0-0` when the stream is empty or absent.
pub async fn last_id(client: &Client) -> Result<StreamId, Error> {
    let newest: Vec<(String, HashMap<String, Value>)> = client
        .xrevrange_values(LOG_HISTORY_STREAM, "+", "-", Some(1))
        .await?;
    Ok(newest
        .first()
        .and_then(|(id, _)| StreamId::parse(id))
        .unwrap_or_default())
}

/// One page of entries from `start` (an XRANGE bound: `ms` or `(ms-seq` exclusive) on.
pub async fn page(client: &Client, start: &str) -> Result<Vec<Entry>, Error> {
    let raw: Vec<(String, HashMap<String, Value>)> = client
        .xrange_values(LOG_HISTORY_STREAM, start, "+", Some(PAGE))
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|(id, mut fields)| {
            let id = StreamId::parse(&id)?;
            let event = fields.remove(EVENT_FIELD).and_then(|v| v.into_bytes());
            Some((id, event))
        })
        .collect())
}

/// The XRANGE start bound after `last`.
pub fn after(last: StreamId) -> String {
    format!("({last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_and_order() {
        let a = StreamId::parse("1700000000000-0").expect("valid");
        let b = StreamId::parse("1700000000000-12").expect("valid");
        let c = StreamId::parse("1700000000001-0").expect("valid");
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-12");
        assert_eq!(after(b), "(1700000000000-12");
        assert!(StreamId::parse("nope").is_none());
        assert!(StreamId::parse("1-x").is_none());
        assert_eq!(StreamId::default(), StreamId { ms: 0, seq: 0 });
    }

    #[test]
    fn dedup_skips_each_remembered_copy_once() {
        let mut d = SeamDedup::default();
        assert!(!d.take(b"a"), "nothing remembered");
        d.remember(b"a");
        d.remember(b"a"); // two identical events were replayed
        d.remember(b"b");
        assert_eq!(d.len(), 3);
        assert!(!d.take(b"c"));
        assert!(d.take(b"a"));
        assert!(d.take(b"a"));
        assert!(!d.take(b"a"), "a third identical live event is new");
        assert!(d.take(b"b"));
        assert!(d.is_empty());
    }
}
