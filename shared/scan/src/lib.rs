//! The filesystem side of the sync core, shared by both agents: walk a tree into a
//! [`TreeIndex`](hotsync_core::TreeIndex) with ignore rules, hashing only what a persistent
//! cache cannot vouch for, so a restart does not rehash the tree.

pub mod cache;
pub mod ignore_rules;
pub mod scanner;

pub use cache::{HashCache, StatKey};
pub use ignore_rules::IgnoreRules;
pub use scanner::{DirHook, ScanReport, Scanner, Skipped};
