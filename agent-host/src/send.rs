//! What a changeset's files cost on the wire, and sending them.
//!
//! Each written file becomes a [`FileRecord`]: a copy of a file the agent already has (a
//! rename or move), a delta against the agent's current version (large files whose previous
//! chunk list the host remembers), or the whole content. Records are packed into data streams
//! (small files batched, so 20,000 files are not 20,000 round trips) sent several at once.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use hotsync_core::chunk::{self, Chunk, Span};
use hotsync_core::diff::Op;
use hotsync_core::index::Node;
use hotsync_core::proto::{DataHeader, FileRecord, Piece};
use hotsync_core::{Hash, RelPath, TreeIndex};
use hotsync_transport::write_frame;
use serde::{Deserialize, Serialize};

/// Files at least this big are sent as deltas when the agent's version is known.
pub const DELTA_MIN_SIZE: u64 = 256 * 1024;
/// A data stream carries up to this many bytes of small files…
const BATCH_BYTES: u64 = 1 << 20;
/// …or this many files.
const BATCH_FILES: usize = 512;
/// Read and send in pieces of this size.
const IO_CHUNK: usize = 1 << 20;

/// Chunk lists of contents sent before, by content hash, kept across runs.
#[derive(Default)]
pub struct ChunkMemory {
    lists: Mutex<HashMap<Hash, Arc<Vec<Chunk>>>>,
}

/// Bumped when the lists saved by an older version no longer apply (format 2: 8 KiB chunks).
const CHUNK_FILE_FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct ChunkFile {
    format: u32,
    lists: Vec<(Hash, Vec<Chunk>)>,
}

impl ChunkMemory {
    /// Loads the memory saved at `path` (empty if there is none or it is unreadable).
    pub fn load(path: &Path) -> Self {
        let lists = std::fs::read(path)
            .ok()
            .and_then(|b| postcard::from_bytes::<ChunkFile>(&b).ok())
            .filter(|f| f.format == CHUNK_FILE_FORMAT)
            .map(|f| f.lists.into_iter().map(|(h, l)| (h, Arc::new(l))).collect())
            .unwrap_or_default();
        Self { lists: Mutex::new(lists) }
    }

    /// Saves the lists of the contents for which `keep` is true.
    pub fn save(&self, path: &Path, keep: impl Fn(&Hash) -> bool) -> std::io::Result<()> {
        let lists: Vec<(Hash, Vec<Chunk>)> = {
            let map = self.lists.lock().expect("chunk memory lock");
            map.iter().filter(|(h, _)| keep(h)).map(|(h, l)| (*h, l.as_ref().clone())).collect()
        };
        let bytes =
            postcard::to_allocvec(&ChunkFile { format: CHUNK_FILE_FORMAT, lists }).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, path)
    }

    fn get(&self, content: &Hash) -> Option<Arc<Vec<Chunk>>> {
        self.lists.lock().expect("chunk memory lock").get(content).cloned()
    }

    /// Remembers the chunk list of `content`.
    pub fn put(&self, content: Hash, list: Vec<Chunk>) {
        self.lists.lock().expect("chunk memory lock").insert(content, Arc::new(list));
    }
}

/// A record and the byte ranges of the local file its `Data` pieces carry, in order.
pub struct Planned {
    pub record: FileRecord,
    pub ranges: Vec<(u64, u64)>,
    pub chunks: ChunkList,
}

/// Where the chunk list of a planned file's content (for the deltas of its next edits) comes
/// from.
pub enum ChunkList {
    /// None is kept: a small file, or content the agent already has elsewhere.
    NotKept,
    /// Made from the bytes sent (a large file sent whole).
    FromBytesSent,
    /// Made while planning (a delta).
    Made(Vec<Chunk>),
}

impl Planned {
    fn new(record: FileRecord) -> Self {
        Self { record, ranges: Vec::new(), chunks: ChunkList::NotKept }
    }

    /// File bytes this record puts on the wire.
    pub fn wire_bytes(&self) -> u64 {
        self.ranges.iter().map(|(_, len)| len).sum()
    }
}

