//! The one place Hermes builds Redis clients and runs Lua scripts.
//!
//! Clients have bounded waits: commands fail fast while Redis is unreachable (so callers
//! answer 503 instead of hanging) and every client reconnects forever in the background
//! with capped exponential backoff — the *first* connection too, so a process started
//! before Redis simply waits for it — and service resumes without a restart.
//!
//! [`Script`] runs a Lua script by SHA (EVALSHA) and loads it (SCRIPT LOAD) only when Redis
//! answers NOSCRIPT: on first use, or after a Redis restart emptied the script cache.
//!
//! [`in_one_write`] sends a batch of commands so that fred writes it with one flush (a fred
//! `Pipeline` flushes after each command).
//!
//! [`ReplicaAck`] is the policy for writes that must survive a failover (a consumed one-time
//! code), under Sentinel or on a cluster: [`Script::run_then_wait`] follows the script with
//! `WAIT 1 <ms>` on the same connection (on a cluster: the one to the primary of the key's
//! slot), so the answer only goes out once a replica holds the write.

use std::time::Duration;

use fred::clients::{Pipeline, SubscriberClient, WithOptions};
use fred::interfaces::ClusterInterface;
use fred::prelude::*;
use fred::types::cluster::ClusterRouting;
use fred::types::{ClusterHash, CustomCommand, FromValue};
use sha1::{Digest, Sha1};

/// How long one command may take before the caller gets an error.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP connect to Redis may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: from 50 ms doubling up to 2 s, forever (0 = unlimited attempts).
const RECONNECT_MIN_MS: u32 = 50;
const RECONNECT_MAX_MS: u32 = 2_000;

/// What a client needs beyond the defaults every service shares.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientOptions {
    /// Capacity of fred's pub/sub message broadcast (fred's default when `None`). fred has
    /// no backpressure: a receiver that falls a whole ring behind loses messages, so a
    /// subscriber that takes bursts asks for a larger ring.
    pub broadcast_capacity: Option<usize>,
    /// Name every connection after the client id (CLIENT SETNAME), so `CLIENT LIST` can tell
    /// which connection is this client's.
    pub name_connections: bool,
}

/// The client builder every Hermes client comes from.
pub fn builder(url: &str, options: &ClientOptions) -> Result<Builder, Error> {
    let mut config = Config::from_url(url)?;
    // fred's `fail_fast` governs the *first* connection: with it set, a service started before
    // Redis would never connect. Commands still fail after COMMAND_TIMEOUT while disconnected.
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.internal_command_timeout = COMMAND_TIMEOUT;
            c.max_command_attempts = 2;
            c.auto_client_setname = options.name_connections;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
            if let Some(capacity) = options.broadcast_capacity {
                p.broadcast_channel_capacity = capacity;
            }
        })
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_MS,
            RECONNECT_MAX_MS,
            2,
        ));
    Ok(builder)
}

/// Wait up to `wait` for a client's first connection; either way the client keeps trying.
async fn wait_for_first_connect(client: &impl ClientLike, wait: Duration) {
    if tokio::time::timeout(wait, client.wait_for_connect())
        .await
        .is_err()
    {
        tracing::warn!("Redis not reachable yet; retrying in the background");
    }
}

/// A command client, connecting in the background. Waits up to `wait` for the first
/// connection and returns either way (check readiness with [`is_ready`]).
pub async fn connect(url: &str, wait: Duration) -> Result<Client, Error> {
    let client = builder(url, &ClientOptions::default())?.build()?;
    client.connect();
    wait_for_first_connect(&client, wait).await;
    Ok(client)
}

/// A subscriber client with default options (see [`connect_subscriber_with`]).
pub async fn connect_subscriber(url: &str, wait: Duration) -> Result<SubscriberClient, Error> {
    connect_subscriber_with(url, wait, &ClientOptions::default()).await
}

