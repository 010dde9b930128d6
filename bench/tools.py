"""The tools under test, each started the way a user would start it, all on loopback.

hotsync (agent + host), rsync to an rsync daemon, lsyncd pushing to the same daemon, tar
(the local-copy floor), bench/floor.py (the latency floor), plus nftables byte counters
for what really crosses loopback.
"""
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _target_dir():
    """Where cargo puts the binaries: honours CARGO_TARGET_DIR and cargo's own config."""
    try:
        meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        return Path(json.loads(meta)["target_directory"])
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        return REPO / "target"


TARGET = _target_dir()
HOTSYNC = TARGET / "release/hotsync"
AGENT = TARGET / "release/hotsync-agent"
QUIC_FLOOR = TARGET / "release/examples/quic_floor"


class ToolFailed(Exception):
    pass


# ---------------------------------------------------------------- setup


def ensure_peers():
    """Installs Debian's rsync and lsyncd when missing (apt-get update only then)."""
    missing = [pkg for pkg in ("rsync", "lsyncd") if not shutil.which(pkg)]
    if not missing:
        return
    print(f"installing {' '.join(missing)} (Debian packages)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def build():
    print("building hotsync (cargo build --release)", flush=True)
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "hotsync-host", "-p", "hotsync-agent",
         "-p", "hotsync-transport", "--bins", "--example", "quic_floor"],
        cwd=REPO, check=True,
    )  # fmt: skip


