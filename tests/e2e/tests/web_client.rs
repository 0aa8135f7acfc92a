//! The web client as a product (issue 17), in two headless Chromium instances through the
//! whole stack on loopback: the other person's camera/mic/speaking state, a pasted share link,
//! screen sharing with the fake display source, a new code from inside the call with its QR
//! code decoded by zbarimg, rejoining after closing the tab, a reload keeping the timer and chat,
//! the lobby with a refusal and Try again, a typed code through the same lobby, Leave with its
//! undo window and End call for both, devices (speaker list, hot-plug, Try again in the call),
//! the picture (picture in picture, controls hiding when idle, self-view drag/hide/swap),
//! keyboard operation and focus in dialogs; then every
//! screen (reconnecting, blocked, refused devices and "You left" included) at five sizes with layout checks (overlap, overflow, < 44 px targets on phones) and
//! axe-core; finally, with a 4-second code life, the code expiry and "New code".

use std::time::Duration;

use hermes_e2e::{DriverRun, Stack, run_driver};
use hermes_testkit::{require_program, workspace_root};

const SCENARIOS: &str = "typed-lobby,remote-state,share-screen,invite-again,rejoin,leave,devices,view,reload-keeps,lobby,keyboard,screens";

fn expect_ok(run: &DriverRun, stack: &Stack, what: &str) {
    if !(run.exit_ok && run.done["ok"] == true) {
        panic!(
            "{what} browser run failed: {}\n{}",
            run.done["error"]
                .as_str()
                .unwrap_or("(no error text; see driver lines above)"),
            stack.diagnostics()
        );
    }
}

fn assert_checks(run: &DriverRun, needles: &[&str]) {
    let checks = run.checks();
    for needle in needles {
        assert!(
            checks.iter().any(|c| c.contains(needle)),
            "check `{needle}` did not run"
        );
    }
}