/// A subscriber client that re-subscribes to its channels after reconnecting. Waits up to
/// `wait` for the first connection and returns either way.
pub async fn connect_subscriber_with(
    url: &str,
    wait: Duration,
    options: &ClientOptions,
) -> Result<SubscriberClient, Error> {
    let client = builder(url, options)?.build_subscriber_client()?;
    client.connect();
    wait_for_first_connect(&client, wait).await;
    client.manage_subscriptions();
    Ok(client)
}

/// True when Redis answers PING within the command timeout. On a cluster, every primary of
/// the client's routing table must answer (pinged all at once): a key's slot can live on any
/// of them, so one unreachable primary fails every request that lands on it, until a replica
/// takes over its slots and the client's routing follows.
pub async fn is_ready(client: &Client) -> bool {
    if client.is_clustered() {
        return every_primary_answers(client).await;
    }
    answers_ping(client.ping::<String>(None)).await
}

async fn answers_ping(ping: impl Future<Output = Result<String, Error>>) -> bool {
    matches!(tokio::time::timeout(COMMAND_TIMEOUT, ping).await, Ok(Ok(_)))
}

async fn every_primary_answers(client: &Client) -> bool {
    let primaries = client
        .cached_cluster_state()
        .map(|routing| routing.unique_primary_nodes())
        .unwrap_or_default();
    if primaries.is_empty() {
        return false;
    }
    let mut pings = tokio::task::JoinSet::new();
    for server in primaries {
        let node = client.with_cluster_node(server);
        pings.spawn(async move { answers_ping(node.ping::<String>(None)).await });
    }
    pings.join_all().await.into_iter().all(|answered| answered)
}

/// How often the hung-primary watch of [`spawn_hung_primary_watch`] runs.
pub const HUNG_PRIMARY_CHECK: Duration = Duration::from_secs(1);

/// Start the watch that keeps `clients` and `subscribers` off a primary that hangs, every
/// [`HUNG_PRIMARY_CHECK`] while `alive()` holds: on a cluster [`resync_if_a_primary_hangs`]
/// (the first client is the probe), under Sentinel [`Sentinels::reconnect_if_the_primary_moved`].
/// Starts nothing on a single Redis. Every service (signal, the api, the logger) runs it for
/// all of its clients.
pub fn spawn_hung_primary_watch(
    clients: Vec<Client>,
    subscribers: Vec<SubscriberClient>,
    alive: impl Fn() -> bool + Send + 'static,
) {
    let Some(probe) = clients.first().cloned() else {
        return;
    };
    let sentinels = Sentinels::of(&probe);
    if sentinels.is_none() && !probe.is_clustered() {
        return;
    }
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(HUNG_PRIMARY_CHECK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if !alive() {
                break;
            }
            let clients: Vec<&Client> = clients.iter().collect();
            let subscribers: Vec<&SubscriberClient> = subscribers.iter().collect();
            match &sentinels {
                Some(sentinels) => {
                    sentinels
                        .reconnect_if_the_primary_moved(&clients, &subscribers)
                        .await;
                }
                None => {
                    resync_if_a_primary_hangs(&probe, &clients, &subscribers).await;
                }
            }
        }
    });
}

/// How long a primary of a cluster may take to answer the PING of [`resync_if_a_primary_hangs`]
/// before it counts as hung (a healthy one answers in well under a millisecond on a LAN).
pub const HUNG_PRIMARY_TIMEOUT: Duration = Duration::from_secs(1);

