//! New directories, staged whole.
//!
//! A changeset that creates directories (a first sync, a new package) would otherwise stage
//! each of their files under a temporary name and rename it into place at the commit: one
//! rename per file, serial, after the last byte has arrived (20,000 files: 100–235 ms here).
//! Instead, a file whose directory the agent does not have yet is written at its own path in
//! a tree private to the changeset, while it streams in; the commit then moves each new
//! directory into the root with a single rename. Readers still see a new directory whole or
//! not at all, and nothing of it before the commit.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use hotsync_core::RelPath;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::sandbox::{Sandbox, chmod_at, dir_flags, file_mode};

/// One changeset's tree of new directories, inside the staging area.
#[derive(Debug)]
pub struct FreshTree {
    /// Its name in the staging area.
    name: String,
    top: Arc<OwnedFd>,
    /// Directories made in the tree, by path.
    dirs: Mutex<HashMap<String, Arc<OwnedFd>>>,
    /// Directories moved into the root by the commit: everything staged below them is in
    /// place.
    grafted: Mutex<HashSet<String>>,
}

/// What [`FreshTree::graft`] did with a directory the changeset creates.
#[derive(Debug, PartialEq, Eq)]
pub enum Graft {
    /// Moved into the root, with everything staged below it.
    Moved,
    /// Already in the root, inside a directory moved before.
    AlreadyIn,
    /// Not staged here, or something is already at its path: the caller makes it.
    NotHere,
}

impl FreshTree {
    /// A new, empty tree in the staging area.
    pub fn create(sandbox: &Sandbox) -> io::Result<Self> {
        let (name, top) = sandbox.create_staging_dir("tree")?;
        Ok(Self { name, top: Arc::new(top), dirs: Mutex::new(HashMap::new()), grafted: Mutex::new(HashSet::new()) })
    }

