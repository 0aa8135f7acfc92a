//! The replica's pub/sub side: one actor (the router task) owns the channel → local sessions
//! map and forwards each frame published on a call's channel, as the same bytes, to the local
//! sessions it concerns; the subscription manager runs the SUBSCRIBE / UNSUBSCRIBE commands the
//! router asks for.
//!
//! It lives apart from [`crate::hub`] (the Redis scripts and the calls sessions make) because
//! it is a different job: the hub changes state in Redis, the router only watches what Redis
//! publishes. Its map has a single owner, so nothing here takes a lock; sessions and the hub
//! talk to it through `Cmd` messages. Deciding what a published frame means is a plain
//! function (`route`: the frame and the call's local sessions in, deliveries and a follow-up
//! action out, no I/O, unit-tested here); the actor loop queues the deliveries and performs
//! the action (answer the registrations a probe proved, end a call the API ended).
//!
//! A channel's subscription is proven before a session waits on it: after SUBSCRIBE the router
//! publishes a probe and answers the registration only when the probe comes back through the
//! subscription (retried with a new SUBSCRIBE after `PROBE_RETRY`). A jump in a sender's `seq`
//! or a lagging broadcast makes the call's sessions resync from the senders' logs. A lagging
//! broadcast or a subscriber reconnect may have lost `seat` markers and their fences: the
//! router then reads the calls' kept fences again (after proving each subscription again, for
//! a reconnect) and delivers no relayed frame of a call until it has them ([`Refence`]).
//!
//! Call channels fan out in one of two ways ([`Fanout`]): classic PUBLISH / SUBSCRIBE on a
//! single Redis or Sentinel, sharded SPUBLISH / SSUBSCRIBE on Redis Cluster, where each call's
//! channel lives only on the shard that owns the call's slot (its hash tag) and the subscriber
//! client holds the subscription on that shard's primary. After a reconnect (a failover moves
//! a shard to its replica) the router subscribes again and re-proves every sharded channel;
//! the replica's own health channel stays classic (any node answers it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use hermes_proto::signal::CallControl;
use hermes_proto::{CallId, ParticipantId, Role};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::error::HubError;
use crate::hub::{Hub, ended_frame};
use crate::metrics::Metrics;
use crate::room::{Fence, Fences, Positions, Sender};

/// What the router hands a session.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A frame to forward as is; sender and `seq` for relayed messages (deduplicated by the
    /// session, per sender).
    Frame {
        text: Utf8Bytes,
        relayed: Option<(Sender, u64)>,
    },
    /// `call-ended` to forward, then close with 4003.
    Ended(Utf8Bytes),
    /// Another connection took over this seat: close with 4002.
    Replaced,
    /// Pub/sub may have lost messages: fetch everything after the last delivered `seq` of each
    /// sender from the senders' logs.
    Resync,
    /// This connection's own join script has been seen on the channel: presence events from
    /// here on happened after the `joined` snapshot; earlier ones are already in it.
    Seam,
}

/// How call channels fan out (docs/scaling.md, "Redis Cluster").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    /// PUBLISH / SUBSCRIBE: single Redis and Sentinel (any Redis version).
    Classic,
    /// SPUBLISH / SSUBSCRIBE (Redis 7): on Redis Cluster, where a classic PUBLISH crosses the
    /// cluster bus to every node and a sharded one stays on the shard of the channel's slot.
    Sharded,
}

impl Fanout {
    /// Sharded on Redis Cluster, classic everywhere else.
    pub fn for_redis(config: &fred::types::config::Config) -> Self {
        if config.server.is_clustered() {
            Fanout::Sharded
        } else {
            Fanout::Classic
        }
    }

    /// The publish command of this fan-out, as the Lua scripts call it.
    pub fn publish_command(self) -> &'static str {
        match self {
            Fanout::Classic => "PUBLISH",
            Fanout::Sharded => "SPUBLISH",
        }
    }
}

/// A local session as the router knows it.
pub(crate) struct Local {
    pub(crate) id: u64,
    pub(crate) participant: ParticipantId,
    pub(crate) role: Role,
    pub(crate) conn: Arc<str>,
    pub(crate) tx: mpsc::Sender<Delivery>,
    pub(crate) resync: Arc<AtomicBool>,
    /// Set once the join script admitted it: only seated sessions have leases to renew.
    pub(crate) seated: bool,
    /// Its own join's `seat` marker came through the channel: a `replaced` routed from here
    /// on was published by a newer join. One routed before it is older than this connection
    /// (a stale takeover of an earlier connection of the same participant) and must not
    /// close it.
    pub(crate) seam: bool,
}

struct CallLocal {
    call: CallId,
    locals: Vec<Local>,
    /// Highest `seq` seen published per sender (gap detection).
    last_seqs: Positions,
    /// The fences the call's joins published (in their `seat` marker), and those kept in
    /// Redis that the joins of local sessions returned (markers from before this replica
    /// followed the call): from a sender, numbers strictly between the last one its log held
    /// and the new connection's first one can only be a replaced connection's refused write,
    /// dropped here. Empty but for replacements.
    fences: Fences,
    /// Whether `fences` holds every fence of the call, or pub/sub may have lost `seat`
    /// markers and the kept fences are being read again (relayed frames are dropped till then).
    refence: Refence,
    /// While the channel's subscription is not yet proven: the probe id awaited, when it was
    /// requested, and the registrations waiting for it.
    pending: Option<PendingSubscription>,
}