/// One round of the watch that keeps clients of a Redis Cluster off a primary that hangs
/// (call it every second or so from a task the caller owns).
///
/// fred re-reads a cluster's slot map only on MOVED or a lost connection. A hung primary
/// (SIGSTOP, a partition) keeps its connections open and answers nothing: after its replica
/// has taken over its slots, every command for them would still go to it and time out, and a
/// subscription there would stay, for as long as it hangs (measured: no relay got through in
/// 30 s after the promotion). Worse, when it comes back it runs what was queued on those
/// connections before it learns that it was demoted, and publishes the results to whoever is
/// still subscribed there (measured: a stale join's `replaced` closed a live connection).
///
/// So: PING every primary of `probe`'s slot map at once; if one does not answer within
/// [`HUNG_PRIMARY_TIMEOUT`], re-read the slot map of the probe and of every other client
/// (`sync_cluster`); and re-read the slot map of any other client whose map differs from the
/// probe's (its last re-read may have failed, e.g. on the hung node). Before the promotion a
/// re-read changes nothing; after it a client routes the slots to the promoted replica,
/// connects to it (reported as a reconnect, so a subscriber re-subscribes there) and closes
/// its connection to the old primary. Returns whether a primary was hung. Does nothing off a
/// cluster.
pub async fn resync_if_a_primary_hangs(
    probe: &Client,
    clients: &[&Client],
    subscribers: &[&SubscriberClient],
) -> bool {
    if !probe.is_clustered() {
        return false;
    }
    let primaries = probe
        .cached_cluster_state()
        .map(|routing| routing.unique_primary_nodes())
        .unwrap_or_default();
    let mut pings = tokio::task::JoinSet::new();
    for server in primaries {
        let node = probe.with_cluster_node(server);
        pings.spawn(async move {
            matches!(
                tokio::time::timeout(HUNG_PRIMARY_TIMEOUT, node.ping::<String>(None)).await,
                Ok(Ok(_))
            )
        });
    }
    let hung = !pings.join_all().await.into_iter().all(|answered| answered);
    let mut syncs = tokio::task::JoinSet::new();
    if hung {
        tracing::warn!("a Redis Cluster primary does not answer: re-reading the slot map");
        let probe = probe.clone();
        syncs.spawn(async move { probe.sync_cluster().await });
    }
    let expected = slot_owners(probe.cached_cluster_state());
    for client in clients {
        if hung || slot_owners(client.cached_cluster_state()) != expected {
            let client = (*client).clone();
            syncs.spawn(async move { client.sync_cluster().await });
        }
    }
    for subscriber in subscribers {
        if hung || slot_owners(subscriber.cached_cluster_state()) != expected {
            let subscriber = (*subscriber).clone();
            syncs.spawn(async move { subscriber.sync_cluster().await });
        }
    }
    for result in syncs.join_all().await {
        if let Err(e) = result {
            tracing::warn!("re-reading the cluster's slot map failed: {e}");
        }
    }
    hung
}

/// The sentinels of a `redis-sentinel://` client, for the Sentinel side of the hung-primary
/// watch ([`Sentinels::reconnect_if_the_primary_moved`]). A hung primary under Sentinel stalls
/// its clients the same way as on a cluster (measured: a call relayed nothing for 90 s after
/// the promotion): fred asks the sentinels where the primary is only when it reconnects, and a
/// hung primary's connections never break.
pub struct Sentinels {
    clients: Vec<Client>,
    service: String,
    /// Rounds in a row that found a client on another node than the sentinels' primary.
    stale_rounds: std::sync::atomic::AtomicU32,
}

