//! Real calls across NATs, firewalls and network changes, in a lab of network namespaces
//! (`hermes_e2e::netlab`): the whole stack on the lab's public segment behind HTTPS from the
//! lab's CA, two headless Chromium instances in client sites behind their own routers, driven
//! through the real web client by `driver/call.mjs`.
//!
//! One test, one stack, one browser per site (to stay within minutes on two cores):
//! 1. same LAN, no NAT: host candidates;
//! 2. the NAT and firewall matrix (cone/cone srflx, symmetric/symmetric relay over UDP,
//!    symmetric/UDP dropped relay over TCP, symmetric/443 only relay over TLS on 443, TURN
//!    unreachable: both told in words within 20 s), hermes-turn's default deny list (without
//!    `TURN_ALLOWED_PEER_IPS` the relay refuses the lab's peers: no media, refusals counted), a
//!    network change of B mid-call on a relayed and on a direct call, a bad link (150 ms,
//!    ±20 ms, 3 % loss on B's uplink), and three rows again with coturn in hermes-turn's
//!    place (CPU of both servers for the same calls).
//!
//! Prints the table (also written to `test-output/netlab-report.md`). Skips with one line
//! where the machine cannot create network namespaces.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hermes_e2e::netlab::{self, Firewall, Lab, Nat, PUBLIC_NET, Site, TURN_IP, WEB_IP};
use hermes_e2e::{DriverRun, Stack, StackOptions, TURN_SECRET, median, run_driver_with};
use hermes_testkit::{ChildGuard, require_program, wait_for_tcp, workspace_root};
use serde_json::{Value, json};

/// Calls per row for the medians.
const RUNS: u32 = 3;

/// One row of the lab: how the two sites' routers are set up and what must happen.
struct Row {
    name: &'static str,
    a: (Nat, Firewall),
    b: (Nat, Firewall),
    expect: Expect,
    runs: u32,
    /// B moves to another network mid-call.
    change: bool,
    /// B's uplink is impaired (delay ms, jitter ms, loss share).
    link: Option<(u32, u32, f64)>,
    turn: Turn,
    /// What an operator must open, for the docs table.
    open: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Both sides send from host candidates, at least one side's pair is host/host.
    Host,
    /// Direct between the NATs' public addresses; no relay on either side.
    Srflx,
    /// Some side relays; every relaying side over this transport (B's when `b_relays`).
    Relay {
        transport: &'static str,
        b_relays: bool,
    },
    /// No media path: both UIs say so.
    Blocked,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Turn {
    Hermes,
    /// hermes-turn without `TURN_ALLOWED_PEER_IPS` (its default deny list).
    HermesDefaultDeny,
    Coturn,
}

fn rows() -> Vec<Row> {
    use Firewall::*;
    use Nat::*;
    let row = |name, a, b, expect, open| Row {
        name,
        a,
        b,
        expect,
        runs: RUNS,
        change: false,
        link: None,
        turn: Turn::Hermes,
        open,
    };
    let relay = |transport, b_relays| Expect::Relay {
        transport,
        b_relays,
    };
    let udp_open = "web: TCP 443; media: UDP between the sites (no server port needed)";
    let sym =
        "web: TCP 443; TURN: UDP 3478 and the relay range UDP 49152-65535 on the TURN address";
    let tcp = "web: TCP 443; TURN: TCP 3478 on the TURN address (relay range UDP server side)";
    let tls = "web: TCP 443; TURN: TLS on TCP 443 of the TURN's own address";
    let mut v = vec![
        row(
            "cone-cone",
            (Cone, Open),
            (Cone, Open),
            Expect::Srflx,
            udp_open,
        ),
        row(
            "sym-sym",
            (Symmetric, Open),
            (Symmetric, Open),
            relay("udp", false),
            sym,
        ),
        row(
            "sym-udp-dropped",
            (Symmetric, Open),
            (Cone, UdpDropped),
            relay("tcp", true),
            tcp,
        ),
        row(
            "sym-443-only",
            (Symmetric, Open),
            (Cone, Tcp443Only),
            relay("tls", true),
            tls,
        ),
        Row {
            runs: 1,
            ..row(
                "turn-unreachable",
                (Symmetric, TurnBlocked),
                (Symmetric, Open),
                Expect::Blocked,
                "nothing works: open one of the TURN paths above",
            )
        },
        Row {
            runs: 1,
            turn: Turn::HermesDefaultDeny,
            ..row(
                "sym-sym-default-deny",
                (Symmetric, Open),
                (Symmetric, Open),
                Expect::Blocked,
                "TURN_ALLOWED_PEER_IPS must name private/special peer ranges a relay may reach",
            )
        },
        Row {
            runs: 1,
            change: true,
            ..row(
                "move-relayed",
                (Symmetric, Open),
                (Symmetric, Open),
                relay("udp", false),
                sym,
            )
        },
        Row {
            runs: 1,
            change: true,
            ..row(
                "move-direct",
                (Cone, Open),
                (Cone, Open),
                Expect::Srflx,
                udp_open,
            )
        },
        Row {
            link: Some((150, 20, 0.03)),
            ..row(
                "bad-link",
                (Cone, Open),
                (Cone, Open),
                Expect::Srflx,
                udp_open,
            )
        },
    ];
    for (name, from) in [
        ("coturn-sym-sym", 1),
        ("coturn-sym-udp-dropped", 2),
        ("coturn-sym-443-only", 3),
    ] {
        let base = &v[from];
        v.push(Row {
            name,
            a: base.a,
            b: base.b,
            expect: base.expect,
            runs: RUNS,
            change: false,
            link: None,
            turn: Turn::Coturn,
            open: base.open,
        });
    }
    v
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn turn_metric(stack: &Stack, name: &str) -> f64 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], stack.turn_metrics_port));
    let (_, text) = hermes_e2e::http_get(addr, "/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(-1.0)
}

