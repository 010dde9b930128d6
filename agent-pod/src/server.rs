//! The agent's QUIC server: one task per host connection, one per data stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hotsync_core::proto::Failure;
use hotsync_core::proto::{
    AgentMsg, DataHeader, FileRecord, HostMsg, INDEX_PART_ENTRIES, MAGIC, PROTOCOL_VERSION, Piece,
};
use hotsync_core::{RelPath, TreeIndex};
use hotsync_scan::{HashCache, IgnoreRules, Scanner};
use hotsync_transport::{FrameError, Identity, read_frame, server_endpoint, stream_socket, write_frame};
use tokio::sync::Notify;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::apply::{Staged, StagingFile, apply_changeset, copy_source};
use crate::fresh_tree::FreshTree;
use crate::reload::ReloadAction;
use crate::root_watch::RootWatch;
use crate::sandbox::Sandbox;

/// QUIC application close codes the agent uses (1 was a bad magic, when the host spoke first).
mod close {
    pub(super) const PROTOCOL: u32 = 2;
}

/// How the agent is set up.
pub struct AgentConfig {
    pub root: PathBuf,
    pub listen: SocketAddr,
    /// Also serve QUIC framed over TCP here (the port-forward path).
    pub listen_tcp: Option<SocketAddr>,
    pub identity: Identity,
    pub reload: ReloadAction,
}

/// A running agent.
pub struct Agent {
    /// UDP first, then QUIC over TCP if asked for.
    endpoints: Vec<quinn::Endpoint>,
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    sandbox: Sandbox,
    state: Mutex<State>,
    /// One changeset at a time, whatever the number of host connections.
    commit_lock: tokio::sync::Mutex<()>,
    reload: ReloadAction,
    cache_path: PathBuf,
    cache_dirty: AtomicBool,
    cache_changed: Notify,
}

struct State {
    scanner: Scanner,
    index: TreeIndex,
    /// What changed in the root since `index` was brought up to date; `None` when inotify is
    /// not available (each session then begins with a walk). Locked after `state`, never before.
    watch: Option<Arc<Mutex<RootWatch>>>,
}

impl Agent {
    /// Checks the root, indexes it, and binds the QUIC endpoint.
    pub fn start(config: AgentConfig) -> anyhow::Result<Self> {
        let root = &config.root;
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("--root {} is not a directory", root.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "--root {} does not exist: create it, or point --root at the directory the app reads",
                    root.display()
                )
            }
            Err(e) => bail!("cannot use --root {}: {e}", root.display()),
        }
        let sandbox = Sandbox::open(root).with_context(|| {
            format!("cannot write into --root {}: the agent needs a writable directory (check its owner and mode, or the volume's readOnly)", root.display())
        })?;
        let cache_path = cache_path(root);
        let scanner = Scanner::new(root.clone(), IgnoreRules::none(root), HashCache::load(&cache_path));
        let watch = match RootWatch::new(root) {
            Ok(w) => Some(Arc::new(Mutex::new(w))),
            Err(e) => {
                warn!("cannot watch the root ({e}): each session will begin with a walk of it");
                None
            }
        };
        let mut state = State { scanner, index: TreeIndex::new(), watch };
        state.refresh().with_context(|| format!("cannot index {}", root.display()))?;
        info!(root = %root.display(), entries = state.index.len(), "indexed root");
        let mut endpoints = vec![
            server_endpoint(config.listen, &config.identity)
                .with_context(|| format!("cannot listen on UDP {}", config.listen))?,
        ];
        if let Some(addr) = config.listen_tcp {
            let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on TCP {addr}"))?;
            listener.set_nonblocking(true)?;
            let server = hotsync_transport::endpoint::server_config(&config.identity)?;
            endpoints.push(stream_socket::serve_tcp(tokio::net::TcpListener::from_std(listener)?, server)?);
        }
        let shared = Arc::new(Shared {
            root: root.clone(),
            sandbox,
            state: Mutex::new(state),
            commit_lock: tokio::sync::Mutex::new(()),
            reload: config.reload,
            cache_path,
            cache_dirty: AtomicBool::new(true),
            cache_changed: Notify::new(),
        });
        Ok(Self { endpoints, shared })
    }

    /// The UDP address the agent listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoints[0].local_addr()
    }

    /// The TCP address, when QUIC over TCP is served.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.endpoints.get(1).and_then(|e| e.local_addr().ok())
    }

    /// Handles that stop the agent when closed.
    pub fn endpoints(&self) -> Vec<quinn::Endpoint> {
        self.endpoints.clone()
    }

    /// Serves hosts until the endpoints are closed.
    pub async fn run(self) -> anyhow::Result<()> {
        // The start-up scan may have hashed files: save that too.
        self.shared.cache_changed.notify_one();
        let saver = tokio::spawn(save_cache_periodically(self.shared.clone()));
        if let Some(watch) = &self.shared.state.lock().expect("state lock").watch {
            if let Err(e) = take_events_as_they_come(watch) {
                warn!("cannot follow directory events ({e}): they are read when a session begins instead");
            }
        }
        let loops: Vec<_> =
            self.endpoints.iter().map(|e| tokio::spawn(accept_loop(e.clone(), self.shared.clone()))).collect();
        for l in loops {
            let _ = l.await;
        }
        saver.abort();
        save_cache(&self.shared);
        Ok(())
    }
}

