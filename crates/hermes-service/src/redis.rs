//! Redis clients with bounded waits: commands fail fast while Redis is unreachable (so
//! callers answer 503 instead of hanging) and the client reconnects forever in the
//! background with capped exponential backoff, so service resumes without a restart.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;

/// How long one command may take before the caller gets an error.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP connect to Redis may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn builder(url: &str) -> Result<Builder, Error> {
    let mut config = Config::from_url(url)?;
    // fred's `fail_fast` governs the *first* connection: with it set, a service started before
    // Redis would never connect. Commands still fail after COMMAND_TIMEOUT while disconnected.
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.internal_command_timeout = COMMAND_TIMEOUT;
            c.max_command_attempts = 2;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
        })
        // Retry forever: 0 = unlimited attempts, 50 ms .. 2 s.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

/// A command client, connecting in the background. Waits up to `wait` for the first
/// connection and returns either way (check readiness with PING).
pub async fn connect(url: &str, wait: Duration) -> Result<Client, Error> {
    let client = builder(url)?.build()?;
    client.connect();
    if tokio::time::timeout(wait, client.wait_for_connect())
        .await
        .is_err()
    {
        tracing::warn!("Redis not reachable yet; retrying in the background");
    }
    Ok(client)
}

/// Same as [`connect`]: every client retries its first connection in the background too.
pub async fn connect_retrying(url: &str, wait: Duration) -> Result<Client, Error> {
    connect(url, wait).await
}

/// A subscriber client (it re-subscribes to its channels after reconnecting).
pub async fn connect_subscriber(url: &str, wait: Duration) -> Result<SubscriberClient, Error> {
    let client = builder(url)?.build_subscriber_client()?;
    client.connect();
    if tokio::time::timeout(wait, client.wait_for_connect())
        .await
        .is_err()
    {
        tracing::warn!("Redis not reachable yet; retrying in the background");
    }
    client.manage_subscriptions();
    Ok(client)
}

/// True when Redis answers PING within the command timeout.
pub async fn is_ready(client: &Client) -> bool {
    matches!(
        tokio::time::timeout(COMMAND_TIMEOUT, client.ping::<String>(None)).await,
        Ok(Ok(_))
    )
}
