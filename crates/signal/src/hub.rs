//! The Hub API, the Redis side of signaling: seats and presence, sequencing, the call's resume
//! log, and starting the pub/sub fan-out ([`crate::router`]) so any number of replicas act as one.
//!
//! Every state change that needs atomicity is one Lua script (Redis runs it alone; the
//! sources are `src/lua/*.lua`, compiled in with `include_str!`, each with its KEYS/ARGV
//! contract on its constant here):
//! - `JOIN`: admit or refuse a seat (at most two media participants, see
//!   [`crate::room::admits`]), write the lease, and publish
//!   `peer-joined` / `peer-resumed` / `replaced`. Observers are nobody's peer: no script
//!   publishes a presence event about an observer, and snapshots list media participants only.
//!   The join also sets where the new connection's numbering starts and fences off a connection
//!   it replaces (below).
//! - Relays run **no script**: each sender numbers its own messages (`seq`, kept in the
//!   session's memory from the floor its join returned) and its relay is two plain commands
//!   in one pipeline (one round trip), `XADD <sender's log> NOMKSTREAM <seq>-0 m <message>`
//!   then `PUBLISH` (`SPUBLISH` on a cluster). The replica pipelines the relays its sessions
//!   queued while earlier batches were in flight ([`RelayRunner`]); a session has one relay in
//!   flight at a time, so a sender's order holds. The sender's log is the fence: a join that
//!   replaces a connection moves the log's last id past that connection's next number, so its
//!   XADD is refused; the join's `seat` marker carries that fence (`<last stored>:<first new>`)
//!   on the channel before any PUBLISH of a refused write, and every receiving router drops the
//!   numbers between ([`crate::router`]). The join keeps the fence with the seats too
//!   (`call:{id}:fences`) and every join returns the call's fences ([`crate::room::Fences`]),
//!   for a replica that starts following the call after the marker. A refused or log-less XADD runs `RECOVER` (replaced,
//!   call ended, or Redis lost the log: rewrite seat and log and relay). A relay whose receiver
//!   is away ([`Hub::relay_replicated`]) goes in a batch of its own runner, on a connection of
//!   its own, with `WAIT 1` at the end of the same pipeline (`REDIS_REPLICA_ACK`).
//! - `TICK` (calls with local participants, 16 per script run, every third of the lease):
//!   renew local leases (re-creating them after a Redis restart; the seats' and the call log's
//!   TTLs every sixth round), report local connections another connection
//!   replaced, and sweep peers whose lease lapsed (crashed replica: `peer-reconnecting`) or
//!   whose grace ended (`peer-left`). The transition happens once, in Redis, so exactly one
//!   replica announces it.
//! - `DISCONNECT`: mark a seat away (if this connection still owns it) and announce it.
//! - `LEAVE`: free a seat closed for good (1008, 1009) and announce `peer-left`.
//! - `ACK`: record a participant's highest acknowledged `seq` and trim each sender's log up to
//!   the lowest ack of its readers' seats (flushed at the keep-alive tick, not per message).
//! - `END`: mark the call ended, drop seats, logs and acks, publish `call-ended`.
//!
//! Fan-out: one subscriber connection per replica SUBSCRIBEs to the channel of every call
//! that has a local participant; [`crate::router`] owns that side (the channel → local sessions
//! map, subscriptions and their probes, forwarding each published frame to the sessions it
//! concerns). This module starts it and talks to it through its commands. A jump in a sender's
//! `seq`, a lagging broadcast or a subscriber reconnect makes the sessions catch up from the
//! senders' logs, so pub/sub loss never loses a relayed message.
//!
//! Architecture invariant: sessions learn about relayed messages only through pub/sub or
//! the senders' logs, never directly from another local session, so one replica or two behave alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use hermes_proto::signal::{PeerInfo, ServerMessage};
use hermes_proto::{CallId, ParticipantId, Role, keys};
use hermes_service::redis::{AckPolicy, Queued, Script, in_one_write};

pub use crate::error::HubError;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::room::{FENCES_PER_SENDER, Fences, Positions, SeatEntry, Sender};
pub use crate::router::Delivery;
pub use crate::router::Fanout;
use crate::router::{self, CallSnapshot, Cmd, Local, SUBSCRIBE_TIMEOUT};

/// At most this many media participants per call.
pub const MAX_MEDIA: usize = 2;
/// Lifetime of the call keys this service may (re)create: the call TTL of the spec.
pub const CALL_TTL_SECS: u64 = 24 * 60 * 60;
/// How far a sender's numbering jumps at the call's first join on a new primary (after a failover): more
/// than the numbers the old primary can have issued without replicating them. Sentinel does not
/// promote a replica whose link was down for longer than ten times its down-after period plus
/// the time since, and a call relays at most about 100 messages a second (two media seats, 50/s
/// each, plus their bursts): a million covers hours of that, and 2^53 leaves room for billions
/// of failovers. Written out in `JOIN_LUA` (a unit test pins the two together).
pub const SEQ_EPOCH_JUMP: u64 = 1_000_000;
/// Depth of each session's delivery queue. A session this far behind is dropped (closed with
/// 1013) and resumes from the senders' logs, rather than making the router wait.
pub const DELIVERY_QUEUE: usize = 1024;
/// Depth of the subscriber's broadcast queue (fred's default of 32 is far too small for
/// a replica carrying thousands of calls; a lag triggers a catch-up from the log).
const BROADCAST_CAPACITY: usize = 1 << 16;

/// The result of a join attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinOutcome {
    Admitted {
        resumed: bool,
        /// This connection's first `seq` (media participants; 0 for an observer).
        next_seq: u64,
        /// Per sender of the call, where delivery starts: a fresh join after the sender log's
        /// last id, a resume after the client's `lastSeq` clamped to it.
        after: Positions,
        /// The call's fences kept in Redis (`call:{id}:fences`, this join's own included):
        /// the session applies them to what it is delivered and hands them to the router,
        /// which may have started following the call after their `seat` markers.
        fences: Fences,
        peers: Vec<PeerInfo>,
    },
    Full,
    Ended,
}

/// Where a joining client says it stands (`join`'s `lastSeq` / `lastSeqs`): none is a fresh
/// join.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resume {
    pub last_seq: Option<u64>,
    /// Per sender (takes precedence over `last_seq`; a sender not listed replays from its
    /// start).
    pub per_sender: Option<Vec<(ParticipantId, u64)>>,
}

impl Resume {
    pub fn after(last_seq: u64) -> Self {
        Self {
            last_seq: Some(last_seq),
            per_sender: None,
        }
    }

    /// ARGV of the join script: lastSeq ('' for a fresh join, '0' when only per-sender
    /// numbers came) and the per-sender list (`pid:seq,…`, '' when none).
    fn args(&self) -> (String, String) {
        let per_sender = self.per_sender.as_ref().map(|list| {
            list.iter()
                .map(|(p, n)| format!("{p}:{n}"))
                .collect::<Vec<_>>()
                .join(",")
        });
        let last = match (self.last_seq, &per_sender) {
            (Some(n), _) => n.to_string(),
            (None, Some(_)) => "0".to_owned(),
            (None, None) => String::new(),
        };
        (last, per_sender.unwrap_or_default())
    }
}

/// The result of relaying one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    Sent(u64),
    /// Stored and published by the primary, but no replica acknowledged it within
    /// `REDIS_REPLICA_ACK_TIMEOUT_MS` (only from [`Hub::relay_replicated`]).
    NotReplicated(u64),
    /// The seat belongs to a newer connection.
    Replaced,
    Ended,
}

/// Time parameters of presence, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct HubTimes {
    pub lease_ms: u64,
    pub grace_ms: u64,
    /// Messages kept for each direction of a call (`SIGNAL_INBOX_MAXLEN`): the cap of each
    /// sender's log.
    pub inbox_maxlen: u64,
}

