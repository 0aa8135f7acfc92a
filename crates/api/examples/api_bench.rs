//! Load generator and reference server for `scripts/bench/api.sh` (not a test).
//!
//! `api_bench bare --listen ADDR --redis-url URL` serves the reference: a bare axum handler
//! doing one Redis round trip (INCR) per request, on the same fred client settings.
//!
//! `api_bench load --api URL --bare URL --flows N --concurrency C --max-secs S` drives, in the
//! same run, N create→resolve→join flows against hermes-api and the same number of requests
//! (3 per flow) against the bare handler, with C concurrent workers, and prints a table with
//! throughput, p50/p99 latency and the ratio. Bounded in count (N) and time (S per phase).
//!
//! `api_bench ab --a URL --b URL [--a-name A] [--b-name B] --flows N --concurrency C` drives
//! the same create→resolve→join flows against two hermes-api builds (e.g. before and after a
//! change), alternating rounds, and prints per-request p50/p99 and flows/s side by side.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use fred::prelude::*;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("bare") => bare(&args).await,
        Some("load") => load(&args).await,
        Some("ab") => ab(&args).await,
        _ => {
            eprintln!(
                "usage: api_bench bare --listen ADDR --redis-url URL | load --api URL --bare URL [--flows N] [--concurrency C] [--max-secs S] [--rounds R] | ab --a URL --b URL [--a-name A] [--b-name B] [--flows N] [--concurrency C] [--max-secs S] [--rounds R]"
            );
            std::process::exit(2);
        }
    }
}

