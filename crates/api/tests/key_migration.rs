//! `scripts/redis-hash-tag-keys.sh` against a real Redis: a call in progress written in the
//! old key spelling (`call:<id>…`) is invisible to this version (its keys are `call:{<id>}…`)
//! until the script renames its keys; then its code resolves, its seats count and it ends, with
//! values and TTLs kept. A second run finds nothing left to rename.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::Api;
use hermes_proto::api::CreateCallResponse;
use hermes_proto::keys;

fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> T {
    serde_json::from_value(v.clone()).expect("body matches the hermes-proto type")
}

fn run_migration(port: u16) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/redis-hash-tag-keys.sh"
    );
    hermes_testkit::require_program("redis-cli", "redis-server");
    let out = Command::new("bash")
        .arg(script)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The key's name in the schema before hash tags.
fn old_name(key: &str) -> String {
    key.replacen('{', "", 1).replacen('}', "", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_keys_keep_a_call_in_progress_working() {
    let api = Api::start(&[]).await;
    let created: CreateCallResponse = parse(&api.create().await.body);
    let id = &created.call_id;
    let now_ms = hermes_service::unix_now_ms();
    let pid = hermes_proto::ParticipantId::random(&mut rand::rng());
    let peers = keys::call_peers(id);
    let seq = keys::call_seq(id);
    let inbox = keys::call_inbox(id, &pid);
    let limit = keys::rl_call(id, "newcode");
    for command in [
        format!("HSET {peers} {pid} offerer|L|{}|c1", now_ms + 60_000),
        format!("SET {seq} 41 EX 3600"),
        format!("XADD {inbox} 41-1 m hello"),
        format!("SET {limit} 1 EX 900"),
    ] {
        assert!(!api.redis.raw_command(&command).unwrap().starts_with('-'));
    }
    // The state as the previous version wrote it: every call key in the old spelling.
    let tagged = [keys::call(id), peers, seq, inbox, limit];
    for key in &tagged {
        let reply = api
            .redis
            .raw_command(&format!("RENAME {key} {}", old_name(key)))
            .unwrap();
        assert_eq!(reply, "+OK\r\n", "{key}");
    }
    let status_path = format!("/api/call/{id}");
    assert_eq!(
        api.get_auth(&status_path, &created.token).await.status,
        404,
        "without the migration this version does not see the call"
    );

    let report = run_migration(api.redis.port());
    assert!(report.contains("renamed 5 keys"), "{report}");
    for key in &tagged {
        let exists = api.redis.raw_command(&format!("EXISTS {key}")).unwrap();
        assert_eq!(exists, ":1\r\n", "{key}");
        let old = api
            .redis
            .raw_command(&format!("EXISTS {}", old_name(key)))
            .unwrap();
        assert_eq!(old, ":0\r\n", "{key}");
    }
    let ttl = api
        .redis
        .raw_command(&format!("TTL {}", keys::call_seq(id)))
        .unwrap();
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!((3500..=3600).contains(&ttl), "TTL kept: {ttl}");

    let status = api.get_auth(&status_path, &created.token).await;
    assert_eq!(status.status, 200, "{:?}", status.body);
    assert_eq!(status.body["participants"], 1, "the seat survived");
    assert_eq!(api.resolve(&created.code).await.status, 200);
    assert_eq!(
        api.post_auth("/api/call/end", &created.token).await.status,
        200
    );
    let again = run_migration(api.redis.port());
    assert!(again.contains("renamed 0 keys"), "{again}");
    api.stop().await;
}
