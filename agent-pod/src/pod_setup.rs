//! The init steps of an injected pod: `install` copies this static binary into a volume
//! shared with the app's image, and `seed` (run from that copy, inside the app's image) copies
//! the image's own files at the synced path into the synced volume, so files the image built
//! are there before the first sync. Neither needs anything inside the app image.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use anyhow::{Context, bail};
use walkdir::WalkDir;

/// Name of the binary in the shared volume.
pub const INSTALLED_NAME: &str = "hotsync-agent";
/// Marker that makes `seed` idempotent across init-container restarts.
const SEEDED_MARKER: &str = ".hotsync/seeded";

/// Copies the running binary to `dir/hotsync-agent`, executable.
pub fn install(dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find my own binary")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let target = dir.join(INSTALLED_NAME);
    let tmp = dir.join(format!(".{INSTALLED_NAME}.tmp"));
    fs::copy(&exe, &tmp).with_context(|| format!("cannot copy {} to {}", exe.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &target)?;
    Ok(())
}

/// What `seed` copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
}

/// Copies the tree at `from` into `to` (files with their modes, directories, symlinks as
/// links), once: a second run finds the marker and copies nothing. A missing `from` seeds an
/// empty tree (the image has nothing at that path).
pub fn seed(from: &Path, to: &Path) -> anyhow::Result<Option<Seeded>> {
    let marker = to.join(SEEDED_MARKER);
    if marker.exists() {
        return Ok(None);
    }
    if !to.is_dir() {
        bail!("seed target {} is not a directory (the synced volume should be mounted there)", to.display());
    }
    let mut done = Seeded::default();
    if from.exists() {
        for entry in WalkDir::new(from).follow_links(false).min_depth(1) {
            let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
            let rel = entry.path().strip_prefix(from).expect("walkdir yields paths below its root");
            let dest = to.join(rel);
            let ft = entry.file_type();
            if ft.is_dir() {
                fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
                done.dirs += 1;
            } else if ft.is_symlink() {
                let target = fs::read_link(entry.path())?;
                let _ = fs::remove_file(&dest);
                symlink(&target, &dest).with_context(|| format!("cannot create link {}", dest.display()))?;
                done.links += 1;
            } else if ft.is_file() {
                done.bytes += fs::copy(entry.path(), &dest)
                    .with_context(|| format!("cannot copy {} to {}", entry.path().display(), dest.display()))?;
                done.files += 1;
            }
        }
    }
    fs::create_dir_all(marker.parent().expect("the marker has a parent"))?;
    fs::write(&marker, b"")?;
    Ok(Some(done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_once_with_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("image/app"), dir.path().join("volume"));
        fs::create_dir_all(from.join("node_modules/x")).unwrap();
        fs::write(from.join("node_modules/x/index.js"), "dep").unwrap();
        fs::write(from.join("run.sh"), "#!/bin/sh").unwrap();
        fs::set_permissions(from.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("run.sh", from.join("start")).unwrap();
        fs::create_dir_all(&to).unwrap();

        let done = seed(&from, &to).unwrap().unwrap();
        assert_eq!((done.files, done.dirs, done.links), (2, 2, 1));
        assert_eq!(fs::read_to_string(to.join("node_modules/x/index.js")).unwrap(), "dep");
        assert_eq!(fs::metadata(to.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(fs::read_link(to.join("start")).unwrap().to_str(), Some("run.sh"));

        fs::write(to.join("run.sh"), "synced since").unwrap();
        assert_eq!(seed(&from, &to).unwrap(), None, "a restarted init step does not overwrite synced files");
        assert_eq!(fs::read_to_string(to.join("run.sh")).unwrap(), "synced since");
    }

    #[test]
    fn a_path_missing_from_the_image_seeds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let done = seed(&dir.path().join("nothing"), dir.path()).unwrap().unwrap();
        assert_eq!(done, Seeded::default());
    }
}
