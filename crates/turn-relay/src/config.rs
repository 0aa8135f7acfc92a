//! hermes-turn configuration: flags and environment (clap), optionally a coturn
//! `turnserver.conf` (`--config`), validated once into [`Settings`].
//!
//! Precedence: flag/env > turnserver.conf > built-in default. The coturn keys understood are
//! listening-port, listening-ip, tls-listening-port, min-port, max-port, realm,
//! use-auth-secret, static-auth-secret, external-ip, relay-ip, denied-peer-ip,
//! allowed-peer-ip, user-quota, total-quota, max-bps, cert, pkey, no-tls, no-tcp-relay (plus a few
//! harmless ones ignored silently, see [`IGNORED_KEYS`]); any other key is a start-up error,
//! so nobody believes an option is applied when it is not.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;
use hermes_service::{CommonArgs, Secret};

use crate::error::TurnError;
use crate::peer_filter::{IpRule, PeerFilter};
use crate::server::{CoreConfig, RelayIp};

#[derive(Debug, Clone, Parser)]
#[command(name = "hermes-turn", version, about = "Hermes STUN/TURN relay")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    /// A coturn turnserver.conf to read (supported keys only; flags and env win over it).
    #[arg(long = "config", short = 'c', env = "TURN_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// UDP and TCP listener for STUN/TURN. [default: 0.0.0.0:3478]
    #[arg(long, env = "TURN_LISTEN")]
    pub turn_listen: Option<SocketAddr>,

    /// TLS listener (TURNS), used only when a certificate and key are given. [default: 0.0.0.0:5349]
    #[arg(long, env = "TURNS_LISTEN")]
    pub turns_listen: Option<SocketAddr>,

    /// PEM certificate chain for TURNS; reloaded on change (mtime) and on SIGHUP.
    #[arg(long, env = "TURN_TLS_CERT")]
    pub turn_tls_cert: Option<PathBuf>,

    /// PEM private key for TURNS.
    #[arg(long, env = "TURN_TLS_KEY")]
    pub turn_tls_key: Option<PathBuf>,

    /// Shared secret of the REST credentials (the API's TURN_SECRET). Production refuses a
    /// missing, short or example secret.
    #[arg(long, env = "TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// Realm of the long-term credentials. [default: SERVER_NAME]
    #[arg(long, env = "TURN_REALM")]
    pub turn_realm: Option<String>,

    /// Lowest relay port. [default: 49152]
    #[arg(long, env = "TURN_MIN_PORT")]
    pub turn_min_port: Option<u16>,

    /// Highest relay port. [default: 65535]
    #[arg(long, env = "TURN_MAX_PORT")]
    pub turn_max_port: Option<u16>,

    /// Public address(es) told to clients, when the host is behind NAT (cloud VMs, k8s
    /// LoadBalancer). coturn syntax: `PUBLIC` or `PUBLIC/PRIVATE`; comma-separated for v4+v6.
    #[arg(long, env = "TURN_EXTERNAL_IP")]
    pub turn_external_ip: Option<String>,

    /// Address(es) relay sockets bind to (comma-separated, one per family). [default: the
    /// listen address if specific, else the host's primary address]
    #[arg(long, env = "TURN_RELAY_IP")]
    pub turn_relay_ip: Option<String>,

    /// DANGER for production: allow 127.0.0.0/8 and ::1 as peers (tests and local benchmarks).
    #[arg(long, env = "TURN_ALLOW_LOOPBACK_PEERS")]
    pub turn_allow_loopback_peers: Option<bool>,

    /// Peer ranges allowed despite being special-purpose (comma list of CIDRs or a-b ranges).
    #[arg(long, env = "TURN_ALLOWED_PEER_IPS", value_delimiter = ',')]
    pub turn_allowed_peer_ips: Vec<String>,

    /// Peer ranges always refused (comma list of CIDRs or a-b ranges).
    #[arg(long, env = "TURN_DENIED_PEER_IPS", value_delimiter = ',')]
    pub turn_denied_peer_ips: Vec<String>,

    /// `/metrics` and `/healthz`. Keep it off the public internet. [default: 0.0.0.0:9641]
    #[arg(long, env = "TURN_METRICS_LISTEN")]
    pub turn_metrics_listen: Option<SocketAddr>,

    /// Allocations per REST user (the part after `expiry:`); 0 = unlimited. Limits what one
    /// leaked credential can consume. [default: 16]
    #[arg(long, env = "TURN_USER_QUOTA")]
    pub turn_user_quota: Option<u32>,

    /// Allocations on this relay; 0 = unlimited. [default: 10000]
    #[arg(long, env = "TURN_TOTAL_QUOTA")]
    pub turn_total_quota: Option<u32>,

    /// Permissions (and channels) per allocation. A 1:1 call needs a handful. [default: 64]
    #[arg(long, env = "TURN_MAX_PERMISSIONS", default_value_t = 64)]
    pub turn_max_permissions: u32,

    /// Bytes per second per allocation and direction (coturn's max-bps unit); 0 = unlimited.
    /// 1.25 MB/s = 10 Mbit/s fits HD video plus screen sharing. [default: 1250000]
    #[arg(long, env = "TURN_MAX_BPS")]
    pub turn_max_bps: Option<u64>,

    /// Longest allocation lifetime a client may request (seconds).
    #[arg(long, env = "TURN_MAX_LIFETIME", default_value_t = 3600)]
    pub turn_max_lifetime: u32,

    /// Open TCP and TLS client connections, together; further ones are closed at accept, so a
    /// connection flood cannot exhaust file descriptors or memory. [default: 10000]
    #[arg(long, env = "TURN_MAX_STREAM_CONNECTIONS", default_value_t = 10_000)]
    pub turn_max_stream_connections: usize,

    /// A TCP/TLS client that takes longer than this to finish its TLS handshake and first
    /// frame, leaves a frame half-sent, or reads none of what is sent to it, is disconnected
    /// (and its allocation ends). Short enough that slow or hostile clients cannot pile up,
    /// long enough for a congested mobile link. [default: 10]
    #[arg(long, env = "TURN_STREAM_STALL_SECS", default_value_t = 10)]
    pub turn_stream_stall_secs: u64,

    /// After SIGTERM: refuse new allocations and keep relaying existing ones for up to this
    /// many seconds (less than the orchestrator's grace period).
    #[arg(long, env = "TURN_DRAIN_SECS", default_value_t = 25)]
    pub turn_drain_secs: u64,

    /// Relay workers, each with its own SO_REUSEPORT listener socket, allocations and
    /// relay ports (the port range is split between them). 0 = one per CPU core.
    #[arg(long, env = "TURN_WORKERS", default_value_t = 0)]
    pub turn_workers: usize,

    /// How threads run the workers. `adaptive`: as few threads as the load needs (all
    /// workers share one thread while it is idle most of the time; a thread busy over
    /// `TURN_THREAD_SPLIT_PERCENT` of its time hands half of its workers to another), since
    /// waking a sleeping thread on another core costs more CPU than relaying a packet.
    /// `fixed`: one thread per worker at all times.
    #[arg(long, env = "TURN_WORKER_THREADS", default_value = "adaptive", value_parser = ["adaptive", "fixed"])]
    pub turn_worker_threads: String,

    /// Busy share (percent of wall time) above which an adaptive thread with several
    /// workers hands half of them to another thread.
    #[arg(long, env = "TURN_THREAD_SPLIT_PERCENT", default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub turn_thread_split_percent: u32,

    /// SO_RCVBUF/SO_SNDBUF of the listener sockets (capped by net.core.rmem_max).
    #[arg(long, env = "TURN_SOCKET_BUFFER", default_value_t = 4 << 20)]
    pub turn_socket_buffer: usize,

    /// SO_RCVBUF/SO_SNDBUF of each relay socket.
    #[arg(long, env = "TURN_RELAY_SOCKET_BUFFER", default_value_t = 256 << 10)]
    pub turn_relay_socket_buffer: usize,

    /// Send runs of same-sized datagrams to one destination with UDP GSO (Linux 4.18+; off
    /// by itself where the kernel or device lacks it).
    #[arg(long, env = "TURN_GSO", default_value_t = true, action = clap::ArgAction::Set)]
    pub turn_gso: bool,

    /// Hand the datagrams a worker's turn sends to peers for its TCP/TLS clients, and its TCP
    /// clients' writes, to the kernel in one io_uring submission each (Linux 5.6+; where io_uring
    /// is refused, e.g. by a container's seccomp filter, one call per send as with `false`).
    /// Fewer context switches per packet; see docs/turn.md.
    #[arg(long, env = "TURN_IO_URING", default_value_t = true, action = clap::ArgAction::Set)]
    pub turn_io_uring: bool,

    /// Grant RFC 6062 TCP relays (REQUESTED-TRANSPORT TCP from TCP/TLS clients); `false`
    /// answers them 442, as coturn's `no-tcp-relay`. Peers reach TCP relays on the relay port
    /// range over TCP.
    #[arg(long, env = "TURN_TCP_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub turn_tcp_relay: bool,
}