impl HubTimes {
    /// Cap (`XTRIM MAXLEN ~`) of a sender's log.
    pub fn log_cap(&self) -> u64 {
        self.inbox_maxlen
    }
}

/// Helpers every script starts with: the presence rule over a stored seat (the Lua form of
/// [`hermes_proto::SeatEntry::presence`]) and `frame`, which encodes the presence and control
/// frames a script publishes with cjson from their fields (no JSON by concatenation; relayed
/// messages are built in Rust and only get their `seq` spliced in).
const PRESENCE_LUA: &str = include_str!("lua/presence.lua");

/// KEYS: call, peers, channel, senders, the joiner's own log, seq epoch, fences.
/// ARGV: pid, role, conn, now_ms, live entry, grace_ms, ttl_s, max_media, lastSeq ('' for a
/// fresh join), whether to check the failover epoch ('1' under Sentinel and Cluster), log ttl
/// ms, the prefix of the call's log keys, the per-sender `lastSeqs` (`pid:seq,…`, or ''),
/// fences kept per sender ([`FENCES_PER_SENDER`]).
/// Reply: ok, resumed (0/1), this connection's first `seq`, the number of other senders, the
/// call's fences (`pid:stored:first,…`, or ''), then per other sender its id and where
/// delivery from it starts (its log's last id; on a resume lastSeq clamped to it: a number
/// Redis never issued is never used), then the peers.
///
/// A media participant's numbering starts above the last id of every log of the call (one who
/// takes a seat another left numbers above what that one's receiver saw) and above the next
/// number of a connection of its own it replaces; the script moves its log's last id there
/// (creating the log, since relays write with `NOMKSTREAM`), so the replaced connection's next
/// XADD is refused: the fence that the per-relay seat check used to be. A join that replaced
/// a connection keeps that fence in the call's fences hash (the newest [`FENCES_PER_SENDER`]
/// per sender) in the same run as its `seat` marker, and every join returns the call's
/// fences, so a replica that starts following the call after the marker still drops the
/// replaced connection's refused writes. The failover epoch
/// (the primary's replication id) is checked here, not per relay: the first join on another
/// primary lifts the floor by [`SEQ_EPOCH_JUMP`].
const JOIN_LUA: &str = include_str!("lua/join.lua");

/// The rare path of a relay, after its XADD was refused (id at or below the log's last id) or
/// found no log. KEYS: call, peers, channel, the sender's log, senders. ARGV: pid, conn, seq,
/// head, tail (the message around its number), live entry, log ttl ms, ttl s. The seat is
/// another connection's: -1 (replaced; that join fenced the log). No seat and the call ended:
/// -2. Otherwise (Redis lost the seat or the log, or an earlier write of this connection
/// landed after its reply was lost): rewrite the seat, re-create the log with its last id just
/// below `seq`, relay at `max(seq, last id + 1)` and return that number.
const RECOVER_LUA: &str = include_str!("lua/recover.lua");

/// KEYS: peers, channel. ARGV: pid, conn, away entry.
const DISCONNECT_LUA: &str = include_str!("lua/disconnect.lua");

/// Several calls per script run (one EVALSHA per [`TICK_BATCH`] calls, not per call).
/// KEYS: (call, peers, channel, senders) per call. ARGV: now_ms, grace_ms, ttl_s, log ttl ms,
/// whether to renew the TTLs ('1' every [`TICK_TTL_ROUNDS`]th round and after a reconnect),
/// then per call: the last number this replica saw published per sender (`pid:seq,…`), the
/// number of local connections, (pid, conn, live entry) per local connection.
/// A renewed lease renews the TTLs of the call's logs too (relays set them only every 64th
/// number) and the seats' hash TTL, on the rounds that renew TTLs (a seat the tick re-creates
/// gets its hash TTL at once). Reply: per call, `{'ended'}` or `{'ok', behind (0, or 'pid:seq'
/// when a seated sender's log holds `seq` above what this replica saw published from it),
/// stale 'pid|conn'...}`.
const TICK_LUA: &str = include_str!("lua/tick.lua");

/// KEYS: peers, channel. ARGV: pid, conn, peer-left reason.
const LEAVE_LUA: &str = include_str!("lua/leave.lua");

/// KEYS: call, peers, channel, the old call-wide log, acks, senders, fences. ARGV: now_s,
/// call-ended JSON, publish(0/1), ttl_s, the prefix of the call's log keys (every sender's log
/// goes).
const END_LUA: &str = include_str!("lua/end.lua");

/// KEYS: peers, acks, senders. ARGV: pid, conn, acked seq, ttl_s, the prefix of the call's log
/// keys. Records the ack (if this connection still holds the seat) and trims each sender's log
/// up to the lowest ack of its readers, the other seated media participants: each of them was
/// delivered everything up to there (a media participant receives from one sender at a time,
/// so its one number is unambiguous; an observer's is not, and observers do not trim). A
/// reader that has acknowledged nothing yet keeps the whole log. Flushes happen at the
/// keep-alive tick, only after a new ack. Reply: 1, or 0 (not this connection's seat).
const ACK_LUA: &str = include_str!("lua/ack.lua");

struct Scripts {
    join: Script,
    recover: Script,
    disconnect: Script,
    leave: Script,
    tick: Script,
    end: Script,
    ack: Script,
}

/// A script's source: the publish command of the fan-out (`PUBLISH`, the name every script
/// publishes with: `SPUBLISH` on a cluster, allowed in a script because the channel is in the
/// slot of the script's keys), the helpers, the body.
fn with_helpers(fanout: Fanout, body: &'static str) -> &'static str {
    let publish = fanout.publish_command();
    // Built once per process at start-up; leaking seven short strings is fine.
    Box::leak(format!("local PUBLISH = '{publish}'\n{PRESENCE_LUA}{body}").into_boxed_str())
}

impl Scripts {
    fn new(fanout: Fanout) -> Self {
        let script = |body| Script::new(with_helpers(fanout, body));
        Self {
            join: script(JOIN_LUA),
            recover: script(RECOVER_LUA),
            disconnect: script(DISCONNECT_LUA),
            leave: script(LEAVE_LUA),
            tick: script(TICK_LUA),
            end: script(END_LUA),
            ack: script(ACK_LUA),
        }
    }
}

/// Calls renewed by one run of the tick script (its Redis time stays short: about 0.2 ms).
const TICK_BATCH: usize = 16;
/// The tick renews the TTLs of the seats' hash (a day) and of the call's logs (more than a
/// minute plus two leases) every this many rounds (two leases), not at each: two commands
/// per call per replica saved on the other rounds.
const TICK_TTL_ROUNDS: u64 = 6;
/// Handle shared by all sessions of this replica.
pub struct Hub {
    client: Client,
    /// Runs the relay script over batches of relays (see [`RelayRunner`]).
    relays: Arc<RelayRunner>,
    /// Runs it for relays that wait for a Redis replica (`WAIT 1` after each batch), on a
    /// connection of its own: a WAIT holds every later command of its connection, so relays
    /// to live receivers must not share it. None when `REDIS_REPLICA_ACK` does not wait.
    replicated_relays: Option<Arc<RelayRunner>>,
    subscriber: SubscriberClient,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    /// Random id of this replica, to recognise its own subscription probes.
    replica: Arc<str>,
    /// Paced tick rounds so far (every [`TICK_TTL_ROUNDS`]th renews the TTLs).
    tick_rounds: std::sync::atomic::AtomicU64,
    scripts: Scripts,
    fanout: Fanout,
    /// Sentinel or Cluster: joins check the failover epoch.
    failover_epochs: bool,
    times: HubTimes,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("times", &self.times).finish()
    }
}

/// The subscriber connection, with a broadcast ring of [`BROADCAST_CAPACITY`] (a replica's
/// fan-out takes bursts). Like every Hermes client it retries the first connection too: a
/// replica started before Redis must still become ready.
async fn connect_subscriber(url: &str) -> Result<SubscriberClient, HubError> {
    let options = hermes_service::redis::ClientOptions {
        broadcast_capacity: Some(BROADCAST_CAPACITY),
        ..Default::default()
    };
    Ok(
        hermes_service::redis::connect_subscriber_with(url, Duration::from_secs(5), &options)
            .await?,
    )
}