/// Where a call's fences stand (docs/signal.md, "The receivers' side of the fence"). A `seat`
/// marker lost with pub/sub (the subscriber connection dropped, or the broadcast lagged) would
/// leave its fence out, and the replaced connection's refused write published after the
/// resubscription would reach the clients. So after such a loss the router reads the fences
/// kept in Redis again, only once the channel's subscription is proven (a marker is then either
/// in what it reads or seen on the channel), and drops the call's relayed frames until it has
/// them; then the call's sessions resync from the senders' logs, which never hold a refused
/// write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refence {
    /// Every `seat` marker since the router followed the call was seen, or the kept fences
    /// were read after the last loss.
    Current,
    /// The subscriber reconnected: waiting for the channel's probe to prove the subscription
    /// before reading.
    Unproven,
    /// Waiting for a read of the kept fences (in the queue, or failed and retried at the next
    /// tick).
    Queued,
    /// In the read with this ticket.
    Reading(u64),
}

struct PendingSubscription {
    probe: u64,
    since: std::time::Instant,
    /// No probe in flight (new channel, or SUBSCRIBE / the probe PUBLISH failed).
    failed: bool,
    waiters: Vec<oneshot::Sender<Result<(), HubError>>>,
    /// When the oldest registration still waiting started to wait (readiness).
    waiting_since: Option<std::time::Instant>,
}

impl PendingSubscription {
    /// Nothing sent yet: the first [`due`](Self::due) check sends it.
    fn unsent() -> Self {
        Self {
            probe: 0,
            since: std::time::Instant::now(),
            failed: true,
            waiters: Vec::new(),
            waiting_since: None,
        }
    }

    /// Whether to (re)subscribe and probe now.
    fn due(&self) -> bool {
        self.failed || self.since.elapsed() >= PROBE_RETRY
    }

    /// SUBSCRIBE and probe again under a new probe id.
    fn send(
        &mut self,
        channel: &str,
        fanout: Fanout,
        next_probe: &mut u64,
        sub_tx: &mpsc::UnboundedSender<SubCmd>,
    ) {
        *next_probe += 1;
        self.probe = *next_probe;
        self.since = std::time::Instant::now();
        self.failed = false;
        let _ = sub_tx.send(SubCmd::Subscribe {
            channel: channel.to_owned(),
            probe: self.probe,
            fanout,
        });
    }
}

pub(crate) enum Cmd {
    Register {
        channel: String,
        call: CallId,
        local: Local,
        ready: oneshot::Sender<Result<(), HubError>>,
    },
    Unregister {
        channel: String,
        id: u64,
    },
    /// The session with this id holds its seat now; `fences` are the call's fences its join
    /// returned (kept in Redis), which the router keeps from now on.
    Seated {
        channel: String,
        id: u64,
        fences: Fences,
    },
    /// The fences kept in Redis of the calls (by channel) read under this ticket.
    KeptFences {
        ticket: u64,
        read: Vec<(String, Result<Fences, HubError>)>,
    },
    /// SUBSCRIBE or the probe PUBLISH failed.
    SubscribeFailed {
        channel: String,
        probe: u64,
        error: Error,
    },
    Snapshot(oneshot::Sender<Vec<CallSnapshot>>),
    ResyncAll,
    /// The lease tick found `sender`'s log holding `seq`: resync the call's sessions unless
    /// this router has seen that number published by now.
    ResyncIfBehind {
        channel: String,
        sender: Sender,
        seq: u64,
    },
    /// Readiness: answered `true` once a fresh probe came back through this replica's health
    /// channel and no registration has waited longer than [`SUBSCRIBE_TIMEOUT`].
    Ready(oneshot::Sender<bool>),
}

pub(crate) enum SubCmd {
    /// SUBSCRIBE (or SSUBSCRIBE), then PUBLISH (SPUBLISH) a probe the router waits for on the
    /// channel.
    Subscribe {
        channel: String,
        probe: u64,
        fanout: Fanout,
    },
    Unsubscribe {
        channel: String,
        fanout: Fanout,
    },
}

impl SubCmd {
    fn channel(&self) -> &str {
        match self {
            SubCmd::Subscribe { channel, .. } | SubCmd::Unsubscribe { channel, .. } => channel,
        }
    }
}

/// How long a registration waits for its channel's subscription to be proven.
pub(crate) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A probe not seen after this long is sent again, with a new SUBSCRIBE (fred may leave a
/// SUBSCRIBE unflushed; measured here, a few percent of them without the PING, some with it).
const PROBE_RETRY: Duration = Duration::from_millis(800);

/// One call's local sessions, for the lease tick.
pub(crate) struct CallSnapshot {
    pub(crate) call: CallId,
    /// Highest `seq` the router has seen published for this call, per sender.
    pub(crate) last_seqs: Positions,
    pub(crate) locals: Vec<(ParticipantId, Role, Arc<str>, mpsc::Sender<Delivery>)>,
}

/// The fields of a published frame the router needs, borrowed from the payload.
#[derive(Deserialize)]
pub(crate) struct Head<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: &'a str,
    #[serde(default, borrow)]
    pub(crate) from: Option<&'a str>,
    #[serde(default, borrow, rename = "participantId")]
    pub(crate) participant: Option<&'a str>,
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    #[serde(default, borrow)]
    pub(crate) conn: Option<&'a str>,
    #[serde(default, borrow)]
    pub(crate) replica: Option<&'a str>,
    #[serde(default)]
    pub(crate) probe: Option<u64>,
    /// On a `seat` marker that replaced a connection: `<last stored>:<first new number>`.
    #[serde(default, borrow)]
    pub(crate) fence: Option<&'a str>,
}

