//! Golden JSON fixtures: every wire message decodes into its type and encodes back to the same
//! JSON. The web client's tests read the same files.

use std::path::Path;

use hermes_proto::api::*;
use hermes_proto::signal::{CallControl, ClientMessage, ServerMessage};
use hermes_proto::{JoinClaims, LogEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixtures() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).expect("read fixture");
            (name, serde_json::from_str(&text).expect("fixture is JSON"))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn round_trip<T: DeserializeOwned + Serialize>(name: &str, json: &Value) {
    let typed: T = serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
    let back = serde_json::to_value(&typed).expect("encode");
    // The resolve request carries the code as typed; everything else must be byte-identical.
    assert_eq!(&back, json, "{name} does not round-trip");
}

#[test]
fn every_fixture_round_trips_through_its_type() {
    let all = fixtures();
    assert!(
        all.len() >= 30,
        "expected the full fixture set, found {}",
        all.len()
    );
    for (name, json) in &all {
        let kind = name.split('.').next().expect("prefix");
        match (kind, name.as_str()) {
            ("client", _) => round_trip::<ClientMessage>(name, json),
            ("server", _) => round_trip::<ServerMessage>(name, json),
            ("control", _) => round_trip::<CallControl>(name, json),
            ("log-event", _) => round_trip::<LogEvent>(name, json),
            ("join-claims", _) => round_trip::<JoinClaims>(name, json),
            (_, "api.create-call-response") => round_trip::<CreateCallResponse>(name, json),
            (_, "api.resolve-request") => round_trip::<ResolveRequest>(name, json),
            (_, "api.resolve-response") => round_trip::<ResolveResponse>(name, json),
            (_, "api.join-response") => round_trip::<JoinResponse>(name, json),
            (_, "api.call-status-response") => round_trip::<CallStatusResponse>(name, json),
            (_, "api.error-body") => round_trip::<ErrorBody>(name, json),
            _ => panic!("fixture {name} has no type: add it to this test"),
        }
    }
}

#[test]
fn server_messages_are_tagged_kebab_case_with_seq_on_relayed_ones() {
    for (name, json) in fixtures() {
        if let Some(kind) = name.strip_prefix("server.") {
            assert_eq!(json["type"], kind, "{name}");
            let msg: ServerMessage = serde_json::from_value(json.clone()).expect("decode");
            let relayed = matches!(kind, "offer" | "answer" | "ice-candidate" | "hangup");
            assert_eq!(msg.seq().is_some(), relayed, "{name}");
        }
    }
}

#[test]
fn unknown_fields_and_types_are_refused() {
    assert!(
        serde_json::from_str::<ClientMessage>(r#"{"type":"offer","sdp":"x","evil":1}"#).is_err()
    );
    assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"teleport"}"#).is_err());
    assert!(serde_json::from_str::<ClientMessage>(r#"{"sdp":"x"}"#).is_err());
    assert!(serde_json::from_str::<ResolveRequest>(r#"{"code":"ABCDEF","x":1}"#).is_err());
}

#[test]
fn call_control_types_are_disjoint_from_server_messages() {
    for (name, json) in fixtures() {
        if name.starts_with("control.") {
            assert!(
                serde_json::from_value::<ServerMessage>(json.clone()).is_err(),
                "{name} must not decode as a ServerMessage"
            );
            let typed: CallControl = serde_json::from_value(json.clone()).expect("decode");
            assert_eq!(
                serde_json::from_str::<Value>(&typed.to_json()).expect("json"),
                json
            );
        }
    }
}
