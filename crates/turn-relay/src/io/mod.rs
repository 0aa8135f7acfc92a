//! The thin I/O layer around the sans-IO core: the mio data plane ([`engine`]) and the
//! threads that run its workers ([`runner`]), stream clients (accepted in [`stream`],
//! served by the workers in [`stream_conn`]), RFC 6062 TCP relays ([`tcp_relay`]), peer sends gathered into one system call ([`uring`]), TLS certificate handling
//! ([`tls`]) and the metrics endpoint ([`http`]). Leaves the others build on: [`handoff`]
//! (what crosses between workers and tasks), [`stream_conn`], [`sockaddr`].

pub mod batch;
pub mod engine;
pub mod gso;
pub mod handoff;
pub mod http;
pub mod runner;
pub mod sockaddr;
pub mod stream;
pub mod stream_conn;
pub mod tcp_relay;
pub mod tls;
pub mod uring;