/// Accepts hosts on one endpoint, a task per connection.
async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    warn!(%remote, "rejected a connection: {e}");
                    return;
                }
            };
            let span = info_span!("session", %remote);
            if let Err(e) = serve_connection(conn, shared).instrument(span).await {
                info!(%remote, "session ended: {e:#}");
            }
        });
    }
}

/// Per-connection staging of data streams, by changeset.
#[derive(Default)]
struct Staging {
    pending: Mutex<HashMap<u64, Pending>>,
    changed: Notify,
}

#[derive(Default)]
struct Pending {
    streams_done: u32,
    files: HashMap<RelPath, Staged>,
    failures: Vec<Failure>,
    /// Where files of directories the agent does not have yet are staged.
    fresh: Option<Arc<FreshTree>>,
}

impl Pending {
    fn discard(self, sandbox: &Sandbox) {
        for (path, s) in self.files {
            s.at.discard(sandbox, &path);
        }
        if let Some(tree) = self.fresh {
            tree.remove(sandbox);
        }
    }
}

impl Staging {
    fn discard_all(&self, sandbox: &Sandbox) {
        let mut pending = self.pending.lock().expect("staging lock");
        for (_, p) in pending.drain() {
            p.discard(sandbox);
        }
    }

    /// The tree of new directories of `changeset`, made by the first stream that needs it.
    fn fresh_tree(&self, changeset: u64, sandbox: &Sandbox) -> std::io::Result<Arc<FreshTree>> {
        let mut pending = self.pending.lock().expect("staging lock");
        let p = pending.entry(changeset).or_default();
        if let Some(tree) = &p.fresh {
            return Ok(tree.clone());
        }
        let tree = Arc::new(FreshTree::create(sandbox)?);
        p.fresh = Some(tree.clone());
        Ok(tree)
    }
}

async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>) -> anyhow::Result<()> {
    // The agent speaks first, on a control stream it opens: the handshake has already proven
    // the host's certificate, and a host that finds both trees equal then sends nothing at all.
    let (mut send, mut recv) = conn.open_bi().await.context("cannot open the control stream")?;
    let staging = Arc::new(Staging::default());
    let streams = tokio::spawn(accept_data_streams(conn.clone(), shared.clone(), staging.clone()));
    let result = control_loop(&conn, &shared, &staging, &mut send, &mut recv).await;
    streams.abort();
    staging.discard_all(&shared.sandbox);
    if let Err(e) = &result {
        if let Some(FrameError::Codec(_) | FrameError::Truncated) = e.downcast_ref::<FrameError>() {
            conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
        }
    }
    result
}