/// One SUBSCRIBE (+ PING + probe PUBLISH) or UNSUBSCRIBE (+ PING), or their sharded forms.
async fn subscription_op(
    subscriber: SubscriberClient,
    client: Client,
    replica: Arc<str>,
    cmd: SubCmd,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
) {
    match cmd {
        SubCmd::Subscribe {
            channel,
            probe,
            fanout,
        } => {
            // fred answers SUBSCRIBE before writing it, and may leave it unflushed in the
            // socket buffer: a PING flushes it, and only the probe coming back through the
            // subscription proves Redis applied it.
            let mut result = match fanout {
                Fanout::Classic => subscriber.subscribe(channel.clone()).await,
                Fanout::Sharded => subscriber.ssubscribe(channel.clone()).await,
            };
            if result.is_ok() {
                result = ping_channel_node(&subscriber, &channel, fanout).await;
            }
            if result.is_ok() {
                let text = CallControl::Probe {
                    replica: replica.to_string(),
                    probe,
                }
                .to_json();
                result = match fanout {
                    Fanout::Classic => client.publish::<i64, _, _>(channel.clone(), text).await,
                    Fanout::Sharded => client.spublish::<i64, _, _>(channel.clone(), text).await,
                }
                .map(|_| ());
            }
            if let Err(error) = result {
                let _ = cmd_tx.send(Cmd::SubscribeFailed {
                    channel,
                    probe,
                    error,
                });
            }
        }
        SubCmd::Unsubscribe { channel, fanout } => {
            let done = match fanout {
                Fanout::Classic => subscriber.unsubscribe(channel.clone()).await,
                Fanout::Sharded => subscriber.sunsubscribe(channel.clone()).await,
            };
            if done.is_ok() {
                let _ = ping_channel_node(&subscriber, &channel, fanout).await;
            }
        }
    }
}

/// PING on the subscriber connection that carried the channel's (un)subscription, to flush
/// it: for a sharded channel, the connection to the node owning the channel's slot.
async fn ping_channel_node(
    subscriber: &SubscriberClient,
    channel: &str,
    fanout: Fanout,
) -> Result<(), Error> {
    match fanout {
        Fanout::Classic => subscriber.ping::<Value>(None).await.map(|_| ()),
        Fanout::Sharded => {
            let slot = fred::util::redis_keyslot(channel.as_bytes());
            let ping = CustomCommand::new_static("PING", ClusterHash::Custom(slot), false);
            subscriber
                .custom::<Value, Value>(ping, Vec::new())
                .await
                .map(|_| ())
        }
    }
}

/// Runs SUBSCRIBE / UNSUBSCRIBE operations: in order per channel (a late UNSUBSCRIBE never
/// overtakes a later SUBSCRIBE of the same call), concurrently across channels, so one slow
/// or retried subscription never holds up the others (a fresh replica once logged
/// "subscription not confirmed in time" for more than 20 s behind a serial queue).
pub(crate) async fn subscription_manager(
    subscriber: SubscriberClient,
    client: Client,
    replica: Arc<str>,
    mut rx: mpsc::UnboundedReceiver<SubCmd>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
) {
    // Channels with an operation in flight, and what waits behind it.
    let mut busy: HashMap<String, std::collections::VecDeque<SubCmd>> = HashMap::new();
    let mut running: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    // Which channel each running operation is for (found again even if one panicked).
    let mut owners: HashMap<tokio::task::Id, String> = HashMap::new();
    let spawn = |running: &mut tokio::task::JoinSet<()>,
                 owners: &mut HashMap<tokio::task::Id, String>,
                 cmd: SubCmd| {
        let channel = cmd.channel().to_owned();
        let op = subscription_op(
            subscriber.clone(),
            client.clone(),
            replica.clone(),
            cmd,
            cmd_tx.clone(),
        );
        owners.insert(running.spawn(op).id(), channel);
    };
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                match busy.get_mut(cmd.channel()) {
                    Some(queue) => queue.push_back(cmd),
                    None => {
                        busy.insert(cmd.channel().to_owned(), Default::default());
                        spawn(&mut running, &mut owners, cmd);
                    }
                }
            }
            Some(done) = running.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                let Some(channel) = owners.remove(&id) else { continue };
                let next = busy.get_mut(&channel).and_then(|q| q.pop_front());
                match next {
                    Some(cmd) => spawn(&mut running, &mut owners, cmd),
                    None => {
                        busy.remove(&channel);
                    }
                }
            }
        }
    }
}

