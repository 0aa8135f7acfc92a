//! A real Redis Cluster on loopback: three primaries and three replicas, `redis-server`
//! processes from Debian's package with `cluster-enabled yes`, joined by `redis-cli --cluster
//! create … --cluster-replicas 1`, each on a free port (and a free cluster-bus port, set with
//! `cluster-port`, so no `port + 10000` clash), their files in one temp dir.
//!
//! Why it exists: services connect with `redis-cluster://` and every script must touch the
//! keys of one slot; only a real cluster refuses a cross-slot script (CROSSSLOT) or answers
//! MOVED, so only a real cluster proves the key schema and the flows.
//!
//! Race-free start: every node counts as up only once the kernel shows that this very child
//! holds its port (see [`crate::port_owner`]); the cluster counts as up only once every node
//! reports `cluster_state:ok`, knows all six nodes, and every replica's link to its primary is
//! up. Teardown is the drop of the guards (SIGKILL), so a failing test leaves nothing behind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{
    ChildGuard, Transport, free_tcp_port, raw_command, require_program, wait_for_ping,
    wait_until_child_holds,
};

/// Primaries (each owns a third of the 16 384 slots) and one replica each.
const PRIMARIES: usize = 3;
const NODES: usize = 2 * PRIMARIES;
/// A primary unreachable for this long is failed over by its replica. Short, so a failover
/// test is quick, and well above what a loaded 2-core machine delays a cluster-bus ping.
pub const NODE_TIMEOUT_MS: u64 = 2_000;
/// How long the whole cluster may take to come up and agree.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Port pairs tried per node before giving up (each lost only to a bind race).
const PORT_ATTEMPTS: usize = 20;

struct Node {
    port: u16,
    /// Its cluster-bus port.
    bus: u16,
    process: ChildGuard,
    /// SIGKILLed by [`ClusterSet::kill_node`].
    killed: bool,
    /// SIGSTOPped by [`ClusterSet::freeze_node`] (and not asked anything until killed).
    frozen: bool,
}

/// Six cluster nodes; see the module doc.
pub struct ClusterSet {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl ClusterSet {
    /// Start six nodes, create the cluster and wait until it is fully up (see the module doc).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let nodes: Vec<Node> = (0..NODES).map(|i| spawn_node(dir.path(), i)).collect();
        let mut create = Command::new(require_program("redis-cli", "redis-server"));
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let set = Self { dir, nodes };
        set.wait_until_up(START_TIMEOUT);
        set
    }

    /// A cluster of `primaries` primaries and no replicas (any number from one: `redis-cli
    /// --cluster create` wants three), the slots split evenly with `CLUSTER ADDSLOTSRANGE` and
    /// the nodes joined with `CLUSTER MEET`. For benchmarks that compare one primary with
    /// several on the same code path; failover needs [`Self::start`].
    pub fn start_primaries(primaries: usize) -> Self {
        assert!(primaries >= 1, "a cluster needs a primary");
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let nodes: Vec<Node> = (0..primaries).map(|i| spawn_node(dir.path(), i)).collect();
        let slots = 16_384;
        for (i, node) in nodes.iter().enumerate() {
            // A node learns its own address only from a peer's MEET; a lone primary would
            // answer CLUSTER SLOTS with an empty one, which no client can connect to.
            let announce = raw_command(node.port, "CONFIG SET cluster-announce-ip 127.0.0.1")
                .expect("CONFIG SET cluster-announce-ip");
            assert_eq!(announce, "+OK\r\n", "cluster-announce-ip on {}", node.port);
            let (lo, hi) = (i * slots / primaries, (i + 1) * slots / primaries - 1);
            let reply = raw_command(node.port, &format!("CLUSTER ADDSLOTSRANGE {lo} {hi}"))
                .expect("CLUSTER ADDSLOTSRANGE");
            assert_eq!(reply, "+OK\r\n", "CLUSTER ADDSLOTSRANGE on {}", node.port);
            if i > 0 {
                let meet = format!("CLUSTER MEET 127.0.0.1 {} {}", nodes[0].port, nodes[0].bus);
                let reply = raw_command(node.port, &meet).expect("CLUSTER MEET");
                assert_eq!(reply, "+OK\r\n", "CLUSTER MEET from {}", node.port);
            }
        }
        let set = Self { dir, nodes };
        let deadline = Instant::now() + START_TIMEOUT;
        while !set.nodes.iter().all(|n| {
            raw_command(n.port, "CLUSTER INFO").is_ok_and(|info| {
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{primaries}\r\n"))
                    && info.contains("cluster_slots_assigned:16384")
            })
        }) {
            assert!(Instant::now() < deadline, "the cluster never agreed");
            std::thread::sleep(Duration::from_millis(50));
        }
        set
    }

