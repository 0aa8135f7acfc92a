//! A small internet built from Linux network namespaces, for calls across NATs and firewalls.
//!
//! ```text
//!                      pub: bridge hlab-br, 198.18.0.0/24 ("the internet")
//!                      .10 Caddy (HTTPS, lab CA)   .11 TURN (3478 udp/tcp, TLS on 443)
//!         ┌────────────┬────────────┬───────────────┬────────────────┐
//!       lan1 .21      lan2 .22       nat-a .101          nat-b .102 (.112 after a move)
//!     (same LAN, no NAT)            │ NAT + firewall    │ NAT + firewall
//!                                   a 10.0.1.2          b 10.0.2.2
//! ```
//!
//! Every interface is created inside a namespace of the lab (never in the host's), no
//! namespace has a route to the host, and the public range 198.18.0.0/24 is a special-purpose
//! (benchmarking) range that hermes-turn refuses unless `TURN_ALLOWED_PEER_IPS` names it.
//! The Hermes stack runs in `pub` (the test thread enters it with `setns`, so the stack's
//! own harness and every process it starts live there); each browser runs in its site through
//! a wrapper (`ip netns exec`) that Playwright launches, talking to it over a pipe.
//!
//! Every namespace is named `hlab-<pid>x<n>-<role>` (the process and its n-th lab), so labs of
//! several test processes run side by side. Clean-up: [`Lab`]'s `Drop` kills whatever still
//! runs in the lab's namespaces and deletes them (their veths, bridge and iptables rules go
//! with them); [`Lab::build`] first sweeps the namespaces of labs whose process is gone (a
//! killed run).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hermes_testkit::{ChildGuard, require_program};

/// Prefix of every namespace the lab creates (and the only ones its sweep deletes).
pub const PREFIX: &str = "hlab-";
/// The public segment.
pub const PUBLIC_NET: &str = "198.18.0.0/24";
/// Caddy's address (HTTPS on 443).
pub const WEB_IP: &str = "198.18.0.10";
/// hermes-turn's (or coturn's) own address: 3478 UDP/TCP, TLS on 443.
pub const TURN_IP: &str = "198.18.0.11";
static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Held shared by every running lab: labs of this kind coexist, while anything that removes
/// `hlab-` namespaces it cannot tell are orphans (the first version of this lab swept every
/// one) must hold it exclusively, so it never sweeps a running lab.
const LOCK_FILE: &str = "/run/hermes-netlab.lock";

/// Where a browser runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// On the public segment itself, no NAT (two of them share one LAN).
    Lan1,
    Lan2,
    /// Behind their own NAT namespace.
    A,
    B,
}

impl Site {
    /// The site's role in its namespace's name.
    pub fn role(self) -> &'static str {
        match self {
            Site::Lan1 => "lan1",
            Site::Lan2 => "lan2",
            Site::A => "a",
            Site::B => "b",
        }
    }

    fn nat_role(self) -> Option<&'static str> {
        match self {
            Site::A => Some("nat-a"),
            Site::B => Some("nat-b"),
            _ => None,
        }
    }

    fn index(self) -> u8 {
        match self {
            Site::Lan1 => 1,
            Site::Lan2 => 2,
            Site::A => 1,
            Site::B => 2,
        }
    }

    /// The NAT's outer address: `moved` is the address after a network change.
    fn wan_ip(self, moved: bool) -> String {
        format!(
            "198.18.0.{}",
            100 + self.index() + if moved { 10 } else { 0 }
        )
    }
}

/// How a site's router maps addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (plain MASQUERADE keeps the port), unsolicited inbound
    /// dropped, as home routers do. The drop matters: a connectivity check that reaches the
    /// router's own address unsolicited would otherwise be accepted locally, its conntrack
    /// entry would take the mapping's tuple, and the site's own later packets to that peer
    /// would leave from another port (the pair ends up relayed).
    Cone,
    /// A new random port for every destination (MASQUERADE --random-fully).
    Symmetric,
}

/// What a site's router lets out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    Open,
    /// No UDP at all: TURN over TCP must carry the call.
    UdpDropped,
    /// Only TCP to port 443: the web page and TURN over TLS on 443.
    Tcp443Only,
    /// Nothing reaches the TURN server's address (STUN and TURN on every port).
    TurnBlocked,
}

/// The lab: its namespaces, CA and browser wrappers. Dropping it removes everything.
pub struct Lab {
    prefix: String,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    moved: [bool; 2],
    delay_lines: Vec<ChildGuard>,
    home_ns: File,
    _lock: File,
}