async fn control_loop(
    conn: &quinn::Connection,
    shared: &Arc<Shared>,
    staging: &Arc<Staging>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<()> {
    let (root, entries) = refresh_index(shared.clone()).await?;
    let welcome = AgentMsg::Welcome {
        version: PROTOCOL_VERSION,
        agent: format!("hotsync-agent {}", env!("CARGO_PKG_VERSION")),
        root,
        entries: entries as u64,
    };
    // One write, so the magic and the welcome share a packet.
    send.write_all(&[&MAGIC[..], &hotsync_core::codec::encode(&welcome)].concat()).await?;

    // The host's Hello comes with its first request, if it has one.
    match read_frame::<HostMsg>(recv).await? {
        Some(HostMsg::Hello { version, client }) if version == PROTOCOL_VERSION => {
            info!(%client, "host connected");
        }
        Some(HostMsg::Hello { version, .. }) => {
            let reason = format!(
                "this agent speaks hotsync protocol {PROTOCOL_VERSION} and the host speaks {version}: run the same hotsync version on both sides"
            );
            write_frame(send, &AgentMsg::Refused { reason: reason.clone() }).await?;
            let _ = send.finish();
            bail!(reason);
        }
        None => return Ok(()),
        Some(other) => bail!("expected Hello, got {other:?}"),
    }

    while let Some(msg) = read_frame::<HostMsg>(recv).await? {
        match msg {
            HostMsg::GetIndex => {
                let entries = shared.state.lock().expect("state lock").index.entries();
                let mut parts = entries.chunks(INDEX_PART_ENTRIES).peekable();
                if parts.peek().is_none() {
                    write_frame(send, &AgentMsg::IndexPart { entries: Vec::new(), done: true }).await?;
                }
                while let Some(part) = parts.next() {
                    let done = parts.peek().is_none();
                    write_frame(send, &AgentMsg::IndexPart { entries: part.to_vec(), done }).await?;
                }
            }
            HostMsg::Commit { id, data_streams, ops, reload } => {
                let span = info_span!("changeset", id, ops = ops.len());
                let reply = commit(conn, shared, staging, id, data_streams, ops, reload).instrument(span).await?;
                write_frame(send, &reply).await?;
            }
            HostMsg::Hello { .. } => bail!("Hello sent twice"),
        }
    }
    Ok(())
}

/// Brings the index up to date with the root before it is compared with the host's tree.
async fn refresh_index(shared: Arc<Shared>) -> anyhow::Result<(hotsync_core::Hash, usize)> {
    tokio::task::spawn_blocking(move || {
        let mut st = shared.state.lock().expect("state lock");
        st.refresh().context("cannot index the root")?;
        Ok((st.index.root_hash(), st.index.len()))
    })
    .await?
}

impl State {
    /// Brings the index up to date: what events say changed, or the whole root.
    fn refresh(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        let State { scanner, index, watch } = self;
        let Some(watch) = watch else {
            *index = scanner.scan_all()?.0;
            return Ok(());
        };
        let done = watch.lock().expect("watch lock").refresh(scanner, index)?;
        debug!(
            walked = done.walked,
            looked_at = done.looked_at,
            micros = started.elapsed().as_micros(),
            "index refreshed"
        );
        Ok(())
    }
}

/// Reads directory events as they come, on a thread of its own, so that the kernel's queue
/// does not overflow (that would cost the next session a full walk). Sleeps in `poll` while
/// nothing changes; ends at the first event after the agent is gone.
fn take_events_as_they_come(watch: &Arc<Mutex<RootWatch>>) -> std::io::Result<()> {
    let fd = watch.lock().expect("watch lock").fd().try_clone_to_owned()?;
    let watch = Arc::downgrade(watch);
    std::thread::Builder::new().name("root-watch".into()).stack_size(256 * 1024).spawn(move || {
        loop {
            let mut ready = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
            match rustix::event::poll(&mut ready, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    warn!("cannot wait for directory events: {e}");
                    return;
                }
            }
            let Some(watch) = watch.upgrade() else { return };
            watch.lock().expect("watch lock").take_events();
        }
    })?;
    Ok(())
}

