//! Prometheus metrics of one replica: lock-free counters the session and hub update with one
//! atomic add each, rendered as text on `/metrics`.

use hermes_service::metrics::{Counter, Gauge, Registry, render};

#[derive(Debug)]
pub struct Metrics {
    pub connections: Gauge,
    pub calls: Gauge,
    pub joins: Counter,
    pub resumes: Counter,
    pub refused: Counter,
    pub relayed: Counter,
    pub delivered: Counter,
    pub replayed: Counter,
    pub errors: Counter,
    pub abuse_closes: Counter,
    pub redis_errors: Counter,
    pub replica_ack_missing: Counter,
    pub fence_rereads: Counter,
    registry: Registry,
}

/// Metrics with a dropped-events counter of their own (tests that start a hub alone).
impl Default for Metrics {
    fn default() -> Self {
        Self::new(Counter::default())
    }
}

impl Metrics {
    /// Every metric registered once with its help text, and `events_dropped` (the log-event
    /// publisher's counter) beside them.
    pub fn new(events_dropped: Counter) -> Self {
        let mut registry = Registry::default();
        let connections = Gauge::registered(
            &mut registry,
            "hermes_signal_connections",
            "Open WebSocket connections (joined or not)",
        );
        let calls = Gauge::registered(
            &mut registry,
            "hermes_signal_calls",
            "Calls with a participant on this replica",
        );
        // Counters are registered without `_total`: the encoder adds it.
        let joins = Counter::registered(&mut registry, "hermes_signal_joins", "Admitted joins");
        let resumes = Counter::registered(
            &mut registry,
            "hermes_signal_resumes",
            "Joins that resumed a seat",
        );
        let refused = Counter::registered(
            &mut registry,
            "hermes_signal_refused",
            "Refused joins (call full or ended, bad token, bad origin)",
        );
        let relayed = Counter::registered(
            &mut registry,
            "hermes_signal_messages_relayed",
            "Messages relayed (stored and published) from this replica's clients",
        );
        let delivered = Counter::registered(
            &mut registry,
            "hermes_signal_messages_delivered",
            "Messages delivered to this replica's clients (live or replayed)",
        );
        let replayed = Counter::registered(
            &mut registry,
            "hermes_signal_messages_replayed",
            "Messages replayed from the call log on resume or resync",
        );
        let errors = Counter::registered(
            &mut registry,
            "hermes_signal_errors",
            "Error messages sent to clients",
        );
        let abuse_closes = Counter::registered(
            &mut registry,
            "hermes_signal_abuse_closes",
            "Connections closed for abuse with 1008",
        );
        let redis_errors = Counter::registered(
            &mut registry,
            "hermes_signal_redis_errors",
            "Failed Redis operations",
        );
        let replica_ack_missing = Counter::registered(
            &mut registry,
            "hermes_signal_replica_ack_missing",
            "Relays to an away participant no Redis replica acknowledged within \
             REDIS_REPLICA_ACK_TIMEOUT_MS (answered unavailable under required, sent otherwise)",
        );
        let fence_rereads = Counter::registered(
            &mut registry,
            "hermes_signal_fence_rereads",
            "Calls whose kept fences the router read again after pub/sub may have lost a seat \
             marker (a subscriber reconnect or a lagging broadcast)",
        );
        registry.register(
            "hermes_signal_events_dropped",
            "Log events dropped because the queue was full",
            events_dropped,
        );
        Self {
            connections,
            calls,
            joins,
            resumes,
            refused,
            relayed,
            delivered,
            replayed,
            errors,
            abuse_closes,
            redis_errors,
            replica_ack_missing,
            fence_rereads,
            registry,
        }
    }

    /// The OpenMetrics text of `/metrics`.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