/// What the request handler keeps between the driver's requests.
struct LabState {
    lab: Lab,
    rows: Vec<Row>,
    turn: Turn,
    coturn: Option<ChildGuard>,
    /// Row → CPU ticks of the TURN server over its calls.
    cpu: BTreeMap<&'static str, u64>,
    open_row: Option<(&'static str, u32, u64)>,
    refused_by_default_deny: Option<f64>,
    moved_at: Vec<(String, Instant)>,
}

impl LabState {
    fn turn_pid(&mut self, stack: &mut Stack) -> Option<u32> {
        match self.turn {
            Turn::Coturn => self.coturn.as_ref().and_then(ChildGuard::id),
            _ => stack.pid("turn"),
        }
    }

    /// Close the CPU account of the row that ran.
    fn close_row(&mut self, stack: &mut Stack) {
        if let Some((name, pid, start)) = self.open_row.take() {
            let now = self.turn_pid(stack).filter(|p| *p == pid).map(cpu_ticks);
            if let Some(now) = now {
                self.cpu.insert(name, now.saturating_sub(start));
            }
        }
        if self.turn == Turn::HermesDefaultDeny {
            self.refused_by_default_deny =
                Some(turn_metric(stack, "hermes_turn_peers_refused_total "));
        }
    }

    fn switch_turn(&mut self, stack: &mut Stack, want: Turn) -> Result<(), String> {
        if self.turn == want {
            return Ok(());
        }
        if self.turn == Turn::Coturn {
            self.coturn = None;
        }
        match want {
            Turn::Hermes => {
                stack.restart_with_env("turn", &[("TURN_ALLOWED_PEER_IPS", PUBLIC_NET.into())])?
            }
            Turn::HermesDefaultDeny => {
                stack.restart_without_env("turn", &["TURN_ALLOWED_PEER_IPS"])?
            }
            Turn::Coturn => {
                stack.stop("turn")?;
                self.coturn = Some(start_coturn(&self.lab)?);
            }
        }
        self.turn = want;
        Ok(())
    }

