//! Publishing [`LogEvent`]s: PUBLISH on `logs:{service}` for live followers and XADD to the
//! capped `logs-history` stream for `hermes-logger --since`.
//!
//! `emit` never waits on Redis: events go through a bounded queue to one background task, so
//! a slow or absent Redis cannot stall request handling. When the queue is full the event is
//! dropped and counted.

use fred::prelude::*;
use fred::types::streams::XCapKind;
use hermes_proto::keys::{LOG_HISTORY_MAXLEN, LOG_HISTORY_STREAM};
use hermes_proto::{CallEvent, CallId, LogEvent, LogLevel};
use tokio::sync::mpsc;

use crate::metrics::Counter;

/// Queue depth between emitters and the publishing task.
const QUEUE: usize = 8192;

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
            while let Some(event) = rx.recv().await {
                let Ok(json) = serde_json::to_string(&event) else {
                    continue;
                };
                let channel = event.channel();
                if let Err(e) = client.publish::<i64, _, _>(channel, json.as_str()).await {
                    tracing::debug!(error = %e, "log event not published");
                    continue;
                }
                let _ = client
                    .xadd::<Value, _, _, _, _>(
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
                    )
                    .await;
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
