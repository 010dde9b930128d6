//! Every write the agent makes, confined to its root.
//!
//! The root is opened once; every path is reached from that descriptor one component at a time
//! with `O_NOFOLLOW | O_DIRECTORY`, and the final step is an `*at` call on a single name. So no
//! write can leave the root by `..`, an absolute path or a symlink, whatever a peer sends (and
//! [`RelPath`] already refuses the first two when it is decoded). Symlinks are created as links
//! and never followed.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hotsync_core::RelPath;
use hotsync_core::path::AGENT_STATE_DIR;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Staging area for content that is not committed yet, inside the agent's state directory.
const TMP_DIR: &str = "tmp";
/// The staging area is split into this many directories. Creating a file locks its directory:
/// with one directory the agent's writers queue behind each other (and spin: on ext4 that was
/// a quarter of the agent's time for 20,000 small files); with several they rarely meet.
const TMP_SHARDS: usize = 16;

/// A staging file's place: which staging directory, and its name there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TempName {
    shard: usize,
    name: String,
}

/// The agent's root directory and its staging area.
pub struct Sandbox {
    root: Arc<OwnedFd>,
    state: OwnedFd,
    /// The staging area itself: its numbered directories, and trees of new directories.
    tmp_area: OwnedFd,
    /// The staging directories, opened once.
    tmp: Vec<OwnedFd>,
    next_temp: AtomicU64,
    /// Directories opened during the current commit, by path.
    open_dirs: Mutex<Option<HashMap<String, Arc<OwnedFd>>>>,
    /// This process's id, the prefix of staging names (a syscall saved per file).
    pid: u32,
    /// True when the umask lets a staging file be created with exactly the mode of a synced
    /// file, so no `fchmod` per file is needed.
    temp_mode_exact: bool,
}

/// What a delete did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Removed,
    Absent,
    /// A directory that still holds entries (e.g. ones the host ignores): left in place.
    KeptNonEmpty,
}

pub(crate) fn dir_flags() -> OFlags {
    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY
}

impl Sandbox {
    /// Opens `root` (which must exist and be a writable directory) and prepares the staging
    /// area, clearing what an interrupted run left there.
    pub fn open(root: &Path) -> io::Result<Self> {
        let root_fd = rustix::fs::open(root, dir_flags(), Mode::empty())?;
        let state = ensure_dir(&root_fd, AGENT_STATE_DIR)?;
        let tmp_dir = ensure_dir(&state, TMP_DIR)?;
        clear_dir(&tmp_dir)?;
        let tmp = (0..TMP_SHARDS).map(|i| ensure_dir(&tmp_dir, &i.to_string())).collect::<io::Result<Vec<_>>>()?;
        for shard in &tmp {
            clear_dir(shard)?;
        }
        let sandbox = Self {
            root: Arc::new(root_fd),
            state,
            tmp_area: tmp_dir,
            tmp,
            next_temp: AtomicU64::new(0),
            open_dirs: Mutex::new(None),
            pid: std::process::id(),
            temp_mode_exact: umask().is_some_and(|m| m & file_mode(false) == 0),
        };
        // Prove the root is writable now, not at the first changeset.
        let (name, _) = sandbox.create_temp()?;
        sandbox.discard_temp(&name);
        Ok(sandbox)
    }

    /// The agent's private state directory (for its cache file).
    pub fn state_dir(&self) -> &OwnedFd {
        &self.state
    }

    /// Opens the directory that holds `path`, never through a symlink. Inside a commit
    /// ([`Sandbox::begin_commit`]) directories already opened are reused.
    pub fn parent_dir(&self, path: &RelPath) -> io::Result<Arc<OwnedFd>> {
        let Some(dir) = path.parent() else { return Ok(self.root.clone()) };
        if let Some(fd) = self.open_dirs.lock().expect("dir cache lock").as_ref().and_then(|c| c.get(dir.as_str())) {
            return Ok(fd.clone());
        }
        let parent = self.parent_dir(&dir)?;
        let name = dir.file_name();
        let fd = Arc::new(rustix::fs::openat(&*parent, name, dir_flags(), Mode::empty()).map_err(|e| {
            if e == Errno::LOOP || e == Errno::NOTDIR {
                io::Error::other(format!("{name:?} on the way to {path} is not a directory (a symlink or a file)"))
            } else {
                e.into()
            }
        })?);
        if let Some(cache) = self.open_dirs.lock().expect("dir cache lock").as_mut() {
            cache.insert(dir.as_str().to_owned(), fd.clone());
        }
        Ok(fd)
    }

    /// Starts reusing opened directories: a commit writes many files into few directories.
    /// Only the agent changes directories during a commit, and a delete forgets what it removes.
    pub fn begin_commit(&self) {
        *self.open_dirs.lock().expect("dir cache lock") = Some(HashMap::new());
    }

    /// Stops reusing opened directories (between commits the app may move them).
    pub fn end_commit(&self) {
        *self.open_dirs.lock().expect("dir cache lock") = None;
    }

