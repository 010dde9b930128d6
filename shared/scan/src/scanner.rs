//! Walks a tree into an index: stat everything, hash only what the cache cannot vouch for,
//! on every core.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hotsync_core::index::Node;
use hotsync_core::{Entry, FileMeta, Hash, RelPath, TreeIndex};

use crate::cache::{HashCache, StatKey};
use crate::ignore_rules::IgnoreRules;

/// A path the scanner could not take in, and why. The host leaves such paths alone on the
/// agent (neither written nor deleted) and tells the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What a scan found.
#[derive(Default)]
pub struct ScanReport {
    pub skipped: Vec<Skipped>,
    pub files_hashed: usize,
    pub bytes_hashed: u64,
}

/// Called with each directory a scan is about to list: its path in the tree (`None`: the
/// root) and on disk.
pub type DirHook<'a> = dyn FnMut(Option<&RelPath>, &Path) + 'a;

/// A tree on disk, its ignore rules and its hash cache.
pub struct Scanner {
    root: PathBuf,
    pub rules: IgnoreRules,
    pub cache: HashCache,
}

struct PendingFile {
    path: RelPath,
    key: StatKey,
    executable: bool,
}

impl Scanner {
    /// A scanner of `root`.
    pub fn new(root: PathBuf, rules: IgnoreRules, cache: HashCache) -> Self {
        Self { root, rules, cache }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Scans the whole tree.
    pub fn scan_all(&mut self) -> io::Result<(TreeIndex, ScanReport)> {
        self.scan_all_with(&mut |_, _| {})
    }

    /// Scans the whole tree, calling `before_listing` with each directory (`None`: the root)
    /// just before it is listed: a watch set up there misses nothing the listing does not see.
    pub fn scan_all_with(&mut self, before_listing: &mut DirHook<'_>) -> io::Result<(TreeIndex, ScanReport)> {
        let meta = fs::metadata(&self.root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
        }
        self.rules.load_dir(None);
        let mut index = TreeIndex::new();
        let mut report = ScanReport::default();
        let entries = self.walk(None, &mut report, before_listing);
        {
            // Forget the cached hashes of files that are gone.
            let files: HashSet<&str> =
                entries.iter().filter(|(_, e)| matches!(e, Entry::File(_))).map(|(p, _)| p.as_str()).collect();
            self.cache.retain_paths(|p| files.contains(p));
        }
        for (path, entry) in entries {
            index.insert(&path, entry);
        }
        Ok((index, report))
    }

    /// Brings `index` up to date for `path` and everything below it, after a change there.
    pub fn rescan(&mut self, index: &mut TreeIndex, path: &RelPath, report: &mut ScanReport) {
        self.rescan_with(index, path, report, &mut |_, _| {});
    }

    /// Like [`Scanner::rescan`], calling `before_listing` as [`Scanner::scan_all_with`] does.
    pub fn rescan_with(
        &mut self,
        index: &mut TreeIndex,
        path: &RelPath,
        report: &mut ScanReport,
        before_listing: &mut DirHook<'_>,
    ) {
        let abs = self.root.join(path.as_str());
        let Ok(meta) = fs::symlink_metadata(&abs) else {
            index.remove(path);
            return;
        };
        if self.rules.is_excluded(path, meta.is_dir()) {
            index.remove(path);
            return;
        }
        // Parents' ignore files decide what is below; a new directory may bring its own.
        let entries = self.walk(Some((path, meta)), report, before_listing);
        index.remove(path);
        for (p, entry) in entries {
            index.insert(&p, entry);
        }
    }

    /// Walks from `start` (the root when `None`), returning its entries, each after its
    /// parent directory (siblings in no particular order).
    ///
    /// A file is stat'ed relative to its open directory (`statx(dirfd, name)`), not by its
    /// full path: resolving a path component by component was a third of a rescan's time.
    fn walk(
        &mut self,
        start: Option<(&RelPath, fs::Metadata)>,
        report: &mut ScanReport,
        before_listing: &mut DirHook<'_>,
    ) -> Vec<(RelPath, Entry)> {
        let mut found = Found::default();
        match start {
            None => found.dirs.push((None, self.root.clone())),
            // The path that changed (a file, a link or a directory), as the caller found it.
            Some((rel, meta)) => {
                let abs = self.root.join(rel.as_str());
                self.take(rel.clone(), abs, meta.file_type(), || Ok(meta), &mut found, report);
            }
        }
        while let Some((dir, abs_dir)) = found.dirs.pop() {
            before_listing(dir.as_ref(), &abs_dir);
            let mut unlisted = |e: &io::Error| {
                let path = dir.as_ref().map_or_else(String::new, ToString::to_string);
                report.skipped.push(Skipped { path, reason: io_reason(Some(e)) });
            };
            let listing: Vec<fs::DirEntry> = match fs::read_dir(&abs_dir) {
                Ok(items) => items.filter_map(|item| item.map_err(|e| unlisted(&e)).ok()).collect(),
                Err(e) => {
                    unlisted(&e);
                    continue;
                }
            };
            // This directory's own ignore files apply to what it holds.
            if let Some(d) = &dir {
                if self.rules.has_rules_in(d) || listing.iter().any(|e| is_nested_rules_file(&e.file_name())) {
                    self.rules.load_dir(Some(d));
                }
            }
            for item in listing {
                let name = item.file_name();
                let rel = match name.to_str().map(|n| RelPath::child_of(dir.as_ref(), n)) {
                    Some(Ok(rel)) => rel,
                    Some(Err(e)) => {
                        report
                            .skipped
                            .push(Skipped { path: display_rel(&self.root, &item.path()), reason: e.to_string() });
                        continue;
                    }
                    None => {
                        let reason = "name is not UTF-8".into();
                        report.skipped.push(Skipped { path: display_rel(&self.root, &item.path()), reason });
                        continue;
                    }
                };
                let file_type = match item.file_type() {
                    Ok(t) => t,
                    Err(e) => {
                        report.skipped.push(Skipped { path: rel.to_string(), reason: io_reason(Some(&e)) });
                        continue;
                    }
                };
                if self.rules.is_ignored(&rel, file_type.is_dir()) {
                    continue;
                }
                self.take(rel, item.path(), file_type, || item.metadata(), &mut found, report);
            }
        }
        for (file, result) in hash_all(&self.root, &found.pending) {
            match result {
                Ok((hash, size)) => {
                    report.files_hashed += 1;
                    report.bytes_hashed += size;
                    if size == file.key.size {
                        self.cache.set_hash(file.path.as_str(), file.key, hash);
                    }
                    let meta = FileMeta { size, executable: file.executable, hash };
                    found.entries.push((file.path.clone(), Entry::File(meta)));
                }
                Err(e) => report.skipped.push(Skipped { path: file.path.to_string(), reason: io_reason(Some(&e)) }),
            }
        }
        found.entries
    }

    /// Takes in one entry the walk met: a directory (walked next), a link, or a file (its hash
    /// from the cache, or hashed after the walk).
    fn take(
        &self,
        rel: RelPath,
        abs: PathBuf,
        file_type: fs::FileType,
        metadata: impl FnOnce() -> io::Result<fs::Metadata>,
        found: &mut Found,
        report: &mut ScanReport,
    ) {
        if file_type.is_dir() {
            found.entries.push((rel.clone(), Entry::Dir));
            found.dirs.push((Some(rel), abs));
        } else if file_type.is_symlink() {
            match fs::read_link(&abs).map(|t| t.into_os_string().into_string()) {
                Ok(Ok(target)) => found.entries.push((rel, Entry::Symlink { target })),
                Ok(Err(_)) => {
                    report.skipped.push(Skipped { path: rel.to_string(), reason: "link target is not UTF-8".into() });
                }
                Err(e) => report.skipped.push(Skipped { path: rel.to_string(), reason: io_reason(Some(&e)) }),
            }
        } else if file_type.is_file() {
            match metadata() {
                Ok(meta) => {
                    let key = StatKey::of(&meta);
                    let executable = meta.permissions().mode() & 0o111 != 0;
                    if let Some(hash) = self.cache.hash(rel.as_str(), &key) {
                        found.entries.push((rel, Entry::File(FileMeta { size: key.size, executable, hash })));
                    } else {
                        found.pending.push(PendingFile { path: rel, key, executable });
                    }
                }
                Err(e) => report.skipped.push(Skipped { path: rel.to_string(), reason: e.to_string() }),
            }
        }
        // Sockets, FIFOs and devices are not synced.
    }
}

/// What a walk has found so far.
#[derive(Default)]
struct Found {
    entries: Vec<(RelPath, Entry)>,
    /// Files the cache cannot vouch for, hashed after the walk (on every core).
    pending: Vec<PendingFile>,
    /// Directories still to list.
    dirs: Vec<(Option<RelPath>, PathBuf)>,
}

fn is_nested_rules_file(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| crate::ignore_rules::NESTED_IGNORE_FILES.contains(&n))
}