    fn on_request(&mut self, stack: &mut Stack, action: &str) -> Result<Duration, String> {
        let started = Instant::now();
        let (verb, name) = action.split_once(' ').unwrap_or((action, ""));
        let row = self
            .rows
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| format!("no lab row {name:?}"))?;
        match verb {
            "lab-row" => {
                self.close_row(stack);
                let (a, b, turn, link) = {
                    let r = &self.rows[row];
                    (r.a, r.b, r.turn, r.link)
                };
                self.switch_turn(stack, turn)?;
                self.lab.configure(Site::A, a.0, a.1)?;
                self.lab.configure(Site::B, b.0, b.1)?;
                self.lab.impair(Site::B, link)?;
                let pid = self.turn_pid(stack).ok_or("no TURN server running")?;
                self.open_row = Some((self.rows[row].name, pid, cpu_ticks(pid)));
            }
            "lab-change" => {
                let from = self.lab.public_ip(Site::B);
                self.lab.move_site(Site::B)?;
                eprintln!(
                    "[netlab] B moved from {from} to {}",
                    self.lab.public_ip(Site::B)
                );
                self.moved_at.push((name.to_owned(), Instant::now()));
            }
            other => return Err(format!("unknown lab request {other:?}")),
        }
        Ok(started.elapsed())
    }
}

/// The real coturn with the repository's coturn-compat configuration and the same secret,
/// on the TURN address: 3478 UDP/TCP, TLS on 443 with the lab certificate.
fn start_coturn(lab: &Lab) -> Result<ChildGuard, String> {
    let bin = require_program("turnserver", "coturn");
    let (cert, key) = lab.server_cert();
    let log = std::fs::File::create(lab.dir().join("coturn.log")).map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("-c")
        .arg(workspace_root().join("coturn-compat/turnserver.conf"))
        .arg(format!("--static-auth-secret={TURN_SECRET}"))
        .arg("--realm=hermes.lab")
        .arg(format!("--listening-ip={TURN_IP}"))
        .arg(format!("--relay-ip={TURN_IP}"))
        .arg("--listening-port=3478")
        .arg("--tls-listening-port=443")
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("--pkey={}", key.display()))
        .arg("--allowed-peer-ip=198.18.0.0-198.18.0.255")
        .arg("--no-dtls")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    let guard = ChildGuard::spawn("coturn", &mut cmd).map_err(|e| format!("coturn: {e}"))?;
    for port in [3478, 443] {
        let addr = format!("{TURN_IP}:{port}").parse().expect("lab address");
        wait_for_tcp(addr, Duration::from_secs(10))?;
    }
    Ok(guard)
}

fn lab_options(lab: &Lab) -> StackOptions {
    let (cert, key) = lab.server_cert();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let origin = format!("https://{WEB_IP}");
    StackOptions {
        api_env: vec![
            ("TURN_PUBLIC_HOST", TURN_IP.into()),
            ("TURN_PORT", "3478".into()),
            ("TURN_TLS", "true".into()),
            ("TURNS_PORT", "443".into()),
            ("CORS_DEV_ORIGINS", origin.clone()),
        ],
        signal_env: vec![("SIGNAL_ALLOWED_ORIGINS", origin.clone())],
        turn_env: vec![
            ("TURN_LISTEN", format!("{TURN_IP}:3478")),
            ("TURNS_LISTEN", format!("{TURN_IP}:443")),
            ("TURN_RELAY_IP", TURN_IP.into()),
            ("TURN_EXTERNAL_IP", TURN_IP.into()),
            ("TURN_REALM", "hermes.lab".into()),
            ("TURN_ALLOW_LOOPBACK_PEERS", "false".into()),
            ("TURN_TLS_CERT", cert.clone()),
            ("TURN_TLS_KEY", key.clone()),
            ("TURN_ALLOWED_PEER_IPS", PUBLIC_NET.into()),
            // Rows restart or replace the relay between calls: no 25 s drain of leftovers.
            ("TURN_DRAIN_SECS", "1".into()),
        ],
        caddy_env: vec![
            ("HERMES_HTTPS_ADDR", format!("{WEB_IP}:443")),
            ("HERMES_HTTPS_IP", WEB_IP.into()),
            ("HERMES_TLS", format!("{cert} {key}")),
        ],
        caddyfile: Some(workspace_root().join("caddy/Caddyfile.https")),
        public_base: Some(origin),
    }
}