    fn forget_dirs_under(&self, path: &RelPath) {
        if let Some(cache) = self.open_dirs.lock().expect("dir cache lock").as_mut() {
            cache.retain(|dir, _| !RelPath::new(dir.clone()).is_ok_and(|d| d.starts_with(path)));
        }
    }

    /// A fresh staging name; consecutive names take turns among the staging directories.
    fn next_temp_name(&self, kind: &str) -> TempName {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        TempName { shard: (n % TMP_SHARDS as u64) as usize, name: format!("{}.{kind}{n}", self.pid) }
    }

    fn tmp_dir(&self, temp: &TempName) -> &OwnedFd {
        &self.tmp[temp.shard]
    }

    /// A new, empty staging file, and its name in the staging area.
    pub fn create_temp(&self) -> io::Result<(TempName, File)> {
        let temp = self.next_temp_name("");
        // The staging area is the agent's own (0700): its files may have their final mode.
        let fd = rustix::fs::openat(
            self.tmp_dir(&temp),
            temp.name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(file_mode(false)),
        )?;
        Ok((temp, File::from(fd)))
    }

    /// True when a new staging file already has the plain mode of a synced file (0644): the
    /// umask took nothing away.
    pub fn temp_mode_exact(&self) -> bool {
        self.temp_mode_exact
    }

    /// A new, empty directory in the staging area, named after `kind`.
    pub fn create_staging_dir(&self, kind: &str) -> io::Result<(String, OwnedFd)> {
        let name = format!("{kind}.{}.{}", self.pid, self.next_temp.fetch_add(1, Ordering::Relaxed));
        rustix::fs::mkdirat(&self.tmp_area, name.as_str(), Mode::from_raw_mode(0o755))?;
        let fd = rustix::fs::openat(&self.tmp_area, name.as_str(), dir_flags(), Mode::empty())?;
        Ok((name, fd))
    }

    /// Removes a directory made by [`Sandbox::create_staging_dir`], with all it holds.
    pub fn remove_staging_dir(&self, name: &str) {
        let _ = remove_all(&self.tmp_area, name);
    }

    /// Removes a staging file that will not be committed.
    pub fn discard_temp(&self, temp: &TempName) {
        let _ = rustix::fs::unlinkat(self.tmp_dir(temp), temp.name.as_str(), AtFlags::empty());
    }

    /// Sets the mode of a staging file before it is committed.
    pub fn set_temp_mode(&self, temp: &TempName, mode: u32) -> io::Result<()> {
        chmod_at(self.tmp_dir(temp), temp.name.as_str(), mode)
    }

    /// Moves a staging file to `path` in one atomic rename: readers see the old file or the
    /// new one, never a part.
    pub fn commit_temp(&self, temp: &TempName, path: &RelPath) -> io::Result<()> {
        let parent = self.parent_dir(path)?;
        rustix::fs::renameat(self.tmp_dir(temp), temp.name.as_str(), &*parent, path.file_name())?;
        Ok(())
    }

    /// Links the file at `path` into the staging area too, so that replacing or deleting it
    /// only removes a name; [`Sandbox::discard_temp`] frees it later. `None` if it cannot be
    /// linked (gone, or hard links not allowed): it is then freed as it goes.
    pub fn set_aside(&self, path: &RelPath) -> Option<TempName> {
        let parent = self.parent_dir(path).ok()?;
        let temp = self.next_temp_name("old");
        rustix::fs::linkat(&*parent, path.file_name(), self.tmp_dir(&temp), temp.name.as_str(), AtFlags::empty())
            .ok()?;
        Some(temp)
    }

    /// Opens the file at `path` for reading, refusing a symlink.
    pub fn open_read(&self, path: &RelPath) -> io::Result<File> {
        Ok(File::from(open_read_at(&*self.parent_dir(path)?, path.file_name())?))
    }

