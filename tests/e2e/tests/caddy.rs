//! Caddy configuration: both Caddyfiles validate, and the local one (same headers as
//! production) serves the web client with a strict CSP, routes `/c/CODE` to the app, and keeps
//! tokens out of its access log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use hermes_e2e::wait_http;
use hermes_testkit::{
    ChildGuard, Transport, free_tcp_port, require_program, wait_until_child_holds, workspace_root,
};

fn validate(file: &str, env: &[(&str, &str)]) -> (bool, String) {
    let caddy = require_program("caddy", "caddy");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(caddy)
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(workspace_root().join("caddy").join(file))
        .envs(env.iter().copied())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .expect("run caddy validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn both_caddyfiles_validate() {
    let web = workspace_root().join("web");
    let web = web.to_str().expect("utf-8 path");
    let (ok, text) = validate(
        "Caddyfile",
        &[
            ("SERVER_NAME", "call.example.com"),
            ("HERMES_WEB_ROOT", web),
            ("API_UPSTREAMS", "127.0.0.1:18080 127.0.0.1:18082"),
            ("SIGNAL_UPSTREAMS", "127.0.0.1:18081 127.0.0.1:18083"),
        ],
    );
    assert!(ok, "production Caddyfile: {text}");
    let (ok, text) = validate(
        "Caddyfile.local",
        &[
            ("HERMES_HTTP_ADDR", "127.0.0.1:18000"),
            ("HERMES_WEB_ROOT", web),
            ("API_UPSTREAMS", "127.0.0.1:18080"),
            ("SIGNAL_UPSTREAMS", "127.0.0.1:18081"),
        ],
    );
    assert!(ok, "Caddyfile.local: {text}");
}

#[test]
fn validation_catches_a_broken_file() {
    // The validation above could not pass vacuously: a broken copy is refused.
    let dir = tempfile::tempdir().expect("temp dir");
    let good = std::fs::read_to_string(workspace_root().join("caddy/Caddyfile.local"))
        .expect("read Caddyfile.local");
    let broken = dir.path().join("Caddyfile");
    std::fs::write(&broken, good.replace("reverse_proxy", "reverse_proxyy")).expect("write");
    let out = Command::new(require_program("caddy", "caddy"))
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(&broken)
        .env("HERMES_HTTP_ADDR", "127.0.0.1:18000")
        .env("HERMES_WEB_ROOT", "/tmp")
        .env("API_UPSTREAMS", "127.0.0.1:1")
        .env("SIGNAL_UPSTREAMS", "127.0.0.1:2")
        .output()
        .expect("run caddy validate");
    assert!(!out.status.success());
}

#[test]
fn production_and_local_send_the_same_security_headers() {
    let read = |f: &str| {
        std::fs::read_to_string(workspace_root().join("caddy").join(f)).expect("read Caddyfile")
    };
    let header_lines = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| {
                [
                    "X-Content-Type-Options",
                    "Referrer-Policy",
                    "Permissions-Policy",
                    "Strict-Transport-Security",
                    "Cross-Origin-Opener-Policy",
                    "X-Frame-Options",
                    "request>headers>Authorization delete",
                ]
                .iter()
                .any(|h| l.starts_with(h))
            })
            .map(str::to_owned)
            .collect()
    };
    let prod = read("Caddyfile");
    let local = read("Caddyfile.local");
    assert_eq!(header_lines(&prod), header_lines(&local));
    // Six headers, and the Authorization filter in both the access and the error log.
    assert_eq!(header_lines(&prod).len(), 8);
    for text in [&prod, &local] {
        let csp = text
            .lines()
            .find(|l| l.trim().starts_with("Content-Security-Policy"))
            .expect("a CSP header");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
    }
    assert!(
        prod.contains("wss://{$SERVER_NAME"),
        "production allows wss to itself"
    );
    // Production's fixed upstream lists are health-checked like the local ones (with upstreams
    // from DNS, compose, Caddy has only passive checks: caddy/upstreams/dns.caddy).
    let prod_lists = std::fs::read_to_string(workspace_root().join("caddy/upstreams/list.caddy"))
        .expect("caddy/upstreams/list.caddy");
    assert!(prod_lists.contains("health_uri /healthz") && local.contains("health_uri /healthz"));
}

struct Response {
    status: u16,
    head: String,
    body: String,
}

