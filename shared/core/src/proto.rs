//! The messages of the hotsync wire protocol, version 2.
//!
//! A session is one QUIC connection (ALPN [`ALPN`], mutual TLS). Once the handshake is done
//! the agent opens a bidirectional *control stream* and writes [`MAGIC`] and its
//! [`AgentMsg::Welcome`]; the host answers with framed [`HostMsg`]s, a [`HostMsg::Hello`] first,
//! sent along with its first request (a host that finds both trees equal sends nothing), and
//! the agent answers each request with framed [`AgentMsg`]s. File contents travel on unidirectional *data streams*
//! (several in flight at once): a [`DataHeader`] frame, then [`FileRecord`] frames, each
//! followed by the raw bytes of its [`Piece::Data`] pieces. A [`HostMsg::Commit`] names how
//! many data streams belong to its changeset; the agent stages what they carry and applies the
//! changeset whole once they have all ended.

use serde::{Deserialize, Serialize};

use crate::diff::Op;
use crate::hash::Hash;
use crate::index::Entry;
use crate::path::RelPath;

/// The first bytes on a control stream: says "hotsync" and the framing generation.
pub const MAGIC: [u8; 8] = *b"HOTSYNC\x02";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// The TLS application protocol name: peers of another protocol version fail the handshake
/// with `no_application_protocol`, which the host explains.
pub const ALPN: &[u8] = b"hotsync/2";
/// The name in the agent's certificate; the host checks it whatever address it dials.
pub const AGENT_SERVER_NAME: &str = "hotsync-agent";
/// The largest file a record may describe (1 TiB): a bound on what a peer can ask us to write.
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Entries per [`AgentMsg::IndexPart`].
pub const INDEX_PART_ENTRIES: usize = 16 * 1024;

/// Host → agent, on the control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// First message: who is calling and which protocol it speaks.
    Hello { version: u32, client: String },
    /// Ask for the agent's whole index (when its root is not the one the host expects).
    GetIndex,
    /// Apply a changeset once its `data_streams` data streams have ended, then run the reload
    /// action once if `reload`.
    Commit { id: u64, data_streams: u32, ops: Vec<Op>, reload: bool },
}

/// Agent → host, on the control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// The agent's first message: its current Merkle root, so an unchanged tree costs one hash.
    Welcome { version: u32, agent: String, root: Hash, entries: u64 },
    /// Part of the answer to `GetIndex`, parents before children.
    IndexPart { entries: Vec<(RelPath, Entry)>, done: bool },
    /// A changeset was applied; `root` is the agent's tree afterwards.
    Applied { id: u64, root: Hash, failed: Vec<Failure>, reload: Option<String>, apply_micros: u64 },
    /// The agent will not go on with this session, and says why.
    Refused { reason: String },
}

/// One path of a changeset that could not be applied, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub path: RelPath,
    pub reason: String,
}

/// First frame of a data stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataHeader {
    pub changeset: u64,
}

/// A file's new content: built from `pieces`, it must be `size` bytes hashing to `hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: RelPath,
    pub size: u64,
    pub hash: Hash,
    pub pieces: Vec<Piece>,
}

/// Part of a file's new content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Piece {
    /// Bytes already on the agent: `len` bytes at `offset` of the file at `from` (or, when
    /// `None`, of the current file at the record's own path), as it was before the commit.
    Copy { from: Option<RelPath>, offset: u64, len: u64 },
    /// `len` bytes that follow the record on the stream.
    Data { len: u64 },
}

impl Piece {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Copy { len, .. } | Piece::Data { len } => *len,
        }
    }

    /// True for an empty piece.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FileRecord {
    /// Checks what a peer cannot be trusted on: the pieces add up to the size, and the size is
    /// within bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.size > MAX_FILE_SIZE {
            return Err(format!("{}: size {} is over the limit of {MAX_FILE_SIZE}", self.path, self.size));
        }
        let total = self.pieces.iter().try_fold(0u64, |acc, p| acc.checked_add(p.len()));
        if total != Some(self.size) {
            return Err(format!("{}: pieces do not add up to the size {}", self.path, self.size));
        }
        Ok(())
    }
}