/// Most workers a process starts, whatever the core count.
pub const MAX_WORKERS: usize = 64;
/// Fewest relay ports a worker should own: below that, fewer workers are started.
pub const MIN_PORTS_PER_WORKER: usize = 16;

/// `requested` workers (0 = one per core), capped so each owns a useful share of the relay
/// port range.
pub fn resolve_workers(requested: usize, min_port: u16, max_port: u16) -> usize {
    let wanted = if requested == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        requested
    };
    let span = usize::from(max_port).saturating_sub(usize::from(min_port)) + 1;
    wanted
        .min(MAX_WORKERS)
        .min(span / MIN_PORTS_PER_WORKER)
        .max(1)
}

/// The relay port sub-range of worker `index` of `workers`: contiguous, disjoint, together
/// the whole range.
pub fn worker_ports(min_port: u16, max_port: u16, index: usize, workers: usize) -> (u16, u16) {
    let span = usize::from(max_port) - usize::from(min_port) + 1;
    let start = usize::from(min_port) + span * index / workers;
    let end = usize::from(min_port) + span * (index + 1) / workers - 1;
    // Both fit in u16: they lie within [min_port, max_port].
    (start as u16, end as u16)
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub core: CoreConfig,
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub metrics_listen: SocketAddr,
    pub drain_secs: u64,
    pub max_stream_connections: usize,
    /// See `TURN_STREAM_STALL_SECS`.
    pub stream_stall: std::time::Duration,
    /// Workers, resolved (at least 1).
    pub workers: usize,
    /// Adaptive thread count (see `io/runner.rs`), or one thread per worker.
    pub adaptive_threads: bool,
    /// Busy share, in per mille, above which an adaptive thread splits its workers.
    pub split_permille: u32,
    pub socket_buffer: usize,
    pub relay_socket_buffer: usize,
    pub gso: bool,
    /// See `TURN_IO_URING`.
    pub io_uring: bool,
    pub redis_url: String,
    pub production: bool,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Keys of turnserver.conf we accept without acting on them (logging and process options
/// that have no meaning here, or that are our behaviour anyway).
pub const IGNORED_KEYS: &[&str] = &[
    "fingerprint",
    "lt-cred-mech",
    "no-cli",
    "no-multicast-peers",
    "no-loopback-peers",
    "no-dtls",
    "no-rfc5780",
    "no-stun-backward-compatibility",
    "response-origin-only-with-rfc5780",
    "syslog",
    "log-file",
    "simple-log",
    "verbose",
    "pidfile",
    "proc-user",
    "proc-group",
    "no-software-attribute",
    "stale-nonce",
    "secure-stun",
    "mobility",
    "listening-device",
    "server-name",
];

/// Values read from a turnserver.conf.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ConfFile {
    pub listening_port: Option<u16>,
    pub listening_ip: Option<IpAddr>,
    pub tls_listening_port: Option<u16>,
    pub min_port: Option<u16>,
    pub max_port: Option<u16>,
    pub realm: Option<String>,
    pub use_auth_secret: bool,
    pub static_auth_secret: Option<String>,
    pub external_ip: Vec<String>,
    pub relay_ip: Vec<String>,
    pub denied_peer_ip: Vec<String>,
    pub allowed_peer_ip: Vec<String>,
    pub user_quota: Option<u32>,
    pub total_quota: Option<u32>,
    pub max_bps: Option<u64>,
    pub cert: Option<PathBuf>,
    pub pkey: Option<PathBuf>,
    pub no_tls: bool,
    pub no_tcp_relay: bool,
    pub allow_loopback_peers: bool,
}

impl ConfFile {
    pub fn read(path: &Path) -> Result<Self, TurnError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TurnError::Config(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| TurnError::Config(format!("{}: {e}", path.display())))
    }

    /// Parse coturn's format: `key=value`, `key value` or a bare flag per line, `#` comments,
    /// optional leading `--`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut c = ConfFile::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let line = line.trim_start_matches("--");
            let (key, value) = match line.split_once(['=', ' ', '\t']) {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                None => (line, None),
            };
            let at = |what: &str| format!("line {}: {key}: {what}", n + 1);
            let val = || {
                value
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| at("needs a value"))
            };
            fn num<T: std::str::FromStr>(
                v: &str,
                at: &dyn Fn(&str) -> String,
            ) -> Result<T, String> {
                v.parse().map_err(|_| at("not a number"))
            }
            match key {
                "listening-port" => c.listening_port = Some(num(val()?, &at)?),
                "listening-ip" => {
                    c.listening_ip = Some(val()?.parse().map_err(|_| at("not an IP address"))?)
                }
                "tls-listening-port" => c.tls_listening_port = Some(num(val()?, &at)?),
                "min-port" => c.min_port = Some(num(val()?, &at)?),
                "max-port" => c.max_port = Some(num(val()?, &at)?),
                "realm" => c.realm = Some(val()?.to_string()),
                "use-auth-secret" => c.use_auth_secret = true,
                "static-auth-secret" => c.static_auth_secret = Some(val()?.to_string()),
                "external-ip" => c.external_ip.push(val()?.to_string()),
                "relay-ip" => c.relay_ip.push(val()?.to_string()),
                "denied-peer-ip" => c.denied_peer_ip.push(val()?.to_string()),
                "allowed-peer-ip" => c.allowed_peer_ip.push(val()?.to_string()),
                "user-quota" => c.user_quota = Some(num(val()?, &at)?),
                "total-quota" => c.total_quota = Some(num(val()?, &at)?),
                "max-bps" => c.max_bps = Some(num(val()?, &at)?),
                "cert" => c.cert = Some(PathBuf::from(val()?)),
                "pkey" => c.pkey = Some(PathBuf::from(val()?)),
                "no-tls" => c.no_tls = true,
                "no-tcp-relay" => c.no_tcp_relay = true,
                "allow-loopback-peers" => c.allow_loopback_peers = true,
                k if IGNORED_KEYS.contains(&k) => {}
                _ => {
                    return Err(at(
                        "unsupported key (see docs/turn.md for the supported ones)",
                    ));
                }
            }
        }
        Ok(c)
    }
}