    /// Creates a directory; an existing directory is fine, anything else in the way is replaced.
    pub fn mkdir(&self, path: &RelPath) -> io::Result<()> {
        let parent = self.parent_dir(path)?;
        match rustix::fs::mkdirat(&*parent, path.file_name(), Mode::from_raw_mode(0o755)) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(&*parent, path.file_name(), AtFlags::SYMLINK_NOFOLLOW)?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
                    return Ok(());
                }
                rustix::fs::unlinkat(&*parent, path.file_name(), AtFlags::empty())?;
                Ok(rustix::fs::mkdirat(&*parent, path.file_name(), Mode::from_raw_mode(0o755))?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates or replaces a symbolic link, atomically (a staged link renamed into place).
    pub fn symlink(&self, path: &RelPath, target: &str) -> io::Result<()> {
        let parent = self.parent_dir(path)?;
        let temp = self.next_temp_name("link");
        rustix::fs::symlinkat(target, self.tmp_dir(&temp), temp.name.as_str())?;
        rustix::fs::renameat(self.tmp_dir(&temp), temp.name.as_str(), &*parent, path.file_name()).inspect_err(
            |_| {
                self.discard_temp(&temp);
            },
        )?;
        Ok(())
    }

    /// Removes a file, a symlink, or an empty directory.
    pub fn delete(&self, path: &RelPath) -> io::Result<Deleted> {
        let parent = match self.parent_dir(path) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Deleted::Absent),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&*parent, path.file_name(), AtFlags::empty()) {
            Ok(()) => Ok(Deleted::Removed),
            Err(Errno::NOENT) => Ok(Deleted::Absent),
            Err(Errno::ISDIR | Errno::PERM) => {
                match rustix::fs::unlinkat(&*parent, path.file_name(), AtFlags::REMOVEDIR) {
                    Ok(()) => {
                        self.forget_dirs_under(path);
                        Ok(Deleted::Removed)
                    }
                    Err(Errno::NOTEMPTY | Errno::EXIST) => Ok(Deleted::KeptNonEmpty),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the mode of the regular file at `path` (never through a symlink).
    pub fn set_mode(&self, path: &RelPath, mode: u32) -> io::Result<()> {
        chmod_at(&*self.parent_dir(path)?, path.file_name(), mode)
    }
}

/// Opens the file `name` in `dir` for reading, refusing a symlink.
fn open_read_at(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?)
}

/// Sets the mode of the file `name` in `dir`, never through a symlink.
pub(crate) fn chmod_at(dir: &OwnedFd, name: &str, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(open_read_at(dir, name)?, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// Removes what an interrupted run left in a staging directory: its files, and the trees of
/// new directories (numbered staging directories are kept).
fn clear_dir(dir: &OwnedFd) -> io::Result<()> {
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if entry.file_type() != rustix::fs::FileType::Directory {
            let _ = rustix::fs::unlinkat(dir, entry.file_name(), AtFlags::empty());
        } else if name.starts_with(b"tree.") {
            let _ = remove_all(dir, entry.file_name());
        }
    }
    Ok(())
}

/// Removes `name` in `parent` and, for a directory, everything below it (never following a
/// symlink).
fn remove_all<P: rustix::path::Arg + Copy>(parent: &OwnedFd, name: P) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = rustix::fs::openat(parent, name, dir_flags(), Mode::empty())?;
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let child = entry.file_name();
        if child.to_bytes() != b"." && child.to_bytes() != b".." {
            remove_all(&dir, child)?;
        }
    }
    Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}

fn ensure_dir(parent: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(rustix::fs::openat(parent, name, dir_flags(), Mode::empty())?)
}

/// The mode a synced file gets: hotsync carries only the executable bit.
pub fn file_mode(executable: bool) -> u32 {
    if executable { 0o755 } else { 0o644 }
}

/// This process's umask, read from /proc (setting it to read it would race with other threads
/// creating files).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn writes_land_inside_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("evil")).unwrap();
        let sb = Sandbox::open(&root).unwrap();

        let (name, mut f) = sb.create_temp().unwrap();
        f.write_all(b"x").unwrap();
        assert!(sb.commit_temp(&name, &p("evil/pwned")).is_err(), "must not write through a symlink");
        assert!(sb.mkdir(&p("evil/d")).is_err());
        assert!(sb.open_read(&p("evil")).is_err(), "a symlink is not opened as a file");
        assert!(sb.set_mode(&p("evil"), 0o777).is_err());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing escaped");

        sb.mkdir(&p("d")).unwrap();
        sb.commit_temp(&name, &p("d/f")).unwrap();
        assert_eq!(fs::read(root.join("d/f")).unwrap(), b"x");
        sb.symlink(&p("d/l"), "../../outside").unwrap();
        assert_eq!(fs::read_link(root.join("d/l")).unwrap().to_str(), Some("../../outside"));
        assert_eq!(sb.delete(&p("d")).unwrap(), Deleted::KeptNonEmpty);
        assert_eq!(sb.delete(&p("d/f")).unwrap(), Deleted::Removed);
        assert_eq!(sb.delete(&p("d/l")).unwrap(), Deleted::Removed);
        assert_eq!(sb.delete(&p("d")).unwrap(), Deleted::Removed);
        assert_eq!(sb.delete(&p("d")).unwrap(), Deleted::Absent);
        assert_eq!(sb.delete(&p("evil")).unwrap(), Deleted::Removed, "the link itself, not its target");
        assert!(outside.exists());
    }

    #[test]
    fn a_directory_deleted_and_remade_in_one_commit_gets_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let sb = Sandbox::open(dir.path()).unwrap();
        sb.mkdir(&p("d")).unwrap();
        sb.begin_commit();
        let (first, _) = sb.create_temp().unwrap();
        sb.commit_temp(&first, &p("d/f")).unwrap(); // "d" is now a cached descriptor
        assert_eq!(sb.delete(&p("d/f")).unwrap(), Deleted::Removed);
        assert_eq!(sb.delete(&p("d")).unwrap(), Deleted::Removed);
        sb.mkdir(&p("d")).unwrap();
        let (second, _) = sb.create_temp().unwrap();
        sb.commit_temp(&second, &p("d/g")).unwrap();
        sb.end_commit();
        assert!(dir.path().join("d/g").exists(), "written into the new directory, not the removed one");
    }
}
