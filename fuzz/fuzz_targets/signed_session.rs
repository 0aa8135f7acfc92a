//! Fuzz the authenticated handlers: the input scripts clients that sign their requests and
//! hold allocations (see `hermes_turn::fuzzing::signed_session` for the invariants checked).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hermes_turn::fuzzing::signed_session(data);
});