    /// `redis-cluster://` URL naming every node, as services take it.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|n| n.port);
        let first = ports.next().expect("six nodes");
        let mut url = format!("redis-cluster://127.0.0.1:{first}");
        for (i, port) in ports.enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{port}"));
        }
        url
    }

    /// Ports of all six nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Ports of the live nodes that are primaries now.
    pub fn primary_ports(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|&p| info_field(p, "replication", "role").as_deref() == Some("master"))
            .collect()
    }

    /// One raw command to the node on `port` (harness checks independent of the client
    /// library under test; a key of another node's slot answers `-MOVED`).
    pub fn raw(&self, port: u16, command: &str) -> std::io::Result<String> {
        raw_command(port, command)
    }

    /// One raw command to the primary that owns `key`'s slot.
    pub fn raw_for_key(&self, key: &str, command: &str) -> std::io::Result<String> {
        raw_command(self.owner_of(key)?, command)
    }

    /// Port of the live primary that serves `key`'s slot.
    pub fn owner_of(&self, key: &str) -> std::io::Result<u16> {
        let live = self.live_ports();
        let first = *live
            .first()
            .ok_or_else(|| std::io::Error::other("no live node"))?;
        let slot = raw_command(first, &format!("CLUSTER KEYSLOT {key}"))?;
        let slot: u16 = slot
            .trim()
            .trim_start_matches(':')
            .parse()
            .map_err(|_| std::io::Error::other(format!("CLUSTER KEYSLOT answered {slot:?}")))?;
        live.into_iter()
            .filter(|&p| info_field(p, "replication", "role").as_deref() == Some("master"))
            .find(|&p| owns_slot(p, slot))
            .ok_or_else(|| std::io::Error::other(format!("no primary owns slot {slot}")))
    }

    /// Port of a live replica of the primary on `port`, if it has one.
    pub fn replica_of(&self, port: u16) -> Option<u16> {
        self.live_ports().into_iter().find(|&p| {
            info_field(p, "replication", "role").as_deref() == Some("slave")
                && info_field(p, "replication", "master_port").as_deref()
                    == Some(port.to_string().as_str())
        })
    }

    /// A key (`probe:<n>`) whose slot the primary on `port` serves now, to tell later when
    /// those slots are served again.
    pub fn key_owned_by(&self, port: u16) -> String {
        (0..100_000)
            .map(|i| format!("probe:{i}"))
            .find(|k| self.owner_of(k).is_ok_and(|owner| owner == port))
            .unwrap_or_else(|| panic!("no key of the primary on port {port}"))
    }

    /// Wait (at most 10 s) until every live replica has applied everything its primary wrote,
    /// so the writes so far survive a failover.
    pub fn wait_replicated(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let caught_up = self.live_ports().into_iter().all(|p| {
                if info_field(p, "replication", "role").as_deref() != Some("slave") {
                    return true;
                }
                let Some(primary) =
                    info_field(p, "replication", "master_port").and_then(|v| v.parse::<u16>().ok())
                else {
                    return false;
                };
                let applied = info_field(p, "replication", "slave_repl_offset");
                applied.is_some()
                    && applied == info_field(primary, "replication", "master_repl_offset")
            });
            if caught_up {
                return;
            }
            assert!(Instant::now() < deadline, "replicas never caught up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the node on `port`; returns at once (see [`Self::wait_for_failover`]).
    pub fn kill_node(&mut self, port: u16) -> Instant {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        // Before the kill: a watcher may see its effect while the kill still waits for the
        // process to be reaped.
        let at = Instant::now();
        node.process.kill();
        node.killed = true;
        at
    }

    /// SIGSTOP the node on `port`: its connections stay open and unanswered, as with a hung
    /// process or a partition; the cluster fails it over after [`NODE_TIMEOUT_MS`]. The set's
    /// own checks skip it from then on; [`Self::kill_node`] ends it.
    pub fn freeze_node(&mut self, port: u16) -> Instant {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        let pid = node.process.id().expect("node running");
        let at = Instant::now();
        let status = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -STOP {pid} failed");
        node.frozen = true;
        at
    }

    /// SIGCONT a node [`Self::freeze_node`] stopped: it runs again (a failed-over primary
    /// learns from the cluster bus that its replica took over and turns into its replica), and
    /// the set's own checks include it again.
    pub fn thaw_node(&mut self, port: u16) -> Instant {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        assert!(node.frozen && !node.killed, "thaw a frozen node");
        let pid = node.process.id().expect("node running");
        let at = Instant::now();
        let status = Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -CONT {pid} failed");
        node.frozen = false;
        at
    }

    /// Wait until a live primary serves `key`'s slot again and every live node reports the
    /// cluster ok; how long that took since `killed_at`.
    pub fn wait_for_failover(&self, key: &str, killed_at: Instant, timeout: Duration) -> Duration {
        let deadline = killed_at + timeout;
        loop {
            if self.serves(key) {
                return killed_at.elapsed();
            }
            assert!(Instant::now() < deadline, "no failover of {key}'s primary");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a live primary serves `key`'s slot and every live node reports the cluster ok
    /// (after a kill: whether the failover is over), without waiting.
    pub fn serves(&self, key: &str) -> bool {
        self.owner_of(key).is_ok()
            && self.live_ports().into_iter().all(|p| {
                raw_command(p, "CLUSTER INFO").is_ok_and(|i| i.contains("cluster_state:ok"))
            })
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| !n.killed && !n.frozen)
            .map(|n| n.port)
            .collect()
    }

    /// The cluster's temp dir (node configs, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn wait_until_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let all_ok = self.nodes.iter().all(|n| {
                raw_command(n.port, "CLUSTER INFO").is_ok_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{NODES}"))
                        && info.contains("cluster_slots_assigned:16384")
                })
            });
            let replicas_linked = self
                .nodes
                .iter()
                .filter(|n| info_field(n.port, "replication", "role").as_deref() == Some("slave"))
                .filter(|n| {
                    info_field(n.port, "replication", "master_link_status").as_deref() == Some("up")
                })
                .count()
                == NODES - PRIMARIES;
            if all_ok && replicas_linked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the cluster to come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// True when the primary on `port` serves `slot` (from its `CLUSTER SHARDS`-free view:
