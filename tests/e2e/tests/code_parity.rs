//! The web client's code normalisation (`web/js/lib/code.js`) agrees with the server's
//! (`hermes_proto::OneTimeCode::parse`) on thousands of generated inputs: what the browser
//! accepts, the API accepts as the same code, and what it refuses before sending, the API
//! would refuse too.

use std::io::Write;
use std::process::{Command, Stdio};

use hermes_proto::OneTimeCode;
use hermes_testkit::{require_program, workspace_root};

/// xorshift64*: deterministic inputs without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn browser_and_server_normalise_codes_identically() {
    let node = require_program("node", "nodejs");
    let pieces: Vec<char> =
        "0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyzIiLlOoUu -\t_.!é€ß"
            .chars()
            .collect();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut inputs: Vec<String> = vec![
        String::new(),
        "7kq-2zd".into(),
        " 7K Q2 ZD ".into(),
        "oil0io".into(),
        "7KQ2ZU".into(),
        "7KQ2ZD7".into(),
        "ǅ12345".into(),
        "ﬀ1234".into(),
        // Non-ASCII letters whose Unicode upper case is ASCII: ı → I, ſ → S, K (Kelvin) → k.
        "ı23456".into(),
        "ſ23456".into(),
        "\u{212A}23456".into(),
    ];
    for _ in 0..3000 {
        let len = rng.below(10);
        // Mostly valid-looking material so both outcomes are well represented.
        let s: String = (0..len)
            .map(|_| {
                if rng.below(8) == 0 {
                    pieces[32 + rng.below(pieces.len() - 32)]
                } else {
                    pieces[rng.below(32)]
                }
            })
            .collect();
        inputs.push(s);
    }
    let script = format!(
        "import {{ normaliseCode }} from {:?};\n\
         let data = '';\n\
         process.stdin.on('data', (c) => (data += c));\n\
         process.stdin.on('end', () => {{\n\
           const out = JSON.parse(data).map((s) => {{ const r = normaliseCode(s); return r.ok ? r.code : null; }});\n\
           process.stdout.write(JSON.stringify(out));\n\
         }});",
        format!(
            "file://{}",
            workspace_root().join("web/js/lib/code.js").display()
        )
    );
    let mut child = Command::new(node)
        .args(["--input-type=module", "-e", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(&inputs).expect("json").as_bytes())
        .expect("write inputs");
    let out = child.wait_with_output().expect("node output");
    assert!(out.status.success(), "node failed");
    let web: Vec<Option<String>> = serde_json::from_slice(&out.stdout).expect("node JSON");
    assert_eq!(web.len(), inputs.len());
    let mut accepted = 0;
    for (input, web) in inputs.iter().zip(&web) {
        let server = OneTimeCode::parse(input)
            .ok()
            .map(|c| c.as_str().to_owned());
        assert_eq!(&server, web, "input {input:?}");
        accepted += usize::from(server.is_some());
    }
    // Both outcomes were exercised in earnest.
    assert!(accepted > 200, "only {accepted} accepted");
    assert!(inputs.len() - accepted > 200);
}