async fn commit(
    conn: &quinn::Connection,
    shared: &Arc<Shared>,
    staging: &Arc<Staging>,
    id: u64,
    data_streams: u32,
    ops: Vec<hotsync_core::diff::Op>,
    reload: bool,
) -> anyhow::Result<AgentMsg> {
    // Wait for every data stream of this changeset to end.
    loop {
        let notified = staging.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let done = staging.pending.lock().expect("staging lock").get(&id).map_or(0, |p| p.streams_done);
        if done >= data_streams {
            break;
        }
        tokio::select! {
            () = notified => {}
            e = conn.closed() => bail!("connection closed while waiting for data: {e}"),
        }
    }
    let pending = staging.pending.lock().expect("staging lock").remove(&id).unwrap_or_default();
    let _one_at_a_time = shared.commit_lock.lock().await;
    let started = Instant::now();
    let worker = shared.clone();
    let (outcome, root, mut failed, set_aside, fresh) = tokio::task::spawn_blocking(move || {
        let mut files = pending.files;
        let mut st = worker.state.lock().expect("state lock");
        let State { scanner, index, watch } = &mut *st;
        let fresh = pending.fresh;
        if let (Some(watch), Some(tree)) = (watch, &fresh) {
            // Watched before they move in: nothing the app does in them afterwards is missed.
            let dirs = tree.dirs();
            watch.lock().expect("watch lock").adopt(dirs.iter().map(|(path, fd)| (path.clone(), &**fd)));
        }
        let outcome = apply_changeset(&worker.sandbox, &ops, &mut files, fresh.as_deref(), index, &mut scanner.cache);
        (outcome.changed, index.root_hash(), [pending.failures, outcome.failed].concat(), outcome.set_aside, fresh)
    })
    .await?;
    if !set_aside.is_empty() || fresh.is_some() {
        // Freed while the answer travels.
        let worker = shared.clone();
        tokio::task::spawn_blocking(move || {
            for temp in &set_aside {
                worker.sandbox.discard_temp(temp);
            }
            if let Some(tree) = fresh {
                tree.remove(&worker.sandbox);
            }
        });
    }
    shared.cache_dirty.store(true, Ordering::Relaxed);
    shared.cache_changed.notify_one();
    let reload_report = if reload && outcome {
        Some(match shared.reload.run(&shared.root) {
            Ok(done) => done,
            Err(e) => {
                warn!("reload action failed: {e}");
                format!("reload failed: {e}")
            }
        })
    } else {
        None
    };
    failed.sort_by(|a, b| a.path.cmp(&b.path));
    // A file that failed in staging also fails its write: reported once, with the first reason.
    failed.dedup_by(|later, first| later.path == first.path);
    let apply_micros = started.elapsed().as_micros() as u64;
    info!(failed = failed.len(), reload = reload_report.as_deref().unwrap_or("-"), apply_micros, "applied");
    Ok(AgentMsg::Applied { id, root, failed, reload: reload_report, apply_micros })
}

async fn accept_data_streams(conn: quinn::Connection, shared: Arc<Shared>, staging: Arc<Staging>) {
    while let Ok(recv) = conn.accept_uni().await {
        let (conn, shared, staging) = (conn.clone(), shared.clone(), staging.clone());
        tokio::spawn(async move {
            if let Err(e) = receive_stream(recv, &shared, &staging).await {
                warn!("bad data stream: {e}");
                conn.close(close::PROTOCOL.into(), format!("bad data stream: {e}").as_bytes());
            }
        });
    }
}