impl Sentinels {
    /// One client per sentinel named in `client`'s configuration (TLS as the client's, no
    /// credentials: like fred's own sentinel queries); None for other deployments.
    pub fn of(client: &Client) -> Option<Self> {
        let config = client.client_config();
        let ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } = &config.server
        else {
            return None;
        };
        let clients = hosts
            .iter()
            .filter_map(|host| {
                let mut sentinel = config.clone();
                sentinel.server = ServerConfig::Centralized {
                    server: host.clone(),
                };
                sentinel.username = None;
                sentinel.password = None;
                let mut builder = Builder::from_config(sentinel);
                builder
                    .set_connection_config(client.connection_config().clone())
                    .set_performance_config(client.perf_config());
                if let Some(policy) = client.client_reconnect_policy() {
                    builder.set_policy(policy);
                }
                let sentinel = builder.build().ok()?;
                sentinel.connect();
                Some(sentinel)
            })
            .collect();
        Some(Self {
            clients,
            service: service_name.clone(),
            stale_rounds: Default::default(),
        })
    }

    /// The primary the first sentinel that answers names.
    async fn primary(&self) -> Option<Server> {
        for sentinel in &self.clients {
            let ask = sentinel.custom::<Vec<String>, _>(
                CustomCommand::new_static("SENTINEL", ClusterHash::FirstKey, false),
                vec!["GET-MASTER-ADDR-BY-NAME", self.service.as_str()],
            );
            if let Ok(Ok(addr)) = tokio::time::timeout(HUNG_PRIMARY_TIMEOUT, ask).await
                && let [host, port] = addr.as_slice()
                && let Ok(port) = port.parse()
            {
                return Some(Server::new(host.as_str(), port));
            }
        }
        None
    }

    /// One round of the watch (call it every second or so): when, two rounds in a row, a
    /// client is connected to another node than the one the sentinels name as the primary (a
    /// failed-over primary that hangs: fred never leaves it by itself), force that client to
    /// reconnect, which asks the sentinels again. A client fred is reconnecting on its own
    /// (no connection, or a move within a round) is left alone. Returns whether it forced one.
    pub async fn reconnect_if_the_primary_moved(
        &self,
        clients: &[&Client],
        subscribers: &[&SubscriberClient],
    ) -> bool {
        use std::sync::atomic::Ordering;
        let Some(primary) = self.primary().await else {
            return false;
        };
        let elsewhere = |active: Vec<Server>| !active.is_empty() && !active.contains(&primary);
        let stale: Vec<usize> = clients
            .iter()
            .map(|c| c.active_connections())
            .chain(subscribers.iter().map(|c| c.active_connections()))
            .enumerate()
            .filter(|(_, active)| elsewhere(active.clone()))
            .map(|(i, _)| i)
            .collect();
        if stale.is_empty() {
            self.stale_rounds.store(0, Ordering::Relaxed);
            return false;
        }
        if self.stale_rounds.fetch_add(1, Ordering::Relaxed) < 1 {
            return false;
        }
        self.stale_rounds.store(0, Ordering::Relaxed);
        tracing::warn!(%primary, "connected to a node the sentinels no longer name: reconnecting");
        let mut reconnects = tokio::task::JoinSet::new();
        for i in stale {
            if let Some(client) = clients.get(i) {
                let client = (*client).clone();
                reconnects.spawn(async move { client.force_reconnection().await });
            } else if let Some(subscriber) = subscribers.get(i - clients.len()) {
                let subscriber = (*subscriber).clone();
                reconnects.spawn(async move { subscriber.force_reconnection().await });
            }
        }
        for result in reconnects.join_all().await {
            if let Err(e) = result {
                tracing::warn!("forced reconnection failed: {e}");
            }
        }
        true
    }
}