/// Why the lab cannot run here (the one line a test prints when it skips).
pub fn unavailable() -> Option<String> {
    let ip = hermes_testkit::find_program("ip")?;
    let probe = format!("{PREFIX}probe-{}", std::process::id());
    let out = Command::new(&ip).args(["netns", "add", &probe]).output();
    match out {
        Ok(o) if o.status.success() => {
            let _ = Command::new(&ip).args(["netns", "del", &probe]).status();
            None
        }
        Ok(o) => Some(format!(
            "network lab skipped: cannot create a network namespace (CAP_NET_ADMIN missing?): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("network lab skipped: `ip` did not run: {e}")),
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

/// `ip netns exec <ns> program args…`
fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    ip(&all)
}

/// Kill every process in `ns` (except this one) and delete the namespace.
fn remove_namespace(ns: &str) {
    let me = std::process::id().to_string();
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter(|p| *p != me) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

impl Lab {
    /// Build the whole lab (sites start cone NAT, all open). Sweeps leftovers first.
    pub fn build() -> Result<Self, String> {
        require_program("ip", "iproute2");
        require_program("iptables-restore", "iptables");
        require_program("certutil", "libnss3-tools");
        require_program("openssl", "openssl");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(|e| format!("{LOCK_FILE}: {e}"))?;
        lock.lock_shared()
            .map_err(|e| format!("lock {LOCK_FILE}: {e}"))?;
        sweep();
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}x{n}-", std::process::id());
        let home_ns =
            File::open("/proc/thread-self/ns/net").map_err(|e| format!("own netns: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("hermes-netlab-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut lab = Self {
            prefix,
            dir,
            namespaces: Vec::new(),
            moved: [false; 2],
            delay_lines: Vec::new(),
            home_ns,
            _lock: lock,
        };
        lab.make_network()?;
        lab.make_certificates()?;
        for site in [Site::Lan1, Site::Lan2, Site::A, Site::B] {
            lab.make_browser_wrapper(site)?;
        }
        Ok(lab)
    }

    /// The name of this lab's namespace for `role`.
    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// The namespace a site's browser runs in.
    pub fn site_ns(&self, site: Site) -> String {
        self.ns(site.role())
    }

    fn nat_ns(&self, site: Site) -> Result<String, String> {
        site.nat_role()
            .map(|r| self.ns(r))
            .ok_or_else(|| format!("{site:?} has no NAT"))
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        // The lab is IPv4 only. With IPv6 on, each new link's link-local address finishes
        // duplicate address detection a second or two after the link comes up; Chromium sees
        // that as an address change and aborts its requests in flight (ERR_NETWORK_CHANGED), so
        // a browser started soon after the lab lost its first page load.
        exec_in(
            ns,
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn make_network(&mut self) -> Result<(), String> {
        let public = &self.ns("pub");
        self.add_ns(public)?;
        ip(&["-n", public, "link", "add", "hlab-br", "type", "bridge"])?;
        ip(&["-n", public, "link", "set", "hlab-br", "up"])?;
        for addr in [WEB_IP, TURN_IP] {
            ip(&[
                "-n",
                public,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "hlab-br",
            ])?;
        }
        // Same-LAN sites: straight on the public segment.
        for (site, port) in [(Site::Lan1, "p-lan1"), (Site::Lan2, "p-lan2")] {
            let ns = &self.site_ns(site);
            self.add_ns(ns)?;
            self.veth(public, port, ns, "eth0")?;
            ip(&["-n", public, "link", "set", port, "master", "hlab-br"])?;
            let addr = format!("198.18.0.{}/24", 20 + site.index());
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        }
        // NATed sites: site ── lan0 | NAT | wan0 ── bridge.
        for (site, port) in [(Site::A, "p-nat-a"), (Site::B, "p-nat-b")] {
            let nat = &self.nat_ns(site)?;
            let ns = &self.site_ns(site);
            self.add_ns(nat)?;
            self.add_ns(ns)?;
            self.veth(public, port, nat, "wan0")?;
            ip(&["-n", public, "link", "set", port, "master", "hlab-br"])?;
            let wan = format!("{}/24", site.wan_ip(false));
            ip(&["-n", nat, "addr", "add", &wan, "dev", "wan0"])?;
            self.veth(nat, "lan0", ns, "eth0")?;
            let i = site.index();
            ip(&[
                "-n",
                nat,
                "addr",
                "add",
                &format!("10.0.{i}.1/24"),
                "dev",
                "lan0",
            ])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.0.{i}.2/24"),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.0.{i}.1"),
            ])?;
            exec_in(nat, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            self.configure(site, Nat::Cone, Firewall::Open)?;
        }
        Ok(())
    }

    /// A veth pair created inside `ns_a` with its other end moved into `ns_b`, both up.
    fn veth(&self, ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> Result<(), String> {
        ip(&[
            "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns",
            ns_b,
        ])?;
        ip(&["-n", ns_a, "link", "set", name_a, "up"])?;
        ip(&["-n", ns_b, "link", "set", name_b, "up"])?;
        Ok(())
    }

    /// Replace a NATed site's router rules (atomically, `iptables-restore`).
    pub fn configure(&self, site: Site, nat: Nat, firewall: Firewall) -> Result<(), String> {
        let ns = &self.nat_ns(site)?;
        let random = match nat {
            Nat::Cone => "",
            Nat::Symmetric => " --random-fully",
        };
        let out = match firewall {
            Firewall::Open => "-A FORWARD -i lan0 -o wan0 -j ACCEPT\n".to_owned(),
            Firewall::UdpDropped => "-A FORWARD -i lan0 -o wan0 -p tcp -j ACCEPT\n".to_owned(),
            Firewall::Tcp443Only => {
                "-A FORWARD -i lan0 -o wan0 -p tcp --dport 443 -j ACCEPT\n".to_owned()
            }
            Firewall::TurnBlocked => {
                format!("-A FORWARD -d {TURN_IP} -j DROP\n-A FORWARD -i lan0 -o wan0 -j ACCEPT\n")
            }
        };
        let rules = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o wan0 -j MASQUERADE{random}\nCOMMIT\n\
             *filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             -A INPUT -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A INPUT -i wan0 -j DROP\n\
             -A FORWARD -i wan0 -o lan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             {out}COMMIT\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.as_str(), "iptables-restore"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("iptables-restore: {e}"))?;
        child
            .stdin
            .take()
            .ok_or("iptables-restore stdin")?
            .write_all(rules.as_bytes())
            .map_err(|e| format!("iptables-restore: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("iptables-restore: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "iptables-restore in {ns}: {}\n{rules}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// The site's NAT gets another public address and loses the old one (a laptop moving
    /// to another network): MASQUERADE forgets every mapping of the removed address.
    pub fn move_site(&mut self, site: Site) -> Result<(), String> {
        let ns = &self.nat_ns(site)?;
        let slot = usize::from(site.index() - 1);
        let old = format!("{}/24", site.wan_ip(self.moved[slot]));
        let new = format!("{}/24", site.wan_ip(!self.moved[slot]));
        // Old one first: deleting a primary address also deletes the secondaries of its subnet.
        ip(&["-n", ns, "addr", "del", &old, "dev", "wan0"])?;
        ip(&["-n", ns, "addr", "add", &new, "dev", "wan0"])?;
        self.moved[slot] = !self.moved[slot];
        Ok(())
    }

    /// The site's public address now.
    pub fn public_ip(&self, site: Site) -> String {
        match site {
            Site::A | Site::B => site.wan_ip(self.moved[usize::from(site.index() - 1)]),
            _ => format!("198.18.0.{}", 20 + site.index()),
        }
    }

    fn make_certificates(&self) -> Result<(), String> {
        let d = self.dir.path();
        let p = |f: &str| d.join(f).display().to_string();
        std::fs::write(
            d.join("server.ext"),
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=IP:{WEB_IP},IP:{TURN_IP}\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.pem"),
                "-days",
                "2",
                "-subj",
                "/CN=Hermes network lab CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &p("server.key"),
                "-out",
                &p("server.csr"),
                "-subj",
                &format!("/CN={WEB_IP}"),
            ],
        )?;
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &p("server.csr"),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-out",
                &p("server.pem"),
                "-days",
                "2",
                "-extfile",
                &p("server.ext"),
            ],
        )?;
        Ok(())
    }

    /// The server certificate (both lab addresses) and its key, signed by the lab CA.
    pub fn server_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("server.pem"),
            self.dir.path().join("server.key"),
        )
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A Chromium profile home whose NSS database trusts the lab CA (and nothing else
    /// extra), and a wrapper that runs Chromium inside the site's namespace with it.
    fn make_browser_wrapper(&self, site: Site) -> Result<(), String> {
        let home = self.dir.path().join(format!("home-{}", site.role()));
        let nssdb = home.join(".pki/nssdb");
        std::fs::create_dir_all(&nssdb).map_err(|e| e.to_string())?;
        let db = format!("sql:{}", nssdb.display());
        run("certutil", &["-N", "-d", &db, "--empty-password"])?;
        run(
            "certutil",
            &[
                "-A",
                "-d",
                &db,
                "-t",
                "C,,",
                "-n",
                "Hermes network lab CA",
                "-i",
                &self.ca_pem().display().to_string(),
            ],
        )?;
        let chromium = std::env::var("HERMES_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
        let ipbin = require_program("ip", "iproute2");
        let script = format!(
            "#!/bin/sh\n# Chromium inside the lab site {ns}, trusting the lab CA.\n\
             HOME='{home}'\nexport HOME\nexec '{ip}' netns exec {ns} '{chromium}' \"$@\"\n",
            ns = self.site_ns(site),
            home = home.display(),
            ip = ipbin.display(),
        );
        let path = self.browser(site);
        std::fs::write(&path, script).map_err(|e| e.to_string())?;
        run("chmod", &["755", &path.display().to_string()])?;
        Ok(())
    }

    /// Make every site's browser trust another CA too (e.g. the local CA of Caddy's
    /// `tls internal` in `make run`).
    pub fn trust(&self, ca_pem: &Path, name: &str) -> Result<(), String> {
        for site in [Site::Lan1, Site::Lan2, Site::A, Site::B] {
            let nssdb = self
                .dir
                .path()
                .join(format!("home-{}/.pki/nssdb", site.role()));
            let db = format!("sql:{}", nssdb.display());
            let ca = ca_pem.display().to_string();
            run(
                "certutil",
                &["-A", "-d", &db, "-t", "C,,", "-n", name, "-i", &ca],
            )?;
        }
        Ok(())
    }

    /// Run a program inside a site's namespace (e.g. curl as a client there).
    pub fn exec(&self, site: Site, program: &str, args: &[&str]) -> Result<String, String> {
        exec_in(&self.site_ns(site), program, args)
    }

    /// The executable that starts Chromium in `site` (Playwright's `executablePath`).
    pub fn browser(&self, site: Site) -> PathBuf {
        self.dir.path().join(format!("chromium-{}", site.role()))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Move the calling thread (and every process it starts from now on) into the public
    /// segment, where the stack runs.
    pub fn enter_public(&self) -> Result<(), String> {
        let name = self.ns("pub");
        let ns = File::open(format!("/run/netns/{name}")).map_err(|e| format!("{name}: {e}"))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("setns {name}: {e}"))
    }

    /// Back to the namespace the thread came from.
    pub fn leave(&self) {
        let _ = rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&self.home_ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        );
    }

    /// Impair a NATed site's uplink (delay ± jitter, loss) with a user-space delay line, or
    /// end the impairment (`None`). The kernel here has no `netem`, so packets leaving the
    /// site are routed through a TUN device whose reader (tests/e2e/netlab/delayline.py)
    /// holds each one for its delay, drops some, and hands the rest back to the kernel.
    pub fn impair(&mut self, site: Site, link: Option<(u32, u32, f64)>) -> Result<(), String> {
        let ns = &self.site_ns(site);
        let gw = format!("10.0.{}.1", site.index());
        self.delay_lines.clear();
        let _ = ip(&["-n", ns, "rule", "del", "iif", "hlab-dl", "lookup", "100"]);
        let _ = ip(&["-n", ns, "link", "del", "hlab-dl"]);
        let _ = ip(&["-n", ns, "route", "replace", "default", "via", &gw]);
        let Some((delay_ms, jitter_ms, loss)) = link else {
            return Ok(());
        };
        let python = require_program("python3", "python3");
        let script = hermes_testkit::workspace_root().join("tests/e2e/netlab/delayline.py");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.as_str()])
            .arg(python)
            .arg(script)
            .args([
                "hlab-dl",
                &delay_ms.to_string(),
                &jitter_ms.to_string(),
                &loss.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard =
            ChildGuard::spawn("delayline", &mut cmd).map_err(|e| format!("delay line: {e}"))?;
        // The script prints one line once its TUN device exists.
        let out = guard
            .child_mut()
            .and_then(|c| c.stdout.take())
            .ok_or("delay line stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .map_err(|e| format!("delay line: {e}"))?;
        if !line.starts_with("ready") {
            return Err(format!("delay line did not start: {line:?}"));
        }
        self.delay_lines.push(guard);
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.hlab-dl.rp_filter=0",
            "net.ipv4.conf.hlab-dl.accept_local=1",
        ] {
            exec_in(ns, "sysctl", &["-qw", sysctl])?;
        }
        ip(&["-n", ns, "link", "set", "hlab-dl", "up"])?;
        // Sent by the site: into the delay line; back from it: out to the router.
        ip(&["-n", ns, "route", "replace", "default", "dev", "hlab-dl"])?;
        ip(&[
            "-n", ns, "route", "add", "default", "via", &gw, "table", "100",
        ])?;
        ip(&["-n", ns, "rule", "add", "iif", "hlab-dl", "lookup", "100"])?;
        Ok(())
    }
}

/// Remove what killed runs left behind: lab namespaces whose process is gone.
fn sweep() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    let orphan = |name: &str| {
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split(['x', '-']).next())
            .and_then(|p| p.parse::<u32>().ok());
        match pid {
            Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
            None => false,
        }
    };
    for ns in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| orphan(n))
    {
        eprintln!("netlab: removing leftover namespace {ns}");
        remove_namespace(ns);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.leave();
        self.delay_lines.clear();
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}