/// Hashes files on every core: reading and hashing 20,000 small files is syscall-bound.
fn hash_all<'a>(root: &Path, files: &'a [PendingFile]) -> Vec<(&'a PendingFile, io::Result<(Hash, u64)>)> {
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).min(8);
    let hash_part = |part: &'a [PendingFile]| {
        let mut buf = Vec::new();
        part.iter().map(|f| (f, hash_file_sized(&root.join(f.path.as_str()), f.key.size, &mut buf))).collect::<Vec<_>>()
    };
    if files.len() < 64 || workers == 1 {
        return hash_part(files);
    }
    let per = files.len().div_ceil(workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = files.chunks(per).map(|part| s.spawn(move || hash_part(part))).collect();
        // A hashing thread only panics if the allocator does; propagate it.
        handles.into_iter().flat_map(|h| h.join().expect("hash worker panicked")).collect()
    })
}

/// The blake3 and length of a file's content, read as it is now.
pub fn hash_file(path: &Path) -> io::Result<(Hash, u64)> {
    let size = fs::metadata(path)?.len();
    hash_file_sized(path, size, &mut Vec::new())
}

/// Read size for hashing: large enough for blake3 to hash many 1 KiB chunks at once (SIMD)
/// and for a 200 MiB file to take few syscalls, small enough to keep per thread.
const HASH_BUFFER: usize = 256 * 1024;

