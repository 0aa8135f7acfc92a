//! The web client and the Rust wire types agree: every message the browser builds
//! (`web/js/lib/messages.js`) is accepted by `hermes_proto::signal::decode_client`, and every
//! `ServerMessage` the signal service can send is accepted by the browser's parser.

use std::io::Write;
use std::process::{Command, Stdio};

use hermes_proto::signal::{
    ClientMessage, IceCandidate, PeerInfo, ServerMessage, SignalErrorCode, decode_client,
};
use hermes_proto::{CallId, ParticipantId, Role};
use hermes_testkit::{require_program, workspace_root};

/// Run an ES module snippet with `messages.js` imported as `M`; stdin JSON in, stdout JSON out.
fn node(body: &str, input: &serde_json::Value) -> serde_json::Value {
    let module = format!(
        "file://{}",
        workspace_root().join("web/js/lib/messages.js").display()
    );
    let script = format!(
        "import * as M from {module:?};\n\
         let data = '';\n\
         process.stdin.on('data', (c) => (data += c));\n\
         process.stdin.on('end', () => {{ const input = JSON.parse(data); {body} }});"
    );
    let mut child = Command::new(require_program("node", "nodejs"))
        .args(["--input-type=module", "-e", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("node output");
    assert!(out.status.success(), "node failed");
    serde_json::from_slice(&out.stdout).expect("node JSON")
}

/// Numbers as f64, so `1200` (JS) and `1200.0` (Rust f64) compare equal.
fn floats(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(n) => serde_json::json!(n.as_f64()),
        serde_json::Value::Array(a) => a.into_iter().map(floats).collect(),
        serde_json::Value::Object(o) => o.into_iter().map(|(k, v)| (k, floats(v))).collect(),
        other => other,
    }
}

#[test]
fn every_browser_message_decodes_in_rust() {
    let built = node(
        r#"
        const c = { candidate: 'candidate:1 1 udp 2122260223 127.0.0.1 54400 typ host', sdpMid: '0', sdpMLineIndex: 0, usernameFragment: 'abcd' };
        const out = [
          M.joinMessage(input.token),
          M.joinMessage(input.token, { lastSeq: 0 }),
          M.joinMessage(input.token, { lastSeq: 41, callId: input.callId }),
          M.joinMessage(input.token, { lastSeq: 41, lastSeqs: { a1a1a1a1a1a1a1a1a1a1a1a1a1: 41, b2b2b2b2b2b2b2b2b2b2b2b2b2: 7 } }),
          M.offerMessage('v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n'),
          M.answerMessage('v=0\r\n'),
          M.candidateMessage(c),
          M.candidateMessage({ toJSON: () => ({ candidate: '', sdpMid: null, sdpMLineIndex: null }) }),
          M.hangupMessage(),
          M.leaveMessage(),
          M.ackMessage(9007199254740991),
          M.pingMessage(Date.now()),
          M.statsMessage({}),
          M.statsMessage({ rttMs: 12.5, packetLoss: 0.01, bitrateInKbps: 1200, bitrateOutKbps: 1100, candidateType: 'relay', framesDecoded: 900 }),
          M.statsMessage({ rttMs: NaN, packetLoss: Infinity, candidateType: 'weird', framesDecoded: -1 }),
        ];
        process.stdout.write(JSON.stringify(out.map((m) => JSON.stringify(m))));
        "#,
        &serde_json::json!({"token": "eyJhbGciOiJIUzI1NiJ9.e30.sig", "callId": "c0ffee0c0ffee0c0ffee0c0ffe"}),
    );
    let frames = built.as_array().expect("array");
    assert_eq!(frames.len(), 15);
    for f in frames {
        let text = f.as_str().expect("frame string");
        let msg = decode_client(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        // And the Rust encoding of what was decoded is the same JSON (no field lost or renamed).
        let back: serde_json::Value = serde_json::to_value(&msg).expect("serialise ClientMessage");
        let sent: serde_json::Value = serde_json::from_str(text).expect("json");
        assert_eq!(floats(back), floats(sent), "{text}");
    }
    assert!(matches!(
        decode_client(frames[2].as_str().expect("s")),
        Ok(ClientMessage::Join {
            last_seq: Some(41),
            call_id: Some(_),
            ..
        })
    ));
    let Ok(ClientMessage::Join {
        last_seqs: Some(per_sender),
        ..
    }) = decode_client(frames[3].as_str().expect("s"))
    else {
        panic!("lastSeqs not decoded: {}", frames[3])
    };
    let per_sender: Vec<(String, u64)> = per_sender
        .into_iter()
        .map(|(p, n)| (p.to_string(), n))
        .collect();
    assert_eq!(
        per_sender,
        [
            ("a1a1a1a1a1a1a1a1a1a1a1a1a1".to_owned(), 41),
            ("b2b2b2b2b2b2b2b2b2b2b2b2b2".to_owned(), 7)
        ]
    );
}

#[test]
fn every_server_message_parses_in_the_browser() {
    let call = CallId::parse("c0ffee0c0ffee0c0ffee0c0ffe").expect("id");
    let a = ParticipantId::parse("a1a1a1a1a1a1a1a1a1a1a1a1a1").expect("id");
    let b = ParticipantId::parse("b2b2b2b2b2b2b2b2b2b2b2b2b2").expect("id");
    let cand = IceCandidate {
        candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    };
    let mut msgs = vec![
        ServerMessage::Joined {
            call_id: call.clone(),
            participant_id: b.clone(),
            role: Role::Answerer,
            peers: vec![PeerInfo {
                participant_id: a.clone(),
                role: Role::Offerer,
                connected: false,
            }],
            resumed: true,
        },
        ServerMessage::PeerJoined {
            participant_id: b.clone(),
            role: Role::Observer,
        },
        ServerMessage::PeerReconnecting {
            participant_id: b.clone(),
        },
        ServerMessage::PeerResumed {
            participant_id: b.clone(),
        },
        ServerMessage::PeerLeft {
            participant_id: b.clone(),
            reason: "timeout".into(),
        },
        ServerMessage::Offer {
            from: a.clone(),
            seq: 1,
            sdp: "v=0\r\n".into(),
        },
        ServerMessage::Answer {
            from: b.clone(),
            seq: 2,
            sdp: "v=0\r\n".into(),
        },
        ServerMessage::IceCandidate {
            from: a.clone(),
            seq: 3,
            candidate: cand,
        },
        ServerMessage::Hangup { from: a, seq: 4 },
        ServerMessage::CallEnded {
            reason: "api".into(),
        },
        ServerMessage::Pong { ts: Some(1) },
        ServerMessage::Pong { ts: None },
    ];
    for code in [
        SignalErrorCode::BadMessage,
        SignalErrorCode::TooLarge,
        SignalErrorCode::Unauthorized,
        SignalErrorCode::CallFull,
        SignalErrorCode::Forbidden,
        SignalErrorCode::RateLimited,
        SignalErrorCode::CallEnded,
        SignalErrorCode::Unavailable,
    ] {
        msgs.push(ServerMessage::Error {
            code,
            message: "m".into(),
        });
    }
    let frames: Vec<String> = msgs
        .iter()
        .map(|m| serde_json::to_string(m).expect("serialise"))
        .collect();
    let parsed = node(
        r#"process.stdout.write(JSON.stringify(input.map((t) => {
            const m = M.parseServerMessage(t);
            return m && { type: m.type, relayed: M.isRelayed(m), seq: m.seq ?? null };
        })));"#,
        &serde_json::json!(frames),
    );
    let parsed = parsed.as_array().expect("array");
    for ((m, frame), p) in msgs.iter().zip(&frames).zip(parsed) {
        assert!(!p.is_null(), "browser refused {frame}");
        let rust = serde_json::to_value(m).expect("value");
        assert_eq!(p["type"], rust["type"], "{frame}");
        assert_eq!(p["relayed"], m.seq().is_some(), "{frame}");
        assert_eq!(p["seq"].as_u64(), m.seq(), "{frame}");
    }
}
