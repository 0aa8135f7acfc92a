//! Live relay metrics (Prometheus text on `TURN_METRICS_LISTEN`).
//!
//! The core counts packets in plain integers on its own thread and folds them into these
//! atomics at least once a second (see `Server::flush_stats`), so the data path does no atomic
//! read-modify-write per packet while `/metrics` stays live during sessions.

use hermes_service::metrics::{Counter, Gauge, Labeled, Registry, render};

/// Reasons a quota refused something, as the `kind` label of `hermes_turn_quota_hits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    UserAllocations,
    TotalAllocations,
    Permissions,
    Bandwidth,
}

impl Quota {
    pub const ALL: [Quota; 4] = [
        Quota::UserAllocations,
        Quota::TotalAllocations,
        Quota::Permissions,
        Quota::Bandwidth,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Quota::UserAllocations => "user_allocations",
            Quota::TotalAllocations => "total_allocations",
            Quota::Permissions => "permissions",
            Quota::Bandwidth => "bandwidth",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub allocations_active: Gauge,
    pub allocations_total: Counter,
    pub packets_to_peer: Counter,
    pub bytes_to_peer: Counter,
    pub packets_to_client: Counter,
    pub bytes_to_client: Counter,
    pub dropped: Counter,
    pub auth_failures: Counter,
    pub peers_refused: Counter,
    quota_hits: Labeled<Counter>,
    pub tls_connections: Counter,
    pub tcp_connections: Counter,
    pub stream_connections_refused: Counter,
    pub gso_sends: Counter,
    pub gso_datagrams: Counter,
    /// 1 while draining.
    pub draining: Gauge,
    pub worker_threads: Gauge,
    pub worker_moves: Counter,
    /// Client connections closed by a worker, by [`STREAM_CLOSE_REASONS`].
    stream_closed: Labeled<Counter>,
    registry: Registry,
}

/// The `reason` labels of `hermes_turn_stream_connections_closed_total` (`io/stream_conn.rs`).
pub const STREAM_CLOSE_REASONS: [&str; 3] = ["gone", "garbage", "stalled"];

impl Default for Metrics {
    /// Every metric registered once with its help text.
    fn default() -> Self {
        let mut registry = Registry::default();
        // Counters are registered without `_total`: the encoder adds it.
        let allocations_total = Counter::registered(
            &mut registry,
            "hermes_turn_allocations",
            "Allocations created since start",
        );
        let packets_to_peer = Counter::registered(
            &mut registry,
            "hermes_turn_packets_to_peer",
            "Packets relayed from clients to peers",
        );
        let bytes_to_peer = Counter::registered(
            &mut registry,
            "hermes_turn_bytes_to_peer",
            "Payload bytes relayed from clients to peers",
        );
        let packets_to_client = Counter::registered(
            &mut registry,
            "hermes_turn_packets_to_client",
            "Packets relayed from peers to clients",
        );
        let bytes_to_client = Counter::registered(
            &mut registry,
            "hermes_turn_bytes_to_client",
            "Payload bytes relayed from peers to clients",
        );
        let dropped = Counter::registered(
            &mut registry,
            "hermes_turn_dropped",
            "Data packets dropped (no allocation, permission or channel; socket full)",
        );
        let auth_failures = Counter::registered(
            &mut registry,
            "hermes_turn_auth_failures",
            "Requests refused for bad, expired or unknown credentials",
        );
        let peers_refused = Counter::registered(
            &mut registry,
            "hermes_turn_peers_refused",
            "Peer addresses refused by the peer filter (403 or dropped Send)",
        );
        let tcp_connections = Counter::registered(
            &mut registry,
            "hermes_turn_stream_connections",
            "TCP and TLS client connections accepted",
        );
        let stream_connections_refused = Counter::registered(
            &mut registry,
            "hermes_turn_stream_connections_refused",
            "TCP and TLS client connections closed at accept: TURN_MAX_STREAM_CONNECTIONS reached",
        );
        let gso_sends = Counter::registered(
            &mut registry,
            "hermes_turn_gso_sends",
            "UDP GSO sends: several datagrams to one destination in one system call",
        );
        let gso_datagrams = Counter::registered(
            &mut registry,
            "hermes_turn_gso_datagrams",
            "Datagrams sent inside UDP GSO sends",
        );
        let tls_connections = Counter::registered(
            &mut registry,
            "hermes_turn_tls_connections",
            "TLS client connections accepted",
        );
        let worker_moves = Counter::registered(
            &mut registry,
            "hermes_turn_worker_moves",
            "Relay workers handed from one thread to another",
        );
        let quota_hits = Labeled::new(Quota::ALL.iter().map(|q| vec![("kind", q.label())]));
        registry.register(
            "hermes_turn_quota_hits",
            "Requests or packets refused by a quota",
            quota_hits.clone(),
        );
        let stream_closed = Labeled::new(STREAM_CLOSE_REASONS.iter().map(|r| vec![("reason", *r)]));
        registry.register(
            "hermes_turn_stream_connections_closed",
            "TCP and TLS client connections closed: gone (closed by the client or failed), garbage (bytes that are no STUN or ChannelData frame, TLS errors), stalled (a frame half-sent or output unread past TURN_STREAM_STALL_SECS, or 10 minutes silent)",
            stream_closed.clone(),
        );
        let allocations_active = Gauge::registered(
            &mut registry,
            "hermes_turn_allocations_active",
            "Allocations currently active",
        );
        let worker_threads = Gauge::registered(
            &mut registry,
            "hermes_turn_worker_threads",
            "Threads running relay workers now (adaptive: follows the load)",
        );
        let draining = Gauge::registered(
            &mut registry,
            "hermes_turn_draining",
            "1 while draining after SIGTERM (new allocations refused)",
        );
        Self {
            allocations_active,
            allocations_total,
            packets_to_peer,
            bytes_to_peer,
            packets_to_client,
            bytes_to_client,
            dropped,
            auth_failures,
            peers_refused,
            quota_hits,
            tls_connections,
            tcp_connections,
            stream_connections_refused,
            gso_sends,
            gso_datagrams,
            draining,
            worker_threads,
            worker_moves,
            stream_closed,
            registry,
        }
    }
}

impl Metrics {
    pub fn quota(&self, q: Quota) -> &Counter {
        self.quota_hits.get(q as usize)
    }

    /// Count a closed client connection (`reason` one of [`STREAM_CLOSE_REASONS`]).
    pub fn stream_closed(&self, reason: &str) {
        if let Some(i) = STREAM_CLOSE_REASONS.iter().position(|r| *r == reason) {
            self.stream_closed.get(i).inc();
        }
    }

    /// The OpenMetrics text of `/metrics`.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
