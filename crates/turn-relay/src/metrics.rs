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
    registry: Registry,
}

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
            registry,
        }
    }
}

impl Metrics {
    pub fn quota(&self, q: Quota) -> &Counter {
        self.quota_hits.get(q as usize)
    }

    /// The OpenMetrics text of `/metrics`.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
