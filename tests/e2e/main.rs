//! End-to-end tests: the real binaries as processes, real QUIC on loopback, real files.
//! Run with `cargo nextest run` (or `cargo test`) after `cargo build --workspace`.

mod attach;
mod containers;
mod errors;
mod fake_cluster;
mod reload;
mod resilience;
mod security;
mod sync;
mod webhook;
