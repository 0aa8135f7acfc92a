//! Plumbing every Hermes service shares, so that each service's `main.rs` stays short and
//! they all behave alike: common config ([`config`]), secrets that refuse to start in
//! production when weak ([`secret`]), logging setup ([`telemetry`]), SIGINT/SIGTERM and
//! drains ([`shutdown`]: a cancellation token and a task tracker), Prometheus text output
//! ([`metrics`]), the Redis client builder and Lua script runner ([`redis`]) and the
//! log-event publisher ([`events`]).

pub mod config;
pub mod events;
pub mod metrics;
pub mod redis;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

pub use config::{CommonArgs, HermesEnv};
pub use events::EventPublisher;
pub use secret::{Secret, SecretError};

/// Current wall-clock time as unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Current wall-clock time as unix milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
