//! On a single Redis a flow across a code and a call is one script, one round trip (see the
//! store's module doc; the single-slot steps are for a cluster only and cost a round trip
//! each). Redis' MONITOR tells them apart: it echoes a client's own commands with its address
//! and the commands a script runs with `lua`, so no `SET otc:…` or `HGET call:{…}` may come
//! from a client address while create, resolve and new code run.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Api;
use hermes_proto::api::{CreateCallResponse, ResolveResponse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_one_script_each_on_a_single_redis() {
    let api = Api::start(&[]).await;
    // Warm the script cache, so no SCRIPT LOAD falls into the watched window.
    let warm: CreateCallResponse = serde_json::from_value(api.create().await.body).unwrap();
    let warm: ResolveResponse = serde_json::from_value(api.resolve(&warm.code).await.body).unwrap();
    assert_eq!(
        api.post_auth("/api/call/code", &warm.token).await.status,
        201
    );

    let mut monitor = TcpStream::connect(("127.0.0.1", api.redis.port())).unwrap();
    monitor
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    monitor.write_all(b"MONITOR\r\n").unwrap();
    let mut lines = BufReader::new(monitor.try_clone().unwrap());
    let mut ok = String::new();
    lines.read_line(&mut ok).unwrap();
    assert_eq!(ok.trim(), "+OK");

    let created: CreateCallResponse = serde_json::from_value(api.create().await.body).unwrap();
    let resolved = api.resolve(&created.code).await;
    assert_eq!(resolved.status, 200, "{:?}", resolved.body);
    let resolved: ResolveResponse = serde_json::from_value(resolved.body).unwrap();
    let minted = api.post_auth("/api/call/code", &resolved.token).await;
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    let marker = "round-trips-test-done";
    api.redis.raw_command(&format!("ECHO {marker}")).unwrap();

    let (mut scripts, mut client_steps, mut in_scripts) = (0, Vec::new(), 0);
    loop {
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        if line.contains(marker) {
            break;
        }
        let from_script = line.contains(" lua] ");
        let command = line
            .split_once("] ")
            .map(|(_, rest)| rest.to_ascii_lowercase())
            .unwrap_or_default();
        let touches_code_or_call = command.contains("\"otc:") || command.contains("\"call:{");
        if from_script {
            in_scripts += usize::from(touches_code_or_call);
        } else if command.starts_with("\"evalsha\"") {
            scripts += 1;
        } else if touches_code_or_call {
            client_steps.push(line.trim().to_owned());
        }
    }
    assert!(
        client_steps.is_empty(),
        "a single Redis got flow steps outside a script: {client_steps:?}"
    );
    // create, resolve, new code: one script each (the limits run inside them).
    assert_eq!(scripts, 3, "one script per flow");
    assert!(in_scripts >= 6, "the scripts touched the code and the call");
    api.stop().await;
}