impl Config {
    /// Merge flags/env with the conf file and defaults, and validate.
    pub fn resolve(&self) -> Result<Settings, TurnError> {
        let file = match &self.config_file {
            Some(p) => ConfFile::read(p)?,
            None => ConfFile::default(),
        };
        if self.config_file.is_some() && !file.use_auth_secret {
            tracing::warn!(
                "turnserver.conf lacks use-auth-secret: hermes-turn only supports REST credentials and uses them anyway"
            );
        }
        let env = self.common.hermes_env;
        let secret = self
            .turn_secret
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .or(file.static_auth_secret.as_deref());
        let secret = Secret::from_config("TURN_SECRET", secret, env)?;

        let mut listen = self
            .turn_listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 3478)));
        if self.turn_listen.is_none() {
            if let Some(p) = file.listening_port {
                listen.set_port(p);
            }
            if let Some(ip) = file.listening_ip {
                listen.set_ip(ip);
            }
        }
        let mut turns_listen = self
            .turns_listen
            .unwrap_or_else(|| SocketAddr::new(listen.ip(), 5349));
        if self.turns_listen.is_none()
            && let Some(p) = file.tls_listening_port
        {
            turns_listen.set_port(p);
        }
        let cert = self.turn_tls_cert.clone().or(file.cert.clone());
        let key = self.turn_tls_key.clone().or(file.pkey.clone());
        let tls = match (cert, key) {
            _ if file.no_tls && self.turn_tls_cert.is_none() => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                listen: turns_listen,
                cert,
                key,
            }),
            (None, None) => None,
            _ => {
                return Err(TurnError::Config(
                    "TURN_TLS_CERT and TURN_TLS_KEY must be given together".into(),
                ));
            }
        };

        let min_port = self.turn_min_port.or(file.min_port).unwrap_or(49152);
        let max_port = self.turn_max_port.or(file.max_port).unwrap_or(65535);
        if min_port == 0 || min_port > max_port {
            return Err(TurnError::Config(format!(
                "TURN_MIN_PORT ({min_port}) must be >= 1 and <= TURN_MAX_PORT ({max_port})"
            )));
        }

        let relay_ips = match self
            .turn_relay_ip
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(s) => split_list(s),
            None => file.relay_ip.clone(),
        };
        let external = match self
            .turn_external_ip
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(s) => split_list(s),
            None => file.external_ip.clone(),
        };
        let (relay_v4, relay_v6) = relay_addresses(listen.ip(), &relay_ips, &external)?;

        let mut filter = PeerFilter {
            allow_loopback: self
                .turn_allow_loopback_peers
                .unwrap_or(file.allow_loopback_peers),
            ..Default::default()
        };
        for r in self
            .turn_allowed_peer_ips
            .iter()
            .chain(&file.allowed_peer_ip)
        {
            if !r.trim().is_empty() {
                filter.allow.push(r.parse::<IpRule>()?);
            }
        }
        for r in self.turn_denied_peer_ips.iter().chain(&file.denied_peer_ip) {
            if !r.trim().is_empty() {
                filter.deny.push(r.parse::<IpRule>()?);
            }
        }
        if filter.allow_loopback && env.is_production() {
            tracing::warn!(
                "TURN_ALLOW_LOOPBACK_PEERS=true in production: clients can reach this host's loopback services"
            );
        }

        let realm = self
            .turn_realm
            .clone()
            .filter(|s| !s.is_empty())
            .or(file.realm.clone())
            .unwrap_or_else(|| self.common.server_name.clone());
        let mut core = CoreConfig::new(&realm, secret.expose(), relay_v4);
        core.relay_v6 = relay_v6;
        core.min_port = min_port;
        core.max_port = max_port;
        core.max_lifetime = self.turn_max_lifetime.max(60);
        core.user_quota = self.turn_user_quota.or(file.user_quota).unwrap_or(16);
        core.total_quota = self.turn_total_quota.or(file.total_quota).unwrap_or(10_000);
        core.max_permissions = self.turn_max_permissions.max(1);
        core.max_bps = self.turn_max_bps.or(file.max_bps).unwrap_or(1_250_000);
        core.filter = filter;
        core.tcp_relay = self.turn_tcp_relay && !file.no_tcp_relay;

        let workers = resolve_workers(self.turn_workers, core.min_port, core.max_port);
        Ok(Settings {
            core,
            listen,
            tls,
            metrics_listen: self
                .turn_metrics_listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9641))),
            drain_secs: self.turn_drain_secs,
            max_stream_connections: self.turn_max_stream_connections,
            stream_stall: std::time::Duration::from_secs(self.turn_stream_stall_secs.max(1)),
            workers,
            adaptive_threads: self.turn_worker_threads == "adaptive",
            split_permille: self.turn_thread_split_percent * 10,
            socket_buffer: self.turn_socket_buffer,
            relay_socket_buffer: self.turn_relay_socket_buffer,
            gso: self.turn_gso,
            io_uring: self.turn_io_uring,
            redis_url: self.common.redis_url.clone(),
            production: env.is_production(),
        })
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// Relay bind/public addresses per family from relay-ip and external-ip (coturn's
/// `PUBLIC/PRIVATE` form maps PUBLIC to PRIVATE).
fn relay_addresses(
    listen: IpAddr,
    relay_ips: &[String],
    external: &[String],
) -> Result<(Option<RelayIp>, Option<RelayIp>), TurnError> {
    let bad = |s: &str| TurnError::Config(format!("not an IP address: {s:?}"));
    let mut binds: Vec<IpAddr> = Vec::new();
    for s in relay_ips {
        binds.push(s.parse().map_err(|_| bad(s))?);
    }
    let mut publics: Vec<(IpAddr, Option<IpAddr>)> = Vec::new();
    for s in external {
        let (public, private) = match s.split_once('/') {
            Some((p, q)) => (p, Some(q.parse().map_err(|_| bad(q))?)),
            None => (s.as_str(), None),
        };
        publics.push((public.parse().map_err(|_| bad(public))?, private));
    }
    let resolve = |v4: bool| -> Option<RelayIp> {
        let bind = binds
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == v4)
            .or_else(|| {
                publics
                    .iter()
                    .find_map(|(p, q)| q.filter(|q| q.is_ipv4() == v4 && p.is_ipv4() == v4))
            })
            .or_else(|| (listen.is_ipv4() == v4 && !listen.is_unspecified()).then_some(listen))
            .or_else(|| v4.then(detect_primary_v4).flatten())?;
        let public = publics
            .iter()
            .find(|(p, q)| p.is_ipv4() == v4 && q.is_none_or(|q| q == bind))
            .map(|(p, _)| *p)
            .unwrap_or(bind);
        Some(RelayIp { bind, public })
    };
    let v4 = resolve(true);
    let v6 = resolve(false);
    if v4.is_none() && v6.is_none() {
        return Err(TurnError::Config(
            "no relay address: set TURN_RELAY_IP (and TURN_EXTERNAL_IP behind NAT)".into(),
        ));
    }
    Ok((v4, v6))
}

