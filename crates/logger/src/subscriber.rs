//! The Redis side of following live: a fred subscriber client on `logs:*` that reconnects
//! forever with capped exponential backoff, and [`Link`], the pure bookkeeping that turns
//! fred's connection notifications into "resubscribe now and print one gap line".
//!
//! The logger resubscribes itself (instead of fred's `manage_subscriptions`) so that the gap
//! line is printed only once the subscription is back, i.e. when events flow again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Message;
use hermes_proto::keys::LOG_CHANNEL_PATTERN;
use hermes_service::redis::ClientOptions;
use tokio::sync::{broadcast, mpsc};

/// Prefix of each logger's private seam-marker channel (outside `logs:*`, so no other logger
/// sees the marker); the subscriber client's id follows.
pub const SEAM_CHANNEL_PREFIX: &str = "hermes-logger:seam:";
/// Capacity of fred's message broadcast. fred has no backpressure: its reader pushes every
/// received message into this ring and a receiver that falls a whole ring behind loses
/// messages. The relay thread below empties it as fast as fred fills it; 64 Ki slots give it
/// slack when the machine is busy.
pub const MESSAGE_BUFFER: usize = 1 << 16;
/// Upper bound of payload bytes queued between the relay and the renderer. Bursts faster than
/// the renderer (a benchmark, a flood) wait here; beyond it events are skipped and the console
/// says how many. Bounded so a flood cannot exhaust memory.
pub const QUEUE_BYTES: usize = 256 << 20;
/// Bookkeeping bytes counted per queued message besides its payload.
const MESSAGE_OVERHEAD: usize = 128;
/// Client settings shared by the subscriber and the history reader: the services' shared
/// builder (reconnecting forever, first connection included, so a console started before
/// Redis simply waits for it), with connections named after the client id so `CLIENT LIST`
/// can show whether the subscriber connection really is subscribed (see `subscribe`), and
/// fred's broadcast ring as large as [`MESSAGE_BUFFER`].
fn builder(url: &str) -> Result<Builder, Error> {
    hermes_service::redis::builder(
        url,
        &ClientOptions {
            broadcast_capacity: Some(MESSAGE_BUFFER),
            name_connections: true,
        },
    )
}

/// Keep the subscriber (and the command client) off a primary that hangs, as signal and the api
/// do: fred leaves a node only on a redirect or a lost connection, and a hung one (SIGSTOP, a
/// partition) breaks neither, so without this a console would stay silent for as long as the
/// old primary hangs after its replica took over
/// ([`hermes_service::redis::spawn_hung_primary_watch`]). The forced reconnect reaches
/// [`Link`] like any other, so the console resubscribes and prints its one gap line.
pub fn watch_hung_primary(
    commands: &Client,
    subscriber: &SubscriberClient,
    shutdown: hermes_service::shutdown::CancellationToken,
) {
    hermes_service::redis::spawn_hung_primary_watch(
        vec![commands.clone()],
        vec![subscriber.clone()],
        move || !shutdown.is_cancelled(),
    );
}

/// A command client (history reads, subscription checks), connecting in the background.
pub fn command_client(url: &str) -> Result<Client, Error> {
    let client = builder(url)?.build()?;
    client.connect();
    Ok(client)
}

/// The subscriber client and its notification streams.
pub struct Subscriber {
    pub client: SubscriberClient,
    /// This logger's private channel for the `--since` seam marker (see [`crate::history`]).
    pub seam_channel: String,
    pub queue: Queue,
    pub reconnects: broadcast::Receiver<Server>,
    pub errors: broadcast::Receiver<(Error, Option<Server>)>,
}

impl Subscriber {
    /// Build the client and start connecting in the background (retrying until Redis is up).
    pub fn start(url: &str) -> Result<Self, Error> {
        let client = builder(url)?.build_subscriber_client()?;
        let seam_channel = format!("{SEAM_CHANNEL_PREFIX}{}", client.id());
        let queue = Queue::relay(client.message_rx(), QUEUE_BYTES);
        let reconnects = client.reconnect_rx();
        let errors = client.error_rx();
        client.connect();
        Ok(Self {
            client,
            seam_channel,
            queue,
            reconnects,
            errors,
        })
    }

