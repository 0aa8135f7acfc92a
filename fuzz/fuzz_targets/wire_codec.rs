//! Fuzz the zero-copy STUN/TURN codec (framing, attributes, integrity, fingerprint).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hermes_turn::fuzzing::wire_codec(data));