/// The host's primary IPv4 address: the source address the kernel would pick for a route to a
/// documentation address. `connect` on UDP sends nothing.
fn detect_primary_v4() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut v = vec!["hermes-turn"];
        v.extend_from_slice(args);
        Config::try_parse_from(v).unwrap()
    }

    #[test]
    fn coturn_conf_keys() {
        let c = ConfFile::parse(
            "# comment\nlistening-port=3479\ntls-listening-port 5350\nmin-port=50000\n--max-port=50010\n\
             realm=example.org\nuse-auth-secret\nstatic-auth-secret=s3cr3t # trailing\n\
             external-ip=203.0.113.5/10.0.0.5\nrelay-ip=10.0.0.5\ndenied-peer-ip=10.0.0.0-10.255.255.255\n\
             allowed-peer-ip=10.9.0.1\nuser-quota=3\ntotal-quota=100\nmax-bps=64000\n\
             cert=/etc/c.pem\npkey=/etc/k.pem\nno-tls\nno-tcp-relay\nfingerprint\n",
        )
        .unwrap();
        assert!(c.no_tcp_relay);
        assert_eq!(c.listening_port, Some(3479));
        assert_eq!(c.tls_listening_port, Some(5350));
        assert_eq!((c.min_port, c.max_port), (Some(50000), Some(50010)));
        assert_eq!(c.realm.as_deref(), Some("example.org"));
        assert!(c.use_auth_secret && c.no_tls);
        assert_eq!(c.static_auth_secret.as_deref(), Some("s3cr3t"));
        assert_eq!(c.external_ip, vec!["203.0.113.5/10.0.0.5"]);
        assert_eq!(
            (c.user_quota, c.total_quota, c.max_bps),
            (Some(3), Some(100), Some(64000))
        );
        assert!(
            ConfFile::parse("bogus-key=1")
                .unwrap_err()
                .contains("unsupported")
        );
        assert!(ConfFile::parse("min-port=abc").is_err());
        assert!(ConfFile::parse("realm").is_err());
    }

    #[test]
    fn conf_file_then_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turnserver.conf");
        std::fs::write(
            &path,
            "listening-port=3479\nlistening-ip=127.0.0.1\nrealm=file.example\nuse-auth-secret\n\
             static-auth-secret=from-file\nmin-port=50000\nmax-port=50010\n\
             external-ip=203.0.113.5/127.0.0.1\ndenied-peer-ip=8.8.8.8\nuser-quota=3\n",
        )
        .unwrap();
        let c = parse(&["--config", path.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert_eq!(c.listen, "127.0.0.1:3479".parse().unwrap());
        assert_eq!(c.core.realm, "file.example");
        assert_eq!(c.core.secret.expose(), b"from-file");
        assert_eq!((c.core.min_port, c.core.max_port), (50000, 50010));
        let r = c.core.relay_v4.unwrap();
        assert_eq!(r.bind, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.public, "203.0.113.5".parse::<IpAddr>().unwrap());
        assert!(!c.core.filter.allows("8.8.8.8".parse().unwrap()));
        assert_eq!(c.core.user_quota, 3);
        assert!(c.tls.is_none());

        let c = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--turn-realm",
            "flag.example",
            "--turn-listen",
            "127.0.0.1:4000",
            "--turn-secret",
            "from-flag",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.core.realm, "flag.example");
        assert_eq!(c.listen.port(), 4000);
        assert_eq!(c.core.secret.expose(), b"from-flag");
    }

    #[test]
    fn defaults_and_validation() {
        let c = parse(&["--turn-listen", "127.0.0.1:3478", "--turn-secret", "x"])
            .resolve()
            .unwrap();
        assert_eq!(c.core.realm, "localhost");
        assert_eq!(c.core.relay_v4.unwrap().bind, IpAddr::from([127, 0, 0, 1]));
        assert!(!c.core.filter.allow_loopback);
        assert_eq!(c.core.user_quota, 16);
        assert_eq!(c.core.max_bps, 1_250_000);
        assert!(
            parse(&["--turn-min-port", "6000", "--turn-max-port", "5000"])
                .resolve()
                .is_err()
        );
        assert!(parse(&["--turn-tls-cert", "/x"]).resolve().is_err());
        assert!(
            parse(&["--turn-denied-peer-ips", "nonsense"])
                .resolve()
                .is_err()
        );
        assert!(
            parse(&["--hermes-env", "production", "--turn-secret", "short"])
                .resolve()
                .is_err()
        );
        let c = parse(&[
            "--turn-listen",
            "[::1]:3478",
            "--turn-relay-ip",
            "127.0.0.1,::1",
            "--turn-external-ip",
            "198.51.100.1",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            c.core.relay_v4.unwrap().public,
            IpAddr::from([198, 51, 100, 1])
        );
        assert_eq!(
            c.core.relay_v6.unwrap().bind,
            "::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn workers_split_the_port_range_without_gaps_or_overlap() {
        for workers in 1..=8 {
            let mut next = 49152u32;
            for i in 0..workers {
                let (lo, hi) = worker_ports(49152, 65535, i, workers);
                assert_eq!(u32::from(lo), next, "contiguous");
                assert!(hi >= lo);
                next = u32::from(hi) + 1;
            }
            assert_eq!(next, 65536, "covers the range");
        }
        assert_eq!(worker_ports(50000, 50010, 0, 1), (50000, 50010));
    }

    #[test]
    fn worker_count_is_capped_by_the_port_range() {
        assert_eq!(resolve_workers(4, 49152, 65535), 4);
        assert_eq!(resolve_workers(4, 50000, 50010), 1, "11 ports: one worker");
        assert_eq!(resolve_workers(4, 50000, 50031), 2, "32 ports: two workers");
        assert_eq!(resolve_workers(1000, 1024, 65535), MAX_WORKERS);
        assert!(resolve_workers(0, 49152, 65535) >= 1);
    }
}
