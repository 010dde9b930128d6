"""The latency floor: the least a sync tool can do, as two processes on loopback.

    python3 floor.py recv DST          prints the TCP port it listens on, then writes each
                                       file it receives as a temp file + rename in DST
    python3 floor.py send SRC PORT     watches SRC (inotify IN_CLOSE_WRITE, top level only) and
                                       sends each closed file whole over one TCP connection;
                                       prints "ready" once watching

No hashing, no encryption, no batching, no index: inotify → TCP → temp + rename.
"""
import os
import socket
import struct
import sys

from inotify import IN_CLOSE_WRITE, Inotify

HEADER = struct.Struct("<II")  # name length, content length


def receive(dst):
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    stream = conn.makefile("rb")
    while head := stream.read(HEADER.size):
        name_len, size = HEADER.unpack(head)
        name = stream.read(name_len).decode()
        data = stream.read(size)
        tmp = os.path.join(dst, f".{name}.floor-tmp")
        with open(tmp, "wb") as out:
            out.write(data)
        os.rename(tmp, os.path.join(dst, name))


def send(src, port):
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    watch = Inotify(src, IN_CLOSE_WRITE)
    print("ready", flush=True)
    while True:
        for _mask, name in watch.read():
            try:
                with open(os.path.join(src, name), "rb") as f:
                    data = f.read()
            except (FileNotFoundError, IsADirectoryError):
                continue
            encoded = name.encode()
            conn.sendall(HEADER.pack(len(encoded), len(data)) + encoded + data)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        receive(sys.argv[2])
    else:
        send(sys.argv[2], int(sys.argv[3]))
