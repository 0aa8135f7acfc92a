//! Live relay metrics (Prometheus text on `TURN_METRICS_LISTEN`).
//!
//! The core counts packets in plain integers on its own thread and folds them into these
//! atomics at least once a second (see `Server::flush_stats`), so the data path does no atomic
//! read-modify-write per packet while `/metrics` stays live during sessions.

use std::sync::atomic::{AtomicBool, Ordering};

use hermes_service::metrics::{Counter, Gauge, header, sample};

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

#[derive(Debug, Default)]
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
    pub quota_hits: [Counter; 4],
    pub tls_connections: Counter,
    pub tcp_connections: Counter,
    pub stream_connections_refused: Counter,
    pub gso_sends: Counter,
    pub gso_datagrams: Counter,
    pub draining: AtomicBool,
    /// Threads running relay workers right now (`io/runner.rs`).
    pub worker_threads: Gauge,
    /// Workers handed from one thread to another since start.
    pub worker_moves: Counter,
}

impl Metrics {
    pub fn quota(&self, q: Quota) -> &Counter {
        &self.quota_hits[q as usize]
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let counters: [(&str, &str, &Counter); 12] = [
            (
                "hermes_turn_allocations_total",
                "Allocations created since start.",
                &self.allocations_total,
            ),
            (
                "hermes_turn_packets_to_peer_total",
                "Packets relayed from clients to peers.",
                &self.packets_to_peer,
            ),
            (
                "hermes_turn_bytes_to_peer_total",
                "Payload bytes relayed from clients to peers.",
                &self.bytes_to_peer,
            ),
            (
                "hermes_turn_packets_to_client_total",
                "Packets relayed from peers to clients.",
                &self.packets_to_client,
            ),
            (
                "hermes_turn_bytes_to_client_total",
                "Payload bytes relayed from peers to clients.",
                &self.bytes_to_client,
            ),
            (
                "hermes_turn_dropped_total",
                "Data packets dropped (no allocation, permission or channel; socket full).",
                &self.dropped,
            ),
            (
                "hermes_turn_auth_failures_total",
                "Requests refused for bad, expired or unknown credentials.",
                &self.auth_failures,
            ),
            (
                "hermes_turn_peers_refused_total",
                "Peer addresses refused by the peer filter (403 or dropped Send).",
                &self.peers_refused,
            ),
            (
                "hermes_turn_stream_connections_total",
                "TCP and TLS client connections accepted.",
                &self.tcp_connections,
            ),
            (
                "hermes_turn_stream_connections_refused_total",
                "TCP and TLS client connections closed at accept: TURN_MAX_STREAM_CONNECTIONS reached.",
                &self.stream_connections_refused,
            ),
            (
                "hermes_turn_gso_sends_total",
                "UDP GSO sends: several datagrams to one destination in one system call.",
                &self.gso_sends,
            ),
            (
                "hermes_turn_gso_datagrams_total",
                "Datagrams sent inside UDP GSO sends.",
                &self.gso_datagrams,
            ),
        ];
        header(
            &mut out,
            "hermes_turn_allocations_active",
            "gauge",
            "Allocations currently active.",
        );
        sample(
            &mut out,
            "hermes_turn_allocations_active",
            &[],
            self.allocations_active.get() as f64,
        );
        for (name, help, c) in counters {
            header(&mut out, name, "counter", help);
            sample(&mut out, name, &[], c.get() as f64);
        }
        header(
            &mut out,
            "hermes_turn_tls_connections_total",
            "counter",
            "TLS client connections accepted.",
        );
        sample(
            &mut out,
            "hermes_turn_tls_connections_total",
            &[],
            self.tls_connections.get() as f64,
        );
        header(
            &mut out,
            "hermes_turn_quota_hits_total",
            "counter",
            "Requests or packets refused by a quota.",
        );
        for q in Quota::ALL {
            sample(
                &mut out,
                "hermes_turn_quota_hits_total",
                &[("kind", q.label())],
                self.quota(q).get() as f64,
            );
        }
        header(
            &mut out,
            "hermes_turn_worker_threads",
            "gauge",
            "Threads running relay workers now (adaptive: follows the load).",
        );
        sample(
            &mut out,
            "hermes_turn_worker_threads",
            &[],
            self.worker_threads.get() as f64,
        );
        header(
            &mut out,
            "hermes_turn_worker_moves_total",
            "counter",
            "Relay workers handed from one thread to another.",
        );
        sample(
            &mut out,
            "hermes_turn_worker_moves_total",
            &[],
            self.worker_moves.get() as f64,
        );
        header(
            &mut out,
            "hermes_turn_draining",
            "gauge",
            "1 while draining after SIGTERM (new allocations refused).",
        );
        sample(
            &mut out,
            "hermes_turn_draining",
            &[],
            if self.draining.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        out
    }
}