fn driver_args(lab: &Lab, a: Site, b: Site, rows: &[&Row], out: &std::path::Path) -> Vec<String> {
    let plan: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "runs": r.runs,
                "expect": if r.expect == Expect::Blocked { "blocked" } else { "media" },
                "change": r.change,
                "quality": r.link.is_some(),
                "direct": matches!(r.expect, Expect::Host | Expect::Srflx),
            })
        })
        .collect();
    vec![
        "--scenarios".into(),
        "lab".into(),
        "--lab-rows".into(),
        Value::Array(plan).to_string(),
        "--chromium-a".into(),
        lab.browser(a).display().to_string(),
        "--chromium-b".into(),
        lab.browser(b).display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]
}

fn expect_ok(run: &DriverRun, stack: &Stack, what: &str) {
    if !(run.exit_ok && run.done["ok"] == true) {
        panic!(
            "{what}: {}\n{}",
            run.done["error"]
                .as_str()
                .unwrap_or("(see driver lines above)"),
            stack.diagnostics()
        );
    }
}

/// `host`, `srflx`, `relay/udp` … for one side's selected pair.
fn path_of(side: &Value) -> String {
    let t = side["local"]["type"].as_str().unwrap_or("?");
    let remote = side["remote"]["type"].as_str().unwrap_or("?");
    match t {
        "relay" => format!(
            "relay/{}→{remote}",
            side["local"]["relayProtocol"].as_str().unwrap_or("?")
        ),
        _ => format!("{t}→{remote}"),
    }
}

fn check_path(row: &Row, call: &Value) {
    let (a, b) = (&call["A"], &call["B"]);
    let ty = |s: &Value, w: &str| s[w]["type"].as_str().unwrap_or("").to_owned();
    let what = format!("{}: A {} / B {}", row.name, path_of(a), path_of(b));
    match row.expect {
        Expect::Host => {
            // Neither side sends from a relay, and at least one side's pair is host/host.
            // Chromium's controlling side now and then (about 1 call in 15-20, measured) keeps
            // a host→(peer's relay) pair it nominated first while the other side reports
            // host/host; that is reported, and tracked in docs/networks.md, not hidden.
            for s in [a, b] {
                assert_eq!(ty(s, "local"), "host", "{what}");
            }
            assert!(
                [a, b]
                    .iter()
                    .any(|s| ty(s, "local") == "host" && ty(s, "remote") == "host"),
                "no host/host pair on either side: {what}"
            );
            if [a, b].iter().any(|s| ty(s, "remote") != "host") {
                eprintln!("netlab: the sides disagree on the same LAN ({what})");
            }
        }
        Expect::Srflx => {
            for s in [a, b] {
                assert!(ty(s, "local") != "relay", "relayed, not direct: {what}");
                assert!(
                    matches!(ty(s, "remote").as_str(), "srflx" | "prflx"),
                    "not through the NATs' public addresses: {what}"
                );
            }
        }
        Expect::Relay {
            transport,
            b_relays,
        } => {
            let relaying: Vec<&Value> = [a, b]
                .into_iter()
                .filter(|s| ty(s, "local") == "relay")
                .collect();
            assert!(!relaying.is_empty(), "no side relays: {what}");
            if b_relays {
                assert_eq!(ty(b, "local"), "relay", "B must relay: {what}");
                assert_eq!(
                    b["local"]["relayProtocol"].as_str(),
                    Some(transport),
                    "{what}"
                );
            } else {
                for s in relaying {
                    assert_eq!(
                        s["local"]["relayProtocol"].as_str(),
                        Some(transport),
                        "{what}"
                    );
                }
            }
        }
        Expect::Blocked => {}
    }
}

