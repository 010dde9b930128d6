"""The few inotify calls the benchmark needs (ctypes, no third-party package)."""
import ctypes
import os
import select
import struct

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows


class Inotify:
    """One inotify instance watching one directory (not recursively)."""

    def __init__(self, directory, mask):
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, os.fsencode(directory), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")

    def read(self, timeout=None):
        """Waits up to `timeout` seconds (None: forever) for events; returns their (mask, name)."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        events, i = [], 0
        while i < len(buf):
            _wd, mask, _cookie, length = _EVENT.unpack_from(buf, i)
            name = buf[i + _EVENT.size : i + _EVENT.size + length].rstrip(b"\0").decode()
            events.append((mask, name))
            i += _EVENT.size + length
        return events

    def drain(self):
        while self.read(0):
            pass

    def close(self):
        os.close(self.fd)
