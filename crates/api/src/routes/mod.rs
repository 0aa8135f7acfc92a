//! HTTP handlers, one file per area. Handlers are thin: extract, call Redis, shape the answer.

pub mod call;
pub mod health;
pub mod join;