pub(crate) async fn router(
    hub: std::sync::Weak<Hub>,
    metrics: Arc<Metrics>,
    replica: Arc<str>,
    subscriber: SubscriberClient,
    fanout: Fanout,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    sub_tx: mpsc::UnboundedSender<SubCmd>,
) {
    let mut messages = subscriber.message_rx();
    let mut next_probe: u64 = 0;
    let mut calls: HashMap<String, CallLocal> = HashMap::new();
    // Deliveries of the frame being routed (reused: routing allocates nothing per frame).
    let mut routed: Vec<(usize, Delivery)> = Vec::new();
    // This replica's own channel for readiness probes (never a call's).
    let health_channel = format!("signal:replica:{replica}:health");
    let mut health_waiters: Vec<(u64, oneshot::Sender<bool>)> = Vec::new();
    let mut retry = tokio::time::interval(PROBE_RETRY / 2);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The subscriber connection was made again: `seat` markers published meanwhile are lost.
    // Checked before routing each frame (fred announces a reconnect before the new connection
    // carries anything, so a frame it carried is never routed first) and at each retry tick;
    // not a `select!` branch, whose waiter registration would cost every frame more.
    let mut reconnects = subscriber.reconnect_rx();
    let mut reads = FenceReads::default();
    loop {
        reads.dispatch(&mut calls, &hub);
        tokio::select! {
            _ = retry.tick() => {
                // Subscriptions whose probe has not come back: subscribe and probe again (a
                // channel being re-proven after a reconnect has no waiters).
                for (channel, entry) in &mut calls {
                    if let Some(p) = &mut entry.pending
                        && (!p.waiters.is_empty()
                            || fanout == Fanout::Sharded
                            || entry.refence == Refence::Unproven)
                        && p.due()
                    {
                        p.send(channel, fanout, &mut next_probe, &sub_tx);
                    }
                }
                // Reads of kept fences that failed: again.
                reads.queue.append(&mut reads.failed);
                if reconnected(&mut reconnects) {
                    lost_markers(&mut calls, true, &mut reads, fanout, &mut next_probe, &sub_tx);
                }
                // Readiness checks whose caller gave up.
                health_waiters.retain(|(_, w)| !w.is_closed());
            }
            cmd = cmd_rx.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Cmd::Register { channel, call, local, ready } => {
                        // A new channel starts unproven; a proven one answers at once.
                        let entry = calls.entry(channel.clone()).or_insert_with(|| CallLocal {
                            call,
                            locals: Vec::new(),
                            last_seqs: Positions::default(),
                            fences: Fences::default(),
                            refence: Refence::Current,
                            pending: Some(PendingSubscription::unsent()),
                        });
                        entry.locals.push(local);
                        match &mut entry.pending {
                            None => {
                                let _ = ready.send(Ok(()));
                            }
                            Some(p) => {
                                p.waiting_since.get_or_insert_with(std::time::Instant::now);
                                p.waiters.push(ready);
                                if p.due() {
                                    p.send(&channel, fanout, &mut next_probe, &sub_tx);
                                }
                            }
                        }
                        metrics.calls.set(calls.len() as i64);
                    }
                    Cmd::Seated { channel, id, fences } => {
                        if let Some(entry) = calls.get_mut(&channel) {
                            for l in entry.locals.iter_mut().filter(|l| l.id == id) {
                                l.seated = true;
                            }
                            entry.fences.extend(&fences);
                        }
                    }
                    Cmd::KeptFences { ticket, read } => {
                        reads.answered(&mut calls, ticket, read, &metrics);
                    }
                    Cmd::SubscribeFailed { channel, probe, error } => {
                        if channel == health_channel {
                            // Dropping the sender answers "not ready".
                            health_waiters.retain(|(p, _)| *p != probe);
                            continue;
                        }
                        if let Some(entry) = calls.get_mut(&channel)
                            && entry.pending.as_ref().is_some_and(|p| p.probe == probe)
                            && let Some(p) = entry.pending.take()
                        {
                            for w in p.waiters {
                                let _ = w.send(Err(HubError::from(error.clone())));
                            }
                            // The next registration subscribes again.
                            entry.pending = Some(PendingSubscription::unsent());
                        }
                    }
                    Cmd::Unregister { channel, id } => {
                        if let Some(entry) = calls.get_mut(&channel) {
                            entry.locals.retain(|l| l.id != id);
                            if entry.locals.is_empty() {
                                calls.remove(&channel);
                                let _ = sub_tx.send(SubCmd::Unsubscribe { channel, fanout });
                            }
                        }
                        metrics.calls.set(calls.len() as i64);
                    }
                    Cmd::Snapshot(reply) => {
                        let snap = calls
                            .values()
                            .map(|c| CallSnapshot {
                                call: c.call.clone(),
                                last_seqs: c.last_seqs.clone(),
                                locals: c
                                    .locals
                                    .iter()
                                    .filter(|l| l.seated)
                                    .map(|l| (l.participant.clone(), l.role, l.conn.clone(), l.tx.clone()))
                                    .collect(),
                            })
                            .collect();
                        let _ = reply.send(snap);
                    }
                    Cmd::ResyncIfBehind { channel, sender, seq } => {
                        if let Some(c) = calls.get_mut(&channel)
                            && c.last_seqs.of(sender) < seq
                        {
                            resync(c);
                        }
                    }
                    Cmd::ResyncAll => {
                        for (channel, c) in &mut calls {
                            resync(c);
                            // After a reconnect a shard may have moved (failover): subscribe
                            // on whichever node owns the slot now, and prove it again.
                            if fanout == Fanout::Sharded {
                                let p = c.pending.get_or_insert_with(PendingSubscription::unsent);
                                p.send(channel, fanout, &mut next_probe, &sub_tx);
                            }
                        }
                    }
                    Cmd::Ready(reply) => {
                        next_probe += 1;
                        health_waiters.push((next_probe, reply));
                        // Classic on every deployment: any node of a cluster answers it.
                        let _ = sub_tx.send(SubCmd::Subscribe {
                            channel: health_channel.clone(),
                            probe: next_probe,
                            fanout: Fanout::Classic,
                        });
                    }
                }
            }
            msg = messages.recv() => {
                match msg {
                    Ok(msg) => {
                        // Before any frame the new connection carried (one uncontended lock).
                        if reconnected(&mut reconnects) {
                            lost_markers(&mut calls, true, &mut reads, fanout, &mut next_probe, &sub_tx);
                        }
                        if *msg.channel == *health_channel {
                            let probe = msg
                                .value
                                .as_str()
                                .and_then(|t| serde_json::from_str::<Head<'_>>(&t).ok().and_then(|h| {
                                    (h.replica == Some(&*replica)).then_some(h.probe).flatten()
                                }));
                            if let Some(probe) = probe {
                                let stuck = calls.values().any(|c| {
                                    c.pending.as_ref().is_some_and(|p| {
                                        p.waiting_since.is_some_and(|t| t.elapsed() > SUBSCRIBE_TIMEOUT)
                                    })
                                });
                                let (answered, rest) = std::mem::take(&mut health_waiters)
                                    .into_iter()
                                    .partition(|(p, _)| *p <= probe);
                                health_waiters = rest;
                                for (_, w) in answered {
                                    let _ = w.send(!stuck);
                                }
                            }
                            continue;
                        }
                        let Some(entry) = calls.get_mut(&*msg.channel) else { continue };
                        let Some(bytes) = msg.value.into_bytes() else { continue };
                        let Ok(text) = Utf8Bytes::try_from(bytes) else { continue };
                        let action = route(entry, &text, &replica, &mut routed);
                        for (i, delivery) in routed.drain(..) {
                            offer(&entry.locals[i], delivery);
                        }
                        match action {
                            None => {}
                            Some(Action::Proven) => {
                                if let Some(p) = entry.pending.take() {
                                    for w in p.waiters {
                                        let _ = w.send(Ok(()));
                                    }
                                }
                                // Proven after a reconnect: a `seat` marker published while
                                // the subscription was down is in the kept fences now.
                                if entry.refence == Refence::Unproven {
                                    entry.refence = Refence::Queued;
                                    reads.queue.push(msg.channel.to_string());
                                }
                            }
                            Some(Action::EndCall { reason }) => {
                                if let Some(hub) = hub.upgrade() {
                                    let call = entry.call.clone();
                                    tokio::spawn(async move {
                                        let _ = hub.end(&call, &reason, false).await;
                                    });
                                }
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "pub/sub queue lagged; sessions resync from the call log");
                        for c in calls.values_mut() {
                            resync(c);
                        }
                        lost_markers(&mut calls, false, &mut reads, fanout, &mut next_probe, &sub_tx);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }
}

/// Whether the subscriber connection was made again since the last check (drains the
/// notices).
fn reconnected(
    notices: &mut tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) -> bool {
    if notices.is_empty() {
        return false;
    }
    while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
        notices.try_recv()
    {}
    true
}

/// Most calls whose kept fences one read asks for (one pipeline per slot).
const FENCE_READ_BATCH: usize = 512;

/// The reads of kept fences ([`Refence`]) the router asked for: one batch in flight at a time.
#[derive(Default)]
struct FenceReads {
    /// Channels waiting for the next batch.
    queue: Vec<String>,
    /// Channels whose read failed: queued again at the next retry tick.
    failed: Vec<String>,
    /// The ticket of the batch in flight.
    in_flight: Option<u64>,
    last_ticket: u64,
}

impl FenceReads {
    /// Ask the hub for the next batch if none is in flight.
    fn dispatch(&mut self, calls: &mut HashMap<String, CallLocal>, hub: &std::sync::Weak<Hub>) {
        while self.in_flight.is_none() && !self.queue.is_empty() {
            let Some(hub) = hub.upgrade() else { return };
            self.last_ticket += 1;
            let ticket = self.last_ticket;
            let take = self.queue.len().min(FENCE_READ_BATCH);
            let mut batch = Vec::with_capacity(take);
            for channel in self.queue.drain(..take) {
                if let Some(entry) = calls.get_mut(&channel)
                    && entry.refence == Refence::Queued
                {
                    entry.refence = Refence::Reading(ticket);
                    batch.push((channel, entry.call.clone()));
                }
            }
            if batch.is_empty() {
                continue;
            }
            self.in_flight = Some(ticket);
            tokio::spawn(async move { hub.reread_fences(ticket, batch).await });
        }
    }

    /// The read under `ticket` answered: install the fences; a call that waited for this read
    /// delivers relayed frames again, after its sessions resync from the senders' logs (they
    /// hold what was dropped meanwhile, and never a refused write).
    fn answered(
        &mut self,
        calls: &mut HashMap<String, CallLocal>,
        ticket: u64,
        read: Vec<(String, Result<Fences, HubError>)>,
        metrics: &Metrics,
    ) {
        if self.in_flight == Some(ticket) {
            self.in_flight = None;
        }
        for (channel, result) in read {
            let Some(entry) = calls.get_mut(&channel) else {
                continue;
            };
            let waited = entry.refence == Refence::Reading(ticket);
            match result {
                Ok(fences) => {
                    // Older reads add fences too: every kept fence is a real one.
                    entry.fences.extend(&fences);
                    if waited {
                        entry.refence = Refence::Current;
                        metrics.fence_rereads.inc();
                        resync(entry);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reading a call's kept fences failed; retrying");
                    if waited {
                        entry.refence = Refence::Queued;
                        self.failed.push(channel);
                    }
                }
            }
        }
    }
}

/// Pub/sub may have lost frames of every followed call, `seat` markers among them: each call
/// drops relayed frames until its kept fences are read again. `reconnected`: the subscriber
/// connection was made again, so each channel's subscription is proven again first (a read
/// before Redis applied the resubscription could miss a marker published in between);
/// otherwise (the broadcast lagged) the lost frames were published before now and the read
/// can go at once.
fn lost_markers(
    calls: &mut HashMap<String, CallLocal>,
    reconnected: bool,
    reads: &mut FenceReads,
    fanout: Fanout,
    next_probe: &mut u64,
    sub_tx: &mpsc::UnboundedSender<SubCmd>,
) {
    for (channel, entry) in calls.iter_mut() {
        if reconnected {
            entry.refence = Refence::Unproven;
            let p = entry
                .pending
                .get_or_insert_with(PendingSubscription::unsent);
            p.send(channel, fanout, next_probe, sub_tx);
        } else if !matches!(entry.refence, Refence::Unproven | Refence::Queued) {
            entry.refence = Refence::Queued;
            reads.queue.push(channel.clone());
        }
    }
}

fn resync(entry: &mut CallLocal) {
    for l in &entry.locals {
        let _ = l.tx.try_send(Delivery::Resync);
    }
}

/// What routing a frame asks the router to do besides delivering it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// The API ended the call: end it here too (drop its seats, log and acks; idempotent).
    EndCall { reason: String },
    /// The channel's pending subscription probe came back: answer its waiting registrations.
    Proven,
}

/// Decide what one frame published on a call's channel means for the call's local sessions:
/// push `(index into entry.locals, delivery)` pairs onto `out` (a buffer the caller reuses, so
/// routing allocates nothing per frame) and return the follow-up action, if any. No I/O: the
/// router loop queues the deliveries and performs the action. It updates the entry's own state
/// (the highest `seq` seen, which locals have seen their `seat` marker).
fn route(
    entry: &mut CallLocal,
    text: &Utf8Bytes,
    replica: &str,
    out: &mut Vec<(usize, Delivery)>,
) -> Option<Action> {
    let head = serde_json::from_str::<Head<'_>>(text).ok()?;
    match head.kind {
        "offer" | "answer" | "ice-candidate" | "hangup" => {
            if entry.refence != Refence::Current {
                // Pub/sub lost frames, maybe a `seat` marker: not delivered before the call's
                // kept fences are read again; the sessions resync from the logs then.
                return None;
            }
            let (Some(from), Some(seq)) = (head.from, head.seq) else {
                return None;
            };
            let sender = Sender::parse(from)?;
            if entry.fences.blocks(sender, seq) {
                // A replaced connection's message that its log refused: never delivered.
                return None;
            }
            // Numbers are contiguous per sender while one connection sends: a jump means
            // pub/sub lost one (a new connection of the sender jumps too: one harmless resync).
            let last = entry.last_seqs.of(sender);
            let gap = last != 0 && seq > last + 1;
            entry.last_seqs.advance(sender, seq);
            for (i, l) in entry.locals.iter().enumerate() {
                if l.participant.as_str() != from {
                    if gap {
                        out.push((i, Delivery::Resync));
                    }
                    out.push((
                        i,
                        Delivery::Frame {
                            text: text.clone(),
                            relayed: Some((sender, seq)),
                        },
                    ));
                }
            }
        }
        "peer-joined" | "peer-left" | "peer-reconnecting" | "peer-resumed" => {
            let subject = head.participant?;
            for (i, l) in entry.locals.iter().enumerate() {
                if l.participant.as_str() != subject {
                    out.push((
                        i,
                        Delivery::Frame {
                            text: text.clone(),
                            relayed: None,
                        },
                    ));
                }
            }
        }
        "call-ended" => {
            out.extend((0..entry.locals.len()).map(|i| (i, Delivery::Ended(text.clone()))));
        }
        "end-call" => {
            let Ok(CallControl::EndCall { reason }) = serde_json::from_str::<CallControl>(text)
            else {
                return None;
            };
            let frame = ended_frame(&reason);
            out.extend((0..entry.locals.len()).map(|i| (i, Delivery::Ended(frame.clone()))));
            return Some(Action::EndCall { reason });
        }
        "probe"
            if head.replica == Some(replica)
                && head.probe.is_some()
                && entry.pending.as_ref().map(|p| p.probe) == head.probe =>
        {
            return Some(Action::Proven);
        }
        "seat" => {
            let (Some(subject), Some(conn)) = (head.participant, head.conn) else {
                return None;
            };
            if let Some(fence) = head
                .fence
                .zip(Sender::parse(subject))
                .and_then(|(text, sender)| Fence::parse(sender, text))
            {
                entry.fences.insert(fence);
            }
            for (i, l) in entry.locals.iter_mut().enumerate() {
                if l.participant.as_str() == subject && &*l.conn == conn {
                    l.seam = true;
                    out.push((i, Delivery::Seam));
                }
            }
        }
        "replaced" => {
            let (Some(subject), Some(conn)) = (head.participant, head.conn) else {
                return None;
            };
            for (i, l) in entry.locals.iter().enumerate() {
                if l.participant.as_str() == subject && &*l.conn != conn && l.seam {
                    out.push((i, Delivery::Replaced));
                }
            }
        }
        _ => {}
    }
    None
}

/// Queue a delivery without waiting; a session whose queue is full is flagged to resync
/// once it drains (the senders' logs hold the relayed messages it missed).
fn offer(local: &Local, delivery: Delivery) {
    if let Err(mpsc::error::TrySendError::Full(_)) = local.tx.try_send(delivery) {
        local.resync.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hermes_proto::signal::ServerMessage;
    use rand::SeedableRng;

    /// A local session with a queue nobody reads: `route` never touches it.
    fn local(id: u64, participant: &ParticipantId, conn: &str) -> Local {
        let (tx, _rx) = mpsc::channel(1);
        Local {
            id,
            participant: participant.clone(),
            role: Role::Offerer,
            conn: conn.into(),
            tx,
            resync: Arc::new(AtomicBool::new(false)),
            seated: true,
            seam: false,
        }
    }

    /// Participants a (two connections: "a1", "a2") and b ("b1"), plus observer o ("o1").
    fn entry() -> (CallLocal, [ParticipantId; 3]) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        let ids = [
            ParticipantId::random(&mut rng),
            ParticipantId::random(&mut rng),
            ParticipantId::random(&mut rng),
        ];
        let entry = CallLocal {
            call: CallId::random(&mut rng),
            locals: vec![
                local(1, &ids[0], "a1"),
                local(2, &ids[0], "a2"),
                local(3, &ids[1], "b1"),
                local(4, &ids[2], "o1"),
            ],
            last_seqs: Positions::default(),
            fences: Fences::default(),
            refence: Refence::Current,
            pending: None,
        };
        (entry, ids)
    }

    fn run(entry: &mut CallLocal, text: &str) -> (Vec<(usize, Delivery)>, Option<Action>) {
        let mut out = Vec::new();
        let action = route(entry, &Utf8Bytes::from(text.to_owned()), "r1", &mut out);
        (out, action)
    }

    #[test]
    fn a_relayed_message_reaches_the_others_but_not_its_sender() {
        let (mut e, ids) = entry();
        let hangup = |seq| {
            serde_json::to_string(&ServerMessage::Hangup {
                from: ids[0].clone(),
                seq,
            })
            .unwrap()
        };
        let (out, action) = run(&mut e, &hangup(1));
        assert_eq!(action, None);
        let targets: Vec<usize> = out.iter().map(|(i, _)| *i).collect();
        assert_eq!(targets, [2, 3]);
        for (_, d) in &out {
            assert!(
                matches!(d, Delivery::Frame { relayed: Some((s, 1)), text } if **text == hangup(1) && *s == Sender::of(&ids[0]))
            );
        }
        let a = Sender::of(&ids[0]);
        assert_eq!(e.last_seqs.of(a), 1);
        // A jump in seq (2 was lost) makes each recipient resync before the frame.
        let (out, _) = run(&mut e, &hangup(3));
        assert!(matches!(
            out[..],
            [
                (2, Delivery::Resync),
                (
                    2,
                    Delivery::Frame {
                        relayed: Some((_, 3)),
                        ..
                    }
                ),
                (3, Delivery::Resync),
                (
                    3,
                    Delivery::Frame {
                        relayed: Some((_, 3)),
                        ..
                    }
                ),
            ]
        ));
        assert_eq!(e.last_seqs.of(a), 3);
        // Numbers are per sender: another sender's first number is no gap, whatever it is.
        let from_b = serde_json::to_string(&ServerMessage::Hangup {
            from: ids[1].clone(),
            seq: 1_000,
        })
        .unwrap();
        let (out, _) = run(&mut e, &from_b);
        assert!(
            out.iter().all(|(_, d)| !matches!(d, Delivery::Resync)),
            "{out:?}"
        );
        assert_eq!(e.last_seqs.of(Sender::of(&ids[1])), 1_000);
        assert_eq!(e.last_seqs.of(a), 3);
    }

    #[test]
    fn seat_marks_only_the_matching_connection() {
        let (mut e, ids) = entry();
        let seat = CallControl::Seat {
            participant_id: ids[0].clone(),
            conn: "a2".into(),
            fence: None,
        }
        .to_json();
        let (out, action) = run(&mut e, &seat);
        assert_eq!(action, None);
        assert!(matches!(out[..], [(1, Delivery::Seam)]));
        let seams: Vec<bool> = e.locals.iter().map(|l| l.seam).collect();
        assert_eq!(seams, [false, true, false, false]);
    }

    #[test]
    fn a_fence_drops_the_replaced_connections_refused_numbers_only() {
        let (mut e, ids) = entry();
        let from = |seq| {
            serde_json::to_string(&ServerMessage::Hangup {
                from: ids[0].clone(),
                seq,
            })
            .unwrap()
        };
        let delivered = |out: &[(usize, Delivery)]| {
            out.iter()
                .filter(|(_, d)| matches!(d, Delivery::Frame { .. }))
                .count()
        };
        let (out, _) = run(&mut e, &from(4));
        assert_eq!(delivered(&out), 2, "before any fence: to the others");
        let seat = CallControl::Seat {
            participant_id: ids[0].clone(),
            conn: "a3".into(),
            fence: Some("5:9".into()),
        }
        .to_json();
        run(&mut e, &seat);
        // 6..=8: the old connection's writes its log refused. 5 was stored (late publish).
        for refused in [6, 7, 8] {
            let (out, _) = run(&mut e, &from(refused));
            assert!(out.is_empty(), "{refused} must be dropped");
        }
        let (out, _) = run(&mut e, &from(5));
        assert_eq!(delivered(&out), 2);
        let (out, _) = run(&mut e, &from(9));
        assert_eq!(delivered(&out), 2, "the new connection's first number");
        // Another sender's numbers are not fenced.
        let other = serde_json::to_string(&ServerMessage::Hangup {
            from: ids[1].clone(),
            seq: 7,
        })
        .unwrap();
        let (out, _) = run(&mut e, &other);
        assert_eq!(delivered(&out), 3);
    }

    #[test]
    fn after_a_loss_relayed_frames_wait_for_the_kept_fences_and_the_rest_routes() {
        let (mut e, ids) = entry();
        let a = Sender::of(&ids[0]);
        let from = |seq| {
            serde_json::to_string(&ServerMessage::Hangup {
                from: ids[0].clone(),
                seq,
            })
            .unwrap()
        };
        run(&mut e, &from(4));
        for state in [Refence::Unproven, Refence::Queued, Refence::Reading(3)] {
            e.refence = state;
            let (out, _) = run(&mut e, &from(6));
            assert!(out.is_empty(), "{state:?}: {out:?}");
        }
        assert_eq!(e.last_seqs.of(a), 4, "a dropped frame was not seen");
        // A marker seen meanwhile still brings its fence; presence still reaches the others.
        let seat = CallControl::Seat {
            participant_id: ids[0].clone(),
            conn: "a3".into(),
            fence: Some("5:9".into()),
        }
        .to_json();
        run(&mut e, &seat);
        assert!(e.fences.blocks(a, 6));
        let joined = serde_json::to_string(&ServerMessage::PeerJoined {
            participant_id: ids[1].clone(),
            role: Role::Answerer,
        })
        .unwrap();
        let (out, _) = run(&mut e, &joined);
        let targets: Vec<usize> = out.iter().map(|(i, _)| *i).collect();
        assert_eq!(targets, [0, 1, 3]);
        // Fences current again: delivered, after a resync for the numbers dropped.
        e.refence = Refence::Current;
        let (out, _) = run(&mut e, &from(9));
        assert!(matches!(
            out[..],
            [(2, Delivery::Resync), (2, Delivery::Frame { .. }), ..]
        ));
    }

    #[test]
    fn a_reconnect_proves_each_channel_before_its_read_and_a_lag_reads_at_once() {
        let (tx, mut sub_rx) = mpsc::unbounded_channel();
        let mut calls: HashMap<String, CallLocal> = HashMap::new();
        calls.insert("c1".into(), entry().0);
        calls.insert("c2".into(), entry().0);
        let mut reads = FenceReads::default();
        let mut probe = 0;
        lost_markers(
            &mut calls,
            true,
            &mut reads,
            Fanout::Classic,
            &mut probe,
            &tx,
        );
        let mut subscribed = Vec::new();
        while let Ok(SubCmd::Subscribe { channel, .. }) = sub_rx.try_recv() {
            subscribed.push(channel);
        }
        subscribed.sort();
        assert_eq!(subscribed, ["c1", "c2"]);
        assert!(reads.queue.is_empty(), "no read before the proof");
        assert!(
            calls.values().all(|c| c.refence == Refence::Unproven
                && c.pending.as_ref().is_some_and(|p| p.probe > 0))
        );
        // A lag leaves unproven channels to their proof, and queues the others for a read.
        calls.get_mut("c2").unwrap().refence = Refence::Reading(1);
        lost_markers(
            &mut calls,
            false,
            &mut reads,
            Fanout::Classic,
            &mut probe,
            &tx,
        );
        assert_eq!(reads.queue, ["c2"]);
        assert_eq!(calls["c1"].refence, Refence::Unproven);
        assert_eq!(calls["c2"].refence, Refence::Queued);
        assert!(sub_rx.try_recv().is_err(), "a lag subscribes nothing");
    }

    #[test]
    fn a_read_of_kept_fences_releases_only_the_calls_that_waited_for_it() {
        let (mut c1, ids) = entry();
        let (resync_tx, mut resync_rx) = mpsc::channel(4);
        c1.locals[2].tx = resync_tx;
        c1.refence = Refence::Reading(1);
        let mut c2 = entry().0;
        // Another loss after read 1 was sent: c2 waits for read 2.
        c2.refence = Refence::Reading(2);
        let mut calls: HashMap<String, CallLocal> = HashMap::new();
        calls.insert("c1".into(), c1);
        calls.insert("c2".into(), c2);
        let mut reads = FenceReads {
            in_flight: Some(1),
            last_ticket: 2,
            ..Default::default()
        };
        let a = Sender::of(&ids[0]);
        let mut fences = Fences::default();
        fences.insert(Fence {
            sender: a,
            stored: 5,
            first: 9,
        });
        let read = vec![
            ("c1".to_owned(), Ok(fences.clone())),
            ("c2".to_owned(), Ok(fences.clone())),
            ("gone".to_owned(), Ok(fences.clone())),
        ];
        let metrics = Metrics::default();
        reads.answered(&mut calls, 1, read, &metrics);
        assert_eq!(metrics.fence_rereads.get(), 1);
        assert_eq!(reads.in_flight, None);
        assert_eq!(calls["c1"].refence, Refence::Current);
        assert!(matches!(resync_rx.try_recv(), Ok(Delivery::Resync)));
        assert_eq!(
            calls["c2"].refence,
            Refence::Reading(2),
            "still waits for its read"
        );
        assert!(calls["c1"].fences.blocks(a, 6) && calls["c2"].fences.blocks(a, 6));
        // A failed read is retried (at the next tick).
        let failed = vec![("c2".to_owned(), Err(HubError::BadReply("fences (HGETALL)")))];
        reads.answered(&mut calls, 2, failed, &metrics);
        assert_eq!(metrics.fence_rereads.get(), 1);
        assert_eq!(calls["c2"].refence, Refence::Queued);
        assert_eq!(reads.failed, ["c2"]);
    }

    #[test]
    fn replaced_targets_only_the_other_connections_of_the_participant() {
        let (mut e, ids) = entry();
        for l in &mut e.locals {
            l.seam = true;
        }
        let replaced = CallControl::Replaced {
            participant_id: ids[0].clone(),
            conn: "a2".into(),
        }
        .to_json();
        let (out, action) = run(&mut e, &replaced);
        assert_eq!(action, None);
        assert!(matches!(out[..], [(0, Delivery::Replaced)]));
        // A connection that has not seen its own seat marker yet is older news: left alone.
        e.locals[0].seam = false;
        let (out, _) = run(&mut e, &replaced);
        assert!(out.is_empty());
    }

    #[test]
    fn end_call_ends_every_local_session_and_asks_to_end_the_call() {
        let (mut e, _) = entry();
        let text = CallControl::EndCall {
            reason: "admin".into(),
        }
        .to_json();
        let (out, action) = run(&mut e, &text);
        assert_eq!(
            action,
            Some(Action::EndCall {
                reason: "admin".into()
            })
        );
        let targets: Vec<usize> = out.iter().map(|(i, _)| *i).collect();
        assert_eq!(targets, [0, 1, 2, 3]);
        let expected = ended_frame("admin");
        for (_, d) in &out {
            assert!(matches!(d, Delivery::Ended(f) if *f == expected));
        }
    }

    #[test]
    fn only_this_replicas_awaited_probe_proves_the_subscription() {
        let (mut e, _) = entry();
        let mut pending = PendingSubscription::unsent();
        pending.probe = 7;
        e.pending = Some(pending);
        let probe = |replica: &str, probe: u64| {
            CallControl::Probe {
                replica: replica.into(),
                probe,
            }
            .to_json()
        };
        assert_eq!(run(&mut e, &probe("r2", 7)).1, None);
        assert_eq!(run(&mut e, &probe("r1", 6)).1, None);
        let (out, action) = run(&mut e, &probe("r1", 7));
        assert_eq!(action, Some(Action::Proven));
        assert!(out.is_empty());
    }
}
