//! What changed in the root since the agent's index was last brought up to date.
//!
//! A host's session begins with the root hash of the agent's tree as it is now, and the app
//! may have written there since (or a container restart reset it). Walking the whole tree for
//! every session costs 21,000 `statx` for a `node_modules`-sized tree, the longest part of a
//! reconnect. Instead every directory of the tree is watched (inotify, so nothing polls), the
//! names events touch are noted, and a new session rescans only those. When the kernel drops events
//! (its queue overflowed) or a watch cannot be added (the system's limit), the next session
//! walks everything, as before.
//!
//! What makes this exact: a directory is watched before it is listed (the scanner calls back
//! before each listing), so a change in it is either seen by the listing or reported after;
//! and a watched directory is trusted only while the inode at its path is the one watched.
//! inotify reports what is written through this machine's kernel: all an emptyDir or a local
//! volume ever gets (a network filesystem written from other machines would not be seen).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hotsync_core::index::Node;
use hotsync_core::{RelPath, TreeIndex};
use hotsync_scan::{ScanReport, Scanner};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use tracing::{debug, warn};

/// Everything that can change a directory's entries or a file's content, mode or kind.
fn watch_flags() -> WatchFlags {
    WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MODIFY
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::EXCL_UNLINK
}

/// Past this many noted names a full walk is cheaper than one rescan each.
const MAX_NOTED: usize = 50_000;

/// A watched directory: its inotify watch and the inode it was added on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Watched {
    wd: i32,
    ino: u64,
}

/// The watches on the root's directories and the names changed since the last refresh.
pub struct RootWatch {
    inotify: OwnedFd,
    root: PathBuf,
    /// Directory path (`None`: the root) → its watch.
    by_path: BTreeMap<Option<RelPath>, Watched>,
    by_wd: HashMap<i32, Option<RelPath>>,
    /// Paths that events touched, not yet looked at.
    noted: BTreeSet<RelPath>,
    /// Events were lost, or never came: only a full walk brings the index up to date.
    lost_track: bool,
    /// A watch could not be added (the system's limit): every refresh walks everything.
    gave_up: bool,
}

/// What a refresh did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// The whole tree was walked.
    pub walked: bool,
    /// Paths looked at again because events touched them.
    pub looked_at: usize,
}

impl RootWatch {
    /// A watch of `root` that has seen nothing yet: the first refresh walks the tree.
    pub fn new(root: &Path) -> io::Result<Self> {
        let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        Ok(Self {
            inotify,
            root: root.to_owned(),
            by_path: BTreeMap::new(),
            by_wd: HashMap::new(),
            noted: BTreeSet::new(),
            lost_track: true,
            gave_up: false,
        })
    }