/// Each slot range of a client's slot map with its primary, to compare two clients' maps.
fn slot_owners(routing: Option<ClusterRouting>) -> Vec<(u16, u16, String)> {
    routing
        .map(|r| {
            r.slots()
                .iter()
                .map(|s| (s.start, s.end, s.primary.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a write that must survive a failover waits for a replica to acknowledge it
/// (`REDIS_REPLICA_ACK`; see docs/operations.md, "What a failover can lose").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ReplicaAck {
    /// `best-effort` on a `redis-sentinel://` or `redis-cluster://` URL (a replica exists to
    /// fail over to), `off` otherwise (a single Redis has no replica to wait for).
    #[default]
    Auto,
    /// Answer as soon as the primary has the write.
    Off,
    /// Wait up to the timeout for one replica; answer anyway if none acknowledged (logged and
    /// counted). Closes the trap whenever a replica is connected; stays available when none is.
    BestEffort,
    /// Wait up to the timeout for one replica; without its acknowledgement the request fails
    /// as unavailable (retryable). Durable, but unavailable while no replica is connected.
    Required,
}

/// [`ReplicaAck`] resolved against the Redis URL, with its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicy {
    Off,
    BestEffort(Duration),
    Required(Duration),
}

/// Longest `REDIS_REPLICA_ACK_TIMEOUT_MS`: the WAIT must end well before the command timeout.
pub const MAX_ACK_TIMEOUT: Duration = Duration::from_millis(1_500);

impl ReplicaAck {
    /// The policy for a service connected to `redis_url`, waiting up to `timeout`.
    pub fn policy(self, redis_url: &str, timeout: Duration) -> AckPolicy {
        match self {
            ReplicaAck::Auto if is_sentinel_url(redis_url) || is_cluster_url(redis_url) => {
                AckPolicy::BestEffort(timeout)
            }
            ReplicaAck::Auto | ReplicaAck::Off => AckPolicy::Off,
            ReplicaAck::BestEffort => AckPolicy::BestEffort(timeout),
            ReplicaAck::Required => AckPolicy::Required(timeout),
        }
    }
}

impl AckPolicy {
    /// How long to wait for a replica, None when the policy does not wait.
    pub fn timeout(self) -> Option<Duration> {
        match self {
            AckPolicy::Off => None,
            AckPolicy::BestEffort(t) | AckPolicy::Required(t) => Some(t),
        }
    }
}

/// True for the URL schemes of a Redis Cluster.
pub fn is_cluster_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    scheme.ends_with("-cluster")
}

/// True for the URL schemes of a Sentinel set-up.
pub fn is_sentinel_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    scheme.ends_with("-sentinel")
}

/// A new client with `client`'s configuration and its own connection, which never resends a
/// command after a reconnect: a `WAIT` resent on a new connection would count the replicas of
/// nothing this connection wrote and answer at once.
pub fn twin_without_resends(client: &Client) -> Result<Client, Error> {
    let mut connection = client.connection_config().clone();
    connection.max_command_attempts = 1;
    let mut builder = Builder::from_config(client.client_config());
    builder
        .set_connection_config(connection)
        .set_performance_config(client.perf_config());
    if let Some(policy) = client.client_reconnect_policy() {
        builder.set_policy(policy);
    }
    builder.build()
}

/// A Lua script run by SHA. Build it once (it hashes the source) and keep it.
#[derive(Debug, Clone)]
pub struct Script {
    lua: &'static str,
    sha: String,
}

impl Script {
    pub fn new(lua: &'static str) -> Self {
        let sha = Sha1::digest(lua.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self { lua, sha }
    }

    /// The script's SHA-1, as Redis names it.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// EVALSHA; on NOSCRIPT, SCRIPT LOAD and EVALSHA again. Loading (rather than EVAL) keeps
    /// the script in the cache for good: scripts cached by EVAL may be evicted (Redis 7.4+).
    /// On Redis Cluster the fallback is EVAL on the keys' node (a NOSCRIPT there costs one EVAL).
    pub async fn run<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, Error> {
        // Keys and values share their bytes (`Bytes`) with the Strings they come from, so
        // keeping a copy for the NOSCRIPT retry copies no argument text.
        let keys: Vec<Key> = keys.into_iter().map(Key::from).collect();
        let args: Vec<Value> = args.into_iter().map(Value::from).collect();
        match client
            .evalsha::<R, _, _, _>(self.sha.as_str(), keys.clone(), args.clone())
            .await
        {
            // On a cluster, SCRIPT LOAD would go to any node: EVAL goes, like the EVALSHA, to
            // the node of the keys, and caches the script there.
            Err(e) if e.details().starts_with("NOSCRIPT") && client.is_clustered() => {
                client.eval::<R, _, _, _>(self.lua, keys, args).await
            }
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let _: String = client.script_load(self.lua).await?;
                client
                    .evalsha::<R, _, _, _>(self.sha.as_str(), keys, args)
                    .await
            }
            other => other,
        }
    }

    /// The script, then `WAIT 1 <timeout>` in the same pipeline (one write on one connection,
    /// so the WAIT counts this script's writes). Returns the reply and how many replicas
    /// acknowledged. Run it on a client of its own ([`twin_without_resends`]): a WAIT holds
    /// every later command of its connection until it answers.
    ///
    /// On a cluster both commands are pinned to the primary that owns the first key's slot
    /// (in the client's routing table): the cluster client keeps one connection per node, so
    /// the WAIT follows the script on that connection (a keyless WAIT would go to any node).
    /// A WAIT that fails after the script ran (the slot moved in a failover, and the old
    /// primary, now a replica, refuses WAIT) counts as no acknowledgement, so the caller's
    /// policy decides, as for a timeout; the client's routing follows the move on its own.
    pub async fn run_then_wait<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<(R, u64), Error> {
        let keys: Vec<Key> = keys.into_iter().map(Key::from).collect();
        let args: Vec<Value> = args.into_iter().map(Value::from).collect();
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let mut loaded = false;
        loop {
            let pipeline = Pipeline::from(pinned_to_owner(client, keys.first())?);
            // fred's pipeline has no EVALSHA of its own; hashed on the first key (offset 2:
            // after the SHA and the key count) so a cluster client routes it by its keys.
            // After a NOSCRIPT on a cluster, EVAL (on the pinned node; SCRIPT LOAD would go
            // to any node) caches the script there.
            let eval_source = loaded && client.is_clustered();
            let mut eval = Vec::with_capacity(2 + keys.len() + args.len());
            eval.push(Value::from(if eval_source {
                self.lua
            } else {
                self.sha.as_str()
            }));
            eval.push(Value::from(keys.len() as i64));
            eval.extend(keys.iter().map(|k| Value::from(k.clone())));
            eval.extend(args.iter().cloned());
            let name = if eval_source { "EVAL" } else { "EVALSHA" };
            let _: () = pipeline
                .custom(
                    CustomCommand::new_static(name, ClusterHash::Offset(2), false),
                    eval,
                )
                .await?;
            let _: () = pipeline.wait(1, timeout_ms).await?;
            let mut replies = pipeline.try_all::<Value>().await.into_iter();
            let (Some(reply), Some(acked)) = (replies.next(), replies.next()) else {
                return Err(Error::new(ErrorKind::Protocol, "pipeline lost a reply"));
            };
            match reply {
                Err(e) if !loaded && e.details().starts_with("NOSCRIPT") => {
                    if !client.is_clustered() {
                        let _: String = client.script_load(self.lua).await?;
                    }
                    loaded = true;
                }
                Err(e) => return Err(e),
                Ok(reply) => {
                    let acked = match acked {
                        Ok(acked) => acked.as_u64().ok_or_else(|| {
                            Error::new(ErrorKind::Parse, "WAIT answered no count")
                        })?,
                        Err(e) if client.is_clustered() => {
                            tracing::warn!("WAIT after a durable write failed: {e}");
                            0
                        }
                        Err(e) => return Err(e),
                    };
                    return Ok((reply.convert()?, acked));
                }
            }
        }
    }
}

/// A command created but not yet sent (fred sends a command at its first poll), for
/// [`in_one_write`].
pub type Queued<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, Error>> + Send + 'a>>;

/// Send `commands` in their order and wait for every answer, in that order.
///
/// Each command's first poll hands it to the client's connection task, so polling all of them
/// once, in order, before waiting queues them together, and the connection task writes them
/// with a single flush: Redis reads them in one go. A fred `Pipeline` flushes after each of its
/// commands when nothing else is queued, so Redis woke for every command of a batch (measured
/// on the signal relay path: Redis made twice the bare forwarder's system calls per message).
/// On a multi-threaded runtime the connection task may start writing before the last command
/// is queued: then it takes two or three writes, still in order.
pub async fn in_one_write(commands: Vec<Queued<'_>>) -> Vec<Result<Value, Error>> {
    use std::task::{Context, Poll, Waker};
    enum Slot<'a> {
        Answered(Result<Value, Error>),
        Sent(Queued<'a>),
    }
    let slots: Vec<Slot<'_>> = {
        // A waker that does nothing: what is not answered yet is awaited below, with the
        // task's own.
        let mut cx = Context::from_waker(Waker::noop());
        commands
            .into_iter()
            .map(|mut command| match command.as_mut().poll(&mut cx) {
                Poll::Ready(answer) => Slot::Answered(answer),
                Poll::Pending => Slot::Sent(command),
            })
            .collect()
    };
    let mut answers = Vec::with_capacity(slots.len());
    for slot in slots {
        answers.push(match slot {
            Slot::Answered(answer) => answer,
            Slot::Sent(command) => command.await,
        });
    }
    answers
}

