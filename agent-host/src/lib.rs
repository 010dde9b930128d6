//! `hotsync`, the developer's side: watch a source tree and keep agents in sync with it.
//!
//! Where a byte goes: [`source`] sees a file change (notify), rescans it and confirms it by
//! blake3; [`session`] diffs the new snapshot against its model of the agent's tree and sends
//! the changeset; [`send`] decides what each file costs (a copy, a delta or the bytes) and
//! streams it over QUIC; [`ui`] says what happened.
//!
//! On Kubernetes, [`attach`] drives it: [`cluster`] finds the workload, injects the sidecar,
//! waits for the rollout and follows the pods; one session runs per ready pod, reached over
//! UDP or through the API server's port-forward; [`status`] tells what each pod has.

pub mod attach;
pub mod cli;
pub mod cluster;
pub mod demo;
pub mod example_app;
pub mod manifests;
pub mod project;
pub mod send;
pub mod session;
pub mod source;
pub mod status;
pub mod ui;
pub mod webhook_manifests;