/// Plans the records of a changeset's writes. Blocking: it may read and chunk large files.
pub fn plan(root: &Path, ops: &[Op], model: &TreeIndex, memory: &ChunkMemory) -> Vec<Planned> {
    // Contents about to be deleted on the agent are still there while staging: a renamed
    // or moved file is copied from its old path instead of sent again.
    let mut leaving: HashMap<Hash, RelPath> = HashMap::new();
    for op in ops {
        if let Op::Delete { path } = op {
            if let Some(Node::File(m)) = model.get(path) {
                leaving.entry(m.hash).or_insert_with(|| path.clone());
            }
        }
    }
    let mut out = Vec::new();
    for op in ops {
        let Op::Write { path, meta } = op else { continue };
        let record = |pieces| FileRecord { path: path.clone(), size: meta.size, hash: meta.hash, pieces };
        if meta.size == 0 {
            out.push(Planned::new(record(Vec::new())));
            continue;
        }
        if let Some(from) = leaving.get(&meta.hash) {
            let pieces = vec![Piece::Copy { from: Some(from.clone()), offset: 0, len: meta.size }];
            out.push(Planned::new(record(pieces)));
            continue;
        }
        if meta.size >= DELTA_MIN_SIZE {
            if let Some(planned) = plan_delta(root, path, meta.hash, model, memory) {
                out.push(planned);
                continue;
            }
        }
        let pieces = vec![Piece::Data { len: meta.size }];
        let chunks = if meta.size >= DELTA_MIN_SIZE { ChunkList::FromBytesSent } else { ChunkList::NotKept };
        out.push(Planned { record: record(pieces), ranges: vec![(0, meta.size)], chunks });
    }
    out
}

/// A delta against the agent's current version of `path`, when its chunk list is known.
///
/// The file is chunked as it is now, without hashing it whole again (the scan just did): if
/// it changed since, the agent's hash check fails the file and the next changeset catches up;
/// the new list is only remembered once the agent has applied the file.
fn plan_delta(root: &Path, path: &RelPath, new_hash: Hash, model: &TreeIndex, memory: &ChunkMemory) -> Option<Planned> {
    let Some(Node::File(old)) = model.get(path) else { return None };
    let old_chunks = memory.get(&old.hash)?;
    let file = File::open(root.join(path.as_str())).ok()?;
    let new_chunks = chunk::chunk_reader(std::io::BufReader::with_capacity(IO_CHUNK, file)).ok()?;
    let size: u64 = new_chunks.iter().map(|c| u64::from(c.len)).sum();
    let spans = chunk::delta(&old_chunks, &new_chunks);
    let mut pieces = Vec::with_capacity(spans.len());
    let mut ranges = Vec::new();
    for span in spans {
        match span {
            Span::Old { offset, len } => pieces.push(Piece::Copy { from: None, offset, len }),
            Span::New { offset, len } => {
                pieces.push(Piece::Data { len });
                ranges.push((offset, len));
            }
        }
    }
    let record = FileRecord { path: path.clone(), size, hash: new_hash, pieces };
    Some(Planned { record, ranges, chunks: ChunkList::Made(new_chunks) })
}

