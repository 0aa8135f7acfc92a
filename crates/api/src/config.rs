//! Configuration of hermes-api: clap flags with the environment names of the deployment
//! contract, validated once at start into [`Settings`].
//!
//! Hidden flags (`API_*_TTL_SECS`, `API_RATE_*`) exist so tests and the schemathesis check can
//! shorten lifetimes and raise limits; production keeps the defaults from the spec.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use hermes_proto::api::IceTransportPolicy;
use hermes_service::redis::{AckPolicy, MAX_ACK_TIMEOUT, ReplicaAck};
use hermes_service::{CommonArgs, HermesEnv, Secret, SecretError};

use crate::client_ip::{Cidr, CidrError};
use crate::ratelimit::Limit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    All,
    Relay,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "hermes-api", version, about = "Hermes REST API")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Address to listen on for HTTP (Caddy proxies `/api/*` here).
    #[arg(long, env = "API_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// HS256 key for join tokens; must be shared with hermes-signal. Required in production.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// coturn `static-auth-secret` for TURN REST credentials; shared with the TURN server.
    #[arg(long, env = "TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// What /api/join returns as `signalUrl`: a path resolved against the page's origin, or an
    /// absolute `wss://` URL.
    #[arg(long, env = "SIGNAL_PUBLIC_URL", default_value = "/ws")]
    pub signal_public_url: String,

    /// Host name or IP in the STUN/TURN URLs handed to clients (default: SERVER_NAME).
    #[arg(long, env = "TURN_PUBLIC_HOST")]
    pub turn_public_host: Option<String>,

    /// Port of STUN and TURN over UDP and TCP.
    #[arg(long, env = "TURN_PORT", default_value_t = 3478)]
    pub turn_port: u16,

    /// Port of TURN over TLS (only advertised when TURN_TLS is true).
    #[arg(long, env = "TURNS_PORT", default_value_t = 5349)]
    pub turns_port: u16,

    /// Advertise a `turns:` URL (TURN over TLS). Off by default: it needs a certificate.
    #[arg(long, env = "TURN_TLS", default_value_t = false, action = ArgAction::Set)]
    pub turn_tls: bool,

    /// `all` lets browsers use direct and relayed paths; `relay` forces every call through TURN
    /// (hides client IPs from each other at the cost of relay bandwidth).
    #[arg(long, env = "ICE_TRANSPORT_POLICY", value_enum, default_value_t = PolicyArg::All)]
    pub ice_transport_policy: PolicyArg,

    /// Comma-separated CIDRs whose X-Forwarded-For is believed (the reverse proxy).
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "127.0.0.1/32,::1/128")]
    pub trusted_proxies: String,

    /// Extra CORS origins allowed in development only (comma-separated, e.g. http://localhost:5173).
    #[arg(long, env = "CORS_DEV_ORIGINS", default_value = "")]
    pub cors_dev_origins: String,

    /// Lifetime of a one-time code in seconds (spec: 15 minutes).
    #[arg(long, env = "API_CODE_TTL_SECS", default_value_t = 15 * 60, hide = true)]
    pub code_ttl_secs: u64,

    /// Lifetime of join tokens in seconds (spec: 24 hours).
    #[arg(long, env = "API_TOKEN_TTL_SECS", default_value_t = hermes_proto::token::JOIN_TOKEN_TTL_SECS, hide = true)]
    pub token_ttl_secs: u64,

    /// Lifetime of the `call:{id}` record in seconds.
    #[arg(long, env = "API_CALL_TTL_SECS", default_value_t = 24 * 60 * 60, hide = true)]
    pub call_ttl_secs: u64,

    /// Lifetime of TURN credentials in seconds (spec: 10 minutes).
    #[arg(long, env = "API_TURN_TTL_SECS", default_value_t = hermes_proto::turn_credentials::TURN_CREDENTIALS_TTL_SECS, hide = true)]
    pub turn_ttl_secs: u64,

    /// Requests per IP per window on every /api endpoint (spec: 60 per minute).
    #[arg(long, env = "API_RATE_LIMIT", default_value_t = 60, hide = true)]
    pub rate_limit: u64,

    /// Window of API_RATE_LIMIT in seconds.
    #[arg(long, env = "API_RATE_WINDOW_SECS", default_value_t = 60, hide = true)]
    pub rate_window_secs: u64,

    /// Resolve attempts per IP per resolve window (spec: 40 per 5 minutes).
    #[arg(long, env = "API_RESOLVE_IP_LIMIT", default_value_t = 40, hide = true)]
    pub resolve_ip_limit: u64,

    /// Resolve attempts per code per resolve window (spec: 25 per 5 minutes).
    #[arg(
        long,
        env = "API_RESOLVE_CODE_LIMIT",
        default_value_t = 25,
        hide = true
    )]
    pub resolve_code_limit: u64,

    /// Window of the resolve limits in seconds.
    #[arg(
        long,
        env = "API_RESOLVE_WINDOW_SECS",
        default_value_t = 300,
        hide = true
    )]
    pub resolve_window_secs: u64,

    /// Fresh codes one call may mint through `POST /api/call/code` per window.
    #[arg(long, env = "API_NEW_CODE_LIMIT", default_value_t = 10, hide = true)]
    pub new_code_limit: u64,

    /// Window of API_NEW_CODE_LIMIT in seconds (a code lives 15 minutes: 10 per 15 min is
    /// one every 90 s on average, plenty for people and useless for flooding Redis).
    #[arg(
        long,
        env = "API_NEW_CODE_WINDOW_SECS",
        default_value_t = 900,
        hide = true
    )]
    pub new_code_window_secs: u64,

    /// Whether a consumed one-time code waits for a Redis replica to hold the delete before
    /// the token goes out (`WAIT 1`), so a failover cannot bring the code back: `auto` =
    /// `best-effort` on a `redis-sentinel://` or `redis-cluster://` URL, `off` otherwise; `best-effort` answers anyway
    /// when no replica acknowledges in time (available; the code may revive if the primary dies
    /// in that window); `required` answers 503 then (durable; resolves fail while no replica
    /// is connected, e.g. right after a failover with a single replica). See docs/operations.md.
    #[arg(long, env = "REDIS_REPLICA_ACK", value_enum, default_value_t = ReplicaAck::Auto)]
    pub redis_replica_ack: ReplicaAck,

    /// How long a consumed code waits for a replica's acknowledgement, in ms (at most 1500).
    /// It is paid in full only while no replica acknowledges (a healthy replica answers in
    /// about one network round trip).
    #[arg(long, env = "REDIS_REPLICA_ACK_TIMEOUT_MS", default_value_t = 250)]
    pub redis_replica_ack_timeout_ms: u64,

    /// Largest accepted request body in bytes (larger → 413).
    #[arg(long, env = "API_MAX_BODY_BYTES", default_value_t = 16 * 1024, hide = true)]
    pub max_body_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("TRUSTED_PROXIES: {0}")]
    Cidr(#[from] CidrError),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("CORS origin {0:?} is not a valid header value")]
    Origin(String),
    #[error("REDIS_REPLICA_ACK_TIMEOUT_MS must be between 1 and {max}", max = MAX_ACK_TIMEOUT.as_millis())]
    AckTimeout,
}

/// Validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub env: HermesEnv,
    pub redis_url: String,
    pub server_name: String,
    pub listen: SocketAddr,
    pub jwt_secret: Secret,
    pub turn_secret: Secret,
    pub signal_url: String,
    pub turn_host: String,
    pub turn_port: u16,
    pub turns_port: u16,
    pub turn_tls: bool,
    pub ice_policy: IceTransportPolicy,
    pub trusted_proxies: Vec<Cidr>,
    pub cors_origins: Vec<String>,
    pub code_ttl: Duration,
    pub token_ttl_secs: u64,
    pub call_ttl: Duration,
    pub turn_ttl_secs: u64,
    pub request_limit: Limit,
    pub resolve_ip_limit: Limit,
    pub resolve_code_limit: Limit,
    pub new_code_limit: Limit,
    pub max_body_bytes: usize,
    /// What a consumed one-time code waits for (`REDIS_REPLICA_ACK`).
    pub replica_ack: AckPolicy,
}

impl Config {
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let env = self.common.hermes_env;
        let jwt_secret = Secret::from_config("JWT_SECRET", self.jwt_secret.as_deref(), env)?;
        let turn_secret = Secret::from_config("TURN_SECRET", self.turn_secret.as_deref(), env)?;
        let trusted_proxies = self
            .trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Cidr::parse)
            .collect::<Result<Vec<_>, _>>()?;
        for (name, v) in [
            ("API_CODE_TTL_SECS", self.code_ttl_secs),
            ("API_TOKEN_TTL_SECS", self.token_ttl_secs),
            ("API_CALL_TTL_SECS", self.call_ttl_secs),
            ("API_TURN_TTL_SECS", self.turn_ttl_secs),
            ("API_RATE_LIMIT", self.rate_limit),
            ("API_RATE_WINDOW_SECS", self.rate_window_secs),
            ("API_RESOLVE_IP_LIMIT", self.resolve_ip_limit),
            ("API_RESOLVE_CODE_LIMIT", self.resolve_code_limit),
            ("API_RESOLVE_WINDOW_SECS", self.resolve_window_secs),
            ("API_NEW_CODE_LIMIT", self.new_code_limit),
            ("API_NEW_CODE_WINDOW_SECS", self.new_code_window_secs),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Zero("API_MAX_BODY_BYTES"));
        }
        let mut cors_origins = vec![format!("https://{}", self.common.server_name)];
        if env == HermesEnv::Development {
            cors_origins.extend(
                self.cors_dev_origins
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        for o in &cors_origins {
            if http::HeaderValue::from_str(o).is_err() {
                return Err(ConfigError::Origin(o.clone()));
            }
        }
        let ack_timeout = Duration::from_millis(self.redis_replica_ack_timeout_ms);
        if ack_timeout.is_zero() || ack_timeout > MAX_ACK_TIMEOUT {
            return Err(ConfigError::AckTimeout);
        }
        let replica_ack = self
            .redis_replica_ack
            .policy(&self.common.redis_url, ack_timeout);
        let resolve_window = Duration::from_secs(self.resolve_window_secs);
        Ok(Settings {
            replica_ack,
            env,
            turn_host: self
                .turn_public_host
                .filter(|h| !h.trim().is_empty())
                .unwrap_or_else(|| self.common.server_name.clone()),
            redis_url: self.common.redis_url,
            server_name: self.common.server_name,
            listen: self.listen,
            jwt_secret,
            turn_secret,
            signal_url: self.signal_public_url,
            turn_port: self.turn_port,
            turns_port: self.turns_port,
            turn_tls: self.turn_tls,
            ice_policy: match self.ice_transport_policy {
                PolicyArg::All => IceTransportPolicy::All,
                PolicyArg::Relay => IceTransportPolicy::Relay,
            },
            trusted_proxies,
            cors_origins,
            code_ttl: Duration::from_secs(self.code_ttl_secs),
            token_ttl_secs: self.token_ttl_secs,
            call_ttl: Duration::from_secs(self.call_ttl_secs),
            turn_ttl_secs: self.turn_ttl_secs,
            request_limit: Limit::new(
                "req",
                self.rate_limit,
                Duration::from_secs(self.rate_window_secs),
            ),
            resolve_ip_limit: Limit::new("resolve", self.resolve_ip_limit, resolve_window),
            resolve_code_limit: Limit::new("code", self.resolve_code_limit, resolve_window),
            new_code_limit: Limit::new(
                "newcode",
                self.new_code_limit,
                Duration::from_secs(self.new_code_window_secs),
            ),
            max_body_bytes: self.max_body_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["hermes-api"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("valid args")
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = parse(&["--server-name", "call.example.org"])
            .validate()
            .expect("dev config");
        assert_eq!(s.turn_host, "call.example.org");
        assert_eq!(s.code_ttl, Duration::from_secs(900));
        assert_eq!(s.request_limit.max, 60);
        assert_eq!(s.request_limit.window, Duration::from_secs(60));
        assert_eq!(s.resolve_ip_limit.max, 40);
        assert_eq!(s.resolve_code_limit.max, 25);
        assert_eq!(s.resolve_code_limit.window, Duration::from_secs(300));
        assert!(!s.turn_tls);
        assert_eq!(s.ice_policy, IceTransportPolicy::All);
        assert_eq!(s.cors_origins, vec!["https://call.example.org".to_owned()]);
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(
            s.replica_ack,
            AckPolicy::Off,
            "a plain redis:// URL has no replica"
        );
    }

    #[test]
    fn replica_ack_defaults_to_best_effort_under_sentinel_or_on_a_cluster_and_checks_its_timeout() {
        let sentinel = "redis-sentinel://s1:26379?sentinelServiceName=hermes";
        let s = parse(&["--redis-url", sentinel]).validate().expect("valid");
        assert_eq!(
            s.replica_ack,
            AckPolicy::BestEffort(Duration::from_millis(250))
        );
        let s = parse(&[
            "--redis-replica-ack",
            "required",
            "--redis-replica-ack-timeout-ms",
            "100",
        ])
        .validate()
        .expect("valid");
        assert_eq!(
            s.replica_ack,
            AckPolicy::Required(Duration::from_millis(100))
        );
        let cluster = "redis-cluster://127.0.0.1:7000";
        let s = parse(&["--redis-url", cluster]).validate().expect("valid");
        assert_eq!(
            s.replica_ack,
            AckPolicy::BestEffort(Duration::from_millis(250))
        );
        let s = parse(&["--redis-url", cluster, "--redis-replica-ack", "required"])
            .validate()
            .expect("valid");
        assert_eq!(
            s.replica_ack,
            AckPolicy::Required(Duration::from_millis(250))
        );
        for bad in ["0", "1501"] {
            let err = parse(&["--redis-replica-ack-timeout-ms", bad]).validate();
            assert!(matches!(err, Err(ConfigError::AckTimeout)), "{bad}");
        }
    }

    #[test]
    fn production_refuses_weak_secrets_and_dev_origins() {
        let err = parse(&["--hermes-env", "production"]).validate();
        assert!(matches!(err, Err(ConfigError::Secret(_))));
        let good = "kQ8x1v7ZC3n0bqk2m9Wj4sT6yH5rL2pA8dF1gE7uJ0c=";
        let s = parse(&[
            "--hermes-env",
            "production",
            "--jwt-secret",
            good,
            "--turn-secret",
            good,
            "--cors-dev-origins",
            "http://localhost:5173",
        ])
        .validate()
        .expect("production config");
        assert_eq!(s.cors_origins, vec!["https://localhost".to_owned()]);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(matches!(
            parse(&["--trusted-proxies", "10.0.0.0/33"]).validate(),
            Err(ConfigError::Cidr(_))
        ));
        assert!(matches!(
            parse(&["--rate-limit", "0"]).validate(),
            Err(ConfigError::Zero("API_RATE_LIMIT"))
        ));
        assert!(Config::try_parse_from(["hermes-api", "--turn-tls", "maybe"]).is_err());
    }
}
