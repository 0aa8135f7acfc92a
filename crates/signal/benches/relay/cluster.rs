//! The Redis Cluster part of `make bench BENCH=signal`: the same signal replicas on a single
//! Redis (classic pub/sub), on a cluster of one primary and on a cluster of three primaries
//! (sharded pub/sub: `SPUBLISH` in the scripts, `SSUBSCRIBE` on the slot's primary), side by
//! side in one run. Two figures each:
//! - closed loop, cross replica (as the main table): relayed messages per second and Redis CPU
//!   per relayed message, summed over every redis-server process of the deployment;
//! - capacity: calls set up as real ones, then held with one relayed message per second each
//!   way (lease renewals, acks and pings running), metered over the hold: Redis CPU and
//!   commands per call, and the calls one primary carries at half a core.
//!
//! Clusters come from [`ClusterSet::start_primaries`] (no replicas: the comparison is of
//! primaries; a replica costs its primary the replication stream in every deployment alike).

use super::*;
use hermes_testkit::ClusterSet;

/// A Redis deployment under test.
enum Deployment {
    Single(RedisServer),
    Cluster(ClusterSet),
}

impl Deployment {
    fn url(&self) -> String {
        match self {
            Deployment::Single(r) => r.url(),
            Deployment::Cluster(c) => c.url(),
        }
    }

    fn ports(&self) -> Vec<u16> {
        match self {
            Deployment::Single(r) => vec![r.port()],
            Deployment::Cluster(c) => c.ports(),
        }
    }

    fn raw(&self, port: u16, command: &str) -> String {
        match self {
            Deployment::Single(r) => r.raw_command(command),
            Deployment::Cluster(c) => c.raw(port, command),
        }
        .unwrap_or_default()
    }

