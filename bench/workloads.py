"""The benchmark's trees, and the check that a destination equals its source."""
import hashlib
import os
import random
import stat
from pathlib import Path

KIB, MIB = 1024, 1024 * 1024

# Paths every tool may leave in a destination that are not part of the synced tree: the
# agent's private state.
IGNORED_IN_DESTINATION = {".hotsync"}


def write_random(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MIB)
            f.write(os.urandom(n))
            left -= n


def make_w1(root, files, dirs):
    """A node_modules-like tree: `files` files of 2–6 KiB spread over `dirs` leaf directories
    (40 packages of 30 subdirectories each at full size)."""
    rng = random.Random(1)
    per_package = 30
    leaves = [root / f"pkg{d // per_package:03d}" / f"lib{d % per_package:02d}" for d in range(dirs)]
    for i in range(files):
        write_random(leaves[i % dirs] / f"mod{i:05d}.js", rng.randint(2 * KIB, 6 * KIB))


def make_big(root, size):
    """One file of random bytes (W2), dated an hour back so that an edit always gives it a new
    mtime second (rsync's quick check compares whole seconds)."""
    path = root / "big.bin"
    write_random(path, size)
    old = path.stat().st_mtime - 3600
    os.utime(path, (old, old))
    return path


def make_w3(root, files):
    for i in range(files):
        write_random(root / f"assets/blob{i:04d}.bin", 64 * KIB)


def totals(root):
    """(files, directories, file bytes) below `root`."""
    files = dirs = size = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        dirs += len(dirnames)
        files += len(filenames)
        size += sum(os.path.getsize(os.path.join(_dirpath, n)) for n in filenames)
    return files, dirs, size


def digest(root):
    """Every entry below `root` → what must be equal at the destination: kind, and for files
    size, executable bit and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == Path(root):
            dirnames[:] = [d for d in dirnames if d not in IGNORED_IN_DESTINATION]
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = ("dir",)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                out[os.path.relpath(path, root)] = ("other", stat.S_IFMT(st.st_mode))
                continue
            h = hashlib.md5()
            with open(path, "rb") as f:
                while chunk := f.read(4 * MIB):
                    h.update(chunk)
            out[os.path.relpath(path, root)] = ("file", st.st_size, bool(st.st_mode & 0o111), h.hexdigest())
    return out


class TreesDiffer(Exception):
    pass


def check_same(src, dst, what, src_digest=None):
    """Raises TreesDiffer unless `dst` holds exactly what `src` holds."""
    a = src_digest if src_digest is not None else digest(src)
    b = digest(dst)
    if a != b:
        missing = sorted(set(a) - set(b))[:5]
        extra = sorted(set(b) - set(a))[:5]
        different = sorted(k for k in set(a) & set(b) if a[k] != b[k])[:5]
        raise TreesDiffer(
            f"{what}: {dst} differs from {src}: missing {missing}, extra {extra}, different {different}"
        )
