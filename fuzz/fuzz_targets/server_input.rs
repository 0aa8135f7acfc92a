//! Fuzz the sans-IO TURN core with arbitrary client and peer packets.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hermes_turn::fuzzing::server_input(data));