/// `client` with every command pinned to the primary that owns `key`'s slot on a cluster
/// (from the client's cached routing table); `client` as it is otherwise. A `WAIT` sent
/// through it follows the writes to `key` on their connection.
pub fn pinned_to_slot_owner(client: &Client, key: &str) -> Result<WithOptions<Client>, Error> {
    pinned_to_owner(client, Some(&Key::from(key)))
}

/// `client` with every command pinned to the primary that owns `key`'s slot on a cluster
/// (from the client's cached routing table); `client` as it is otherwise.
fn pinned_to_owner(client: &Client, key: Option<&Key>) -> Result<WithOptions<Client>, Error> {
    if !client.is_clustered() {
        return Ok(client.with_options(&Options::default()));
    }
    let key = key.ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no key to route by"))?;
    let slot = ClusterRouting::hash_key(key.as_bytes());
    let owner = client
        .cached_cluster_state()
        .and_then(|routing| routing.get_server(slot).cloned())
        .ok_or_else(|| Error::new(ErrorKind::Cluster, "no primary known for the key's slot"))?;
    Ok(client.with_cluster_node(owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ack_auto_waits_only_under_sentinel_or_on_a_cluster() {
        let t = Duration::from_millis(250);
        let sentinel = "redis-sentinel://s1:26379?sentinelServiceName=hermes";
        assert_eq!(
            ReplicaAck::Auto.policy(sentinel, t),
            AckPolicy::BestEffort(t)
        );
        assert_eq!(
            ReplicaAck::Auto.policy("rediss-sentinel://s1:26379", t),
            AckPolicy::BestEffort(t)
        );
        assert_eq!(
            ReplicaAck::Auto.policy("redis-cluster://127.0.0.1:7000", t),
            AckPolicy::BestEffort(t)
        );
        assert_eq!(
            ReplicaAck::Auto.policy("redis://127.0.0.1:6379", t),
            AckPolicy::Off
        );
        assert_eq!(ReplicaAck::Off.policy(sentinel, t), AckPolicy::Off);
        assert_eq!(
            ReplicaAck::Required.policy("redis://r:6379", t).timeout(),
            Some(t)
        );
    }

    #[test]
    fn script_sha_is_redis_sha1_of_the_source() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this SHA.
        assert_eq!(
            Script::new("return 1").sha(),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }

    /// Reads Redis has done so far (`total_reads_processed`, all clients).
    async fn reads_processed(client: &Client) -> u64 {
        let info: String = client
            .info(Some(fred::types::InfoKind::Stats))
            .await
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("total_reads_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_reads_processed")
    }

    /// A batch of commands reaches Redis as one write and is answered in order: awaited one by
    /// one (or as a fred `Pipeline`, which flushes after each command) they took a read each.
    #[tokio::test]
    async fn a_batch_of_commands_goes_in_one_write_and_answers_in_order() {
        let redis = hermes_testkit::RedisServer::start();
        let client = Builder::from_config(Config::from_url(&redis.url()).expect("url"))
            .build()
            .expect("client");
        client.init().await.expect("connect");
        for _ in 0..3 {
            let before = reads_processed(&client).await;
            let commands: Vec<Queued<'_>> = (0..64)
                .map(|i| -> Queued<'_> { Box::pin(client.rpush("batch", i)) })
                .collect();
            let answers = in_one_write(commands).await;
            // The batch's read, then the INFO's own.
            let reads = reads_processed(&client).await - before;
            assert!(reads <= 2, "{reads} reads for one batch");
            let lengths: Vec<i64> = answers
                .into_iter()
                .map(|a| a.expect("RPUSH").as_i64().expect("a length"))
                .collect();
            let first = lengths[0];
            assert_eq!(lengths, (first..first + 64).collect::<Vec<_>>());
        }
        let list: Vec<i64> = client.lrange("batch", 0, -1).await.expect("LRANGE");
        assert_eq!(list, (0..3).flat_map(|_| 0..64).collect::<Vec<_>>());
    }
}