async fn bare_handler(State(redis): State<Client>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match redis.incr::<i64, _>("bench:bare").await {
        Ok(n) => axum::Json(serde_json::json!({ "n": n })).into_response(),
        Err(_) => http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn bare(args: &[String]) {
    let listen: SocketAddr = arg(args, "--listen")
        .expect("--listen")
        .parse()
        .expect("listen addr");
    let url = arg(args, "--redis-url").expect("--redis-url");
    let redis = hermes_service::redis::connect(&url, Duration::from_secs(5))
        .await
        .expect("redis");
    let app = Router::new()
        .route("/bare", post(bare_handler))
        .with_state(redis);
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    eprintln!("listening on {}", listener.local_addr().expect("addr"));
    let shutdown = hermes_service::shutdown::on_signal();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .expect("serve");
}

struct Phase {
    latencies_us: Vec<u64>,
    requests: usize,
    errors: usize,
    elapsed: Duration,
}

async fn run_phase<F, Fut>(flows: usize, concurrency: usize, max: Duration, work: F) -> Phase
where
    F: Fn(reqwest::Client) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (Vec<u64>, usize)> + Send,
{
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let start = Instant::now();
    let deadline = start + max;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let work = work.clone();
        let client = client.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while next.fetch_add(1, Ordering::Relaxed) < flows && Instant::now() < deadline {
                let (l, e) = work(client.clone()).await;
                lat.extend(l);
                errors += e;
            }
            (lat, errors)
        });
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for (l, e) in set.join_all().await {
        latencies_us.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    Phase {
        requests: latencies_us.len() + errors,
        latencies_us,
        errors,
        elapsed,
    }
}

impl Phase {
    fn empty() -> Self {
        Self {
            latencies_us: Vec::new(),
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn add(&mut self, other: Phase) {
        self.latencies_us.extend(other.latencies_us);
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn timed(req: reqwest::RequestBuilder, want: u16) -> Result<(u64, serde_json::Value), ()> {
    let t = Instant::now();
    let resp = req.send().await.map_err(|_| ())?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.map_err(|_| ())?;
    if status != want {
        return Err(());
    }
    Ok((t.elapsed().as_micros() as u64, body))
}

async fn api_flow(client: reqwest::Client, api: Arc<String>) -> (Vec<u64>, usize) {
    let mut lat = Vec::with_capacity(3);
    let Ok((l, created)) = timed(client.post(format!("{api}/api/call/create")), 201).await else {
        return (lat, 1);
    };
    lat.push(l);
    let code = created["code"].as_str().unwrap_or_default().to_owned();
    let Ok((l, resolved)) = timed(
        client
            .post(format!("{api}/api/call/resolve"))
            .json(&serde_json::json!({ "code": code })),
        200,
    )
    .await
    else {
        return (lat, 1);
    };
    lat.push(l);
    let token = resolved["token"].as_str().unwrap_or_default().to_owned();
    match timed(
        client.post(format!("{api}/api/join")).bearer_auth(token),
        200,
    )
    .await
    {
        Ok((l, _)) => {
            lat.push(l);
            (lat, 0)
        }
        Err(()) => (lat, 1),
    }
}

async fn bare_flow(client: reqwest::Client, bare: Arc<String>) -> (Vec<u64>, usize) {
    let mut lat = Vec::with_capacity(3);
    let mut errors = 0;
    for _ in 0..3 {
        match timed(client.post(format!("{bare}/bare")), 200).await {
            Ok((l, _)) => lat.push(l),
            Err(()) => errors += 1,
        }
    }
    (lat, errors)
}

async fn load(args: &[String]) {
    let api = Arc::new(arg(args, "--api").expect("--api"));
    let bare = Arc::new(arg(args, "--bare").expect("--bare"));
    let flows: usize = arg(args, "--flows").map_or(5000, |v| v.parse().expect("flows"));
    let concurrency: usize = arg(args, "--concurrency").map_or(32, |v| v.parse().expect("c"));
    let max = Duration::from_secs(arg(args, "--max-secs").map_or(60, |v| v.parse().expect("s")));

    // Warm-up: connections, script cache, allocator.
    let a = api.clone();
    run_phase(200, concurrency, max, move |c| api_flow(c, a.clone())).await;
    let b = bare.clone();
    run_phase(200, concurrency, max, move |c| bare_flow(c, b.clone())).await;

    // Alternate the two sides over several rounds so a burst of unrelated load on the shared
    // machine hits both alike; totals are summed over the rounds.
    let rounds: usize = arg(args, "--rounds").map_or(3, |v| v.parse().expect("rounds"));
    let per_round = flows.div_ceil(rounds.max(1));
    let mut reference = Phase::empty();
    let mut ours = Phase::empty();
    for _ in 0..rounds.max(1) {
        let b = bare.clone();
        reference.add(
            run_phase(per_round, concurrency, max, move |c| {
                bare_flow(c, b.clone())
            })
            .await,
        );
        let a = api.clone();
        ours.add(run_phase(per_round, concurrency, max, move |c| api_flow(c, a.clone())).await);
    }
    reference.latencies_us.sort_unstable();
    ours.latencies_us.sort_unstable();
    let flows = per_round * rounds.max(1);

    let rate = |p: &Phase| p.latencies_us.len() as f64 / p.elapsed.as_secs_f64();
    let (r_ours, r_ref) = (rate(&ours), rate(&reference));
    println!(
        "hermes-api benchmark: {flows} flows (create+resolve+join = 3 requests) vs {} bare requests, {concurrency} concurrent clients, {rounds} alternating rounds, 2 CPUs shared by load generator, servers and Redis",
        flows * 3
    );
    println!(
        "| {:<46} | {:>9} | {:>10} | {:>8} | {:>8} | {:>6} |",
        "side", "requests", "req/s", "p50 ms", "p99 ms", "errors"
    );
    println!(
        "|{}|{}:|{}:|{}:|{}:|{}:|",
        "-".repeat(48),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(9),
        "-".repeat(9),
        "-".repeat(7)
    );
    for (name, p) in [
        ("hermes-api create+resolve+join (ours)", &ours),
        ("bare axum + 1 Redis INCR (reference)", &reference),
    ] {
        println!(
            "| {:<46} | {:>9} | {:>10.0} | {:>8.2} | {:>8.2} | {:>6} |",
            name,
            p.requests,
            rate(p),
            pct(&p.latencies_us, 0.5),
            pct(&p.latencies_us, 0.99),
            p.errors
        );
    }
    let flows_per_s = ours.latencies_us.len() as f64 / 3.0 / ours.elapsed.as_secs_f64();
    println!(
        "| {:<46} | {:>9} | {:>10.0} | {:>8} | {:>8} | {:>6} |",
        "hermes-api full flows/s", "", flows_per_s, "", "", ""
    );
    let ratio = r_ours / r_ref;
    let p99_ratio = pct(&reference.latencies_us, 0.99) / pct(&ours.latencies_us, 0.99);
    println!("throughput ratio (ours / reference req/s): {ratio:.2}  (target >= 0.5)");
    println!("p99 ratio (reference p99 / ours p99): {p99_ratio:.2}");
    if ours.errors > 0 || reference.errors > 0 {
        eprintln!("api bench: errors during the run");
        std::process::exit(1);
    }
}

/// Latencies of each request of a flow (create, resolve, join), kept apart.
#[derive(Default)]
struct Steps {
    us: [Vec<u64>; 3],
    flows: usize,
    errors: usize,
    elapsed: Duration,
}

async fn run_steps(api: Arc<String>, flows: usize, concurrency: usize, max: Duration) -> Steps {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + max;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (next, client, api) = (next.clone(), client.clone(), api.clone());
        set.spawn(async move {
            let mut steps = Steps::default();
            while next.fetch_add(1, Ordering::Relaxed) < flows && Instant::now() < deadline {
                let (lat, errors) = api_flow(client.clone(), api.clone()).await;
                for (i, l) in lat.into_iter().enumerate() {
                    steps.us[i].push(l);
                }
                steps.errors += errors;
                steps.flows += usize::from(errors == 0);
            }
            steps
        });
    }
    let mut all = Steps::default();
    for s in set.join_all().await {
        for i in 0..3 {
            all.us[i].extend(&s.us[i]);
        }
        all.flows += s.flows;
        all.errors += s.errors;
    }
    all.elapsed = start.elapsed();
    all
}

async fn ab(args: &[String]) {
    let a = Arc::new(arg(args, "--a").expect("--a"));
    let b = Arc::new(arg(args, "--b").expect("--b"));
    let a_name = arg(args, "--a-name").unwrap_or_else(|| "a".into());
    let b_name = arg(args, "--b-name").unwrap_or_else(|| "b".into());
    let flows: usize = arg(args, "--flows").map_or(6000, |v| v.parse().expect("flows"));
    let concurrency: usize = arg(args, "--concurrency").map_or(32, |v| v.parse().expect("c"));
    let max = Duration::from_secs(arg(args, "--max-secs").map_or(60, |v| v.parse().expect("s")));
    let rounds: usize = arg(args, "--rounds").map_or(4, |v| v.parse().expect("rounds"));
    let rounds = rounds.max(1);

    // Warm-up: connections, script cache, allocator.
    run_steps(a.clone(), 200, concurrency, max).await;
    run_steps(b.clone(), 200, concurrency, max).await;

    // Alternate the sides (and which goes first) so unrelated load on the shared machine hits
    // both alike.
    let per_round = flows.div_ceil(rounds);
    let (mut sa, mut sb) = (Steps::default(), Steps::default());
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let (url, acc) = if side == 0 {
                (a.clone(), &mut sa)
            } else {
                (b.clone(), &mut sb)
            };
            let s = run_steps(url, per_round, concurrency, max).await;
            for i in 0..3 {
                acc.us[i].extend(&s.us[i]);
            }
            acc.flows += s.flows;
            acc.errors += s.errors;
            acc.elapsed += s.elapsed;
        }
    }
    println!(
        "hermes-api A/B: {} flows per side (create+resolve+join), {concurrency} concurrent clients, {rounds} alternating rounds",
        per_round * rounds
    );
    println!(
        "| {:<24} | {:>8} | {:>10} | {:>10} | {:>11} | {:>11} | {:>9} | {:>9} | {:>6} |",
        "side",
        "flows/s",
        "create p50",
        "create p99",
        "resolve p50",
        "resolve p99",
        "join p50",
        "join p99",
        "errors"
    );
    for (name, s) in [(&a_name, &mut sa), (&b_name, &mut sb)] {
        for v in s.us.iter_mut() {
            v.sort_unstable();
        }
        println!(
            "| {:<24} | {:>8.0} | {:>10.2} | {:>10.2} | {:>11.2} | {:>11.2} | {:>9.2} | {:>9.2} | {:>6} |",
            name,
            s.flows as f64 / s.elapsed.as_secs_f64(),
            pct(&s.us[0], 0.5),
            pct(&s.us[0], 0.99),
            pct(&s.us[1], 0.5),
            pct(&s.us[1], 0.99),
            pct(&s.us[2], 0.5),
            pct(&s.us[2], 0.99),
            s.errors
        );
    }
    let rate = |s: &Steps| s.flows as f64 / s.elapsed.as_secs_f64();
    println!(
        "flows/s ratio ({b_name} / {a_name}): {:.3}",
        rate(&sb) / rate(&sa)
    );
    if sa.errors > 0 || sb.errors > 0 {
        eprintln!("api bench: errors during the run");
        std::process::exit(1);
    }
}
