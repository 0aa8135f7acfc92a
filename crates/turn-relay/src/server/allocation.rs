//! Allocation state and the two budgets that bound it: the per-allocation token buckets
//! (bandwidth, checked per relayed packet, no lock) and the process-wide allocation ledger
//! (per-user and total quotas, locked only when an allocation is created or removed).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};

use stun::agent::TransactionId;

use super::{Client, Millis};
use crate::wire;

/// A channel binding (RFC 8656 §12): number, peer, expiry.
#[derive(Debug)]
pub(super) struct Channel {
    pub(super) number: u16,
    pub(super) peer: SocketAddr,
    pub(super) expires: Millis,
}

/// Where an allocation is in its life.
#[derive(Debug)]
pub(super) enum State {
    /// Relay socket being bound; the Allocate response is sent when it is.
    Opening {
        txid: TransactionId,
        attempts: u8,
    },
    Active,
}

/// Token bucket in bytes, refilled per millisecond.
#[derive(Debug)]
pub(super) struct Bucket {
    pub(super) tokens: u64,
    pub(super) last: Millis,
}

/// One allocation: its client, credentials, relay address, permissions, channels and
/// budgets. The slot index in `Server::allocs` is its [`RelayId`](super::RelayId).
#[derive(Debug)]
pub(super) struct Allocation {
    pub(super) client: Client,
    pub(super) username: Box<str>,
    pub(super) user: Box<str>,
    pub(super) key: [u8; 16],
    pub(super) public: SocketAddr,
    pub(super) bind: SocketAddr,
    pub(super) state: State,
    pub(super) lifetime: u32,
    pub(super) expires: Millis,
    pub(super) allocate_txid: TransactionId,
    pub(super) allocate_response: Vec<u8>,
    /// Peer IP and expiry (ms). Few entries: a linear scan beats hashing.
    pub(super) perms: Vec<(IpAddr, Millis)>,
    pub(super) channels: Vec<Channel>,
    pub(super) up: Bucket,
    pub(super) down: Bucket,
    pub(super) packets: u64,
    pub(super) bytes: u64,
    /// RFC 6062 TCP relay (its relay socket is a TCP listener).
    pub(super) tcp: bool,
}

impl Allocation {
    #[inline]
    pub(super) fn permitted(&self, ip: IpAddr, now: Millis) -> bool {
        self.perms.iter().any(|(p, exp)| *p == ip && *exp > now)
    }
}

/// Burst allowance: one second of traffic at `max_bps` bytes/s (at least one full-size datagram).
pub(super) fn bucket_capacity(max_bps: u64) -> u64 {
    max_bps.max(wire::MAX_PAYLOAD as u64)
}

/// Take `len` bytes from a token bucket refilled at `max_bps`; `true` when allowed.
#[inline]
pub(super) fn take(b: &mut Bucket, max_bps: u64, len: usize, now: Millis) -> bool {
    if max_bps == 0 {
        return true;
    }
    let elapsed = now.since(b.last);
    if elapsed > 0 {
        let refill = elapsed.saturating_mul(max_bps) / 1000;
        b.tokens = (b.tokens.saturating_add(refill)).min(bucket_capacity(max_bps));
        b.last = now;
    }
    if b.tokens >= len as u64 {
        b.tokens -= len as u64;
        true
    } else {
        false
    }
}

/// Allocation counts shared by every worker of one process, so the total and per-user quotas
/// hold across SO_REUSEPORT workers. Touched only when an allocation is created or removed,
/// never on the data path.
#[derive(Debug, Default)]
pub struct AllocationLedger {
    inner: Mutex<LedgerCounts>,
}

#[derive(Debug, Default)]
struct LedgerCounts {
    total: u32,
    per_user: HashMap<Box<str>, u32>,
}

/// Which quota refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    Total,
    User,
}

impl AllocationLedger {
    /// Count one more allocation for `user` unless a quota (0 = unlimited) is reached.
    pub fn reserve(
        &self,
        user: &str,
        user_quota: u32,
        total_quota: u32,
    ) -> Result<(), QuotaRefusal> {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if total_quota > 0 && c.total >= total_quota {
            return Err(QuotaRefusal::Total);
        }
        let n = c.per_user.get(user).copied().unwrap_or(0);
        if user_quota > 0 && n >= user_quota {
            return Err(QuotaRefusal::User);
        }
        c.total += 1;
        *c.per_user.entry(user.into()).or_insert(0) += 1;
        Ok(())
    }

    /// Give back what [`reserve`](Self::reserve) counted.
    pub fn release(&self, user: &str) {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_user.remove(user);
            }
        }
    }

    /// Allocations counted, all workers together.
    pub fn total(&self) -> u32 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}