/// Stages every file a data stream carries, then counts the stream as done.
async fn receive_stream(mut recv: quinn::RecvStream, shared: &Shared, staging: &Staging) -> anyhow::Result<()> {
    let header: DataHeader = read_frame(&mut recv).await?.context("data stream without a header")?;
    let mut files = Vec::new();
    let mut failures = Vec::new();
    let mut fresh: Option<Arc<FreshTree>> = None;
    // Whether the last directory asked about is new: records come in path order, siblings
    // together, so the index (behind the state lock) is asked once per directory, not per file.
    let mut last_dir: Option<(RelPath, bool)> = None;
    while let Some(record) = read_frame::<FileRecord>(&mut recv).await? {
        record.validate().map_err(anyhow::Error::msg)?;
        // A file whose directory the agent does not have is staged in place in a tree of new
        // directories (the commit moves each new directory in whole).
        let new_dir = record.path.parent().is_some_and(|dir| match &last_dir {
            Some((known, new)) if *known == dir => *new,
            _ => {
                let new = shared.state.lock().expect("state lock").index.get(&dir).is_none();
                last_dir = Some((dir, new));
                new
            }
        });
        let tree = if new_dir {
            if fresh.is_none() {
                fresh = Some(
                    staging
                        .fresh_tree(header.changeset, &shared.sandbox)
                        .context("cannot create a staging directory")?,
                );
            }
            fresh.as_ref()
        } else {
            None
        };
        match stage_record(&mut recv, shared, record, tree).await? {
            Ok(staged) => files.push(staged),
            Err(failure) => failures.push(failure),
        }
    }
    let mut pending = staging.pending.lock().expect("staging lock");
    let p = pending.entry(header.changeset).or_default();
    p.streams_done += 1;
    for (path, staged) in files {
        if let Some(old) = p.files.remove(&path) {
            old.at.discard(&shared.sandbox, &path);
        }
        p.files.insert(path, staged);
    }
    p.failures.extend(failures);
    drop(pending);
    staging.changed.notify_waiters();
    Ok(())
}

/// Stages one record. The outer error is fatal for the stream (it cannot be read on); the
/// inner one only fails this file.
async fn stage_record(
    recv: &mut quinn::RecvStream,
    shared: &Shared,
    record: FileRecord,
    fresh: Option<&Arc<FreshTree>>,
) -> anyhow::Result<Result<(RelPath, Staged), Failure>> {
    let path = record.path.clone();
    let pieces = record.pieces.clone();
    let mut file = match StagingFile::create(&shared.sandbox, record, fresh) {
        Ok(f) => Some(f),
        Err(e) => return Err(e).context("cannot create a staging file"),
    };
    let mut problem: Option<String> = None;
    for piece in &pieces {
        match piece {
            Piece::Data { len } => {
                let mut left = *len;
                while left > 0 {
                    let chunk =
                        recv.read_chunk((left as usize).min(1 << 20), true).await?.ok_or(FrameError::Truncated)?;
                    left -= chunk.bytes.len() as u64;
                    if let (Some(f), None) = (file.as_mut(), &problem) {
                        if let Err(e) = f.write_data(&chunk.bytes) {
                            problem = Some(format!("cannot write: {e}"));
                        }
                    }
                }
            }
            Piece::Copy { .. } => {
                if problem.is_some() {
                    continue;
                }
                let Some(f) = file.as_mut() else { continue };
                let (from, offset, len) =
                    copy_source(f.record(), piece).map(|(p, o, l)| (p.clone(), o, l)).expect("a copy piece");
                if let Err(e) = f.copy_existing(&from, offset, len) {
                    problem = Some(format!("cannot copy from {from}: {e}"));
                }
            }
        }
    }
    let file = file.take().expect("staging file present until here");
    if let Some(reason) = problem {
        debug!(%path, %reason, "staging failed");
        file.abandon();
        return Ok(Err(Failure { path, reason }));
    }
    Ok(file.finish())
}

fn save_cache(shared: &Shared) {
    if !shared.cache_dirty.swap(false, Ordering::Relaxed) {
        return;
    }
    let mut st = shared.state.lock().expect("state lock");
    if let Err(e) = st.scanner.cache.save(&shared.cache_path) {
        warn!(path = %shared.cache_path.display(), "cannot save the hash cache: {e}");
    }
}

/// Saves the cache a little after changesets land; sleeps while nothing changes (no polling).
async fn save_cache_periodically(shared: Arc<Shared>) {
    loop {
        shared.cache_changed.notified().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || save_cache(&s)).await;
    }
}

/// The path of the agent's cache file for `root`.
pub fn cache_path(root: &Path) -> PathBuf {
    root.join(hotsync_core::path::AGENT_STATE_DIR).join("cache")
}
