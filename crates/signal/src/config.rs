//! Configuration of hermes-signal: clap flags with environment fallbacks, validated once at
//! start into [`Config`]. Every default's trade-off is in its `--help` text.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hermes_service::redis::{AckPolicy, MAX_ACK_TIMEOUT, ReplicaAck};
use hermes_service::{CommonArgs, HermesEnv, Secret};

use crate::error::SignalError;
use crate::room::Limits;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "hermes-signal",
    version,
    about = "Hermes signaling: WebSocket relay of SDP/ICE between call participants"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Address for `/ws`, `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "SIGNAL_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// HS256 secret shared with hermes-api to verify join tokens (production: ≥ 32 random bytes).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Extra allowed WebSocket `Origin`s (comma-separated), besides `https://$SERVER_NAME`.
    /// In development `http://localhost:*` and `http://127.0.0.1:*` are allowed too.
    #[arg(long, env = "SIGNAL_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// How long a dropped participant keeps its seat and its undelivered messages. Longer rides
    /// out worse network changes; shorter frees a seat (and tells the peer) sooner.
    #[arg(long, env = "SIGNAL_GRACE_MS", default_value_t = 30_000)]
    pub grace_ms: u64,

    /// Presence lease renewed by live connections (every third of it). A crashed replica's
    /// participants turn "reconnecting" after this long; shorter means more Redis writes.
    #[arg(long, env = "SIGNAL_LEASE_MS", default_value_t = 15_000)]
    pub lease_ms: u64,

    /// Time a new connection has to send a valid `join`.
    #[arg(long, env = "SIGNAL_JOIN_TIMEOUT_MS", default_value_t = 5_000)]
    pub join_timeout_ms: u64,

    /// Close a connection silent for this long; the server pings every third of it, so a live
    /// browser always answers in time. Shorter detects dead peers sooner at more ping traffic.
    #[arg(long, env = "SIGNAL_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub idle_timeout_ms: u64,

    /// Sustained client messages per second per connection.
    #[arg(long, env = "SIGNAL_RATE_PER_SEC", default_value_t = 50.0)]
    pub rate_per_sec: f64,

    /// Burst allowance above the sustained rate (a trickle of ICE candidates comes at once).
    #[arg(long, env = "SIGNAL_RATE_BURST", default_value_t = 200.0)]
    pub rate_burst: f64,

    /// Bad messages tolerated per minute (each gets an error reply) before closing with 1008.
    #[arg(long, env = "SIGNAL_MAX_VIOLATIONS_PER_MIN", default_value_t = 20)]
    pub max_violations_per_min: u32,

    /// Messages kept for resume per direction of a call: its log (one stream per call) is capped
    /// at two times this, and trimmed to what every participant acknowledged.
    #[arg(long, env = "SIGNAL_INBOX_MAXLEN", default_value_t = 1_000)]
    pub inbox_maxlen: u64,

    /// On SIGTERM, how long to wait for sockets to close after sending 1012.
    #[arg(long, env = "SIGNAL_DRAIN_MS", default_value_t = 5_000)]
    pub drain_ms: u64,

    /// Whether a message relayed while the other participant is away (it lives only in the
    /// call's log until that participant resumes) waits for a Redis replica to hold it
    /// (`WAIT 1`) before the sender hears it was sent, so a failover cannot lose it silently:
    /// `auto` = `best-effort` on a `redis-sentinel://` or `redis-cluster://` URL, `off`
    /// otherwise; `best-effort` counts the message sent when no replica acknowledges in time;
    /// `required` answers `error unavailable` then (the client resends). Relays to a live
    /// participant never wait. The same setting as hermes-api's; see docs/signal.md.
    #[arg(long, env = "REDIS_REPLICA_ACK", value_enum, default_value_t = ReplicaAck::Auto)]
    pub redis_replica_ack: ReplicaAck,

    /// How long such a relay waits for a replica's acknowledgement, in ms (at most 1500); paid
    /// in full only while no replica acknowledges.
    #[arg(long, env = "REDIS_REPLICA_ACK_TIMEOUT_MS", default_value_t = 250)]
    pub redis_replica_ack_timeout_ms: u64,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub env: HermesEnv,
    pub redis_url: String,
    pub server_name: String,
    pub listen: SocketAddr,
    pub jwt_secret: Secret,
    pub allowed_origins: Vec<String>,
    pub grace: Duration,
    pub lease: Duration,
    pub limits: Limits,
    pub inbox_maxlen: u64,
    pub drain: Duration,
    /// What a relay to an away participant waits for (`REDIS_REPLICA_ACK`).
    pub replica_ack: AckPolicy,
}

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Self, SignalError> {
        let env = cli.common.hermes_env;
        let jwt_secret = Secret::from_config("JWT_SECRET", cli.jwt_secret.as_deref(), env)?;
        if cli.lease_ms < 300 || cli.grace_ms < 100 {
            return Err(SignalError::Config(
                "SIGNAL_LEASE_MS must be >= 300 and SIGNAL_GRACE_MS >= 100".into(),
            ));
        }
        if cli.idle_timeout_ms < 300 || cli.join_timeout_ms == 0 {
            return Err(SignalError::Config(
                "SIGNAL_IDLE_TIMEOUT_MS must be >= 300 and SIGNAL_JOIN_TIMEOUT_MS > 0".into(),
            ));
        }
        if !(cli.rate_per_sec > 0.0 && cli.rate_burst >= 1.0) {
            return Err(SignalError::Config(
                "SIGNAL_RATE_PER_SEC must be > 0 and SIGNAL_RATE_BURST >= 1".into(),
            ));
        }
        let ack_timeout = Duration::from_millis(cli.redis_replica_ack_timeout_ms);
        if ack_timeout.is_zero() || ack_timeout > MAX_ACK_TIMEOUT {
            return Err(SignalError::Config(format!(
                "REDIS_REPLICA_ACK_TIMEOUT_MS must be between 1 and {}",
                MAX_ACK_TIMEOUT.as_millis()
            )));
        }
        let replica_ack = cli
            .redis_replica_ack
            .policy(&cli.common.redis_url, ack_timeout);
        let allowed_origins = cli
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        Ok(Self {
            env,
            redis_url: cli.common.redis_url,
            server_name: cli.common.server_name.to_ascii_lowercase(),
            listen: cli.listen,
            jwt_secret,
            allowed_origins,
            grace: Duration::from_millis(cli.grace_ms),
            lease: Duration::from_millis(cli.lease_ms),
            limits: Limits {
                rate_per_sec: cli.rate_per_sec,
                burst: cli.rate_burst,
                max_violations_per_min: cli.max_violations_per_min,
                join_timeout_ms: cli.join_timeout_ms,
                idle_timeout_ms: cli.idle_timeout_ms,
            },
            inbox_maxlen: cli.inbox_maxlen.max(16),
            drain: Duration::from_millis(cli.drain_ms),
            replica_ack,
        })
    }

    /// Whether a browser `Origin` may open a WebSocket. Requests without `Origin` (non-browser
    /// clients, which cannot be driven cross-site) are allowed; the token still gates them.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if origin == format!("https://{}", self.server_name)
            || self.allowed_origins.contains(&origin)
        {
            return true;
        }
        if self.env == HermesEnv::Development {
            for host in ["http://localhost", "http://127.0.0.1"] {
                if let Some(rest) = origin.strip_prefix(host)
                    && (rest.is_empty()
                        || rest.strip_prefix(':').is_some_and(|p| {
                            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                        }))
                {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(args: &[&str]) -> Result<Config, SignalError> {
        let mut argv = vec!["hermes-signal"];
        argv.extend_from_slice(args);
        Config::from_cli(Cli::try_parse_from(argv).expect("parse"))
    }

    #[test]
    fn defaults_are_sane() {
        let c = config(&["--jwt-secret", "dev-secret"]).unwrap();
        assert_eq!(c.listen.port(), 8081);
        assert_eq!(c.grace, Duration::from_secs(30));
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn replica_ack_waits_by_default_only_where_replicas_exist() {
        let t = Duration::from_millis(250);
        let single = config(&["--redis-url", "redis://127.0.0.1:6379"]).unwrap();
        assert_eq!(single.replica_ack, AckPolicy::Off);
        let sentinel = config(&[
            "--redis-url",
            "redis-sentinel://s:26379?sentinelServiceName=h",
        ]);
        assert_eq!(sentinel.unwrap().replica_ack, AckPolicy::BestEffort(t));
        let cluster = config(&["--redis-url", "redis-cluster://127.0.0.1:7000"]).unwrap();
        assert_eq!(cluster.replica_ack, AckPolicy::BestEffort(t));
        let required = config(&[
            "--redis-replica-ack",
            "required",
            "--redis-replica-ack-timeout-ms",
            "1000",
        ])
        .unwrap();
        assert_eq!(
            required.replica_ack,
            AckPolicy::Required(Duration::from_secs(1))
        );
        assert!(config(&["--redis-replica-ack-timeout-ms", "0"]).is_err());
        assert!(config(&["--redis-replica-ack-timeout-ms", "1501"]).is_err());
    }

    #[test]
    fn production_needs_a_strong_secret() {
        assert!(config(&["--hermes-env", "production", "--jwt-secret", "short"]).is_err());
        assert!(config(&["--hermes-env", "production"]).is_err());
        assert!(config(&["--lease-ms", "10"]).is_err());
    }

    #[test]
    fn origins() {
        let dev = config(&[
            "--server-name",
            "Call.Example.org",
            "--allowed-origins",
            "https://a.test/, https://b.test",
        ])
        .unwrap();
        assert!(dev.origin_allowed(None));
        assert!(dev.origin_allowed(Some("https://call.example.org")));
        assert!(dev.origin_allowed(Some("https://a.test")));
        assert!(dev.origin_allowed(Some("https://b.test")));
        assert!(dev.origin_allowed(Some("http://localhost:8080")));
        assert!(dev.origin_allowed(Some("http://127.0.0.1")));
        assert!(!dev.origin_allowed(Some("http://localhost.evil.test")));
        assert!(!dev.origin_allowed(Some("http://localhost:80x")));
        assert!(!dev.origin_allowed(Some("https://evil.test")));
        assert!(!dev.origin_allowed(Some("http://call.example.org")));
        let prod = config(&[
            "--hermes-env",
            "production",
            "--jwt-secret",
            "kQ8x1v7ZC3n0bqk2m9Wj4sT6yH5rL2pA8dF1gE7uJ0c=",
        ])
        .unwrap();
        assert!(!prod.origin_allowed(Some("http://localhost:8080")));
        assert!(prod.origin_allowed(Some("https://localhost")));
    }
}
