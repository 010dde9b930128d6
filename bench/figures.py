"""The measurements. Each writes samples into a Results; none judges a figure (the report
does, and no figure ever fails the run). Every sync is checked: the destination must equal
the source, or the run stops with an error.

Fairness rules: every tool writes into a directory made fresh for that run (never a deleted
one re-created), runs alternate between tools with the order rotated on every run, and dirty
pages are flushed (sync) before each timed command so no tool pays for another's writeback.
"""
import json
import os
import shutil
import statistics
import time
from collections import defaultdict
from pathlib import Path

from inotify import IN_CLOSE_WRITE, IN_CREATE, IN_MODIFY, IN_MOVED_TO, Inotify
from tools import (
    Agent,
    Floor,
    LiveHost,
    Lsyncd,
    ToolFailed,
    cpu_seconds,
    hotsync_once,
    lsyncd_config,
    quic_floor,
    rss_kib,
    tar_copy,
)
from workloads import KIB, check_same, digest, totals

# A pause between two saves of the live-latency figure, so that one tool's tail (lsyncd's
# rsync exiting, an agent's cache save) does not overlap the next measurement.
PAUSE_BETWEEN_SAVES = 0.08


class Results:
    """Samples by figure and tool."""

    def __init__(self):
        self.samples = defaultdict(lambda: defaultdict(list))
        self.notes = {}

    def add(self, figure, tool, value):
        if value is not None:
            self.samples[figure][tool].append(value)

    def has(self, figure, tool):
        return bool(self.samples.get(figure, {}).get(tool))

    def median(self, figure, tool):
        return statistics.median(self.samples[figure][tool]) if self.has(figure, tool) else None

    def percentile(self, figure, tool, q):
        """Linear interpolation between closest ranks (q in 0–100)."""
        values = sorted(self.samples[figure][tool])
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    def count(self, figure, tool):
        return len(self.samples[figure][tool])


def rotated(items, run):
    """The tools in a different order on every run: none always goes first."""
    k = run % len(items)
    return items[k:] + items[:k]


class Bench:
    """What every measurement needs: the work directory, credentials, the rsync daemon, the
    byte counters, and where the results go."""

    def __init__(self, base, creds, rsyncd, meter, results):
        self.base, self.creds, self.rsyncd, self.meter, self.res = base, creds, rsyncd, meter, results


def record(res, figure, tool, run):
    """Time, CPU and bytes on loopback of one rsync or hotsync run (and hotsync's phases)."""
    res.add(f"{figure} s", tool, run.seconds)
    res.add(f"{figure} cpu", tool, run.cpu)
    res.add(f"{figure} wire", tool, run.wire_bytes)
    if hasattr(run, "phases"):
        for phase, seconds in run.phases().items():
            res.add(f"{figure} phases", phase, seconds)


def initial_syncs(b, name, src, runs, reconnect=False, floor=False):
    """Copies `src` into fresh destinations with tar, rsync and hotsync (cold hash cache, empty
    agent root). With `reconnect`, each rsync and hotsync run is followed by a rerun with
    nothing changed. With `floor`, hotsync's QUIC setup alone moves as many bytes (no file
    read or written): what no file handling can beat."""
    src_digest = digest(src)
    files, _dirs, size = totals(src)
    for run in range(runs):
        for tool in rotated(["tar", "rsync", "hotsync", *(["QUIC alone"] if floor else [])], run):
            sub = f"{name}-{tool}-{run}"
            if tool == "QUIC alone":
                seconds, cpu = quic_floor(size)
                b.res.add(f"{name} initial s", tool, seconds)
                b.res.add(f"{name} initial cpu", tool, cpu)
            elif tool == "tar":
                os.sync()
                seconds, cpu = tar_copy(src, b.base / sub)
                b.res.add(f"{name} initial s", "tar", seconds)
                b.res.add(f"{name} initial cpu", "tar", cpu)
                check_same(src, b.base / sub, f"{name} tar", src_digest)
            elif tool == "rsync":
                os.sync()
                r = b.rsyncd.push(src, sub)
                record(b.res, f"{name} initial", "rsync", r)
                check_same(src, b.rsyncd.root / sub, f"{name} rsync", src_digest)
                if reconnect:
                    os.sync()
                    r = b.rsyncd.push(src, sub)
                    record(b.res, f"{name} reconnect", "rsync", r)
                    b.res.add(f"{name} reconnect own", "rsync", r.own_bytes)
            else:
                agent = Agent(b.base / sub, b.creds, b.meter)
                cache = b.base / f"{sub}-cache"
                os.sync()
                r = hotsync_once(src, agent, b.creds, cache)
                check_same(src, agent.root, f"{name} hotsync", src_digest)
                written = sum(e["written"] for e in r.synced())
                sent = sum(e["sent_bytes"] for e in r.synced())
                if written != files or sent != size:
                    raise ToolFailed(f"{name} hotsync: reported {written} files / {sent} bytes sent, the tree has {files} / {size}")
                record(b.res, f"{name} initial", "hotsync", r)
                b.res.add(f"{name} initial lost packets", "hotsync", r.event("in_sync")["lost_packets"])
                if name == "W1":
                    b.res.add("agent RSS KiB", "after W1 sync (--once)", rss_kib(agent.proc.pid))
                if reconnect:
                    os.sync()
                    again = hotsync_once(src, agent, b.creds, cache)
                    if not again.event("connected")["same_tree"] or again.synced():
                        raise ToolFailed(f"{name} hotsync reconnect: expected an unchanged tree, got {again.events}")
                    in_sync = again.event("in_sync")
                    record(b.res, f"{name} reconnect", "hotsync", again)
                    b.res.add(f"{name} reconnect own", "hotsync", in_sync["udp_tx_bytes"] + in_sync["udp_rx_bytes"])
                    b.res.add(f"{name} reconnect hashed", "hotsync", again.event("scanned")["hashed"])
                agent.stop()


