//! Staging received content and applying changesets.
//!
//! Content arrives on data streams and is written to staging files while it streams (several
//! streams at once). A commit then applies the changeset's operations in order: renames of
//! verified staging files, links, directories, deletes. Each file lands by rename, so the app
//! never reads half a file, and the whole changeset lands before the reload action runs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use hotsync_core::diff::{self, Op};
use hotsync_core::index::Node;
use hotsync_core::proto::{Failure, FileRecord, Piece};
use hotsync_core::{Hash, RelPath, TreeIndex};
use hotsync_scan::{HashCache, StatKey};

use crate::fresh_tree::{FreshTree, Graft};
use crate::sandbox::{Deleted, Sandbox, TempName, file_mode};

/// A file's new content, verified and waiting in the staging area.
#[derive(Debug)]
pub struct Staged {
    pub at: StagedAt,
    pub hash: Hash,
    pub size: u64,
    pub key: StatKey,
}

/// Where a staged file waits for its commit.
#[derive(Debug)]
pub enum StagedAt {
    /// Under a generated name in the staging area.
    Temp(TempName),
    /// At its own path in the changeset's tree of new directories.
    Fresh(Arc<FreshTree>),
}

impl StagedAt {
    /// Removes the staged file of `path`.
    pub fn discard(&self, sandbox: &Sandbox, path: &RelPath) {
        match self {
            StagedAt::Temp(temp) => sandbox.discard_temp(temp),
            StagedAt::Fresh(tree) => tree.discard_file(path),
        }
    }

    fn set_mode(&self, sandbox: &Sandbox, path: &RelPath, mode: u32) -> io::Result<()> {
        match self {
            StagedAt::Temp(temp) => sandbox.set_temp_mode(temp, mode),
            StagedAt::Fresh(tree) => tree.set_mode(path, mode),
        }
    }

    fn commit(&self, sandbox: &Sandbox, path: &RelPath) -> io::Result<()> {
        match self {
            StagedAt::Temp(temp) => sandbox.commit_temp(temp, path),
            StagedAt::Fresh(tree) => tree.commit_file(sandbox, path),
        }
    }
}

/// Writes a staging file from a record's pieces; `next_data` supplies the bytes of each
/// `Data` piece in turn (from the stream). Verifies size and hash.
pub struct StagingFile<'a> {
    sandbox: &'a Sandbox,
    record: FileRecord,
    at: StagedAt,
    file: File,
    hasher: blake3::Hasher,
    written: u64,
    /// Bytes not yet hashed and written. QUIC hands data over a packet (about 1.4 KB) at a
    /// time: writing and hashing each piece alone costs a syscall per packet and keeps blake3
    /// from hashing several 1 KiB chunks at once (SIMD). A small file is written in one call.
    pending: Vec<u8>,
}

/// The most a staging file holds in memory before writing.
const STAGING_BUFFER: usize = 1 << 20;

impl<'a> StagingFile<'a> {
    /// Starts staging `record`: at its own path in `fresh` when given (its directory is new),
    /// else under a generated name.
    pub fn create(sandbox: &'a Sandbox, record: FileRecord, fresh: Option<&Arc<FreshTree>>) -> io::Result<Self> {
        let in_tree = fresh.and_then(|tree| {
            // Taken already (the same path twice in a changeset): the generated name will do.
            let file = tree.create_file(&record.path).ok()?;
            Some((StagedAt::Fresh(tree.clone()), file))
        });
        let (at, file) = match in_tree {
            Some(staged) => staged,
            None => sandbox.create_temp().map(|(temp, file)| (StagedAt::Temp(temp), file))?,
        };
        // The record's size is checked against MAX_FILE_SIZE, but a peer may still lie about
        // it: the buffer never grows past STAGING_BUFFER whatever it says.
        let pending = Vec::with_capacity((record.size as usize).min(STAGING_BUFFER));
        Ok(Self { sandbox, record, at, file, hasher: blake3::Hasher::new(), written: 0, pending })
    }

    /// The record being staged.
    pub fn record(&self) -> &FileRecord {
        &self.record
    }

