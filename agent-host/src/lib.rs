//! `hotsync`, the developer's side: watch a source tree and keep agents in sync with it.
//!
//! Where a byte goes: [`source`] sees a file change (notify), rescans it and confirms it by
//! blake3; [`session`] diffs the new snapshot against its model of the agent's tree and sends
//! the changeset; [`send`] decides what each file costs (a copy, a delta or the bytes) and
//! streams it over QUIC; [`ui`] says what happened.

pub mod cli;
pub mod demo;
pub mod example_app;
pub mod manifests;
pub mod send;
pub mod session;
pub mod source;
pub mod ui;
pub mod webhook_manifests;