#[test]
fn calls_across_nats_firewalls_and_network_changes() {
    if let Some(why) = netlab::unavailable() {
        eprintln!("{why}");
        return;
    }
    require_program("chromium", "chromium");
    let begun = Instant::now();
    let lab = Lab::build().unwrap_or_else(|e| panic!("lab: {e}"));
    lab.enter_public()
        .unwrap_or_else(|e| panic!("enter the lab: {e}"));
    let mut stack = Stack::start_with("all", lab_options(&lab))
        .unwrap_or_else(|e| panic!("stack in the lab did not start: {e}"));
    let out: PathBuf = workspace_root().join("test-output/netlab");
    std::fs::create_dir_all(&out).expect("create test-output/netlab");
    let set_up = begun.elapsed();

    // HERMES_NETLAB_ROWS=name,name runs only those rows (make lab, debugging).
    let only: Option<Vec<String>> = std::env::var("HERMES_NETLAB_ROWS")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));

    // --- 1. same LAN, no NAT ---
    let host_row = Row {
        name: "same-lan",
        a: (Nat::Cone, Firewall::Open),
        b: (Nat::Cone, Firewall::Open),
        expect: Expect::Host,
        runs: RUNS,
        change: false,
        link: None,
        turn: Turn::Hermes,
        open: "web: TCP 443; media: UDP inside the LAN",
    };
    let host_rows: Vec<&Row> = [&host_row].into_iter().filter(|r| wanted(r.name)).collect();
    let args = driver_args(&lab, Site::Lan1, Site::Lan2, &host_rows, &out);
    let host = run_driver_with(
        &mut stack,
        "lab lan",
        &args,
        Duration::from_secs(90),
        |_, a| {
            // Nothing to configure: both sites sit on the same segment.
            a.starts_with("lab-row same-lan")
                .then_some(Duration::ZERO)
                .ok_or_else(|| format!("unexpected {a}"))
        },
    )
    .unwrap_or_else(|e| panic!("driver (same LAN): {e}\n{}", stack.diagnostics()));
    expect_ok(&host, &stack, "same LAN");

    // --- 2. behind NATs and firewalls ---
    let all_rows: Vec<Row> = rows().into_iter().filter(|r| wanted(r.name)).collect();
    let plan: Vec<&Row> = all_rows.iter().collect();
    let args = driver_args(&lab, Site::A, Site::B, &plan, &out);
    let mut state = LabState {
        lab,
        rows: rows(),
        turn: Turn::Hermes,
        coturn: None,
        cpu: BTreeMap::new(),
        open_row: None,
        refused_by_default_deny: None,
        moved_at: Vec::new(),
    };
    let nat = run_driver_with(
        &mut stack,
        "lab nat",
        &args,
        Duration::from_secs(420),
        |s, a| state.on_request(s, a),
    );
    state.close_row(&mut stack);
    let nat = nat.unwrap_or_else(|e| panic!("driver (NAT rows): {e}\n{}", stack.diagnostics()));
    expect_ok(&nat, &stack, "NAT rows");

    // --- the figures and the paths ---
    let mut calls: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in host.events.iter().chain(nat.events.iter()) {
        if e["event"] == "lab-call" {
            let row = e["row"].as_str().unwrap_or("?").to_owned();
            calls.entry(row).or_default().push(e.clone());
        }
    }
    let mut report = String::from(
        "| row | site A | site B | path seen (A / B) | setup ms (median) | runs ms | TURN CPU ms | operator opens |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in host_rows.iter().copied().chain(all_rows.iter()) {
        let got = calls
            .get(row.name)
            .unwrap_or_else(|| panic!("row {} made no call", row.name));
        assert_eq!(got.len(), row.runs as usize, "row {}", row.name);
        for call in got {
            check_path(row, call);
        }
        let first = &got[0];
        let (path, ms): (String, Vec<f64>) = if row.expect == Expect::Blocked {
            (
                format!("blocked (told after {} ms)", first["blockedMs"]),
                got.iter().filter_map(|c| c["blockedMs"].as_f64()).collect(),
            )
        } else {
            (
                format!("{} / {}", path_of(&first["A"]), path_of(&first["B"])),
                got.iter().filter_map(|c| c["joinMs"].as_f64()).collect(),
            )
        };
        let cpu = state
            .cpu
            .get(row.name)
            .map_or("-".to_owned(), |t| format!("{}", t * 10));
        let site = |s: (Nat, Firewall)| format!("{:?} {:?}", s.0, s.1);
        let (sa, sb) = if row.name == "same-lan" {
            ("LAN".to_owned(), "LAN".to_owned())
        } else {
            (site(row.a), site(row.b))
        };
        let mut extra = String::new();
        if let Some(r) = first.get("recoveryMs").and_then(Value::as_f64) {
            extra = format!(
                "; network change → media again {r:.0} ms, now {} / {}",
                path_of(&first["after"]["A"]),
                path_of(&first["after"]["B"])
            );
        }
        if let Some(q) = first.get("quality") {
            extra = format!("; quality A {} B {}", q["A"], q["B"]);
        }
        report.push_str(&format!(
            "| {} ({:?}) | {sa} | {sb} | {path}{extra} | {:.0} | {ms:?} | {cpu} | {} |\n",
            row.name,
            row.turn,
            median(&ms),
            row.open
        ));
    }
    let refused = state.refused_by_default_deny.unwrap_or(-1.0);
    report.push_str(&format!(
        "\nhermes-turn without TURN_ALLOWED_PEER_IPS refused {refused} peer permissions (default deny list).\nlab set-up + stack start: {set_up:?}; whole test: {:?}\n",
        begun.elapsed()
    ));
    eprintln!("\n{report}");
    let _ = std::fs::write(
        workspace_root().join("test-output/netlab-report.md"),
        &report,
    );
    assert!(
        !wanted("sym-sym-default-deny") || refused > 0.0,
        "without TURN_ALLOWED_PEER_IPS hermes-turn must refuse the lab's peers (refusals: {refused})"
    );
    for row in ["move-relayed", "move-direct"]
        .into_iter()
        .filter(|r| wanted(r))
    {
        assert!(
            calls[row][0]["recoveryMs"].as_f64().is_some(),
            "{row}: no recovery time"
        );
    }
    drop(stack);
    drop(state);
}