    /// Appends bytes that came on the stream.
    pub fn write_data(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.pending.is_empty() && bytes.len() >= STAGING_BUFFER {
                // Big enough on its own: no copy.
                self.hasher.update(bytes);
                return self.file.write_all(bytes);
            }
            let room = STAGING_BUFFER - self.pending.len();
            let (now, later) = bytes.split_at(bytes.len().min(room));
            self.pending.extend_from_slice(now);
            bytes = later;
            if self.pending.len() == STAGING_BUFFER {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.hasher.update(&self.pending);
            self.file.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Appends `len` bytes at `offset` of a file already in the root (as it is before the
    /// commit): the unchanged parts of a delta, or the content of a renamed file.
    pub fn copy_existing(&mut self, from: &RelPath, offset: u64, len: u64) -> io::Result<()> {
        let src = self.sandbox.open_read(from)?;
        let mut buf = vec![0u8; (256 * 1024).min(len as usize).max(1)];
        let mut done = 0u64;
        while done < len {
            let want = buf.len().min((len - done) as usize);
            let n = src.read_at(&mut buf[..want], offset + done)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{from} is shorter than the recipe says"),
                ));
            }
            self.write_data(&buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Checks size and hash; on success the content waits in staging for its commit.
    pub fn finish(mut self) -> Result<(RelPath, Staged), Failure> {
        let path = self.record.path.clone();
        let fail = |reason: String| Failure { path: path.clone(), reason };
        if let Err(e) = self.flush() {
            self.at.discard(self.sandbox, &path);
            return Err(fail(format!("cannot write: {e}")));
        }
        let hash: Hash = self.hasher.finalize().into();
        if self.written != self.record.size || hash != self.record.hash {
            self.at.discard(self.sandbox, &path);
            return Err(fail(format!(
                "content does not match its hash (got {} bytes, expected {}); the file changed while it was sent",
                self.written, self.record.size
            )));
        }
        // The mode a synced file has unless it is executable, whatever the agent's umask.
        if !self.sandbox.temp_mode_exact() {
            rustix::fs::fchmod(&self.file, rustix::fs::Mode::from_raw_mode(file_mode(false)))
                .map_err(|e| fail(e.to_string()))?;
        }
        let meta = self.file.metadata().map_err(|e| fail(e.to_string()))?;
        Ok((path, Staged { at: self.at, hash, size: self.written, key: StatKey::of(&meta) }))
    }

    /// Gives up on this file, removing its staging file.
    pub fn abandon(self) {
        self.at.discard(self.sandbox, &self.record.path);
    }
}

/// The pieces of `record` that come from the root rather than the stream, resolved to the
/// path they copy from.
pub fn copy_source<'r>(record: &'r FileRecord, piece: &'r Piece) -> Option<(&'r RelPath, u64, u64)> {
    match piece {
        Piece::Copy { from, offset, len } => Some((from.as_ref().unwrap_or(&record.path), *offset, *len)),
        Piece::Data { .. } => None,
    }
}

/// What applying a changeset did.
pub struct Outcome {
    pub failed: Vec<Failure>,
    /// True when anything on disk changed (the reload action then runs).
    pub changed: bool,
    /// Large files the changeset replaced or deleted, still linked in the staging area: the
    /// caller removes them after answering ([`Sandbox::set_aside`]).
    pub set_aside: Vec<TempName>,
}

/// Replaced or deleted files at least this big are removed after the answer: freeing a file's
/// pages takes the kernel about 0.5 ms per MiB (100 ms for 200 MiB, on ext4 here), which the
/// rename over it or the unlink would otherwise spend inside the changeset.
const SET_ASIDE_SIZE: u64 = 4 << 20;

/// Applies `ops` in order with their staged content, keeping `index` and `cache` in step with
/// the disk. A failed operation is reported and leaves the index as the disk is.
pub fn apply_changeset(
    sandbox: &Sandbox,
    ops: &[Op],
    staged: &mut HashMap<RelPath, Staged>,
    fresh: Option<&FreshTree>,
    index: &mut TreeIndex,
    cache: &mut HashCache,
) -> Outcome {
    let mut failed = Vec::new();
    let mut changed = false;
    let mut set_aside = Vec::new();
    sandbox.begin_commit();
    for op in ops {
        if let Op::Write { path, .. } | Op::Delete { path } = op {
            if matches!(index.get(path), Some(Node::File(m)) if m.size >= SET_ASIDE_SIZE) {
                set_aside.extend(sandbox.set_aside(path));
            }
        }
        let result = apply_op(sandbox, op, staged, fresh, cache);
        match result {
            Ok(did_change) => {
                changed |= did_change;
                diff::apply_one(index, op);
            }
            Err(reason) => failed.push(Failure { path: op.path().clone(), reason }),
        }
    }
    sandbox.end_commit();
    // Content staged for paths the changeset did not name (a confused peer) is dropped.
    for (path, s) in staged.drain() {
        s.at.discard(sandbox, &path);
    }
    Outcome { failed, changed, set_aside }
}

fn apply_op(
    sandbox: &Sandbox,
    op: &Op,
    staged: &mut HashMap<RelPath, Staged>,
    fresh: Option<&FreshTree>,
    cache: &mut HashCache,
) -> Result<bool, String> {
    let text = |e: io::Error| e.to_string();
    match op {
        Op::Delete { path } => Ok(sandbox.delete(path).map_err(text)? == Deleted::Removed),
        Op::Mkdir { path } => match fresh.map(|tree| tree.graft(sandbox, path)) {
            Some(Graft::Moved | Graft::AlreadyIn) => Ok(true),
            Some(Graft::NotHere) | None => sandbox.mkdir(path).map(|()| true).map_err(text),
        },
        Op::Symlink { path, target } => sandbox.symlink(path, target).map(|()| true).map_err(text),
        Op::SetExecutable { path, executable } => {
            sandbox.set_mode(path, file_mode(*executable)).map(|()| true).map_err(text)
        }
        Op::Write { path, meta } => {
            let s = staged.remove(path).ok_or_else(|| "its content never arrived".to_owned())?;
            if s.hash != meta.hash || s.size != meta.size {
                s.at.discard(sandbox, path);
                return Err("the content received is not the content committed".into());
            }
            // Staging files are 0644 already; only the executable bit needs another call.
            let mode = if meta.executable { s.at.set_mode(sandbox, path, file_mode(true)) } else { Ok(()) };
            let result = mode.and_then(|()| s.at.commit(sandbox, path));
            if let Err(e) = result {
                s.at.discard(sandbox, path);
                return Err(e.to_string());
            }
            cache.set_hash(path.as_str(), s.key, s.hash);
            Ok(true)
        }
    }
}