    /// The redis-server process of each node (`INFO server`).
    fn pids(&self) -> Vec<u32> {
        self.ports()
            .into_iter()
            .filter_map(|p| {
                self.raw(p, "INFO server")
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect()
    }

    /// Commands run so far, summed over the nodes (`INFO commandstats`, without INFO itself).
    fn commands(&self) -> u64 {
        self.ports()
            .into_iter()
            .map(|p| {
                self.raw(p, "INFO commandstats")
                    .lines()
                    .filter(|l| !l.starts_with("cmdstat_info:"))
                    .filter_map(|l| {
                        l.split_once("calls=")?
                            .1
                            .split(',')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .sum::<u64>()
            })
            .sum()
    }
}

/// CPU of the deployment's redis-servers and their commands, from a snapshot to now.
struct ClusterMeter {
    pids: Vec<u32>,
    cpu: Vec<u64>,
    commands: u64,
}

impl ClusterMeter {
    fn start(d: &Deployment) -> Self {
        let pids = d.pids();
        let cpu = pids.iter().map(|&p| cpu_micros(p)).collect();
        Self {
            pids,
            cpu,
            commands: d.commands(),
        }
    }

    /// (CPU µs of each node, commands) since the start.
    fn delta(&self, d: &Deployment) -> (Vec<u64>, u64) {
        let cpu = self
            .pids
            .iter()
            .zip(&self.cpu)
            .map(|(&p, &before)| cpu_micros(p).saturating_sub(before))
            .collect();
        (cpu, d.commands().saturating_sub(self.commands))
    }
}

/// One deployment's figures.
pub struct Row {
    name: String,
    primaries: usize,
    closed: Run,
    /// Redis CPU µs per relayed message (all nodes) and the busiest node's share of it.
    cpu_per_msg: f64,
    busiest_share: f64,
    cmds_per_msg: f64,
    held_calls: usize,
    /// Redis CPU µs per held call per second (all nodes), commands per call per minute.
    cpu_per_call_s: f64,
    cmds_per_call_min: f64,
}

/// Hold the calls for `hold`: each side relays one candidate per second (offset at random) and
/// reads everything. Returns the messages sent.
async fn hold_relaying(pairs: Vec<(Ws, Ws)>, hold: Duration) -> usize {
    let end = tokio::time::Instant::now() + hold;
    let mut tasks = tokio::task::JoinSet::new();
    for (a, b) in pairs {
        for (side, ws) in [a, b].into_iter().enumerate() {
            let (mut tx, mut rx) = ws.split();
            tasks.spawn(async move {
                let reader = async { while let Some(Ok(_)) = rx.next().await {} };
                let writer = async {
                    let mut sent = 0;
                    let offset = Duration::from_millis(rand::random::<u64>() % 1_000);
                    let start = tokio::time::Instant::now() + offset;
                    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {
                                // Candidate numbers past the setup's (they only need to differ).
                                let text = candidate_text(side, MIX_CANDIDATES + sent % 90);
                                if tx.send(Message::text(text)).await.is_err() {
                                    break;
                                }
                                sent += 1;
                            }
                            () = tokio::time::sleep_until(end) => break,
                        }
                    }
                    sent
                };
                tokio::select! {
                    sent = writer => sent,
                    () = reader => 0,
                }
            });
        }
    }
    let mut sent = 0;
    while let Some(r) = tasks.join_next().await {
        sent += r.unwrap_or(0);
    }
    sent
}

async fn measure(
    name: &str,
    primaries: usize,
    d: Deployment,
    calls: usize,
    rounds: usize,
    held: usize,
    hold: Duration,
) -> Row {
    let url = d.url();
    let r1 = start_replica(&url);
    let r2 = start_replica(&url);
    // relay_run's own command count sees one node only; the rows count every node.
    let admin = Builder::from_config(
        Config::from_url(&format!("redis://127.0.0.1:{}", d.ports()[0])).unwrap(),
    )
    .build()
    .unwrap();
    admin.init().await.unwrap();
    // Every node is a "redis" process: relay_run meters them over its loop only (before the
    // calls' sockets close), so the sum is the deployment's Redis CPU for the messages.
    let mut procs = vec![
        ("relay A", r1.guard.id().unwrap()),
        ("relay B", r2.guard.id().unwrap()),
    ];
    procs.extend(d.pids().into_iter().map(|pid| ("redis", pid)));
    eprintln!("{name}: closed loop, cross replica, {calls} calls × {rounds}");
    let meter = ClusterMeter::start(&d);
    let (closed, cost) = relay_run(&r1.url, &r2.url, calls, rounds, &admin, &procs).await;
    // Commands of every node (relay_run's own count reads one), the calls' teardown included.
    let (_, commands) = meter.delta(&d);
    let n = closed.samples.len().max(1) as f64;
    let per_node: Vec<f64> = cost
        .cpu
        .iter()
        .filter(|(name, _)| *name == "redis")
        .map(|(_, v)| *v)
        .collect();
    let total: f64 = per_node.iter().sum();
    let busiest = per_node.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "{name}: {held} calls set up, then held {hold:?} relaying one message a second each way"
    );
    let pairs = mix_setup(&r1.url, &r2.url, held).await;
    let held_calls = pairs.len();
    let meter = ClusterMeter::start(&d);
    let started = Instant::now();
    hold_relaying(pairs, hold).await;
    let call_secs = (held_calls as f64 * started.elapsed().as_secs_f64()).max(1e-9);
    let (hold_cpu, hold_commands) = meter.delta(&d);
    drop((r1, r2));
    Row {
        name: name.to_owned(),
        primaries,
        cpu_per_msg: total,
        busiest_share: busiest / total.max(1e-9),
        cmds_per_msg: commands as f64 / n,
        closed,
        held_calls,
        cpu_per_call_s: hold_cpu.iter().sum::<u64>() as f64 / call_secs,
        cmds_per_call_min: hold_commands as f64 / call_secs * 60.0,
    }
}

/// Run the three deployments one after the other (same load generator, same replicas).
pub async fn rows(calls: usize, rounds: usize, held: usize, hold: Duration) -> Vec<Row> {
    let mut rows = Vec::new();
    let single = Deployment::Single(RedisServer::start());
    rows.push(
        measure(
            "single Redis, classic pub/sub",
            1,
            single,
            calls,
            rounds,
            held,
            hold,
        )
        .await,
    );
    for primaries in [1, 3] {
        let cluster = tokio::task::block_in_place(|| ClusterSet::start_primaries(primaries));
        let name = format!(
            "cluster, {primaries} primar{}, sharded pub/sub",
            if primaries == 1 { "y" } else { "ies" }
        );
        rows.push(
            measure(
                &name,
                primaries,
                Deployment::Cluster(cluster),
                calls,
                rounds,
                held,
                hold,
            )
            .await,
        );
    }
    rows
}

/// The two tables, with ratios to the one-primary cluster.
pub fn print(rows: &[Row], calls: usize, rounds: usize, hold: Duration) {
    let Some(one) = rows.iter().find(|r| r.name.starts_with("cluster, 1 ")) else {
        return;
    };
    println!();
    println!(
        "Redis Cluster, closed loop, cross replica, {calls} calls × {rounds} messages; Redis CPU \
         summed over every redis-server of the deployment (2 cores shared: compare ratios)"
    );
    println!(
        "| deployment | messages | p50 ms | p99 ms | msgs/s | msgs/s / 1 primary | Redis CPU µs/msg | busiest node's share | Redis cmds/msg (teardown incl.) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.0} | {:.2} | {:.1} | {:.0} % | {:.2} |",
            r.name,
            r.closed.samples.len(),
            r.closed.pct(0.5),
            r.closed.pct(0.99),
            r.closed.rate(),
            r.closed.rate() / one.closed.rate(),
            r.cpu_per_msg,
            r.busiest_share * 100.0,
            r.cmds_per_msg,
        );
    }
    println!();
    println!(
        "capacity: calls set up as real ones, then held {}s relaying one message a second each \
         way (lease renewals, acks, pings running); Redis CPU and commands per held call",
        hold.as_secs()
    );
    println!(
        "| deployment | calls | Redis CPU µs per call per s | Redis cmds per call per min | calls per primary at 50 % of a core |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        // Spread evenly over the primaries (hash slots of random call ids).
        let per_primary = r.cpu_per_call_s / r.primaries as f64;
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.0} |",
            r.name,
            r.held_calls,
            r.cpu_per_call_s,
            r.cmds_per_call_min,
            0.5e6 / per_primary.max(1e-9),
        );
    }
}
