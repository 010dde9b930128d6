//! The sync core of hotsync, shared by the host and the pod agent.
//!
//! Everything here is pure and deterministic: no sockets, no clock, no filesystem. Both agents
//! drive it with bytes and events, so the same code decides what to send (host) and how a tree
//! changes when a changeset lands (agent and the host's model of the agent), and it can be
//! tested and fuzzed in isolation.
//!
//! - [`path::RelPath`]: a relative path that can never escape a root.
//! - [`index::TreeIndex`]: a tree of entries with a Merkle root.
//! - [`diff`]: the ordered operations that turn one tree into another, and their application.
//! - [`chunk`]: content-defined chunking and delta recipes for large files.
//! - [`proto`]: the messages of the wire protocol; [`codec`]: their framing, with hard limits.

pub mod chunk;
pub mod codec;
pub mod diff;
pub mod hash;
pub mod index;
pub mod path;
pub mod proto;

pub use hash::Hash;
pub use index::{Entry, FileMeta, TreeIndex};
pub use path::RelPath;
