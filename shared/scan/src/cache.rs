//! A persistent hash cache: `(size, mtime, inode)` of a path → blake3 of its content.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hotsync_core::Hash;
use serde::{Deserialize, Serialize};

/// What must be unchanged for a cached hash to still hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatKey {
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
}

impl StatKey {
    /// The key of a file's metadata.
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ino: meta.ino(),
        }
    }
}

/// Bumped whenever the layout changes: an old file is then ignored, not misread.
const CACHE_FORMAT: u32 = 1;

#[derive(Default, Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    hashes: HashMap<String, (StatKey, Hash)>,
}

/// The cache. Cheap to query; saved explicitly with [`HashCache::save`].
#[derive(Default)]
pub struct HashCache {
    data: OnDisk,
    dirty: bool,
}

impl HashCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self { data: OnDisk { format: CACHE_FORMAT, ..OnDisk::default() }, dirty: false }
    }

    /// Loads `path`; a missing, unreadable, corrupt or old file gives an empty cache (the
    /// cache only saves work, it is never the truth).
    pub fn load(path: &Path) -> Self {
        let Ok(bytes) = fs::read(path) else { return Self::new() };
        match postcard::from_bytes::<OnDisk>(&bytes) {
            Ok(data) if data.format == CACHE_FORMAT => Self { data, dirty: false },
            _ => {
                tracing::debug!(path = %path.display(), "hash cache unreadable or outdated, starting afresh");
                Self::new()
            }
        }
    }

    /// Writes the cache atomically (temp file + rename) if it changed.
    pub fn save(&mut self, path: &Path) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let bytes = postcard::to_allocvec(&self.data).map_err(std::io::Error::other)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        drop(f);
        fs::rename(&tmp, path)?;
        self.dirty = false;
        Ok(())
    }

    /// The cached hash of `path`, if its stat key still matches.
    pub fn hash(&self, path: &str, key: &StatKey) -> Option<Hash> {
        self.data.hashes.get(path).filter(|(k, _)| k == key).map(|(_, h)| *h)
    }

    /// Records the hash of `path` at `key`.
    pub fn set_hash(&mut self, path: &str, key: StatKey, hash: Hash) {
        let old = self.data.hashes.insert(path.to_owned(), (key, hash));
        self.dirty |= old != Some((key, hash));
    }

    /// Drops entries for which `keep` is false (paths no longer in the tree).
    pub fn retain_paths(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.data.hashes.len();
        self.data.hashes.retain(|p, _| keep(p));
        self.dirty |= self.data.hashes.len() != before;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_round_trip_and_ignores_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        let key = StatKey { size: 3, mtime_ns: 42, ino: 7 };
        let mut c = HashCache::new();
        c.set_hash("a/b", key, Hash::of(b"abc"));
        c.save(&file).unwrap();
        let c = HashCache::load(&file);
        assert_eq!(c.hash("a/b", &key), Some(Hash::of(b"abc")));
        assert_eq!(c.hash("a/b", &StatKey { mtime_ns: 43, ..key }), None, "a new mtime invalidates");
        fs::write(&file, b"\xff\xff garbage").unwrap();
        assert_eq!(HashCache::load(&file).hash("a/b", &key), None);
    }
}