def quic_floor(size):
    """hotsync's QUIC setup alone moving `size` bytes over loopback, no file touched (the
    `quic_floor` example): (seconds, CPU seconds)."""
    out = subprocess.run([str(QUIC_FLOOR), str(size)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    return result["seconds"], result["cpu_seconds"]


def wait_for_line(path, needle, proc, timeout=30):
    """The first line of the file `path` (a process's log) that contains `needle`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path(path).read_text(errors="replace").splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise ToolFailed(f"{proc.args[0]} exited ({proc.returncode}) before saying {needle!r}; see {path}")
        time.sleep(0.01)
    raise ToolFailed(f"{proc.args[0]} did not say {needle!r} within {timeout} s; see {path}")


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- /proc


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ToolFailed(f"no VmRSS for pid {pid}")


def cpu_seconds(pid, reaped_children=False):
    """utime + stime of the whole process (every thread), in seconds; with `reaped_children`,
    plus that of the children it has waited for (an rsync daemon forks one per connection)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11 : 15 if reaped_children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_children_reaped(pid, timeout=2.0):
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/task/{pid}/children").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.005)


def my_children_cpu():
    """CPU seconds of the children this process has waited for (and their own children)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- byte counters


class WireMeter:
    """Counts the bytes of IP packets that cross loopback to or from a port (both directions,
    IP and UDP/TCP headers included), with nftables counters in a table of our own. Needs
    root; without it `enabled` is False and every count is None."""

    def __init__(self):
        self.table = f"hotsync_bench_{os.getpid()}"
        self.enabled = False
        if os.geteuid() != 0 or not shutil.which("nft"):
            return
        try:
            self._nft(f"add table inet {self.table}")
            self._nft(f"add chain inet {self.table} out {{ type filter hook output priority 0 ; policy accept ; }}")
            self.enabled = True
        except ToolFailed as e:
            print(f"warning: no nftables byte counters ({e})", file=sys.stderr)

    def _nft(self, command, capture=False):
        p = subprocess.run(["nft", *(["-j"] if capture else []), command], capture_output=True, text=True)
        if p.returncode != 0:
            raise ToolFailed(f"nft {command}: {p.stderr.strip()}")
        return p.stdout

    def watch(self, proto, port):
        if not self.enabled:
            return
        try:
            for direction in ("dport", "sport"):
                self._nft(
                    f'add rule inet {self.table} out oifname "lo" {proto} {direction} {port} counter comment "{proto}:{port}"'
                )
        except ToolFailed as e:
            print(f"warning: no nftables byte counters ({e})", file=sys.stderr)
            self.close()

    def count(self, proto, port):
        if not self.enabled:
            return None
        listing = json.loads(self._nft(f"list chain inet {self.table} out", capture=True))
        total = 0
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule and rule.get("comment") == f"{proto}:{port}":
                total += next(e["counter"]["bytes"] for e in rule["expr"] if "counter" in e)
        return total

    def close(self):
        if self.enabled:
            self.enabled = False
            try:
                self._nft(f"delete table inet {self.table}")
            except ToolFailed as e:
                print(f"warning: {e}", file=sys.stderr)


# ---------------------------------------------------------------- hotsync


class Agent:
    """`hotsync-agent serve` on a fresh root (`binary`: another build's agent)."""

    def __init__(self, root, creds, meter, binary=None):
        root.mkdir(parents=True)
        self.root = root
        self.log = root.parent / f"{root.name}.agent.log"
        self.proc = subprocess.Popen(
            [str(binary or AGENT), "serve", "--root", str(root), "--listen", "127.0.0.1:0", "--credentials", str(creds)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "w"),
            env=dict(os.environ, NO_COLOR="1", RUST_LOG="info"),
        )
        line = wait_for_line(self.log, "hotsync-agent listening", self.proc)
        self.addr = next(w.split("=", 1)[1] for w in line.split() if w.startswith("addr="))
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.meter = meter
        meter.watch("udp", self.port)

    def wire_bytes(self):
        return self.meter.count("udp", self.port)

    def stop(self):
        stop(self.proc)


@dataclass
class HostRun:
    """One `hotsync sync --once`: wall time, its JSON events (each with "t", seconds since the
    start, when its line arrived), the IP bytes that crossed loopback meanwhile, and the CPU
    time of the host process and of the agent."""

    seconds: float
    events: list
    cpu: float
    wire_bytes: int | None = None

    def event(self, name):
        found = [e for e in self.events if e["event"] == name]
        if len(found) != 1:
            raise ToolFailed(f"expected one {name!r} event, got {len(found)}: {self.events}")
        return found[0]

    def synced(self):
        return [e for e in self.events if e["event"] == "synced"]

    def phases(self):
        """Where the wall time went: start → scanned → connected → synced → in_sync → exit."""
        t = {name: self.event(name)["t"] for name in ("scanned", "connected", "in_sync")}
        synced = self.synced()
        t_synced = synced[-1]["t"] if synced else t["connected"]
        return {
            "start + scan": t["scanned"],
            "connect": t["connected"] - t["scanned"],
            "send + apply": t_synced - t["connected"],
            "confirm": t["in_sync"] - t_synced,
            "exit": self.seconds - t["in_sync"],
        }


def hotsync_once(src, agent, creds, cache, binary=None):
    """`hotsync sync SRC --to AGENT --json --once` (`binary`: another build's host)."""
    before = agent.wire_bytes()
    err = open(cache.parent / f"{cache.name}.host.log", "w+")
    cpu0 = my_children_cpu() + cpu_seconds(agent.proc.pid)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(binary or HOTSYNC), "sync", str(src), "--to", agent.addr, "--credentials", str(creds),
         "--cache-dir", str(cache), "--json", "--once"],
        stdout=subprocess.PIPE, stderr=err, text=True,
    )  # fmt: skip
    events = []
    for line in proc.stdout:  # Rust's stdout is line-buffered: each event arrives when emitted
        if line.startswith("{"):
            events.append(dict(json.loads(line), t=time.perf_counter() - t0))
    code = proc.wait()
    seconds = time.perf_counter() - t0
    err.seek(0)
    if code != 0:
        raise ToolFailed(f"hotsync sync {src} failed ({code}): {err.read()}")
    run = HostRun(seconds, events, my_children_cpu() + cpu_seconds(agent.proc.pid) - cpu0)
    for e in events:
        if e["event"] == "warning" or e.get("failed"):
            raise ToolFailed(f"hotsync sync {src}: {e}")
    if before is not None:
        run.wire_bytes = agent.wire_bytes() - before
    return run


class LiveHost:
    """`hotsync sync SRC --to AGENT --json` left running (watching the source)."""

    def __init__(self, src, agent, creds, cache):
        self.out = cache.parent / f"{cache.name}.live.jsonl"
        self.proc = subprocess.Popen(
            [str(HOTSYNC), "sync", str(src), "--to", agent.addr, "--credentials", str(creds),
             "--cache-dir", str(cache), "--json"],
            stdout=open(self.out, "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for_line(self.out, '"event":"in_sync"', self.proc, timeout=300)

    def stop(self):
        stop(self.proc)


# ---------------------------------------------------------------- rsync, lsyncd, tar, floor


class RsyncDaemon:
    """An rsync daemon on a loopback port with one writable module, `bench`."""

    def __init__(self, base, meter):
        self.root = base / "rsyncd"
        self.root.mkdir()
        self.conf = base / "rsyncd.conf"
        self.conf.write_text(
            f"use chroot = no\nuid = root\ngid = root\nlog file = {base / 'rsyncd.log'}\n"
            f"[bench]\npath = {self.root}\nread only = no\n"
        )
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={self.conf}", f"--port={self.port}", "--address=127.0.0.1"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise ToolFailed("the rsync daemon did not start")
                time.sleep(0.05)
        self.meter = meter
        meter.watch("tcp", self.port)

    def url(self, sub):
        return f"rsync://127.0.0.1:{self.port}/bench/{sub}/"

    def cpu(self):
        wait_children_reaped(self.proc.pid)
        return cpu_seconds(self.proc.pid, reaped_children=True)

    def push(self, src, sub):
        """`rsync -a --stats SRC/ rsync://…/bench/SUB/`."""
        before = self.meter.count("tcp", self.port)
        cpu0 = my_children_cpu() + self.cpu()
        t0 = time.perf_counter()
        p = subprocess.run(["rsync", "-a", "--stats", f"{src}/", self.url(sub)], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if p.returncode != 0:
            raise ToolFailed(f"rsync to {sub} failed ({p.returncode}): {p.stderr}")
        stats = {}
        for line in p.stdout.splitlines():
            key, _, value = line.partition(":")
            if key in ("Total bytes sent", "Total bytes received", "Literal data", "Matched data"):
                stats[key] = int(value.split()[0].replace(",", ""))
        wire = None if before is None else self.meter.count("tcp", self.port) - before
        return RsyncRun(seconds, stats, my_children_cpu() + self.cpu() - cpu0, wire)

    def stop(self):
        stop(self.proc)


@dataclass
class RsyncRun:
    """One rsync push: wall time, its --stats, CPU time of client and daemon, IP bytes on loopback."""

    seconds: float
    stats: dict
    cpu: float
    wire_bytes: int | None

    @property
    def own_bytes(self):
        return self.stats["Total bytes sent"] + self.stats["Total bytes received"]


def lsyncd_config(src, target, log):
    # checksum: rsync's quick check (same size, same mtime second) would silently skip a second
    # save of a same-size file within one second, leaving the destination stale.
    return (
        f'settings {{ nodaemon = true, logfile = "{log}" }}\n'
        f'sync {{ default.rsync, source = "{src}", target = "{target}", delay = 0,\n'
        f"       rsync = {{ archive = true, checksum = true }} }}\n"
    )


class Lsyncd:
    def __init__(self, conf):
        self.proc = subprocess.Popen(["lsyncd", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        stop(self.proc)


def tar_copy(src, dst):
    """`tar c | tar x` into a fresh directory: (seconds, CPU seconds of both tars)."""
    dst.mkdir()
    cpu0 = my_children_cpu()
    t0 = time.perf_counter()
    subprocess.run(f"tar -C '{src}' -cf - . | tar -C '{dst}' -xf -", shell=True, check=True)
    return time.perf_counter() - t0, my_children_cpu() - cpu0


class Floor:
    """bench/floor.py: a receiver process writing into `dst`, a sender process watching `src`."""

    def __init__(self, src, dst):
        script = str(BENCH / "floor.py")
        self.recv = subprocess.Popen([sys.executable, "-B", script, "recv", str(dst)], stdout=subprocess.PIPE, text=True)
        port = self.recv.stdout.readline().strip()
        self.send = subprocess.Popen([sys.executable, "-B", script, "send", str(src), port], stdout=subprocess.PIPE, text=True)
        if self.send.stdout.readline().strip() != "ready":
            raise ToolFailed("floor.py did not start")

    def stop(self):
        stop(self.send)
        stop(self.recv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def versions():
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            return "?"

    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    # Local changes to what the binaries are built from (the benchmark's own files do not count).
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "Cargo.lock", "Cargo.toml",
                            "agent-host", "agent-pod", "shared"], capture_output=True, text=True).stdout.strip()  # fmt: skip
    return {
        "hotsync": f"{first_line([str(HOTSYNC), '--version'])} (commit {commit}{', with local changes' if dirty else ''})",
        "rsync": first_line(["rsync", "--version"]),
        "lsyncd": first_line(["lsyncd", "--version"]),
        "tar": first_line(["tar", "--version"]),
        "python": sys.version.split()[0],
    }
