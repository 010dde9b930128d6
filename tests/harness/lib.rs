//! Test harness: the real `hotsync` and `hotsync-agent` binaries as processes, real QUIC on
//! loopback, real files in temp directories.
//!
//! Deadlines here only bound how long a broken build can hang a test; no test asserts a time.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long to wait for something that should happen in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Path of a binary of this workspace, built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the workspace first (`cargo build --workspace`)", path.display());
    path
}

/// A source directory, an agent root and a set of credentials in one temp directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub dst: PathBuf,
    pub creds: PathBuf,
    pub cache: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("hotsync-e2e-").tempdir().expect("temp dir");
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        let creds = dir.path().join("creds");
        let cache = dir.path().join("cache");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        let out = Command::new(bin("hotsync")).args(["credentials", "--out"]).arg(&creds).output().unwrap();
        assert!(out.status.success(), "credentials: {}", String::from_utf8_lossy(&out.stderr));
        Self { dir, src, dst, creds, cache }
    }

    /// A path inside the temp directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts an agent serving `dst` on a free loopback port.
    pub fn agent(&self, extra: &[&str]) -> Agent {
        Agent::start(&self.dst, &self.creds, "127.0.0.1:0", extra)
    }

    /// `hotsync sync SRC --to ADDR --credentials CREDS --json` plus `extra`, as a live process.
    pub fn sync(&self, addr: SocketAddr, extra: &[&str]) -> Host {
        Host::start(self.sync_command(addr, extra))
    }

    /// The same with `--once`, run to completion.
    pub fn sync_once(&self, addr: SocketAddr, extra: &[&str]) -> std::process::Output {
        let mut cmd = self.sync_command(addr, extra);
        cmd.arg("--once");
        cmd.output().expect("run hotsync sync --once")
    }

    pub fn sync_command(&self, addr: SocketAddr, extra: &[&str]) -> Command {
        let mut cmd = Command::new(bin("hotsync"));
        cmd.arg("sync")
            .arg(&self.src)
            .arg("--to")
            .arg(addr.to_string())
            .arg("--credentials")
            .arg(&self.creds)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--json")
            .args(extra);
        cmd
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `hotsync-agent serve`.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    /// Where QUIC over TCP is served (`--listen-tcp`).
    pub tcp_addr: Option<SocketAddr>,
    pub log: Arc<Mutex<String>>,
}

impl Agent {
    pub fn start(root: &Path, creds: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("hotsync-agent"))
            .arg("serve")
            .arg("--root")
            .arg(root)
            .arg("--listen")
            .arg(listen)
            .arg("--credentials")
            .arg(creds)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hotsync-agent");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if line.contains("hotsync-agent listening") {
                    let field =
                        |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).map(str::to_owned);
                    let _ = tx.send(field("addr=").map(|a| (a, field("tcp="))));
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            let _ = tx.send(None);
        });
        let (addr, tcp) = rx.recv_timeout(PATIENCE).ok().flatten().unwrap_or_else(|| {
            let _ = child.kill();
            panic!("hotsync-agent did not start: {}", log.lock().unwrap());
        });
        let tcp_addr = tcp.map(|t| t.parse().expect("agent TCP address"));
        Self { child, addr: addr.parse().expect("agent address"), tcp_addr, log }
    }

    /// Kills the agent with SIGKILL (no chance to clean up).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// A running `hotsync sync --json`, its events collected as they come.
pub struct Host {
    pub child: Child,
    events: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
}

impl Host {
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start hotsync sync");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("host said (not JSON): {line}"),
                }
            }
        });
        Self { child, events, seen: Vec::new() }
    }

    /// Waits for an event of kind `name` for which `pred` holds; returns it.
    pub fn wait_event(&mut self, name: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["event"] == name && pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no {name} event in time; saw: {:#?}", self.seen),
            }
        }
    }

    /// Waits until the host reports it is in sync.
    pub fn wait_in_sync(&mut self) -> Value {
        self.wait_event("in_sync", |_| true)
    }

    /// Takes the events received so far without waiting.
    pub fn drain(&mut self) -> Vec<Value> {
        while let Ok(v) = self.events.try_recv() {
            self.seen.push(v);
        }
        self.seen.clone()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it holds; panics with `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting until {what}");
}

/// The files in an agent root's staging area (`.hotsync/tmp`): none once the agent is idle.
pub fn staging_files(agent_root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(agent_root.join(".hotsync/tmp"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| !e.file_type().is_dir())
        .map(|e| e.path().to_owned())
        .collect()
}

/// What a path is, as a user would check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File { content_hash: String, size: u64, executable: bool },
    Dir,
    Symlink(String),
}

/// Every entry below `root` (but the agent's `.hotsync` state), by relative path.
pub fn listing(root: &Path) -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
    collect(root, root, &mut out);
    out
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, Kind>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == ".hotsync" {
            continue;
        }
        // An entry can vanish between read_dir and here (a temp file renamed away).
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        let kind = if meta.file_type().is_symlink() {
            let Ok(target) = fs::read_link(&path) else { continue };
            Kind::Symlink(target.to_string_lossy().into_owned())
        } else if meta.is_dir() {
            collect(root, &path, out);
            Kind::Dir
        } else {
            let bytes = fs::read(&path).unwrap_or_default();
            Kind::File {
                content_hash: blake3::hash(&bytes).to_hex().to_string(),
                size: meta.len(),
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        };
        out.insert(rel, kind);
    }
}

/// The entries of `root` minus those below any of `except`.
pub fn listing_without(root: &Path, except: &[&str]) -> BTreeMap<String, Kind> {
    listing(root)
        .into_iter()
        .filter(|(p, _)| !except.iter().any(|x| p == x || p.starts_with(&format!("{x}/"))))
        .collect()
}

/// Asserts that `dst` holds exactly what `src` holds.
pub fn assert_same_tree(src: &Path, dst: &Path) {
    let (a, b) = (listing(src), listing(dst));
    if a != b {
        let only_src: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        let only_dst: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
        let differ: Vec<_> = a.iter().filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v)).map(|(k, _)| k).collect();
        panic!(
            "trees differ:\n only in source: {only_src:?}\n only in agent root: {only_dst:?}\n different: {differ:?}"
        );
    }
}

/// Waits until `dst` holds exactly what `src` holds.
pub fn wait_same_tree(src: &Path, dst: &Path) {
    wait_same_tree_within(src, dst, PATIENCE);
}

/// Waits up to `limit` until `dst` holds exactly what `src` holds.
pub fn wait_same_tree_within(src: &Path, dst: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if listing(src) == listing(dst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_same_tree(src, dst);
}

/// Writes a file, creating its parent directories.
pub fn write(path: &Path, content: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// Replaces a file the way careful editors save: a temp file renamed over it, so the source
/// itself never holds a half-written version.
pub fn write_atomic(path: &Path, content: impl AsRef<[u8]>) {
    let tmp = path.with_extension("hotsync-test-tmp");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub mod docker;
pub mod fake_kube;
pub mod relay;
