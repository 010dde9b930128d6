//! `hotsync-agent`, the sidecar: a QUIC server that receives changesets from the host and
//! applies them atomically inside its root, then runs the reload action.
//!
//! Where a byte goes: [`server`] takes it off a data stream, [`apply`] stages it in a
//! temp file (or, for a directory the agent does not have yet, at its own path in a
//! [`fresh_tree`]) and verifies its hash, and on commit [`sandbox`] renames it into place
//! without ever leaving the root; [`reload`] then signals the app.

pub mod apply;
pub mod cli;
pub mod fresh_tree;
pub mod pod_setup;
pub mod reload;
pub mod root_watch;
pub mod sandbox;
pub mod server;
pub mod webhook;

pub use reload::{ReloadAction, SignalTarget};
pub use server::{Agent, AgentConfig};