    /// The inotify descriptor, readable when events wait (see [`RootWatch::take_events`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads the events waiting, noting the paths they touch. Cheap: no filesystem access.
    pub fn take_events(&mut self) {
        let mut buf = [std::mem::MaybeUninit::uninit(); 16 * 1024];
        let mut reader = inotify::Reader::new(&self.inotify, &mut buf);
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(Errno::AGAIN | Errno::INTR) => break,
                Err(e) => {
                    warn!("cannot read directory events: {e}; the next session walks the tree");
                    self.lost_track = true;
                    break;
                }
            };
            let flags = event.events();
            if self.lost_track {
                // A walk is due anyway (and forgets every watch): the queue is only emptied.
                continue;
            }
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                debug!("directory events overflowed: the next session walks the tree");
                self.lost_track = true;
                continue;
            }
            if flags.contains(ReadFlags::IGNORED) {
                // The watch is gone (its directory was deleted, or we removed it).
                if let Some(path) = self.by_wd.remove(&event.wd()) {
                    if self.by_path.get(&path).is_some_and(|w| w.wd == event.wd()) {
                        self.by_path.remove(&path);
                    }
                }
                continue;
            }
            let Some(dir) = self.by_wd.get(&event.wd()) else { continue };
            match event.file_name() {
                Some(name) => {
                    // Names the index cannot hold (the agent's own state directory, names
                    // that are not UTF-8) are not synced either.
                    let child = name.to_str().ok().and_then(|n| RelPath::child_of(dir.as_ref(), n).ok());
                    if let Some(child) = child {
                        self.noted.insert(child);
                    }
                    if self.noted.len() > MAX_NOTED {
                        self.lost_track = true;
                        self.noted.clear();
                    }
                }
                None if dir.is_none() && flags.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF) => {
                    self.lost_track = true;
                }
                // A watched directory's own changes are also reported to its parent's watch.
                None => {}
            }
        }
    }

    /// Brings `index` up to date with the root: looks again at what events touched, or walks
    /// the whole tree when events cannot tell.
    pub fn refresh(&mut self, scanner: &mut Scanner, index: &mut TreeIndex) -> io::Result<Refreshed> {
        self.take_events();
        if self.lost_track || self.gave_up {
            self.walk_all(scanner, index)?;
            return Ok(Refreshed { walked: true, looked_at: 0 });
        }
        let noted = std::mem::take(&mut self.noted);
        let mut report = ScanReport::default();
        for path in &noted {
            self.look_at(scanner, index, path, &mut report);
        }
        Ok(Refreshed { walked: false, looked_at: noted.len() })
    }

    /// Walks the whole tree, watching every directory anew.
    fn walk_all(&mut self, scanner: &mut Scanner, index: &mut TreeIndex) -> io::Result<()> {
        self.take_events();
        for watched in std::mem::take(&mut self.by_path).into_values() {
            let _ = inotify::remove_watch(&self.inotify, watched.wd);
        }
        self.by_wd.clear();
        self.noted.clear();
        self.lost_track = false;
        let (fresh, _) = scanner.scan_all_with(&mut |dir, abs| self.watch(dir, abs))?;
        *index = fresh;
        Ok(())
    }

    /// Brings the index up to date for one path an event touched.
    fn look_at(&mut self, scanner: &mut Scanner, index: &mut TreeIndex, path: &RelPath, report: &mut ScanReport) {
        let current = std::fs::symlink_metadata(self.root.join(path.as_str())).ok();
        let key = Some(path.clone());
        let watched = self.by_path.get(&key).copied();
        if let (Some(meta), Some(w)) = (&current, watched) {
            if meta.is_dir() && meta.ino() == w.ino && matches!(index.get(path), Some(Node::Dir(_))) {
                // The directory watched all along: its entries report their own changes.
                return;
            }
        }
        // Gone, replaced, or new: its old watches say nothing about what is there now.
        if watched.is_some() {
            self.unwatch_below(path);
        }
        scanner.rescan_with(index, path, report, &mut |dir, abs| self.watch(dir, abs));
    }

    /// Watches a directory about to be listed.
    fn watch(&mut self, dir: Option<&RelPath>, abs: &Path) {
        if self.gave_up {
            return;
        }
        // Opened first, so that the watch and the inode noted are surely the same directory.
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
        let Ok(fd) = rustix::fs::open(abs, flags, Mode::empty()) else {
            // Gone or replaced since it was listed: its parent's watch reports that.
            return;
        };
        let added = match self.add_watch_on(&fd) {
            // No /proc: by path, which leaves a moment for the directory to be swapped.
            Err(Errno::NOENT) => inotify::add_watch(&self.inotify, abs, watch_flags() | WatchFlags::DONT_FOLLOW)
                .and_then(|wd| rustix::fs::fstat(&fd).map(|st| Watched { wd, ino: st.st_ino })),
            other => other,
        };
        self.record(dir, added);
    }

    /// Watches directories the commit is about to move into the root (a changeset's new
    /// directories, staged elsewhere), through their descriptors: a watch follows its directory.
    pub fn adopt<'a>(&mut self, dirs: impl IntoIterator<Item = (RelPath, &'a OwnedFd)>) {
        for (path, fd) in dirs {
            if self.gave_up {
                return;
            }
            let key = Some(path);
            if self.by_path.contains_key(&key) {
                continue;
            }
            match self.add_watch_on(fd) {
                // Without /proc the directory is rescanned when its move is seen: slower, exact.
                Err(Errno::NOENT) => return,
                added => self.record(key.as_ref(), added),
            }
        }
    }

    /// Watches the directory open at `fd` (through `/proc/self/fd`), with its inode.
    fn add_watch_on(&self, fd: &OwnedFd) -> rustix::io::Result<Watched> {
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let wd = inotify::add_watch(&self.inotify, proc_path.as_str(), watch_flags())?;
        Ok(Watched { wd, ino: rustix::fs::fstat(fd)?.st_ino })
    }

    fn record(&mut self, dir: Option<&RelPath>, added: rustix::io::Result<Watched>) {
        match added {
            Ok(watched) => {
                if let Some(old) = self.by_wd.insert(watched.wd, dir.cloned()) {
                    // The same directory under another name (it was moved): the new one holds.
                    if self.by_path.get(&old).is_some_and(|w| w.wd == watched.wd) {
                        self.by_path.remove(&old);
                    }
                }
                self.by_path.insert(dir.cloned(), watched);
            }
            Err(Errno::NOSPC | Errno::NOMEM) => {
                warn!(
                    "cannot watch more directories (fs.inotify.max_user_watches): each new session now rescans the whole root"
                );
                self.gave_up = true;
            }
            // Gone or replaced since it was listed: its parent's watch reports that.
            Err(_) => {}
        }
    }

    /// Stops watching `path` and everything below it.
    fn unwatch_below(&mut self, path: &RelPath) {
        let below: Vec<Option<RelPath>> = self
            .by_path
            .range(Some(path.clone())..)
            .map(|(p, _)| p)
            .take_while(|p| p.as_ref().is_some_and(|p| p.starts_with(path)))
            .cloned()
            .collect();
        for p in below {
            if let Some(w) = self.by_path.remove(&p) {
                self.by_wd.remove(&w.wd);
                let _ = inotify::remove_watch(&self.inotify, w.wd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use hotsync_scan::{HashCache, IgnoreRules};

    use super::*;

    /// A root with a watch, its scanner and its index, brought up to date once (a walk).
    struct Fixture {
        dir: tempfile::TempDir,
        watch: RootWatch,
        scanner: Scanner,
        index: TreeIndex,
    }

    impl Fixture {
        fn new(files: &[(&str, &str)]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join(".hotsync")).unwrap();
            for (path, content) in files {
                write(dir.path(), path, content);
            }
            let root = dir.path().to_owned();
            let mut f = Self {
                watch: RootWatch::new(&root).unwrap(),
                scanner: Scanner::new(root.clone(), IgnoreRules::none(&root), HashCache::new()),
                index: TreeIndex::new(),
                dir,
            };
            assert!(f.refresh().walked, "the first refresh walks the tree");
            f
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn refresh(&mut self) -> Refreshed {
            self.watch.refresh(&mut self.scanner, &mut self.index).unwrap()
        }

        /// Refreshes from events, then checks the index against a walk of the tree.
        fn refresh_matches_a_walk(&mut self) -> Refreshed {
            let done = self.refresh();
            assert!(!done.walked, "events told what changed: no walk");
            let root = self.dir.path().to_owned();
            let walked = Scanner::new(root.clone(), IgnoreRules::none(&root), HashCache::new()).scan_all().unwrap().0;
            assert_eq!(self.index.entries(), walked.entries());
            assert_eq!(self.index.root_hash(), walked.root_hash());
            done
        }
    }

    fn write(root: &Path, path: &str, content: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn an_unchanged_tree_is_not_walked_again() {
        let mut f = Fixture::new(&[("a.js", "a"), ("lib/b.js", "b"), ("lib/deep/c.js", "c")]);
        let before = f.index.root_hash();
        assert_eq!(f.refresh_matches_a_walk(), Refreshed { walked: false, looked_at: 0 });
        assert_eq!(f.index.root_hash(), before);
    }

    #[test]
    fn what_the_app_changes_is_found_without_a_walk() {
        let mut f = Fixture::new(&[("a.js", "a"), ("gone.js", "x"), ("lib/b.js", "b"), ("lib/deep/c.js", "c")]);
        let root = f.dir.path().to_owned();
        write(&root, "a.js", "edited");
        write(&root, "new.js", "new");
        fs::remove_file(f.path("gone.js")).unwrap();
        write(&root, "lib/deep/d.js", "d");
        fs::set_permissions(f.path("lib/b.js"), fs::Permissions::from_mode(0o755)).unwrap();
        let done = f.refresh_matches_a_walk();
        assert!(done.looked_at >= 5, "each touched path is looked at: {done:?}");

        // A new directory with files made before any watch could see them.
        write(&root, "pkg/sub/e.js", "e");
        write(&root, "pkg/f.js", "f");
        f.refresh_matches_a_walk();
        // ...which is watched from then on.
        write(&root, "pkg/sub/g.js", "g");
        f.refresh_matches_a_walk();
    }

    #[test]
    fn moved_and_replaced_directories_are_followed() {
        let mut f = Fixture::new(&[("lib/deep/c.js", "c"), ("lib/b.js", "b"), ("other/x.js", "x")]);
        let root = f.dir.path().to_owned();
        fs::rename(f.path("lib"), f.path("moved")).unwrap();
        f.refresh_matches_a_walk();
        // The moved directory is watched under its new name, and the old name means nothing.
        write(&root, "moved/deep/new.js", "n");
        fs::create_dir(f.path("lib")).unwrap();
        write(&root, "lib/again.js", "again");
        f.refresh_matches_a_walk();
        // Set aside and made anew under the same name: the watch on the name is not trusted.
        fs::rename(f.path("moved/deep"), f.path("moved/deep.old")).unwrap();
        write(&root, "moved/deep/fresh.js", "f");
        f.refresh_matches_a_walk();

        // A directory replaced by a file, and a file by a directory.
        fs::remove_dir_all(f.path("other")).unwrap();
        write(&root, "other", "now a file");
        fs::remove_file(f.path("lib/again.js")).unwrap();
        write(&root, "lib/again.js/inside.js", "i");
        f.refresh_matches_a_walk();

        // Moved out of the root: forgotten, and what happens there is not reported.
        let outside = tempfile::tempdir().unwrap();
        fs::rename(f.path("moved"), outside.path().join("moved")).unwrap();
        f.refresh_matches_a_walk();
        fs::write(outside.path().join("moved/late.js"), "late").unwrap();
        assert_eq!(f.refresh_matches_a_walk().looked_at, 0);
    }

    #[test]
    fn lost_events_mean_a_walk() {
        let mut f = Fixture::new(&[("a.js", "a")]);
        f.watch.lost_track = true;
        write(f.dir.path(), "b.js", "b");
        assert!(f.refresh().walked);
        assert!(f.index.get(&RelPath::new("b.js").unwrap()).is_some());
        assert!(!f.refresh().walked, "back to following events after the walk");
    }

    #[test]
    fn an_adopted_directory_is_watched_after_it_moves_in() {
        let mut f = Fixture::new(&[("a.js", "a")]);
        let root = f.dir.path().to_owned();
        // Staged outside the root (as a changeset's new directories are), then moved in.
        let staged = root.join(".hotsync/tree");
        write(&staged, "pkg/sub/x.js", "x");
        let open = |p: &Path| rustix::fs::open(p, crate::sandbox::dir_flags(), rustix::fs::Mode::empty()).unwrap();
        let (pkg, sub) = (open(&staged.join("pkg")), open(&staged.join("pkg/sub")));
        f.watch.adopt([(RelPath::new("pkg").unwrap(), &pkg), (RelPath::new("pkg/sub").unwrap(), &sub)]);
        fs::rename(staged.join("pkg"), root.join("pkg")).unwrap();
        // The commit puts what it moved in into the index itself.
        f.scanner.rescan(&mut f.index, &RelPath::new("pkg").unwrap(), &mut ScanReport::default());
        f.refresh_matches_a_walk();

        write(&root, "pkg/sub/y.js", "y");
        let done = f.refresh_matches_a_walk();
        assert_eq!(done.looked_at, 1, "only the new file is looked at: {done:?}");
    }
}