#[test]
fn the_web_client_as_people_use_it() {
    require_program("chromium", "chromium");
    require_program("zbarimg", "zbar-tools");
    let out = workspace_root().join("test-output/screenshots");
    std::fs::create_dir_all(&out).expect("create test-output/screenshots");
    let mut stack = Stack::start("all").unwrap_or_else(|e| panic!("stack did not start: {e}"));

    // `HERMES_WEB_SCENARIOS=typed-lobby,leave` runs only those (while working on one of them);
    // `HERMES_WEB_SCENARIOS=timing HERMES_WEB_RUNS=5 HERMES_WEB_POLICY=relay` times joins.
    if let Ok(only) = std::env::var("HERMES_WEB_SCENARIOS") {
        let runs = std::env::var("HERMES_WEB_RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        let policy = std::env::var("HERMES_WEB_POLICY").unwrap_or_else(|_| "all".to_owned());
        if policy == "relay" {
            stack
                .restart_api_with_policy("relay")
                .unwrap_or_else(|e| panic!("restart api with relay policy: {e}"));
        }
        let run = run_driver(
            &mut stack,
            &policy,
            runs,
            &only,
            &out,
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| panic!("driver: {e}\n{}", stack.diagnostics()));
        expect_ok(&run, &stack, &only);
        println!("join ms ({policy}): {:?}", run.join_ms());
        return;
    }

    let run = run_driver(
        &mut stack,
        "all",
        1,
        SCENARIOS,
        &out,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("driver: {e}\n{}", stack.diagnostics()));
    expect_ok(&run, &stack, "product scenarios");
    // Where headless Chromium has them, picture in picture and output devices are driven for
    // real; where it does not, the test asserts that the control is not offered.
    let checks = run.checks();
    assert!(
        checks
            .iter()
            .any(|c| c.starts_with("picture in picture: back in the page"))
            || checks
                .iter()
                .any(|c| c.starts_with("picture in picture unsupported here")),
        "no picture-in-picture check ran"
    );
    assert!(
        checks
            .iter()
            .any(|c| c.starts_with("choosing a speaker routes the other person's sound there"))
            || checks
                .iter()
                .any(|c| c.starts_with("no audio output to choose")),
        "no speaker check ran"
    );
    assert_checks(
        &run,
        &[
            "typed: a wrong code is told on the home screen, no lobby",
            "typed: the code opens the lobby at /c/CODE, not the call",
            "typed lobby: self-preview",
            "typed lobby: device choice filled",
            "typed lobby: mic level meter moves",
            "typed lobby: A still waiting before Join",
            "typed lobby: joined muted with the camera off, the other side sees it",
            "typed lobby: choices carried into the call",
            "pasted share link joins the call",
            "speaking indicator lights up",
            "remote camera off: placeholder with words and avatar",
            "remote mic off: muted badge",
            "muted hint when speaking into a muted mic",
            "display name shown to the other person",
            "end card shows the duration",
            "focus moved into the end card",
            "screen share: the other side is told",
            "screen share: security code unchanged and equal",
            "B while A shares the screen: framesDecoded rising",
            "alone: no contradicting status",
            "alone: timer stopped",
            "new code from inside the call",
            "QR code on the page decodes to the share link",
            "A with the person invited again: framesDecoded rising",
            "join while in another tab: title changes, chime and notification",
            "title back when the tab is looked at",
            "F enters and leaves full screen",
            "rejoin after closing the tab: the same link works again",
            "B after rejoining: framesDecoded rising",
            "home offers to rejoin the call that is still on",
            "leave: \"You left\" with Rejoin focused",
            "leave: no end card during the undo window",
            "leave: the other person is told at once, not \"reconnecting\"",
            "leave: Rejoin in the undo window brings the call back",
            "B after undoing Leave: framesDecoded rising",
            "leave: after the undo window, the end card offers Rejoin and End call for both",
            "A after B rejoined from the end card: framesDecoded rising",
            "leave: End call for both ends it for the other person",
            "leave while waiting: Rejoin shows the same code again",
            "in call after a refusal: told, Try again offered",
            "in-call Try again: camera and microphone on, notice gone",
            "A sees B after B's in-call Try again: framesDecoded rising",
            "hot-plug: a new camera shows in the list",
            "hot-plug: an unplugged camera leaves the list",
            "B after A's camera went away and another took over: framesDecoded rising",
            "no setSinkId / no picture in picture: speaker list and PiP button hidden",
            "controls hide after a few idle seconds",
            "controls back on a pointer move",
            "controls back on a key press",
            "self-view dragged to the other corner, kept inside the picture",
            "self-view hidden",
            "self-view shown again",
            "swap: own picture large, the other person small",
            "swap back",
            "H leaves the call; the other person is told",
            "reload: chat history kept",
            "reload: the timer continues from the call start",
            "reload: told to compare the security words again",
            "lobby: refusal explained, Try again offered",
            "lobby: Try again asks again and shows the preview",
            "lobby: mic level meter moves",
            "joined muted from the lobby, with a name",
            "help dialog takes focus",
            "focus stays in the dialog",
            "focus returns to the button",
            "every call control reachable with Tab",
            "layout: screen-home has no overlap",
            "layout: screen-call has no overlap",
            "layout: screen-ended has no overlap",
            "layout: screen-reconnecting has no overlap",
            "reconnecting held while the signal service was unreachable",
            "A back to connected once the signal service answers",
            "layout: screen-left has no overlap",
            "undo window waits while the pointer rests on it",
            "layout: screen-left-ended has no overlap",
            "layout: screen-blocked has no overlap",
            "axe: no serious or critical violation on screen-blocked",
            "blocked: said so, with Try again",
            "layout: screen-lobby-denied has no overlap",
            "layout: screen-call-denied has no overlap",
            "axe: no serious or critical violation on screen-call",
            "axe: no serious or critical violation on screen-lobby",
        ],
    );

    // The code's life is cut to 4 s: the waiting screen counts down, then offers a new code.
    stack
        .restart_with_env("api", &[("API_CODE_TTL_SECS", "4".to_owned())])
        .unwrap_or_else(|e| panic!("restart api with a short code life: {e}"));
    let expiry = run_driver(
        &mut stack,
        "all",
        1,
        "code-expiry",
        &out,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("driver (code-expiry): {e}\n{}", stack.diagnostics()));
    expect_ok(&expiry, &stack, "code expiry");
    assert_checks(
        &expiry,
        &[
            "waiting screen shows the code's remaining time",
            "expired code said so, New code offered",
            "New code replaces the expired one",
        ],
    );
}