fn request(port: u16, raw: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect caddy");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(raw.as_bytes()).expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    Response {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn get(port: u16, path: &str) -> Response {
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn local_caddy_serves_the_app_with_strict_headers_and_clean_logs() {
    let caddy = require_program("caddy", "caddy");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_tcp_port();
    // Upstreams that refuse connections: /api and /ws answer 502/503, which is fine here.
    let dead_api = free_tcp_port();
    let dead_signal = free_tcp_port();
    let log_path = dir.path().join("caddy.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(caddy);
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(workspace_root().join("caddy/Caddyfile.local"))
        .env("HERMES_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("HERMES_WEB_ROOT", workspace_root().join("web"))
        .env("API_UPSTREAMS", format!("127.0.0.1:{dead_api}"))
        .env("SIGNAL_UPSTREAMS", format!("127.0.0.1:{dead_signal}"))
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .stdin(Stdio::null());
    let mut guard = ChildGuard::spawn("caddy", &mut cmd).expect("start caddy");
    // This Caddy holds the port (not another test's server that took it first).
    wait_until_child_holds(&mut guard, Transport::Tcp, port, Duration::from_secs(10))
        .expect("caddy listening on its port");
    wait_http(
        ([127, 0, 0, 1], port).into(),
        "/",
        Duration::from_secs(10),
        |s| s == 200,
    )
    .expect("caddy up");

    let home = get(port, "/");
    assert_eq!(home.status, 200);
    for h in [
        "content-security-policy: default-src 'self'; script-src 'self'; style-src 'self'",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "permissions-policy: camera=(self), microphone=(self)",
        "strict-transport-security: max-age=",
        "x-frame-options: deny",
    ] {
        assert!(home.head.contains(h), "missing {h} in\n{}", home.head);
    }
    assert!(!home.head.contains("unsafe-inline"));
    assert!(
        home.body
            .contains(r#"<script type="module" src="/js/client.js"></script>"#)
    );

    // Direct join links and the creator's /call route are the app itself.
    for path in ["/c/7KQ2ZD", "/call"] {
        let r = get(port, path);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.body.contains("id=\"join-form\""),
            "{path} serves index.html"
        );
    }
    let js = get(port, "/js/client.js");
    assert_eq!(js.status, 200);
    assert!(
        js.head.contains("content-type: text/javascript")
            || js.head.contains("content-type: application/javascript"),
        "{}",
        js.head
    );
    let css = get(port, "/css/app.css");
    assert!(css.head.contains("content-type: text/css"));

    // A token in a header (and one smuggled into a query) never reaches the access log.
    let secret = "eyJhbGciOiJIUzI1NiJ9.e2e-secret-token.sig";
    let r = request(
        port,
        &format!(
            "POST /api/join?token={secret} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {secret}\r\nCookie: s={secret}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(r.status >= 500, "no upstream: {}", r.status);
    // The access log line is written after the response: wait for it, then stop Caddy.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("/api/join")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the request was never logged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    guard.terminate(Duration::from_secs(5));
    let text = std::fs::read_to_string(&log_path).expect("read log");
    assert!(
        text.contains("/api/join"),
        "the request was logged:\n{text}"
    );
    assert!(
        !text.contains("e2e-secret-token"),
        "token leaked into the log:\n{text}"
    );
}

/// Every JSON object under `v` whose `key` equals `value`.
fn find_objects<'a>(
    v: &'a serde_json::Value,
    key: &str,
    value: &str,
    out: &mut Vec<&'a serde_json::Value>,
) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get(key).and_then(|x| x.as_str()) == Some(value) {
                out.push(v);
            }
            for x in map.values() {
                find_objects(x, key, value, out);
            }
        }
        serde_json::Value::Array(items) => {
            for x in items {
                find_objects(x, key, value, out);
            }
        }
        _ => {}
    }
}

#[test]
fn production_config_adapts_to_https_with_health_checked_upstreams() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(require_program("caddy", "caddy"))
        .args(["adapt", "--adapter", "caddyfile", "--config"])
        .arg(workspace_root().join("caddy/Caddyfile"))
        .env("SERVER_NAME", "call.example.com")
        .env("HERMES_WEB_ROOT", "/srv")
        .env("API_UPSTREAMS", "10.0.0.1:8080 10.0.0.2:8080")
        .env("SIGNAL_UPSTREAMS", "10.0.1.1:8081 10.0.1.2:8081")
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .expect("run caddy adapt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("adapted JSON");
    let servers = json["apps"]["http"]["servers"]
        .as_object()
        .expect("http servers");
    let srv = servers.values().next().expect("one server");
    assert_eq!(srv["listen"], serde_json::json!([":443"]), "HTTPS listener");
    assert_eq!(
        srv["routes"][0]["match"][0]["host"],
        serde_json::json!(["call.example.com"]),
        "site is SERVER_NAME (automatic HTTPS for it)"
    );

    let mut proxies = Vec::new();
    find_objects(&json, "handler", "reverse_proxy", &mut proxies);
    assert_eq!(proxies.len(), 2, "one proxy for /api/*, one for /ws");
    let dials: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            p["upstreams"]
                .as_array()
                .expect("upstreams")
                .iter()
                .map(|u| u["dial"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .collect();
    assert!(dials.contains(&vec![
        "10.0.0.1:8080".to_owned(),
        "10.0.0.2:8080".to_owned()
    ]));
    assert!(dials.contains(&vec![
        "10.0.1.1:8081".to_owned(),
        "10.0.1.2:8081".to_owned()
    ]));
    for p in &proxies {
        let active = &p["health_checks"]["active"];
        let uri = active["uri"].as_str().or(active["path"].as_str());
        assert_eq!(uri, Some("/healthz"), "active health check: {p}");
        assert!(
            p["health_checks"]["passive"].is_object(),
            "passive health check: {p}"
        );
    }

    // Access and error logs both drop the Authorization header.
    let logs = json["logging"]["logs"].as_object().expect("logs");
    for name in ["default", "log0"] {
        let fields = &logs[name]["encoder"]["fields"];
        assert_eq!(
            fields["request>headers>Authorization"]["filter"], "delete",
            "{name}: {fields}"
        );
    }
}