    /// Drop connection notifications queued before the first subscription (failed attempts
    /// while Redis was not up yet, the initial connect): they are not a gap.
    pub fn forget_startup(&mut self) {
        self.reconnects = self.reconnects.resubscribe();
        self.errors = self.errors.resubscribe();
    }

    /// PSUBSCRIBE `logs:*`, checked: fred reports success even when Redis refuses the
    /// pattern (e.g. `NOPERM` from an ACL without channel rights), so the result is confirmed
    /// with `CLIENT LIST` on `check` (skipped when that command is not allowed).
    ///
    /// On Redis Cluster the subscription lives on one node of several (classic PUBLISH reaches
    /// every node, so one is enough): every node the command client is connected to is asked.
    pub async fn subscribe(&self, check: &Client) -> Result<(), Error> {
        self.client.psubscribe(LOG_CHANNEL_PATTERN).await?;
        let list: Result<String, Error> = if check.is_clustered() {
            let mut all = String::new();
            let mut result = Ok(());
            for node in check.active_connections() {
                match client_list(&check.with_cluster_node(node)).await {
                    Ok(list) => all.push_str(&list),
                    Err(e) => result = Err(e),
                }
            }
            result.map(|()| all)
        } else {
            client_list(check).await
        };
        match list {
            Ok(list) if !is_subscribed(&list, self.client.id()) => Err(Error::new(
                ErrorKind::Auth,
                format!(
                    "Redis did not subscribe this connection to {LOG_CHANNEL_PATTERN} \
                     (does the Redis user have channel permissions?)"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// SUBSCRIBE the private seam channel, before the `--since` replay.
    pub async fn subscribe_seam(&self) -> Result<(), Error> {
        self.client.subscribe(self.seam_channel.as_str()).await
    }

    /// True for the seam marker (the only message on the private channel).
    pub fn is_seam_marker(&self, msg: &Message) -> bool {
        msg.channel.as_bytes() == self.seam_channel.as_bytes()
    }

    /// Close the connection (bounded: a dead Redis must not delay exit).
    pub async fn quit(&self) {
        let _ =
            tokio::time::timeout(hermes_service::redis::COMMAND_TIMEOUT, self.client.quit()).await;
    }
}

/// `CLIENT LIST TYPE pubsub` of the node `client` sends to.
async fn client_list(client: &impl ClientLike) -> Result<String, Error> {
    client
        .custom(
            fred::types::CustomCommand::new_static("CLIENT", None, false),
            vec!["LIST", "TYPE", "pubsub"],
        )
        .await
}

/// True when `CLIENT LIST` output shows the connection named `name` with a pattern
/// subscription.
pub fn is_subscribed(client_list: &str, name: &str) -> bool {
    client_list.lines().any(|line| {
        let mut named = false;
        let mut patterns = 0u64;
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("name=") {
                named = v == name;
            } else if let Some(v) = field.strip_prefix("psub=") {
                patterns = v.parse().unwrap_or(0);
            }
        }
        named && patterns > 0
    })
}

/// What the renderer receives.
#[derive(Debug)]
pub enum Item {
    Message(Message),
    /// This many messages were lost before the next one (queue full or fred's ring overrun).
    Skipped(u64),
}

/// The renderer's side of the relay: an unbounded channel whose payload bytes the relay caps
/// (at [`QUEUE_BYTES`] in the logger).
pub struct Queue {
    rx: mpsc::UnboundedReceiver<Item>,
    queued_bytes: Arc<AtomicUsize>,
}

fn cost(msg: &Message) -> usize {
    msg.value.as_bytes().map_or(0, <[u8]>::len) + MESSAGE_OVERHEAD
}

impl Queue {
    /// Start the relay: fred's broadcast → this queue, one cheap step per message. It runs on
    /// its own OS thread so that it keeps pace with fred's reader even while the renderer
    /// keeps both tokio workers busy with a burst (measured: as a tokio task it was starved
    /// and fred's ring overran).
    fn relay(mut messages: broadcast::Receiver<Message>, cap_bytes: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let bytes = queued_bytes.clone();
        let relay = move || {
            let mut skipped = 0u64;
            loop {
                match messages.blocking_recv() {
                    Ok(msg) => {
                        let size = cost(&msg);
                        if bytes.load(Ordering::Relaxed) + size > cap_bytes {
                            skipped += 1;
                            continue;
                        }
                        if skipped > 0
                            && tx
                                .send(Item::Skipped(std::mem::take(&mut skipped)))
                                .is_err()
                        {
                            break;
                        }
                        bytes.fetch_add(size, Ordering::Relaxed);
                        if tx.send(Item::Message(msg)).is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => skipped += n,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("logger-relay".into())
            .spawn(relay)
        {
            // Without the thread nothing would ever arrive; say so loudly (the queue reports
            // itself closed and the logger exits).
            tracing::error!(error = %e, "cannot start the relay thread");
        }
        Self { rx, queued_bytes }
    }

    /// The next item if one is waiting (`Err(Empty)` = time to flush).
    pub fn try_recv(&mut self) -> Result<Item, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }

    /// Wait for the next item; `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<Item> {
        self.rx.recv().await
    }

    /// A message was handled: its bytes leave the queue.
    pub fn done(&self, msg: &Message) {
        self.queued_bytes.fetch_sub(cost(msg), Ordering::Relaxed);
    }
}

/// What to do after fred reports a reconnection: PSUBSCRIBE again, then report the gap that
/// started at `lost_at` (unix ms; `None` if fred reported no error before reconnecting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resubscribe {
    pub lost_at: Option<u64>,
}

/// Connection bookkeeping, pure: fed fred's notifications with the current time.
///
/// Notifications from before the first subscription (failed attempts while Redis was not up
/// yet, the initial "reconnect") are dropped by the caller ([`Subscriber::forget_startup`]);
/// only what happens after [`Link::subscribed`] counts.
#[derive(Debug, Default)]
pub struct Link {
    subscribed: bool,
    lost_at: Option<u64>,
    /// A resubscription failed on a live connection (e.g. Redis still loading): retry on a
    /// timer, since no further reconnect event may come.
    retry: bool,
}

impl Link {
    /// Startup finished its PSUBSCRIBE.
    pub fn subscribed(&mut self) {
        self.subscribed = true;
        self.lost_at = None;
    }

    /// fred reported a connection error: the first one after being subscribed starts a gap.
    pub fn on_error(&mut self, now_ms: u64) {
        if self.subscribed {
            self.subscribed = false;
            self.lost_at.get_or_insert(now_ms);
        }
    }

    /// fred reported a new connection.
    pub fn on_reconnect(&self) -> Resubscribe {
        Resubscribe {
            lost_at: self.lost_at,
        }
    }

    /// The resubscription after a reconnect succeeded: the gap is over. Returns when it began,
    /// for the one line about it.
    pub fn resubscribed(&mut self) -> Option<u64> {
        self.subscribed = true;
        self.retry = false;
        self.lost_at.take()
    }

    /// The resubscription failed (Redis went away again): keep the gap open and wait for the
    /// next reconnect.
    pub fn resubscribe_failed(&mut self, now_ms: u64) {
        self.subscribed = false;
        self.retry = true;
        self.lost_at.get_or_insert(now_ms);
    }

    /// True while a failed resubscription should be retried on a timer.
    pub fn needs_retry(&self) -> bool {
        self.retry
    }

    pub fn is_subscribed(&self) -> bool {
        self.subscribed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::MessageKind;
    use std::time::Duration;

    fn message(i: usize) -> Message {
        Message {
            channel: "logs:api".into(),
            value: Value::from(format!("payload {i:03}")),
            kind: MessageKind::PMessage,
            server: Server::new("127.0.0.1", 6379),
        }
    }

    fn payload(item: &Item) -> String {
        match item {
            Item::Message(m) => {
                String::from_utf8_lossy(m.value.as_bytes().unwrap_or_default()).into_owned()
            }
            Item::Skipped(n) => format!("skipped {n}"),
        }
    }

    #[tokio::test]
    async fn relay_reports_a_ring_overrun_as_skipped_then_delivers_in_order() {
        let (tx, rx) = broadcast::channel(4);
        for i in 0..10 {
            tx.send(message(i)).expect("receiver exists");
        }
        drop(tx); // the relay drains what is left, then the queue closes
        let mut queue = Queue::relay(rx, QUEUE_BYTES);
        let mut got = Vec::new();
        while let Some(item) = queue.recv().await {
            if let Item::Message(m) = &item {
                queue.done(m);
            }
            got.push(payload(&item));
        }
        assert_eq!(
            got,
            [
                "skipped 6",
                "payload 006",
                "payload 007",
                "payload 008",
                "payload 009"
            ]
        );
        assert_eq!(queue.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn relay_caps_queued_bytes_and_counts_what_did_not_fit() {
        let (tx, rx) = broadcast::channel(64);
        let one = cost(&message(0));
        let mut queue = Queue::relay(rx, 2 * one);
        for i in 0..5 {
            tx.send(message(i)).expect("receiver exists");
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // the relay thread sees all five
        // Two fit; the renderer takes them, making room again.
        let a = queue.recv().await.expect("item");
        let b = queue.recv().await.expect("item");
        assert_eq!([payload(&a), payload(&b)], ["payload 000", "payload 001"]);
        for item in [&a, &b] {
            if let Item::Message(m) = item {
                queue.done(m);
            }
        }
        tx.send(message(5)).expect("receiver exists");
        let c = queue.recv().await.expect("item");
        let d = queue.recv().await.expect("item");
        assert_eq!([payload(&c), payload(&d)], ["skipped 3", "payload 005"]);
    }

    #[test]
    fn client_list_parsing() {
        let list = "id=3 addr=127.0.0.1:1 name=fred-abc db=0 sub=0 psub=1 cmd=psubscribe\n\
                    id=4 addr=127.0.0.1:2 name=fred-xyz db=0 sub=0 psub=0 cmd=client|setname\n";
        assert!(is_subscribed(list, "fred-abc"));
        assert!(!is_subscribed(list, "fred-xyz"), "named but not subscribed");
        assert!(!is_subscribed(list, "fred-ab"), "names match exactly");
        assert!(!is_subscribed("", "fred-abc"));
    }

    #[test]
    fn one_gap_per_outage_however_many_errors() {
        let mut link = Link::default();
        link.subscribed();
        link.on_error(1_000);
        link.on_error(1_100); // failed reconnect attempts
        link.on_error(1_300);
        assert!(!link.is_subscribed());
        assert_eq!(
            link.on_reconnect(),
            Resubscribe {
                lost_at: Some(1_000)
            }
        );
        assert_eq!(link.resubscribed(), Some(1_000));
        assert_eq!(link.resubscribed(), None, "reported once");
        // A second outage is a second gap.
        link.on_error(5_000);
        assert_eq!(
            link.on_reconnect(),
            Resubscribe {
                lost_at: Some(5_000)
            }
        );
    }

    #[test]
    fn errors_before_the_first_subscription_are_no_gap() {
        let mut link = Link::default();
        link.on_error(100); // Redis not up yet
        link.subscribed();
        assert!(link.is_subscribed());
        assert_eq!(link.on_reconnect(), Resubscribe { lost_at: None });
    }

    #[test]
    fn failed_resubscribe_keeps_the_gap_open() {
        let mut link = Link::default();
        link.subscribed();
        link.on_error(2_000);
        let _ = link.on_reconnect();
        link.resubscribe_failed(2_500);
        assert!(link.needs_retry());
        link.on_error(2_600);
        assert_eq!(
            link.on_reconnect(),
            Resubscribe {
                lost_at: Some(2_000)
            }
        );
    }
}