/// Packs records into streams: large files alone, small ones batched.
pub fn batch(planned: Vec<Planned>) -> Vec<Vec<Planned>> {
    let mut streams = Vec::new();
    let mut current: Vec<Planned> = Vec::new();
    let mut current_bytes = 0;
    for p in planned {
        let bytes = p.wire_bytes();
        if bytes >= BATCH_BYTES {
            streams.push(vec![p]);
            continue;
        }
        if current.len() >= BATCH_FILES || current_bytes + bytes > BATCH_BYTES {
            streams.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push(p);
    }
    if !current.is_empty() {
        streams.push(current);
    }
    streams
}

/// Progress counters shared by a changeset's streams.
#[derive(Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

/// The chunk list of a large file sent, made from the bytes sent (or read for its delta): it
/// describes the content of `hash` only if the agent found the result to hash to it, so it is
/// remembered once the agent has applied `path` without failure.
pub struct Learned {
    pub path: RelPath,
    pub hash: Hash,
    pub chunks: Vec<Chunk>,
}

/// Sends one data stream; returns the chunk lists made on the way.
pub async fn send_stream(
    conn: quinn::Connection,
    root: PathBuf,
    changeset: u64,
    records: Vec<Planned>,
    progress: Arc<Progress>,
) -> anyhow::Result<Vec<Learned>> {
    let mut learned = Vec::new();
    let mut stream = conn.open_uni().await.context("cannot open a data stream")?;
    write_frame(&mut stream, &DataHeader { changeset }).await?;
    for p in records {
        let learn = |chunks| Learned { path: p.record.path.clone(), hash: p.record.hash, chunks };
        let from_bytes_sent = match p.chunks {
            ChunkList::Made(chunks) => {
                learned.push(learn(chunks));
                false
            }
            ChunkList::FromBytesSent => true,
            ChunkList::NotKept => false,
        };
        write_frame(&mut stream, &p.record).await?;
        if p.ranges.is_empty() {
            progress.files.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let path = root.join(p.record.path.as_str());
        // A large file sent whole: its chunk list (for the deltas of its next edits) is made
        // from the very bytes sent, on a blocking thread, instead of reading the file again.
        let (chunk_feed, chunker) = if from_bytes_sent {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHUNKER_QUEUE);
            let task = tokio::task::spawn_blocking(move || chunk::chunk_reader(Fed { rx, current: Bytes::new() }));
            (Some(tx), Some(task))
        } else {
            (None, None)
        };
        // A file that vanished since it was hashed is sent as zeros: the stream stays
        // well-formed, the agent sees the hash mismatch, and the next changeset catches up.
        let file = File::open(&path).ok();
        for &(offset, len) in &p.ranges {
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(IO_CHUNK as u64) as usize;
                let mut buf = vec![0u8; n];
                if let Some(f) = &file {
                    read_at_most(f, &mut buf, offset + done);
                }
                let bytes = Bytes::from(buf);
                if let Some(feed) = &chunk_feed {
                    // The chunker only stops early if it failed; the list is then not kept.
                    let _ = feed.send(bytes.clone()).await;
                }
                stream.write_chunk(bytes).await?;
                done += n as u64;
                progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        progress.files.fetch_add(1, Ordering::Relaxed);
        drop(chunk_feed); // the end of the content
        if let Some(chunker) = chunker {
            if let Ok(Ok(chunks)) = chunker.await {
                learned.push(learn(chunks));
            }
        }
    }
    stream.finish()?;
    Ok(learned)
}

/// Buffers queued for a chunker, at most (of `IO_CHUNK` bytes each).
const CHUNKER_QUEUE: usize = 8;

/// The bytes of a file as they are sent, for the chunker.
struct Fed {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for Fed {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Fills `buf` from `offset`, leaving zeros past the end of the file.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use hotsync_core::FileMeta;

    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn renames_copy_and_small_files_batch() {
        let dir = tempfile::tempdir().unwrap();
        let meta = |n: u64| FileMeta { size: n, executable: false, hash: Hash::of(&n.to_le_bytes()) };
        let model = TreeIndex::from_entries([(p("old/name"), hotsync_core::Entry::File(meta(10)))]);
        let mut ops = vec![Op::Delete { path: p("old/name") }, Op::Delete { path: p("old") }];
        ops.push(Op::Write { path: p("new/name"), meta: meta(10) });
        for i in 0..1000 {
            ops.push(Op::Write { path: p(&format!("f{i}")), meta: meta(2000 + i) });
        }
        let planned = plan(dir.path(), &ops, &model, &ChunkMemory::default());
        assert_eq!(
            planned[0].record.pieces,
            [Piece::Copy { from: Some(p("old/name")), offset: 0, len: 10 }],
            "a moved file is not sent again"
        );
        assert!(planned[0].ranges.is_empty());
        let streams = batch(planned);
        assert!(streams.len() <= 4, "1,001 small files travel in a few streams, not {}", streams.len());
        assert_eq!(streams.iter().map(Vec::len).sum::<usize>(), 1001);
    }
}