/// Like [`hash_file`] for a file whose size a stat just gave, reading into `buf`. A read that
/// ends exactly at `size` short of the buffer is the end of the file (a regular file only
/// reads short at its end), so a small file costs one `read`, not a second one to see EOF;
/// a file that grew since its stat is read on to its real end.
pub fn hash_file_sized(path: &Path, size: u64, buf: &mut Vec<u8>) -> io::Result<(Hash, u64)> {
    let mut f = fs::File::open(path)?;
    let want = (size as usize).saturating_add(1).min(HASH_BUFFER);
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf[..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        if total == size && n < buf.len() {
            break;
        }
    }
    Ok((hasher.finalize().into(), total))
}

fn display_rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

fn io_reason(e: Option<&io::Error>) -> String {
    match e {
        Some(e) if e.kind() == io::ErrorKind::PermissionDenied => "permission denied".into(),
        Some(e) => e.to_string(),
        None => "filesystem loop".into(),
    }
}

/// The node at `path` in `index`, if it is a regular file.
pub fn file_meta(index: &TreeIndex, path: &RelPath) -> Option<FileMeta> {
    match index.get(path) {
        Some(Node::File(m)) => Some(*m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn scans_kinds_skips_ignored_and_reuses_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/deep")).unwrap();
        fs::create_dir_all(root.join("node_modules/x")).unwrap();
        fs::create_dir_all(root.join(".git")).unwrap();
        fs::write(root.join(".gitignore"), "node_modules/\n").unwrap();
        fs::write(root.join("src/deep/a.txt"), "hello").unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("node_modules/x/i.js"), "x").unwrap();
        fs::write(root.join(".git/HEAD"), "ref").unwrap();
        symlink("../run.sh", root.join("src/link")).unwrap();

        let mut s = Scanner::new(root.to_owned(), IgnoreRules::new(root, &[]), HashCache::new());
        let (index, report) = s.scan_all().unwrap();
        let paths: Vec<_> = index.entries().into_iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(paths, [".gitignore", "run.sh", "src", "src/deep", "src/deep/a.txt", "src/link"]);
        assert_eq!(report.files_hashed, 3);
        assert!(matches!(index.get(&p("run.sh")), Some(Node::File(m)) if m.executable));
        assert!(matches!(index.get(&p("src/link")), Some(Node::Symlink(t)) if t == "../run.sh"));

        let (again, report) = s.scan_all().unwrap();
        assert_eq!(report.files_hashed, 0, "unchanged files come from the cache");
        assert_eq!(again.root_hash(), index.root_hash());
    }

    #[test]
    fn rescan_follows_creates_deletes_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), "1").unwrap();
        let mut s = Scanner::new(root.to_owned(), IgnoreRules::new(root, &[]), HashCache::new());
        let (mut index, _) = s.scan_all().unwrap();
        let mut report = ScanReport::default();

        fs::rename(root.join("a"), root.join("z")).unwrap();
        s.rescan(&mut index, &p("a"), &mut report);
        s.rescan(&mut index, &p("z"), &mut report);
        assert_eq!(index.root_hash(), s.scan_all().unwrap().0.root_hash());
        assert!(index.get(&p("z/b/f")).is_some() && index.get(&p("a")).is_none());
    }
}