impl Hub {
    /// Connect and start the router, the subscription manager and the lease ticker; relays
    /// never wait for a replica (see [`Self::start_with_replica_ack`]).
    pub async fn start(
        redis_url: &str,
        client: Client,
        times: HubTimes,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, HubError> {
        Self::start_with_replica_ack(redis_url, client, times, metrics, AckPolicy::Off).await
    }

    /// [`Self::start`], with relays to away receivers waiting for a replica as `replica_ack`
    /// says ([`Self::relay_replicated`]).
    pub async fn start_with_replica_ack(
        redis_url: &str,
        client: Client,
        times: HubTimes,
        metrics: Arc<Metrics>,
        replica_ack: AckPolicy,
    ) -> Result<Arc<Self>, HubError> {
        let subscriber = connect_subscriber(redis_url).await?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let replica: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
        let redis_config = Config::from_url(redis_url)?;
        let fanout = Fanout::for_redis(&redis_config);
        let scripts = Scripts::new(fanout);
        // Sentinel and Cluster both promote replicas that may lack the newest writes.
        let failover_epochs =
            redis_config.server.is_sentinel() || redis_config.server.is_clustered();
        let runner = |client: Client, wait| {
            Arc::new(RelayRunner {
                client,
                wait,
                recover: scripts.recover.clone(),
                fanout,
                log_cap: times.log_cap(),
                log_ttl_ms: i64::try_from(log_ttl_ms(&times)).unwrap_or(i64::MAX),
                lease_ms: times.lease_ms,
                queue: std::sync::Mutex::default(),
            })
        };
        let relays = runner(client.clone(), None);
        let replicated_relays = match replica_ack.timeout() {
            None => None,
            Some(timeout) => {
                let twin = hermes_service::redis::twin_without_resends(&client)?;
                twin.connect();
                Some(runner(twin, Some(timeout)))
            }
        };
        let hub = Arc::new(Self {
            client: client.clone(),
            relays,
            replicated_relays,
            subscriber: subscriber.clone(),
            cmd_tx: cmd_tx.clone(),
            replica: replica.clone(),
            tick_rounds: Default::default(),
            scripts,
            fanout,
            failover_epochs,
            times,
            metrics,
        });
        tokio::spawn(router::subscription_manager(
            subscriber.clone(),
            client,
            replica,
            sub_rx,
            cmd_tx,
        ));
        tokio::spawn(router::router(
            Arc::downgrade(&hub),
            hub.metrics.clone(),
            hub.replica.clone(),
            subscriber.clone(),
            fanout,
            cmd_rx,
            sub_tx,
        ));
        // After any reconnect (Redis restarted or a network blip) sessions catch up from the
        // call logs and leases are rewritten at once instead of at the next tick.
        let weak = Arc::downgrade(&hub);
        let mut sub_reconnects = subscriber.reconnect_rx();
        let mut cmd_reconnects = hub.client.reconnect_rx();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = sub_reconnects.recv() => if r.is_err() { break },
                    r = cmd_reconnects.recv() => if r.is_err() { break },
                }
                let Some(hub) = weak.upgrade() else { break };
                tracing::info!("Redis reconnected: renewing leases and resyncing sessions");
                hub.tick_all(None).await;
                let _ = hub.cmd_tx.send(Cmd::ResyncAll);
            }
        });
        // A hung primary keeps its connections open: without this watch the clients would send
        // its slots' commands (and keep its subscriptions) there after the failover.
        let weak = Arc::downgrade(&hub);
        let mut clients = vec![hub.client.clone()];
        clients.extend(hub.replicated_client().cloned());
        hermes_service::redis::spawn_hung_primary_watch(
            clients,
            vec![hub.subscriber.clone()],
            move || weak.strong_count() > 0,
        );
        let weak = Arc::downgrade(&hub);
        let period = Duration::from_millis((times.lease_ms / 3).max(100));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(hub) = weak.upgrade() else { break };
                // Spread over half the period: a burst of lease scripts queued in Redis
                // ahead of relays was the largest part of the relay p99 (measured).
                hub.tick_all(Some(period / 2)).await;
            }
        });
        Ok(hub)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The connection of relays that wait for a replica, when there is one (readiness).
    pub fn replicated_client(&self) -> Option<&Client> {
        self.replicated_relays.as_ref().map(|r| &r.client)
    }

    pub fn times(&self) -> HubTimes {
        self.times
    }

    /// How call channels fan out on this replica's Redis.
    pub fn fanout(&self) -> Fanout {
        self.fanout
    }

    /// Subscribe a session to its call's channel; returns once the subscription is proven
    /// active (a probe published after SUBSCRIBE came back through it), so everything the
    /// session's join script publishes afterwards reaches it.
    #[allow(clippy::too_many_arguments)]
    pub async fn register(
        &self,
        id: u64,
        call: &CallId,
        participant: &ParticipantId,
        role: Role,
        conn: Arc<str>,
        tx: mpsc::Sender<Delivery>,
        resync: Arc<AtomicBool>,
    ) -> Result<(), HubError> {
        let (ready, done) = oneshot::channel();
        let local = Local {
            id,
            participant: participant.clone(),
            role,
            conn,
            tx,
            resync,
            seated: false,
            seam: false,
        };
        self.cmd_tx
            .send(Cmd::Register {
                channel: keys::call_channel(call),
                call: call.clone(),
                local,
                ready,
            })
            .map_err(|_| HubError::Stopped)?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(HubError::Stopped),
            Err(_) => Err(HubError::SubscribeTimeout),
        }
    }

    /// Mark a registered session as holding its seat (its lease is renewed from now on), and
    /// hand the router the call's fences its join returned.
    pub fn seated(&self, id: u64, call: &CallId, fences: Fences) {
        let _ = self.cmd_tx.send(Cmd::Seated {
            channel: keys::call_channel(call),
            id,
            fences,
        });
    }

    pub fn unregister(&self, id: u64, call: &CallId) {
        let _ = self.cmd_tx.send(Cmd::Unregister {
            channel: keys::call_channel(call),
            id,
        });
    }

    /// How long a sender's log outlives its last lease renewal (or its creation): longer than a
    /// lease plus the grace window, so it is there for any resume a seat allows.
    fn log_ttl_ms(&self) -> u64 {
        log_ttl_ms(&self.times)
    }

    fn live_entry(&self, role: Role, conn: &str, now_ms: u64) -> String {
        SeatEntry {
            role,
            live: true,
            expiry_ms: now_ms + self.times.lease_ms,
            conn: conn.to_owned(),
        }
        .encode()
    }

    /// Take (or retake) a seat.
    pub async fn join(
        &self,
        call: &CallId,
        participant: &ParticipantId,
        role: Role,
        conn: &str,
        resume: &Resume,
        now_ms: u64,
    ) -> Result<JoinOutcome, HubError> {
        let (last_seq, per_sender) = resume.args();
        let reply: Vec<Value> = self
            .scripts
            .join
            .run(
                &self.client,
                vec![
                    keys::call(call),
                    keys::call_peers(call),
                    keys::call_channel(call),
                    keys::call_senders(call),
                    keys::call_sender_log(call, participant),
                    keys::call_seq_epoch(call),
                    keys::call_fences(call),
                ],
                vec![
                    participant.to_string(),
                    role.to_string(),
                    conn.to_owned(),
                    now_ms.to_string(),
                    self.live_entry(role, conn, now_ms),
                    self.times.grace_ms.to_string(),
                    CALL_TTL_SECS.to_string(),
                    MAX_MEDIA.to_string(),
                    last_seq,
                    if self.failover_epochs { "1" } else { "0" }.to_owned(),
                    self.log_ttl_ms().to_string(),
                    keys::call_sender_log_prefix(call),
                    per_sender,
                    FENCES_PER_SENDER.to_string(),
                ],
            )
            .await?;
        let text = |v: Option<&Value>| v.and_then(|v| v.as_str().map(|s| s.into_owned()));
        match text(reply.first()).as_deref() {
            Some("ended") => Ok(JoinOutcome::Ended),
            Some("full") => Ok(JoinOutcome::Full),
            Some("ok") => {
                let resumed = reply.get(1).and_then(Value::as_u64) == Some(1);
                let number = |i: usize| {
                    reply
                        .get(i)
                        .and_then(|v| v.as_str().and_then(|s| s.parse::<u64>().ok()))
                        .unwrap_or(0)
                };
                let next_seq = number(2);
                let senders = reply.get(3).and_then(Value::as_u64).unwrap_or(0) as usize;
                let fences = Fences::parse_list(&text(reply.get(4)).unwrap_or_default())
                    .ok_or(HubError::BadReply("join (fences)"))?;
                let mut after = Vec::with_capacity(senders);
                for i in 0..senders {
                    let sender = text(reply.get(5 + 2 * i))
                        .and_then(|s| Sender::parse(&s))
                        .ok_or(HubError::BadReply("join (sender)"))?;
                    after.push((sender, number(6 + 2 * i)));
                }
                let peers = reply
                    .iter()
                    .skip(5 + 2 * senders)
                    .filter_map(|v| v.as_str().and_then(|s| parse_peer(&s)))
                    .collect();
                Ok(JoinOutcome::Admitted {
                    resumed,
                    next_seq,
                    after: Positions::new(after),
                    fences,
                    peers,
                })
            }
            _ => Err(HubError::BadReply("join")),
        }
    }

    /// Store and publish one relayed message as number `seq` of its sender (the session's
    /// next number). `message` must be relayable (its `seq` is replaced by the number). The
    /// number it went out with comes back: `seq`, or above it after a recovery.
    #[allow(clippy::too_many_arguments)]
    pub async fn relay(
        &self,
        call: &CallId,
        participant: &ParticipantId,
        role: Role,
        conn: &str,
        message: &ServerMessage,
        seq: u64,
        now_ms: u64,
    ) -> Result<RelayOutcome, HubError> {
        let (job, done) = relay_job(call, participant, role, conn, message, seq, now_ms)?;
        self.relays.submit(job).await;
        relay_outcome(done.await)
    }

    /// [`Self::relay`] for a message whose receiver is away (it reaches it only through the
    /// call's log): under a waiting `REDIS_REPLICA_ACK` the relay runs in a batch followed by
    /// `WAIT 1 <timeout>` on the same connection (on a cluster, the one to the primary of the
    /// call's slot), and answers [`RelayOutcome::NotReplicated`] when no replica acknowledged
    /// in time; like [`Self::relay`] otherwise.
    #[allow(clippy::too_many_arguments)]
    pub async fn relay_replicated(
        &self,
        call: &CallId,
        participant: &ParticipantId,
        role: Role,
        conn: &str,
        message: &ServerMessage,
        seq: u64,
        now_ms: u64,
    ) -> Result<RelayOutcome, HubError> {
        let runner = self.replicated_relays.as_ref().unwrap_or(&self.relays);
        let (job, done) = relay_job(call, participant, role, conn, message, seq, now_ms)?;
        runner.submit(job).await;
        relay_outcome(done.await)
    }

    /// Mark the seat away (if this connection still holds it) and tell the others.
    pub async fn disconnect(
        &self,
        call: &CallId,
        participant: &ParticipantId,
        role: Role,
        conn: &str,
        now_ms: u64,
    ) -> Result<bool, HubError> {
        let away = SeatEntry {
            role,
            live: false,
            expiry_ms: now_ms + self.times.grace_ms,
            conn: conn.to_owned(),
        }
        .encode();
        let n: i64 = self
            .scripts
            .disconnect
            .run(
                &self.client,
                vec![keys::call_peers(call), keys::call_channel(call)],
                vec![participant.to_string(), conn.to_owned(), away],
            )
            .await?;
        Ok(n == 1)
    }

    /// Free the seat now (if this connection still holds it) and announce
    /// `peer-left {reason}`: the connection was closed for good (1008, 1009).
    pub async fn leave(
        &self,
        call: &CallId,
        participant: &ParticipantId,
        conn: &str,
        reason: &str,
    ) -> Result<bool, HubError> {
        let n: i64 = self
            .scripts
            .leave
            .run(
                &self.client,
                vec![keys::call_peers(call), keys::call_channel(call)],
                vec![participant.to_string(), conn.to_owned(), reason.to_owned()],
            )
            .await?;
        Ok(n == 1)
    }

    /// End the call: status `ended`, seats, log and acks dropped, `call-ended` published (when
    /// `publish`). Returns whether this call ended it.
    pub async fn end(&self, call: &CallId, reason: &str, publish: bool) -> Result<bool, HubError> {
        let ended = serde_json::to_string(&ServerMessage::CallEnded {
            reason: reason.to_owned(),
        })
        .map_err(|e| HubError::Encode(e.to_string()))?;
        let n: i64 = self
            .scripts
            .end
            .run(
                &self.client,
                vec![
                    keys::call(call),
                    keys::call_peers(call),
                    keys::call_channel(call),
                    keys::call_log(call),
                    keys::call_acks(call),
                    keys::call_senders(call),
                    keys::call_fences(call),
                ],
                vec![
                    hermes_service::unix_now().to_string(),
                    ended,
                    if publish { "1" } else { "0" }.to_owned(),
                    CALL_TTL_SECS.to_string(),
                    keys::call_sender_log_prefix(call),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// The media participants whose seats are away at `now_ms` (disconnected, or a lease that
    /// lapsed, within the grace window), as the seats say: a session that believes a peer away
    /// reads this after a relay that waited for a replica, so a `peer-resumed` it missed (pub/sub
    /// loss in a failover) costs it one such relay, not every relay from then on.
    pub async fn away_peers(
        &self,
        call: &CallId,
        now_ms: u64,
    ) -> Result<Vec<ParticipantId>, HubError> {
        let seats: HashMap<String, String> = self.client.hgetall(keys::call_peers(call)).await?;
        Ok(seats
            .into_iter()
            .filter_map(|(pid, entry)| {
                let entry = SeatEntry::parse(&entry)?;
                let away = entry.role.is_media()
                    && entry.presence(now_ms, self.times.grace_ms) == crate::room::Presence::Away;
                away.then(|| ParticipantId::parse(&pid).ok()).flatten()
            })
            .collect())
    }

    /// Whether `participant`'s seat is held by the connection `conn` now (a `replaced` frame
    /// is checked against it before a session closes).
    pub async fn holds_seat(
        &self,
        call: &CallId,
        participant: &ParticipantId,
        conn: &str,
    ) -> Result<bool, HubError> {
        let entry: Option<String> = self
            .client
            .hget(keys::call_peers(call), participant.as_str())
            .await?;
        Ok(entry
            .as_deref()
            .and_then(SeatEntry::parse)
            .is_some_and(|e| e.conn == conn))
    }

    /// The fences kept with the seats (`call:{id}:fences`) of each call of `calls` (keyed by
    /// channel): one `HGETALL` per call, in one pipeline per slot, the slots at once. The
    /// router reads them again when pub/sub may have lost `seat` markers (its subscriber
    /// reconnected, or its broadcast lagged); never on the relay path.
    pub(crate) async fn kept_fences(
        &self,
        calls: Vec<(String, CallId)>,
    ) -> Vec<(String, Result<Fences, HubError>)> {
        let groups = by_slot(calls, self.client.is_clustered(), |(_, call)| call.as_str());
        let reads = groups.into_iter().map(|group| async move {
            let read = self.read_kept_fences(&group).await;
            group.into_iter().map(|(channel, _)| channel).zip(read)
        });
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The kept fences of calls of one slot, in one pipeline: one answer per call.
    async fn read_kept_fences(&self, group: &[(String, CallId)]) -> Vec<Result<Fences, HubError>> {
        let pipeline = self.client.pipeline();
        for (_, call) in group {
            if let Err(e) = pipeline.hgetall::<(), _>(keys::call_fences(call)).await {
                return group
                    .iter()
                    .map(|_| Err(HubError::from(e.clone())))
                    .collect();
            }
        }
        let replies = pipeline.try_all::<Value>().await;
        // A pipeline that failed as a whole answers one error.
        let failure = replies.iter().find_map(|r| r.as_ref().err().cloned());
        let mut replies = replies.into_iter();
        group
            .iter()
            .map(|_| match replies.next() {
                Some(Ok(reply)) => {
                    let fields: HashMap<String, String> = reply.convert()?;
                    let fields: Vec<(String, String)> = fields.into_iter().collect();
                    Fences::parse_kept(&fields).ok_or(HubError::BadReply("fences (HGETALL)"))
                }
                Some(Err(e)) => Err(e.into()),
                None => Err(failure
                    .clone()
                    .map_or(HubError::BadReply("fences (HGETALL)"), HubError::from)),
            })
            .collect()
    }

    /// Hand the router the kept fences of `calls` it asked for under `ticket`
    /// ([`Self::kept_fences`]).
    pub(crate) async fn reread_fences(&self, ticket: u64, calls: Vec<(String, CallId)>) {
        let read = self.kept_fences(calls).await;
        let _ = self.cmd_tx.send(Cmd::KeptFences { ticket, read });
    }

    /// The entries of the other senders' logs after `after` (per sender), merged in `seq`
    /// order: what a resume or a catch-up sends. Two round trips (the call's senders, then
    /// their logs in one pipeline); never on the relay path.
    pub async fn logs_after(
        &self,
        call: &CallId,
        participant: &ParticipantId,
        after: &Positions,
    ) -> Result<Vec<(Sender, u64, String)>, HubError> {
        let senders: Vec<String> = self.client.smembers(keys::call_senders(call)).await?;
        let senders: Vec<Sender> = senders
            .iter()
            .filter(|s| s.as_str() != participant.as_str())
            .filter_map(|s| Sender::parse(s))
            .collect();
        if senders.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        let prefix = keys::call_sender_log_prefix(call);
        for s in &senders {
            // A log is capped at `log_cap` entries, approximately: `MAXLEN ~` trims whole
            // nodes (100 entries by default), every 64th relay. So this bound reads all of it.
            let _: () = pipeline
                .xrange(
                    format!("{prefix}{}", s.as_str()),
                    format!("{}-0", after.of(*s).saturating_add(1)),
                    "+",
                    Some(2 * self.times.log_cap() + 200),
                )
                .await?;
        }
        let logs = pipeline.try_all::<Value>().await;
        let mut out = Vec::new();
        for (sender, entries) in senders.into_iter().zip(logs) {
            let entries: Vec<(String, HashMap<String, String>)> = entries?.convert()?;
            for (id, fields) in entries {
                let (Some(message), Some(seq)) = (
                    log_entry(fields),
                    id.split('-').next().and_then(|n| n.parse().ok()),
                ) else {
                    continue;
                };
                out.push((sender, seq, message));
            }
        }
        out.sort_by_key(|(_, seq, _)| *seq);
        Ok(out)
    }

    /// Record that this connection's participant acknowledged everything up to `acked`, and
    /// trim each sender's log up to the lowest ack of its readers. False when the seat belongs to
    /// another connection (nothing recorded).
    pub async fn ack(
        &self,
        call: &CallId,
        participant: &ParticipantId,
        conn: &str,
        acked: u64,
    ) -> Result<bool, HubError> {
        let n: i64 = self
            .scripts
            .ack
            .run(
                &self.client,
                vec![
                    keys::call_peers(call),
                    keys::call_acks(call),
                    keys::call_senders(call),
                ],
                vec![
                    participant.to_string(),
                    conn.to_owned(),
                    acked.to_string(),
                    CALL_TTL_SECS.to_string(),
                    keys::call_sender_log_prefix(call),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Renew every local lease and sweep lapsed peers, one script call per [`TICK_BATCH`]
    /// calls: at once (after a reconnect), or paced evenly over `spread` so relays never queue
    /// behind a burst.
    async fn tick_all(&self, spread: Option<Duration>) {
        let (tx, rx) = oneshot::channel();
        if self.cmd_tx.send(Cmd::Snapshot(tx)).is_err() {
            return;
        }
        let Ok(calls) = rx.await else { return };
        // After a reconnect (not paced) every TTL is written again: Redis may have lost them.
        let round = self
            .tick_rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let renew_ttls = spread.is_none() || round.is_multiple_of(TICK_TTL_ROUNDS);
        // Bounded concurrency: one script in flight when paced, four when catching up.
        let in_flight = if spread.is_some() { 1 } else { 4 };
        // Batches of up to TICK_BATCH calls (of one slot each on a cluster).
        let mut batches: Vec<Vec<CallSnapshot>> = Vec::new();
        for group in by_slot(calls, self.client.is_clustered(), |snap| snap.call.as_str()) {
            let mut group = group.into_iter().peekable();
            while group.peek().is_some() {
                batches.push(group.by_ref().take(TICK_BATCH).collect());
            }
        }
        let chunks = batches.len().div_ceil(in_flight).max(1);
        let pause = spread.map(|d| d / chunks as u32);
        let mut next = tokio::time::Instant::now();
        for chunk in batches.chunks(in_flight) {
            let now = hermes_service::unix_now_ms();
            let futures = chunk.iter().map(|b| self.tick_calls(b, now, renew_ttls));
            futures_util::future::join_all(futures).await;
            if let Some(pause) = pause {
                next += pause;
                tokio::time::sleep_until(next).await;
            }
        }
    }

    async fn tick_calls(&self, snaps: &[CallSnapshot], now_ms: u64, renew_ttls: bool) {
        let mut keys = Vec::with_capacity(4 * snaps.len());
        let mut args = vec![
            now_ms.to_string(),
            self.times.grace_ms.to_string(),
            CALL_TTL_SECS.to_string(),
            self.log_ttl_ms().to_string(),
            if renew_ttls { "1" } else { "0" }.to_owned(),
        ];
        for snap in snaps {
            let call = &snap.call;
            keys.extend([
                keys::call(call),
                keys::call_peers(call),
                keys::call_channel(call),
                keys::call_senders(call),
            ]);
            let seen: Vec<String> = snap
                .last_seqs
                .iter()
                .map(|(s, n)| format!("{}:{n}", s.as_str()))
                .collect();
            args.push(seen.join(","));
            args.push(snap.locals.len().to_string());
            for (pid, role, conn, _) in &snap.locals {
                args.push(pid.to_string());
                args.push(conn.to_string());
                args.push(self.live_entry(*role, conn, now_ms));
            }
        }
        let reply: Result<Vec<Value>, HubError> = self
            .scripts
            .tick
            .run(&self.client, keys, args)
            .await
            .map_err(HubError::from);
        let replies = match reply {
            Ok(r) => r,
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::debug!(error = %e, "lease tick failed");
                return;
            }
        };
        for (snap, reply) in snaps.iter().zip(replies) {
            if let Value::Array(reply) = reply {
                self.apply_tick(snap, &reply);
            }
        }
    }

    /// Act on one call's part of a tick reply.
    fn apply_tick(&self, snap: &CallSnapshot, reply: &[Value]) {
        let first = reply
            .first()
            .and_then(|v| v.as_str().map(|s| s.into_owned()));
        if first.as_deref() == Some("ended") {
            let text = ended_frame("ended");
            for (_, _, _, tx) in &snap.locals {
                let _ = tx.try_send(Delivery::Ended(text.clone()));
            }
            return;
        }
        // Safety net for pub/sub loss: a sender's log holds a number above what this replica
        // had seen published from it when it took the snapshot. A relay published since then
        // is no loss, so the router checks again a moment later and resyncs the call's
        // sessions only if it still has not seen that number.
        if let Some((sender, seq)) = reply
            .get(1)
            .and_then(|v| v.as_str())
            .and_then(|s| parse_behind(&s))
        {
            let cmd_tx = self.cmd_tx.clone();
            let channel = keys::call_channel(&snap.call);
            tokio::spawn(async move {
                tokio::time::sleep(BEHIND_RECHECK).await;
                let _ = cmd_tx.send(Cmd::ResyncIfBehind {
                    channel,
                    sender,
                    seq,
                });
            });
        }
        for stale in reply.iter().skip(2).filter_map(|v| v.as_str()) {
            if let Some((pid, conn)) = stale.split_once('|') {
                for (p, _, c, tx) in &snap.locals {
                    if p.as_str() == pid && &**c == conn {
                        let _ = tx.try_send(Delivery::Replaced);
                    }
                }
            }
        }
    }

    /// Whether the subscriber connection is up.
    pub fn subscriber_connected(&self) -> bool {
        self.subscriber.is_connected()
    }

    /// Whether pub/sub works end to end now: the subscriber connection is up, a probe
    /// published on this replica's health channel came back through it within `timeout`,
    /// and no session is stuck waiting for its call's subscription.
    pub async fn subscriber_ready(&self, timeout: Duration) -> bool {
        if !self.subscriber.is_connected() {
            return false;
        }
        let (tx, rx) = oneshot::channel();
        if self.cmd_tx.send(Cmd::Ready(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(true)))
    }
}

pub(crate) fn ended_frame(reason: &str) -> Utf8Bytes {
    serde_json::to_string(&ServerMessage::CallEnded {
        reason: reason.to_owned(),
    })
    .map(Utf8Bytes::from)
    .unwrap_or_else(|_| Utf8Bytes::from_static(r#"{"type":"call-ended","reason":"ended"}"#))
}

/// How long after a tick found a sender's log ahead the router checks again whether it has
/// seen that number published meanwhile (a relay in flight while the tick ran).
const BEHIND_RECHECK: Duration = Duration::from_millis(250);

/// The tick's `pid:seq` (a sender's log holds `seq` above what this replica had seen).
fn parse_behind(s: &str) -> Option<(Sender, u64)> {
    let (pid, seq) = s.split_once(':')?;
    Some((Sender::parse(pid)?, seq.parse().ok()?))
}

fn parse_peer(s: &str) -> Option<PeerInfo> {
    let mut parts = s.splitn(3, '|');
    let participant_id = ParticipantId::parse(parts.next()?).ok()?;
    let role = match parts.next()? {
        "offerer" => Role::Offerer,
        "answerer" => Role::Answerer,
        "observer" => Role::Observer,
        _ => return None,
    };
    let connected = parts.next()? == "live";
    Some(PeerInfo {
        participant_id,
        role,
        connected,
    })
}

/// Serialise a relayed message with `seq` 0 and split it around the number, so Redis can
/// splice in the real `seq` without parsing JSON. Serde writes fields in declaration order,
/// so `"seq":0` follows `type` and `from` (neither can contain it); a unit test pins this.
pub fn split_at_seq(message: &ServerMessage) -> Option<(String, String)> {
    let mut json = serde_json::to_string(message).ok()?;
    const NEEDLE: &str = "\"seq\":0";
    let at = json.find(NEEDLE)? + NEEDLE.len() - 1;
    let tail = json.split_off(at + 1);
    json.truncate(at);
    Some((json, tail))
}

/// The message of one entry of a sender's log (its field `m`).
fn log_entry(mut fields: HashMap<String, String>) -> Option<String> {
    fields.remove("m")
}

/// How long a sender's log outlives its last lease renewal (or its creation): longer than a lease
/// plus the grace window, so it is there for any resume the seat allows.
fn log_ttl_ms(times: &HubTimes) -> u64 {
    times.grace_ms + 2 * times.lease_ms + 60_000
}

/// One relay waiting for its batch: its sender, the keys it writes, its number, its message
/// around the number (the recovery script splices in another), when it was received, where its
/// answer goes.
struct RelayJob {
    call: CallId,
    participant: ParticipantId,
    role: Role,
    conn: String,
    log: String,
    channel: String,
    seq: u64,
    head: String,
    tail: String,
    now_ms: u64,
    reply: oneshot::Sender<RelayReply>,
}

/// One relay's answer (the number it went out with, -1 replaced, -2 ended), and whether a
/// replica acknowledged its batch (always true for a runner that does not wait).
type RelayReply = Result<(i64, bool), HubError>;

/// The job of one relay and the receiver of its answer.
#[allow(clippy::too_many_arguments)]
fn relay_job(
    call: &CallId,
    participant: &ParticipantId,
    role: Role,
    conn: &str,
    message: &ServerMessage,
    seq: u64,
    now_ms: u64,
) -> Result<(RelayJob, oneshot::Receiver<RelayReply>), HubError> {
    let (head, tail) = split_at_seq(message).ok_or(HubError::NotRelayable)?;
    let (reply, done) = oneshot::channel();
    let job = RelayJob {
        call: call.clone(),
        participant: participant.clone(),
        role,
        conn: conn.to_owned(),
        log: keys::call_sender_log(call, participant),
        channel: keys::call_channel(call),
        seq,
        head,
        tail,
        now_ms,
        reply,
    };
    Ok((job, done))
}

fn relay_outcome(
    reply: Result<RelayReply, oneshot::error::RecvError>,
) -> Result<RelayOutcome, HubError> {
    let (seq, replicated) = reply.map_err(|_| HubError::Stopped)??;
    Ok(match seq {
        -1 => RelayOutcome::Replaced,
        -2 => RelayOutcome::Ended,
        n if replicated => RelayOutcome::Sent(n.max(0) as u64),
        n => RelayOutcome::NotReplicated(n.max(0) as u64),
    })
}

/// Relay batches in flight at once. While they are, new relays queue and go together in the
/// next batch: one pipeline per message at low load (no added wait), fewer under load.
const RELAY_IN_FLIGHT: usize = 2;
/// Most relays per batch (one pipeline of their XADDs and PUBLISHes).
const RELAY_BATCH: usize = 32;
/// A sender's log gets its TTL renewed and its cap applied at every number that is a multiple of
/// this (and the lease tick renews the TTL): two commands every 64 relays instead of at each.
/// Not at a connection's first number: its join has just set the TTL (measured: with the
/// upkeep at numbers 1, 65, … a bench sender of 20 messages paid 0.1 commands per message).
const LOG_UPKEEP_EVERY: u64 = 64;

/// Relays queued while [`RELAY_IN_FLIGHT`] batches are in flight, and that count.
#[derive(Default)]
struct RelayQueue {
    waiting: std::collections::VecDeque<RelayJob>,
    in_flight: usize,
}

impl RelayQueue {
    /// The next batch, oldest first ([`RelayRunner::run`] splits it by slot on a cluster).
    fn take_batch(&mut self) -> Vec<RelayJob> {
        let n = self.waiting.len().min(RELAY_BATCH);
        self.waiting.drain(..n).collect()
    }
}

/// Runs batches of relays, each as one pipeline of plain commands on one connection: per relay
/// the XADD (the sender's message at its own number, into its own log, `NOMKSTREAM`) and its
/// PUBLISH. No script runs: a script call costs Redis about six times a PUBLISH in
/// instructions whatever it does (callgrind, docs/bench-log.md), while an XADD with an
/// explicit id costs about 1.3 PUBLISHes. The PUBLISH does not wait for the XADD's answer: a
/// write the fence refused is published all the same, and the receiving routers drop it (the
/// fence came first on the channel, in the replacing join's `seat` marker).
///
/// A relay that finds a free slot runs its batch (itself and whatever queued) in its own
/// session's task, which waits for the reply anyway: no hop through another task on the way to
/// Redis, which was measured in the open-loop p99. When a run ends and relays queued
/// meanwhile, a task runs them. A session has at most one relay in flight, so batching never
/// reorders one sender's messages.
struct RelayRunner {
    client: Client,
    /// Follow each script run with `WAIT 1 <this>` in the same pipeline (the runner of relays
    /// to away receivers; its client is a connection of its own that never resends).
    wait: Option<Duration>,
    /// The rare path of a refused or log-less XADD.
    recover: Script,
    fanout: Fanout,
    log_cap: u64,
    log_ttl_ms: i64,
    lease_ms: u64,
    queue: std::sync::Mutex<RelayQueue>,
}

/// A run slot held; on drop (the run ended, or its task was cancelled) it passes to the relays
/// that queued meanwhile, or is freed.
struct RelaySlot(Arc<RelayRunner>);

impl Drop for RelaySlot {
    fn drop(&mut self) {
        let runner = &self.0;
        let batch = {
            let mut queue = runner.lock();
            if queue.waiting.is_empty() || tokio::runtime::Handle::try_current().is_err() {
                queue.in_flight -= 1;
                return;
            }
            queue.take_batch()
        };
        let runner = runner.clone();
        tokio::spawn(async move {
            let slot = RelaySlot(runner.clone());
            runner.run(batch).await;
            drop(slot);
        });
    }
}

/// What one XADD of a batch came to.
enum Stored {
    Yes,
    /// Refused (an id at or below the log's last id: fenced, or an earlier write of ours
    /// landed) or no log (`NOMKSTREAM`: gone): the recovery script decides.
    Recover,
    Failed(HubError),
}

/// Whether a reply to `XADD … NOMKSTREAM <id>` means the entry was stored.
fn stored(reply: Result<Value, fred::error::Error>) -> Stored {
    match reply {
        Ok(Value::Null) => Stored::Recover,
        Ok(_) => Stored::Yes,
        Err(e) if e.details().contains("equal or smaller") => Stored::Recover,
        Err(e) => Stored::Failed(HubError::Redis(e)),
    }
}

impl RelayRunner {
    fn lock(&self) -> std::sync::MutexGuard<'_, RelayQueue> {
        // Nothing panics while holding it; a poisoned queue is still consistent.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queue `job`, and run a batch now if a slot is free. Its answer arrives on its `reply`.
    async fn submit(self: &Arc<Self>, job: RelayJob) {
        let batch = {
            let mut queue = self.lock();
            queue.waiting.push_back(job);
            if queue.in_flight >= RELAY_IN_FLIGHT {
                return;
            }
            queue.in_flight += 1;
            queue.take_batch()
        };
        let slot = RelaySlot(self.clone());
        self.run(batch).await;
        drop(slot);
    }

    /// One batch; every relay of it gets its answer. On a cluster the batch goes as one
    /// pipeline per slot, all at once (per slot in turn held a cluster to two relays in
    /// flight: measured, 0.7x the messages/s of all at once).
    async fn run(&self, batch: Vec<RelayJob>) {
        let groups = by_slot(batch, self.client.is_clustered(), |job| &job.log);
        futures_util::future::join_all(groups.into_iter().map(|group| self.run_slot(group))).await;
    }

    /// The relays of one slot in one pipeline (one round trip): each one's XADD then its
    /// PUBLISH, followed, for a runner that waits, by `WAIT 1` (one for the batch: it covers
    /// every write before it on the connection), then the recovery script for each refused one.
    async fn run_slot(&self, batch: Vec<RelayJob>) {
        if self.wait.is_none() {
            return self.run_pipelines(&self.client, batch).await;
        }
        // The WAIT must follow the writes on their connection: on a cluster, every command of
        // the batch goes to the primary that owns the slot (a keyless WAIT would go anywhere).
        let key = batch.first().map(|job| job.log.clone()).unwrap_or_default();
        match hermes_service::redis::pinned_to_slot_owner(&self.client, &key) {
            Ok(pinned) => self.run_pipelines(&pinned, batch).await,
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(HubError::Redis(e.clone())));
                }
            }
        }
    }

    async fn run_pipelines<C>(&self, client: &C, batch: Vec<RelayJob>)
    where
        C: ClientLike
            + Clone
            + StreamsInterface
            + PubsubInterface
            + KeysInterface
            + ServerInterface,
    {
        let mut commands: Vec<Queued<'_>> = Vec::with_capacity(2 * batch.len() + 1);
        // Index of each relay's XADD among the commands (its PUBLISH follows it, then upkeep
        // commands at times).
        let mut at = Vec::with_capacity(batch.len());
        for job in &batch {
            let text = Value::from(format!("{}{}{}", job.head, job.seq, job.tail));
            at.push(commands.len());
            let log = job.log.as_str();
            commands.push(Box::pin(client.xadd(
                log,
                true,
                None,
                format!("{}-0", job.seq),
                vec![("m", text.clone())],
            )));
            // Published whether or not the XADD stores it: a refused one comes from a
            // connection a join fenced off, and that join's `seat` marker, earlier on the
            // channel, told every receiving replica to drop this number (the router).
            let channel = job.channel.as_str();
            commands.push(match self.fanout {
                Fanout::Classic => Box::pin(client.publish(channel, text)),
                Fanout::Sharded => Box::pin(client.spublish(channel, text)),
            });
            if job.seq % LOG_UPKEEP_EVERY == 0 {
                commands.push(Box::pin(client.pexpire(log, self.log_ttl_ms, None)));
                commands.push(Box::pin(
                    client.xtrim(log, ("MAXLEN", "~", self.log_cap as i64)),
                ));
            }
        }
        if let Some(timeout) = self.wait {
            // After every write of the batch on this connection: one WAIT covers them all.
            commands.push(Box::pin(client.wait(1, wait_ms(timeout))));
        }
        // Handed to the connection together: one write, one read on Redis' side.
        let mut replies: Vec<Option<Result<Value, fred::error::Error>>> =
            in_one_write(commands).await.into_iter().map(Some).collect();
        // Whether a replica holds the stored ones (always, for a runner that does not wait).
        let replicated = match self.wait {
            Some(_) => acknowledged(replies.pop().flatten()),
            None => true,
        };
        let outcomes: Vec<Stored> = at
            .iter()
            .map(|&i| match replies.get_mut(i).and_then(Option::take) {
                Some(reply) => stored(reply),
                None => Stored::Failed(HubError::BadReply("relay pipeline (length)")),
            })
            .collect();
        // The log holds the stored ones: reported sent whatever their PUBLISH answered. A lost
        // publish is caught up from the log (the next number's gap, or the lease tick).
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Stored::Yes => {
                    let _ = job.reply.send(Ok((job.seq as i64, replicated)));
                }
                Stored::Failed(e) => {
                    let _ = job.reply.send(Err(e));
                }
                Stored::Recover => {
                    let result = self.recover(&job).await;
                    let result = match (result, self.wait) {
                        (Ok(n), Some(timeout)) if n >= 0 => {
                            let acked = client.wait::<Value>(1, wait_ms(timeout)).await;
                            Ok((n, acknowledged(Some(acked))))
                        }
                        (result, _) => result.map(|n| (n, true)),
                    };
                    let _ = job.reply.send(result);
                }
            }
        }
    }

    /// The rare path: a refused or log-less XADD. The script tells replaced (-1), ended (-2),
    /// or relays after repairing the seat and the log (the number it used).
    async fn recover(&self, job: &RelayJob) -> Result<i64, HubError> {
        let live = SeatEntry {
            role: job.role,
            live: true,
            expiry_ms: job.now_ms + self.lease_ms,
            conn: job.conn.clone(),
        }
        .encode();
        let call = &job.call;
        let value: Value = self
            .recover
            .run(
                &self.client,
                vec![
                    keys::call(call),
                    keys::call_peers(call),
                    job.channel.clone(),
                    job.log.clone(),
                    keys::call_senders(call),
                ],
                vec![
                    job.participant.to_string(),
                    job.conn.clone(),
                    job.seq.to_string(),
                    job.head.clone(),
                    job.tail.clone(),
                    live,
                    self.log_ttl_ms.to_string(),
                    CALL_TTL_SECS.to_string(),
                ],
            )
            .await?;
        match value {
            Value::Integer(n) => Ok(n),
            other => Err(other
                .as_str()
                .map(|s| HubError::Script(s.into_owned()))
                .unwrap_or(HubError::BadReply("recover"))),
        }
    }
}

/// `WAIT`'s timeout argument, in ms.
fn wait_ms(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

/// Whether `WAIT 1`'s answer counts a replica. A WAIT that failed after the writes (the old
/// primary, demoted in a failover, refuses WAIT) counts as no acknowledgement: the policy
/// decides, as for a timeout.
fn acknowledged(answer: Option<Result<Value, fred::error::Error>>) -> bool {
    match answer {
        Some(Ok(count)) => count.as_u64().is_some_and(|n| n > 0),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "WAIT after a relay failed: not acknowledged");
            false
        }
        None => false,
    }
}

/// Relays or calls as one script run takes them: all together on a single Redis, split by the
/// cluster slot of each item's key on a cluster (a script there may touch one slot only; one
/// call's keys share its slot), groups in the order of their first item, items in their order.
fn by_slot<T>(batch: Vec<T>, clustered: bool, key: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    if !clustered {
        return vec![batch];
    }
    let mut groups: Vec<(u16, Vec<T>)> = Vec::new();
    for item in batch {
        let slot = fred::util::redis_keyslot(key(&item).as_bytes());
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(item),
            None => groups.push((slot, vec![item])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::router::Head;
    use hermes_proto::signal::IceCandidate;
    use rand::SeedableRng;

    #[test]
    fn batches_split_by_slot_only_on_a_cluster() {
        // `{a}` and `{b}` hash to different slots (15495 and 3300: `CLUSTER KEYSLOT`).
        let batch = ["x{a}:1", "y{b}:1", "x{a}:2", "z{a}", "y{b}:2"];
        let classic = by_slot(batch.to_vec(), false, |k| k);
        assert_eq!(classic, vec![batch.to_vec()]);
        let sharded = by_slot(batch.to_vec(), true, |k| k);
        assert_eq!(
            sharded,
            vec![vec!["x{a}:1", "x{a}:2", "z{a}"], vec!["y{b}:1", "y{b}:2"]]
        );
    }

    #[test]
    fn scripts_publish_with_the_fanout_command() {
        for (fanout, command) in [(Fanout::Classic, "PUBLISH"), (Fanout::Sharded, "SPUBLISH")] {
            let recover = with_helpers(fanout, RECOVER_LUA);
            assert!(recover.starts_with(&format!("local PUBLISH = '{command}'\n")));
        }
        // No script names a publish command of its own.
        for body in [
            JOIN_LUA,
            RECOVER_LUA,
            DISCONNECT_LUA,
            TICK_LUA,
            LEAVE_LUA,
            END_LUA,
        ] {
            assert!(body.contains("redis.call(PUBLISH, "));
            assert!(!body.contains("'PUBLISH'") && !body.contains("'SPUBLISH'"));
        }
    }

    #[test]
    fn the_join_script_jumps_by_seq_epoch_jump() {
        assert!(JOIN_LUA.contains(&format!("floor = floor + {SEQ_EPOCH_JUMP} end")));
    }

    #[test]
    fn seq_splice_matches_serde() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let from = ParticipantId::random(&mut rng);
        let messages = [
            ServerMessage::Offer {
                from: from.clone(),
                seq: 0,
                sdp: "v=0\r\n\"seq\":0".into(),
            },
            ServerMessage::Answer {
                from: from.clone(),
                seq: 0,
                sdp: "a".into(),
            },
            ServerMessage::IceCandidate {
                from: from.clone(),
                seq: 0,
                candidate: IceCandidate {
                    candidate: "candidate:0".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                    username_fragment: None,
                },
            },
            ServerMessage::Hangup {
                from: from.clone(),
                seq: 0,
            },
        ];
        for m in messages {
            let (head, tail) = split_at_seq(&m).unwrap();
            for seq in [1u64, 42, 9_007_199_254_740_000] {
                let spliced = format!("{head}{seq}{tail}");
                let mut expected = m.clone();
                match &mut expected {
                    ServerMessage::Offer { seq: s, .. }
                    | ServerMessage::Answer { seq: s, .. }
                    | ServerMessage::IceCandidate { seq: s, .. }
                    | ServerMessage::Hangup { seq: s, .. } => *s = seq,
                    _ => unreachable!(),
                }
                assert_eq!(spliced, serde_json::to_string(&expected).unwrap());
                let head: Head<'_> = serde_json::from_str(&spliced).unwrap();
                assert_eq!(head.seq, Some(seq));
                assert_eq!(head.from, Some(from.as_str()));
            }
        }
        assert!(split_at_seq(&ServerMessage::CallEnded { reason: "x".into() }).is_none());
    }

    #[test]
    fn log_entries_are_their_message_field() {
        let fields = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(
            log_entry(fields(&[("m", "{\"type\":\"hangup\"}")])),
            Some("{\"type\":\"hangup\"}".into())
        );
        assert_eq!(log_entry(fields(&[])), None);
        // The join's placeholder entry (`f` → ''), trimmed at once, never replays.
        assert_eq!(log_entry(fields(&[("f", "")])), None);
    }

    fn job(call: &CallId) -> RelayJob {
        let participant = ParticipantId::random(&mut rand::rngs::StdRng::seed_from_u64(1));
        RelayJob {
            log: keys::call_sender_log(call, &participant),
            channel: keys::call_channel(call),
            call: call.clone(),
            participant,
            role: Role::Offerer,
            conn: String::new(),
            seq: 1,
            head: String::new(),
            tail: String::new(),
            now_ms: 0,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn relay_batches_are_oldest_first_and_split_by_slot_on_a_cluster() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let calls: Vec<CallId> = (0..40).map(|_| CallId::random(&mut rng)).collect();
        let mut queue = RelayQueue::default();
        queue.waiting.extend(calls.iter().map(job));
        // The oldest ones, at most RELAY_BATCH of them.
        let batch = queue.take_batch();
        assert_eq!(batch.len(), RELAY_BATCH);
        assert_eq!(batch[0].call, calls[0]);
        assert_eq!(batch[31].call, calls[31]);
        assert_eq!(queue.waiting.len(), 8);
        // A cluster: one script run per slot, each call's relays in their order.
        let same = calls[3].clone();
        let batch: Vec<RelayJob> = [&same, &calls[0], &same, &calls[1], &same]
            .into_iter()
            .map(job)
            .collect();
        let groups = by_slot(batch, true, |j| &j.log);
        let firsts: Vec<&CallId> = groups.iter().map(|g| &g[0].call).collect();
        assert_eq!(firsts, [&same, &calls[0], &calls[1]]);
        assert_eq!(groups[0].len(), 3);
        assert!(RelayQueue::default().take_batch().is_empty());
    }

    #[test]
    fn peers_from_script_replies() {
        let p = parse_peer("b2b2b2b2b2b2b2b2b2b2b2b2b2|offerer|away").unwrap();
        assert_eq!(p.role, Role::Offerer);
        assert!(!p.connected);
        assert!(
            parse_peer("b2b2b2b2b2b2b2b2b2b2b2b2b2|observer|live")
                .unwrap()
                .connected
        );
        assert!(parse_peer("../x|offerer|live").is_none());
        assert!(parse_peer("b2b2b2b2b2b2b2b2b2b2b2b2b2|king|live").is_none());
    }
}