/// `make run` with a LAN address (issue 21), in the lab: `scripts/run.sh` with
/// `HERMES_BIND=198.18.0.10` inside the public namespace; two browsers on that LAN (no
/// insecure-origin flag, Caddy's local CA trusted as the banner says) get camera and
/// microphone and see each other; plain HTTP redirects to HTTPS; a resolve flood from one
/// client address is limited for that address only, not for the other client.
#[test]
fn make_run_on_a_lan_address() {
    if let Some(why) = netlab::unavailable() {
        eprintln!("{why}");
        return;
    }
    require_program("chromium", "chromium");
    let lab = Lab::build().unwrap_or_else(|e| panic!("lab: {e}"));
    lab.enter_public()
        .unwrap_or_else(|e| panic!("enter the lab: {e}"));
    let log_path = lab.dir().join("make-run.log");
    let log = std::fs::File::create(&log_path).expect("make run log");
    let mut cmd = std::process::Command::new("setsid");
    cmd.arg(workspace_root().join("scripts/run.sh"))
        .env("HERMES_BIND", WEB_IP)
        .env("HERMES_HTTP_PORT", "8443")
        // Built already (`make test` builds with --all-targets, whose features differ).
        .env("HERMES_NO_BUILD", "1")
        // A small per-address resolve budget, so the flood below is short.
        .env("API_RESOLVE_IP_LIMIT", "5")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let mut run = ChildGuard::spawn("make run", &mut cmd).expect("spawn scripts/run.sh");
    let deadline = Instant::now() + Duration::from_secs(240);
    let banner = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("local CA:") {
            break text;
        }
        assert!(
            Instant::now() < deadline && run.is_running(),
            "make run did not come up:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(!banner.contains("with warnings"), "{banner}");
    let url = format!("https://{WEB_IP}:8443/");
    assert!(banner.contains(&url), "the banner prints {url}:\n{banner}");
    let ca = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("local CA: "))
        .map(PathBuf::from)
        .expect("CA path in the banner");
    lab.trust(&ca, "Caddy local CA (make run)")
        .unwrap_or_else(|e| panic!("trust {}: {e}", ca.display()));
    let ca_arg = ca.display().to_string();

    // Plain HTTP to the printed port is redirected to the HTTPS URL.
    let redirect = lab
        .exec(
            Site::Lan1,
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                &format!("http://{WEB_IP}:8443/c/ABC123"),
            ],
        )
        .unwrap_or_else(|e| panic!("curl http: {e}"));
    assert!(
        redirect.starts_with("30") && redirect.contains(&format!("https://{WEB_IP}:8443/")),
        "HTTP must redirect to HTTPS: {redirect}"
    );

    // A call between the two LAN sites.
    let row = Row {
        name: "lan-make-run",
        a: (Nat::Cone, Firewall::Open),
        b: (Nat::Cone, Firewall::Open),
        expect: Expect::Host,
        runs: 1,
        change: false,
        link: None,
        turn: Turn::Hermes,
        open: "",
    };
    let out = workspace_root().join("test-output/netlab");
    std::fs::create_dir_all(&out).expect("create test-output/netlab");
    let args = driver_args(&lab, Site::Lan1, Site::Lan2, &[&row], &out);
    let call =
        hermes_e2e::run_driver_at(&url, "make run lan", &args, Duration::from_secs(90), |_| {
            Ok(Duration::ZERO)
        })
        .unwrap_or_else(|e| panic!("driver: {e}"));
    assert!(
        call.exit_ok && call.done["ok"] == true,
        "LAN call failed: {}\n{}",
        call.done["error"],
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let made = call
        .events
        .iter()
        .find(|e| e["event"] == "lab-call")
        .expect("a call was made");
    check_path(&row, made);
    for side in ["A", "B"] {
        let d = &made["devices"][side];
        assert_eq!(d["secure"], true, "{side}: not a secure context: {d}");
        assert_eq!(d["tracks"], json!(["audio", "video"]), "{side}: {d}");
        assert_eq!(d["notice"], "", "{side} was told something: {d}");
    }

    // Resolve flood from Lan1 (5 per address): Lan1 is limited, Lan2 is not.
    let resolve = format!("{url}api/call/resolve");
    let resolve_from = |site: Site, i: u32| -> String {
        let body = format!("{{\"code\":\"{i:06}\"}}");
        lab.exec(
            site,
            "curl",
            &[
                "-sS",
                "--cacert",
                &ca_arg,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                &body,
                &resolve,
            ],
        )
        .unwrap_or_else(|e| panic!("resolve from {site:?}: {e}"))
    };
    let statuses: Vec<String> = (0..8).map(|i| resolve_from(Site::Lan1, i)).collect();
    assert!(
        statuses.iter().any(|s| s == "429"),
        "Lan1 must be limited: {statuses:?}"
    );
    let other = resolve_from(Site::Lan2, 8);
    assert_ne!(
        other, "429",
        "Lan2 was limited by Lan1's flood: the API sees one address for all clients"
    );
    eprintln!(
        "make run on {WEB_IP}: join→first frame {} ms; Lan1 flood {statuses:?}; Lan2 {other}",
        made["joinMs"]
    );

    // Ctrl-C stops everything.
    let pgid = run.id().expect("running");
    let _ = std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status();
    let stop = Instant::now() + Duration::from_secs(20);
    while run.is_running() {
        assert!(Instant::now() < stop, "make run did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(lab);
}
