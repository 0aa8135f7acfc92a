//! Allocation lifecycle events reach `logs:turn` / `logs-history` through a real Redis, and
//! the relay keeps working when Redis is gone.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use hermes_testkit::RedisServer;

fn history(redis: &RedisServer) -> String {
    redis
        .raw_command("XRANGE logs-history - +")
        .unwrap_or_default()
}

#[test]
fn allocation_events_are_published_and_redis_is_optional() {
    let mut redis = RedisServer::start();
    let relay = Relay::start(Opts {
        allow_loopback: true,
        redis_url: Some(redis.url()),
        ..Default::default()
    });
    let mut c = TurnClient::new(relay.addr(), "participant-1");
    c.allocate().unwrap();
    assert_eq!(c.refresh(0), None);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut h = String::new();
    while Instant::now() < deadline {
        h = history(&redis);
        if h.contains("turn.allocation.ended") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(h.contains("turn.allocation.created"), "{h}");
    assert!(h.contains("turn.allocation.ended"), "{h}");
    assert!(
        h.contains("\\\"service\\\":\\\"turn\\\"") || h.contains("\"service\":\"turn\""),
        "{h}"
    );
    assert!(h.contains("participant-1"), "{h}");
    // Never the password.
    assert!(!h.contains(&c.auth.password), "{h}");

    // Without Redis the relay still allocates and relays.
    redis.kill();
    let mut d = TurnClient::new(relay.addr(), "participant-2");
    d.allocate().expect("allocation without Redis");
    assert_eq!(d.refresh(0), None);
    assert!(!relay.log_text().contains(&d.auth.password));
}
