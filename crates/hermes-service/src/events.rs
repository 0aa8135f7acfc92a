//! Publishing [`LogEvent`]s: PUBLISH on `logs:{service}` for live followers and XADD to the
//! capped `logs-history` stream for `hermes-logger --since`.
//!
//! `emit` never waits on Redis: events go through a bounded queue to one background task, so
//! a slow or absent Redis cannot stall request handling. When the queue is full the event is
//! dropped and counted.
//!
//! The task sends what has queued up (up to [`BATCH`] events) as one pipeline, in order
//! (PUBLISH e1, XADD e1, PUBLISH e2, …): one round trip and one read on Redis's side per batch
//! instead of two awaited round trips per event (`stats` reports alone are one event per
//! participant every 5 s). The commands keep their order, so a follower that reads the history
//! and then the live channel sees the same sequence as before.

use fred::prelude::*;
use fred::types::streams::XCapKind;
use hermes_proto::keys::{LOG_HISTORY_MAXLEN, LOG_HISTORY_STREAM};
use hermes_proto::{CallEvent, CallId, LogEvent, LogLevel};
use tokio::sync::mpsc;

use crate::metrics::Counter;
use crate::redis::{Queued, in_one_write};

/// Queue depth between emitters and the publishing task.
const QUEUE: usize = 8192;
/// Most events per pipeline: 2 × 64 commands of at most a few kB each stay well under what
/// Redis reads in one go, and a batch never waits for more events than are already queued.
const BATCH: usize = 64;

#[derive(Clone, Debug)]
pub struct EventPublisher {
    service: &'static str,
    tx: mpsc::Sender<LogEvent>,
    dropped: Counter,
}

impl EventPublisher {
    /// Start the publishing task on `client`.
    pub fn spawn(client: Client, service: &'static str) -> Self {
        let (tx, mut rx) = mpsc::channel::<LogEvent>(QUEUE);
        let dropped = Counter::default();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                send_batch(&client, &batch).await;
                batch.clear();
            }
        });
        Self {
            service,
            tx,
            dropped,
        }
    }

    /// Queue an event; never blocks.
    pub fn emit(&self, event: LogEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.inc();
        }
    }

    /// Queue a typed event of this service (the one way every event is spelled alike).
    pub fn publish(&self, call: Option<&CallId>, event: CallEvent) {
        self.emit(event.into_log_event(crate::unix_now_ms(), self.service, call));
    }

    /// Build and queue an untyped event of this service (prefer [`EventPublisher::publish`]).
    pub fn event(
        &self,
        level: LogLevel,
        name: &str,
        call: Option<&CallId>,
        detail: serde_json::Value,
    ) {
        let mut event =
            LogEvent::new(crate::unix_now_ms(), self.service, level, name).detail(detail);
        if let Some(call) = call {
            event = event.call(call);
        }
        self.emit(event);
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// The dropped-events counter itself, to register in a service's metrics.
    pub fn dropped_counter(&self) -> Counter {
        self.dropped.clone()
    }

    pub fn service(&self) -> &'static str {
        self.service
    }
}

/// PUBLISH then XADD each event of `batch`, in order, as one pipeline written at once
/// ([`crate::redis::in_one_write`]). Failures are logged at debug level and the events
/// dropped: logging must never hold up the service.
async fn send_batch(client: &Client, batch: &[LogEvent]) {
    let mut commands: Vec<Queued<'_>> = Vec::with_capacity(2 * batch.len());
    for event in batch {
        let Ok(json) = serde_json::to_string(event) else {
            continue;
        };
        commands.push(Box::pin(client.publish(event.channel(), json.clone())));
        commands.push(Box::pin(client.xadd(
            LOG_HISTORY_STREAM,
            false,
            (
                XCapKind::MaxLen,
                "~",
                LOG_HISTORY_MAXLEN as i64,
                None::<i64>,
            ),
            "*",
            vec![("event", json)],
        )));
    }
    for result in in_one_write(commands).await {
        if let Err(e) = result {
            tracing::debug!(error = %e, "log event not published");
        }
    }
}