/// `CLUSTER NODES`, its own `myself` line).
fn owns_slot(port: u16, slot: u16) -> bool {
    let Ok(nodes) = raw_command(port, "CLUSTER NODES") else {
        return false;
    };
    nodes
        .lines()
        .find(|l| l.contains("myself"))
        .is_some_and(|line| {
            line.split_whitespace().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            })
        })
}

/// A field of `INFO <section>` from the server on `port`.
fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    let info = raw_command(port, &format!("INFO {section}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// Node `index` on a free port, with a free cluster-bus port of its own.
fn spawn_node(dir: &Path, index: usize) -> Node {
    let mut last_err = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let (port, bus) = (free_tcp_port(), free_tcp_port());
        if port == bus {
            continue;
        }
        let node_dir = dir.join(format!("node-{index}-{port}"));
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let mut cmd = Command::new(require_program("redis-server", "redis-server"));
        cmd.args(["--port", &port.to_string()])
            .args(["--cluster-port", &bus.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process =
            ChildGuard::spawn("redis-server (cluster)", &mut cmd).expect("spawn redis-server");
        let up = wait_until_child_holds(&mut process, Transport::Tcp, port, START_TIMEOUT)
            .map_err(|e| format!("cluster node did not listen on {port}: {e:?}"))
            .and_then(|()| {
                wait_until_child_holds(&mut process, Transport::Tcp, bus, START_TIMEOUT)
                    .map_err(|e| format!("cluster node did not listen on bus {bus}: {e:?}"))
            })
            .and_then(|()| wait_for_ping(port, START_TIMEOUT));
        match up {
            Ok(()) => {
                return Node {
                    port,
                    bus,
                    process,
                    killed: false,
                    frozen: false,
                };
            }
            Err(e) => last_err = e,
        }
    }
    panic!("no cluster node after {PORT_ATTEMPTS} ports; last: {last_err}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One primary or several without replicas: every slot served, keys routed by slot.
    #[test]
    fn clusters_of_primaries_only_come_up() {
        for primaries in [1, 2] {
            let set = ClusterSet::start_primaries(primaries);
            assert_eq!(set.primary_ports().len(), primaries);
            assert_eq!(set.raw_for_key("a", "SET a 1").expect("SET"), "+OK\r\n");
            assert_eq!(set.raw_for_key("b", "SET b 1").expect("SET"), "+OK\r\n");
            // Every node answers CLUSTER SLOTS with an address a client can connect to.
            let slots = set
                .raw(set.ports()[0], "CLUSTER SLOTS")
                .expect("CLUSTER SLOTS");
            assert_eq!(slots.matches("127.0.0.1").count(), primaries, "{slots:?}");
        }
    }

    /// The cluster comes up with three primaries and three replicas, spreads slots over the
    /// primaries, refuses a cross-slot command and accepts one whose keys share a hash tag.
    #[test]
    fn a_cluster_of_three_primaries_and_three_replicas_comes_up() {
        let set = ClusterSet::start();
        assert_eq!(set.primary_ports().len(), PRIMARIES);
        let url = set.url();
        assert!(url.starts_with("redis-cluster://127.0.0.1:"), "{url}");
        assert_eq!(url.matches("node=127.0.0.1:").count(), NODES - 1, "{url}");
        // `a` and `b` hash to different slots owned by different primaries.
        assert_eq!(set.raw_for_key("a", "SET a 1").expect("SET"), "+OK\r\n");
        let cross = set.raw_for_key("a", "MSET a 1 b 2").expect("MSET");
        assert!(cross.starts_with("-CROSSSLOT"), "{cross}");
        let tagged = set
            .raw_for_key("{call}", "MSET {call}:x 1 {call}:y 2")
            .expect("MSET");
        assert_eq!(tagged, "+OK\r\n");
        // A node that does not own the slot redirects.
        let owner = set
            .primary_ports()
            .into_iter()
            .find(|&p| set.raw(p, "GET a").is_ok_and(|r| r == "$1\r\n1\r\n"))
            .expect("one primary serves `a`");
        let other = set
            .primary_ports()
            .into_iter()
            .find(|&p| p != owner)
            .expect("three primaries");
        assert!(set.raw(other, "GET a").expect("GET").starts_with("-MOVED"));
    }
}
