"""The latency floor: the least a sync can do. inotify (IN_CLOSE_WRITE) → one TCP connection
on loopback → temp file + rename. No hashing, no encryption, no batching.

    python3 floor.py SRC DST   (runs until killed; prints "ready" when both ends are up)
"""
import ctypes
import os
import socket
import struct
import sys
import threading

IN_CLOSE_WRITE = 0x00000008
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def receiver(listener, dst):
    conn, _ = listener.accept()
    f = conn.makefile("rb")
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        name_len, size = struct.unpack("<II", head)
        name = f.read(name_len).decode()
        data = f.read(size)
        tmp = os.path.join(dst, "." + name + ".tmp")
        with open(tmp, "wb") as out:
            out.write(data)
        os.rename(tmp, os.path.join(dst, name))


def main():
    src, dst = sys.argv[1], sys.argv[2]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    threading.Thread(target=receiver, args=(listener, dst), daemon=True).start()
    out = socket.create_connection(listener.getsockname())
    out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fd = libc.inotify_init1(0)
    libc.inotify_add_watch(fd, src.encode(), IN_CLOSE_WRITE)
    print("ready", flush=True)
    while True:
        buf = os.read(fd, 65536)
        i = 0
        while i < len(buf):
            _wd, _mask, _cookie, length = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16 : i + 16 + length].rstrip(b"\0").decode()
            i += 16 + length
            if not name or name.startswith("."):
                continue
            try:
                with open(os.path.join(src, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            enc = name.encode()
            out.sendall(struct.pack("<II", len(enc), len(data)) + enc + data)


if __name__ == "__main__":
    main()