    /// Creates the file at `path` in the tree, with the directories on its way.
    pub fn create_file(&self, path: &RelPath) -> io::Result<File> {
        let dir = self.dir(path.parent().as_ref())?;
        let fd = rustix::fs::openat(
            &*dir,
            path.file_name(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(file_mode(false)),
        )?;
        Ok(File::from(fd))
    }

    /// The tree's directory `path` (its top for `None`), made if needed.
    fn dir(&self, path: Option<&RelPath>) -> io::Result<Arc<OwnedFd>> {
        let Some(path) = path else { return Ok(self.top.clone()) };
        if let Some(fd) = self.dirs.lock().expect("tree lock").get(path.as_str()) {
            return Ok(fd.clone());
        }
        let parent = self.dir(path.parent().as_ref())?;
        match rustix::fs::mkdirat(&*parent, path.file_name(), Mode::from_raw_mode(0o755)) {
            // Another stream of the changeset may have made it first.
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let fd = Arc::new(rustix::fs::openat(&*parent, path.file_name(), dir_flags(), Mode::empty())?);
        Ok(self.dirs.lock().expect("tree lock").entry(path.as_str().to_owned()).or_insert(fd).clone())
    }

    /// Every directory made in the tree, by the path it will have in the root.
    pub fn dirs(&self) -> Vec<(RelPath, Arc<OwnedFd>)> {
        let dirs = self.dirs.lock().expect("tree lock");
        dirs.iter().filter_map(|(path, fd)| Some((RelPath::new(path.clone()).ok()?, fd.clone()))).collect()
    }

    /// The tree's directory `path`, if the tree made it.
    fn made_dir(&self, path: Option<&RelPath>) -> Option<Arc<OwnedFd>> {
        match path {
            Some(p) => self.dirs.lock().expect("tree lock").get(p.as_str()).cloned(),
            None => Some(self.top.clone()),
        }
    }

    /// True when `path` lies in a directory already moved into the root.
    fn in_root(&self, path: &RelPath) -> bool {
        let grafted = self.grafted.lock().expect("tree lock");
        let mut dir = path.parent();
        while let Some(d) = dir {
            if grafted.contains(d.as_str()) {
                return true;
            }
            dir = d.parent();
        }
        false
    }

    /// Moves the directory `path`, staged here, into the root in one rename, unless something
    /// is there already (made since the changeset was planned).
    pub fn graft(&self, sandbox: &Sandbox, path: &RelPath) -> Graft {
        if self.in_root(path) {
            return if self.made_dir(Some(path)).is_some() { Graft::AlreadyIn } else { Graft::NotHere };
        }
        let (Some(_), Some(from)) = (self.made_dir(Some(path)), self.made_dir(path.parent().as_ref())) else {
            return Graft::NotHere;
        };
        let Ok(to) = sandbox.parent_dir(path) else { return Graft::NotHere };
        // Never over something (EEXIST), nor where the filesystem cannot promise that (EINVAL).
        let moved = rustix::fs::renameat_with(&*from, path.file_name(), &*to, path.file_name(), RenameFlags::NOREPLACE);
        if moved.is_err() {
            return Graft::NotHere;
        }
        self.grafted.lock().expect("tree lock").insert(path.as_str().to_owned());
        Graft::Moved
    }

    /// Puts the staged file of `path` in place: nothing to do if its directory was grafted,
    /// else one rename.
    pub fn commit_file(&self, sandbox: &Sandbox, path: &RelPath) -> io::Result<()> {
        if self.in_root(path) {
            return Ok(());
        }
        let from = self.staged_dir(path)?;
        let to = sandbox.parent_dir(path)?;
        rustix::fs::renameat(&*from, path.file_name(), &*to, path.file_name())?;
        Ok(())
    }

    /// Sets the mode of the staged file of `path`, wherever it is now (a directory descriptor
    /// follows its directory into the root).
    pub fn set_mode(&self, path: &RelPath, mode: u32) -> io::Result<()> {
        chmod_at(&*self.staged_dir(path)?, path.file_name(), mode)
    }

    /// Removes the staged file of `path`, wherever it is now.
    pub fn discard_file(&self, path: &RelPath) {
        if let Ok(dir) = self.staged_dir(path) {
            let _ = rustix::fs::unlinkat(&*dir, path.file_name(), AtFlags::empty());
        }
    }

    fn staged_dir(&self, path: &RelPath) -> io::Result<Arc<OwnedFd>> {
        self.made_dir(path.parent().as_ref()).ok_or_else(|| io::Error::other(format!("{path} was not staged")))
    }

    /// Removes what is left of the tree (what no graft took: normally nothing but directories).
    pub fn remove(&self, sandbox: &Sandbox) {
        sandbox.remove_staging_dir(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn staged(tree: &FreshTree, path: &str, content: &[u8]) {
        tree.create_file(&p(path)).unwrap().write_all(content).unwrap();
    }

    #[test]
    fn a_new_directory_lands_whole_in_one_rename() {
        let dir = tempfile::tempdir().unwrap();
        let sb = Sandbox::open(dir.path()).unwrap();
        let tree = FreshTree::create(&sb).unwrap();
        staged(&tree, "pkg/lib/a.js", b"a");
        staged(&tree, "pkg/b.js", b"b");
        assert!(!dir.path().join("pkg").exists(), "nothing is visible before the commit");

        assert_eq!(tree.graft(&sb, &p("pkg")), Graft::Moved);
        assert_eq!(tree.graft(&sb, &p("pkg/lib")), Graft::AlreadyIn);
        assert_eq!(tree.graft(&sb, &p("pkg/empty")), Graft::NotHere, "never staged: the caller makes it");
        tree.commit_file(&sb, &p("pkg/lib/a.js")).unwrap();
        tree.set_mode(&p("pkg/b.js"), 0o755).unwrap();
        tree.commit_file(&sb, &p("pkg/b.js")).unwrap();
        tree.remove(&sb);

        assert_eq!(fs::read(dir.path().join("pkg/lib/a.js")).unwrap(), b"a");
        assert_eq!(fs::read(dir.path().join("pkg/b.js")).unwrap(), b"b");
        assert_eq!(fs::metadata(dir.path().join("pkg/b.js")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(
            fs::read_dir(dir.path().join(".hotsync/tmp"))
                .unwrap()
                .filter(|e| { e.as_ref().unwrap().file_name().to_string_lossy().starts_with("tree") })
                .count(),
            0,
            "the tree is gone"
        );
    }

    #[test]
    fn a_directory_made_meanwhile_is_kept_and_files_move_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let sb = Sandbox::open(dir.path()).unwrap();
        let tree = FreshTree::create(&sb).unwrap();
        staged(&tree, "pkg/a.js", b"new");
        fs::create_dir(dir.path().join("pkg")).unwrap();
        fs::write(dir.path().join("pkg/mine"), b"the app's").unwrap();

        assert_eq!(tree.graft(&sb, &p("pkg")), Graft::NotHere, "never over what is there");
        tree.commit_file(&sb, &p("pkg/a.js")).unwrap();
        tree.remove(&sb);
        assert_eq!(fs::read(dir.path().join("pkg/a.js")).unwrap(), b"new");
        assert_eq!(fs::read(dir.path().join("pkg/mine")).unwrap(), b"the app's");
    }
}