def overwrite_one_byte(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        old = f.read(1)
        f.seek(at)
        f.write(bytes([old[0] ^ 0xFF]))


def insert_4k(path, at):
    data = path.read_bytes()
    with open(path, "wb") as f:  # open, truncate, write: like an editor saving
        f.write(data[:at] + os.urandom(4 * KIB) + data[at:])


EDITS = [("1-byte overwrite", overwrite_one_byte), ("4 KiB insertion", insert_4k)]


def big_file_edits(b, template, runs):
    """W2 edits at the middle of the big file: each tool first syncs the file, then syncs each
    edit. hotsync keeps its cache directory between its runs (hash cache and the chunk list of
    what it sent), as a user's second run would."""
    for run in range(runs):
        src = b.base / f"W2edit-{run}-src"
        shutil.copytree(template, src)
        big = src / "big.bin"
        middle = big.stat().st_size // 2
        agent = Agent(b.base / f"W2edit-{run}-hotsync", b.creds, b.meter)
        cache = b.base / f"W2edit-{run}-cache"
        sub = f"W2edit-{run}-rsync"
        b.rsyncd.push(src, sub)
        hotsync_once(src, agent, b.creds, cache)
        for label, edit in EDITS:
            edit(big, middle)
            src_digest = digest(src)
            for tool in rotated(["rsync", "hotsync"], run):
                os.sync()
                if tool == "rsync":
                    r = b.rsyncd.push(src, sub)
                    record(b.res, f"W2 {label}", "rsync", r)
                    b.res.add(f"W2 {label} own", "rsync", r.own_bytes)
                    b.res.add(f"W2 {label} file bytes", "rsync", r.stats["Literal data"])
                    check_same(src, b.rsyncd.root / sub, f"W2 {label} rsync", src_digest)
                else:
                    r = hotsync_once(src, agent, b.creds, cache)
                    in_sync = r.event("in_sync")
                    record(b.res, f"W2 {label}", "hotsync", r)
                    b.res.add(f"W2 {label} own", "hotsync", in_sync["udp_tx_bytes"] + in_sync["udp_rx_bytes"])
                    b.res.add(f"W2 {label} file bytes", "hotsync", sum(e["sent_bytes"] for e in r.synced()))
                    b.res.add(f"W2 {label} changeset udp", "hotsync", sum(e["udp_bytes"] for e in r.synced()))
                    check_same(src, agent.root, f"W2 {label} hotsync", src_digest)
        agent.stop()


# ---------------------------------------------------------------- live latency (L)

DESTINATION_EVENTS = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE


def save_and_wait(src_file, dst_file, dst_watch, limit=10.0):
    """Saves new content like an editor (open with truncation, write, close), then waits until
    the destination holds exactly that content. Waiting blocks on inotify events of the
    destination directory (no busy polling stealing a core from the tool under test); every
    wake-up, and at least every 2 ms, reads the destination file and compares."""
    content = os.urandom(4 * KIB)
    dst_watch.drain()
    t0 = time.perf_counter()
    with open(src_file, "wb") as f:
        f.write(content)
    while True:
        try:
            if dst_file.read_bytes() == content:
                return time.perf_counter() - t0
        except OSError:
            pass
        if time.perf_counter() - t0 > limit:
            raise ToolFailed(f"{dst_file} did not get the saved content within {limit} s")
        dst_watch.read(0.002)


def live_latency(b, saves):
    """L: one 4 KiB file saved `saves` times into each live pipeline, interleaved."""
    started, pipelines = [], {}
    try:
        initial = os.urandom(4 * KIB)
        # hotsync: a live session to an agent.
        src = b.base / "L-hotsync-src"
        src.mkdir()
        (src / "edit.txt").write_bytes(initial)
        agent = Agent(b.base / "L-hotsync-dst", b.creds, b.meter)
        started.append(agent)
        host = LiveHost(src, agent, b.creds, b.base / "L-hotsync-cache")
        started.append(host)
        pipelines["hotsync"] = (src, agent.root)
        # lsyncd → the rsync daemon.
        src = b.base / "L-lsyncd-src"
        src.mkdir()
        (src / "edit.txt").write_bytes(initial)
        conf = b.base / "lsyncd.conf.lua"
        conf.write_text(lsyncd_config(src, b.rsyncd.url("L-lsyncd"), b.base / "lsyncd.log"))
        started.append(Lsyncd(conf))
        dst = b.rsyncd.root / "L-lsyncd"
        wait_until(lambda: (dst / "edit.txt").exists() and (dst / "edit.txt").read_bytes() == initial, "lsyncd's first sync")
        pipelines["lsyncd"] = (src, dst)
        # The floor.
        src, dst = b.base / "L-floor-src", b.base / "L-floor-dst"
        src.mkdir()
        dst.mkdir()
        started.append(Floor(src, dst))
        pipelines["floor"] = (src, dst)

        watches = {tool: Inotify(dst, DESTINATION_EVENTS) for tool, (_, dst) in pipelines.items()}
        time.sleep(1)
        tools = list(pipelines)
        for i in range(saves):
            for tool in rotated(tools, i):
                src, dst = pipelines[tool]
                b.res.add("L ms", tool, 1000 * save_and_wait(src / "edit.txt", dst / "edit.txt", watches[tool]))
                time.sleep(PAUSE_BETWEEN_SAVES)
        for w in watches.values():
            w.close()
        host.stop()
        own = [e["latency_ms"] for e in read_jsonl(host.out) if e["event"] == "synced"][1:]  # [0]: initial sync
        for value in own:
            b.res.add("L own latency_ms", "hotsync", value)
        b.res.notes["L hotsync changesets"] = len(own)
    finally:
        for s in reversed(started):
            s.stop()


def wait_until(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ToolFailed(f"timed out waiting for {what}")
        time.sleep(0.01)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.startswith("{")]


# ---------------------------------------------------------------- idle


def thread_cpu_ns(pid):
    """On-CPU nanoseconds of each thread of `pid` (exact, unlike clock-tick sampling)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[tid] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def cpu_ns_since(pid, before):
    after = thread_cpu_ns(pid)
    return sum(ns - before.get(tid, 0) for tid, ns in after.items())


def idle(b, w1_src, seconds):
    """A live session that has just synced W1, then nothing changes for `seconds`: memory,
    CPU and traffic of the agent and the host."""
    agent = Agent(b.base / "idle-agent", b.creds, b.meter)
    host = None
    try:
        host = LiveHost(w1_src, agent, b.creds, b.base / "idle-cache")
        check_same(w1_src, agent.root, "idle W1 hotsync")
        time.sleep(3)  # the agent saves its hash cache 2 s after a changeset
        b.res.add("agent RSS KiB", "live session after W1 sync", rss_kib(agent.proc.pid))
        b.res.add("host RSS KiB", "live session watching W1", rss_kib(host.proc.pid))
        pids = {"host": host.proc.pid, "agent": agent.proc.pid}
        ticks = {k: cpu_seconds(p) for k, p in pids.items()}
        ns = {k: thread_cpu_ns(p) for k, p in pids.items()}
        wire = agent.wire_bytes()
        time.sleep(seconds)
        for k, p in pids.items():
            b.res.add("idle CPU ms (schedstat)", k, cpu_ns_since(p, ns[k]) / 1e6)
            b.res.add("idle CPU ms (utime+stime)", k, (cpu_seconds(p) - ticks[k]) * 1000)
        if wire is not None:
            b.res.add("idle wire", "hotsync", agent.wire_bytes() - wire)
        b.res.notes["idle seconds"] = seconds
    finally:
        if host:
            host.stop()
        agent.stop()
