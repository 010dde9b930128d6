//! One agent session: connect, learn what the agent has (one hash when the host already
//! knows its tree), send the difference, then follow the source's snapshots. Reconnects with
//! backoff; edits made while disconnected are sent on reconnect, because the diff is always
//! against the latest snapshot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::future::BoxFuture;
use hotsync_core::diff::{self, Op};
use hotsync_core::proto::{AGENT_SERVER_NAME, AgentMsg, HostMsg, MAGIC, PROTOCOL_VERSION};
use hotsync_core::{RelPath, TreeIndex};
use hotsync_transport::{Identity, read_frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::send::{self, ChunkMemory, Progress};
use crate::source::Snapshot;
use crate::ui::{Event, Ui};

/// How QUIC packets travel to the agent (the `--transport` of `hotsync sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Plain UDP: the fastest path, when the agent's address is reachable.
    Udp,
    /// Framed over a TCP connection (the agent's `--listen-tcp`): through port-forwards,
    /// tunnels and firewalls that pass only TCP.
    Tcp,
}

/// A byte stream QUIC can be framed over.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// Opens a fresh byte stream to an agent (a Kubernetes port-forward); called on every
/// connection attempt.
pub type StreamOpener = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<Box<dyn ByteStream>>> + Send + Sync>;

/// Where one agent is and how its packets travel.
#[derive(Clone)]
pub enum Route {
    /// QUIC on UDP to this address.
    Udp(SocketAddr),
    /// QUIC framed over a TCP connection to this address.
    Tcp(SocketAddr),
    /// QUIC framed over streams this opener makes.
    Stream(StreamOpener),
}

impl Route {
    /// A route for `hotsync sync --to ADDR --transport T`.
    pub fn new(addr: SocketAddr, transport: Transport) -> Self {
        match transport {
            Transport::Udp => Route::Udp(addr),
            Transport::Tcp => Route::Tcp(addr),
        }
    }

    /// What to check when nothing answers.
    fn unreachable_hint(&self) -> String {
        match self {
            Route::Udp(addr) => {
                format!("is `hotsync-agent serve` running there, and UDP port {} reachable?", addr.port())
            }
            Route::Tcp(_) => "is `hotsync-agent serve --listen-tcp` running there?".into(),
            Route::Stream(_) => "is the sidecar running and its TCP port served (`--listen-tcp`)?".into(),
        }
    }
}

/// How to reach one agent.
#[derive(Clone)]
pub struct SessionConfig {
    pub route: Route,
    /// How the agent is named in what the user sees (an address, a pod).
    pub label: String,
    pub identity: Arc<Identity>,
    /// Sync once, check the agent's root, and return.
    pub once: bool,
    pub source_root: PathBuf,
    pub memory: Arc<ChunkMemory>,
}

/// Failures that retrying cannot fix.
#[derive(Debug)]
struct Fatal(anyhow::Error);

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a finished session waits for its close to leave.
const CLOSE_GRACE: Duration = Duration::from_millis(5);
/// Changesets at least this big report progress.
const PROGRESS_FILES: usize = 1000;
const PROGRESS_BYTES: u64 = 32 << 20;

/// Runs the session until `once` is done, a fatal error, or forever.
pub async fn run(cfg: SessionConfig, snapshots: watch::Receiver<Arc<Snapshot>>, ui: Ui) -> anyhow::Result<()> {
    run_while_scanning(cfg, std::future::ready(Ok(snapshots)), ui).await
}

/// Like [`run`], with the source still being scanned: the first connection (handshake, and
/// the agent's own rescan behind its welcome) overlaps the host's scan instead of following it.
pub async fn run_while_scanning(
    cfg: SessionConfig,
    scan: impl Future<Output = anyhow::Result<watch::Receiver<Arc<Snapshot>>>>,
    ui: Ui,
) -> anyhow::Result<()> {
    let udp = match cfg.route {
        Route::Udp(addr) => {
            Some(hotsync_transport::client_endpoint(&cfg.identity, addr).context("cannot create the QUIC endpoint")?)
        }
        Route::Tcp(_) | Route::Stream(_) => None,
    };
    let mut model: Option<TreeIndex> = None;
    let mut next_id = 0u64;
    let mut backoff = BACKOFF_START;
    ui.emit(Event::Connecting { target: cfg.label.clone() });
    let first = async { Ok(connect(udp.as_ref(), &cfg).await) };
    let (mut snapshots, mut attempt) = tokio::try_join!(scan, first)?;
    loop {
        let err = match attempt {
            Ok((conn, endpoint, mut greeting)) => {
                backoff = BACKOFF_START;
                let out =
                    sync_connection(&conn, &mut greeting, &cfg, &mut snapshots, &mut model, &ui, &mut next_id).await;
                // Closed while the control stream still lives: dropped first, its end would
                // travel in a packet of its own ahead of the close.
                conn.close(0u32.into(), b"bye");
                drop(greeting);
                match out {
                    Ok(()) => {
                        // The close leaves in the endpoint's next send; the draining period
                        // after it (three probe timeouts) only answers late packets, which the
                        // agent does not need: its session ends at the first close it reads.
                        let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
                        return Ok(());
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if let Some(Fatal(e)) = err.downcast_ref::<Fatal>() {
            return Err(anyhow!("{e:#}"));
        }
        if cfg.once {
            return Err(err);
        }
        ui.emit(Event::Disconnected {
            target: cfg.label.clone(),
            error: format!("{err:#}"),
            retry_in_ms: backoff.as_millis() as u64,
        });
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        ui.emit(Event::Connecting { target: cfg.label.clone() });
        attempt = connect(udp.as_ref(), &cfg).await;
    }
}

/// Connects over UDP (with the shared endpoint) or over a fresh byte stream and greets the
/// agent; returns the endpoint the connection lives on.
async fn connect(
    udp: Option<&quinn::Endpoint>,
    cfg: &SessionConfig,
) -> anyhow::Result<(quinn::Connection, quinn::Endpoint, Greeting)> {
    let (endpoint, peer) = match (&cfg.route, udp) {
        (Route::Udp(addr), Some(endpoint)) => (endpoint.clone(), *addr),
        (Route::Tcp(addr), _) => {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => bail!(
                    "cannot open TCP to {addr}: {e}: is `hotsync-agent serve --listen-tcp` running there (or the port-forward up)?"
                ),
                Err(_) => bail!("no TCP answer from {addr} within {} s", CONNECT_TIMEOUT.as_secs()),
            };
            stream.set_nodelay(true)?;
            over_stream(stream, cfg)?
        }
        (Route::Stream(open), _) => {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, open()).await {
                Ok(result) => result?,
                Err(_) => bail!("no stream to {} within {} s", cfg.label, CONNECT_TIMEOUT.as_secs()),
            };
            over_stream(stream, cfg)?
        }
        (Route::Udp(_), None) => unreachable!("run() makes the UDP endpoint for a UDP route"),
    };
    let connecting = endpoint.connect(peer, AGENT_SERVER_NAME).context("cannot start a connection")?;
    let conn = handshake(connecting, cfg).await?;
    let greeting = greet(&conn).await?;
    Ok((conn, endpoint, greeting))
}

/// What the agent said when the session opened.
struct Greeting {
    control: Control,
    /// The root hash of the agent's tree, freshly rescanned.
    root: hotsync_core::Hash,
    agent: String,
}

/// Takes the control stream the agent opens, and its Welcome (sent once it has brought its
/// index up to date). The Hello waits for the first request.
async fn greet(conn: &quinn::Connection) -> anyhow::Result<Greeting> {
    let (send, mut recv) = conn.accept_bi().await.context("the agent did not open its control stream")?;
    let mut magic = [0u8; MAGIC.len()];
    if recv.read_exact(&mut magic).await.is_err() || magic != MAGIC {
        bail!(Fatal(anyhow!("the peer is not a hotsync agent of this version (unexpected first bytes)")));
    }
    let hello = HostMsg::Hello { version: PROTOCOL_VERSION, client: format!("hotsync {}", env!("CARGO_PKG_VERSION")) };
    let mut control = Control { send, recv, hello: Some(hello) };
    let AgentMsg::Welcome { version, root, agent, .. } = control.recv().await? else {
        bail!("the agent did not begin with Welcome");
    };
    if version != PROTOCOL_VERSION {
        bail!(Fatal(anyhow!(
            "{agent} speaks hotsync protocol {version} and this host speaks {PROTOCOL_VERSION}: run the same hotsync version on both sides"
        )));
    }
    Ok(Greeting { control, root, agent })
}

fn over_stream(stream: impl ByteStream, cfg: &SessionConfig) -> anyhow::Result<(quinn::Endpoint, SocketAddr)> {
    // Over a byte stream nothing is lost to size: full-size packets from the start, no probes.
    let client =
        hotsync_transport::endpoint::client_config(&cfg.identity, Some(hotsync_transport::endpoint::MAX_PAYLOAD))?;
    Ok(hotsync_transport::stream_socket::client_over(stream, client)?)
}

async fn handshake(connecting: quinn::Connecting, cfg: &SessionConfig) -> anyhow::Result<quinn::Connection> {
    let target = &cfg.label;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(anyhow!(
            "no answer from a hotsync agent at {target} within {} s: {}",
            CONNECT_TIMEOUT.as_secs(),
            cfg.route.unreachable_hint()
        )),
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) if is_alpn_mismatch(&e) => Err(anyhow!(Fatal(anyhow!(
            "the agent at {target} speaks another version of the hotsync protocol ({e}): run the same hotsync version on both sides \
             (for a pod, `hotsync attach` again injects the sidecar of this version)"
        )))),
        Ok(Err(e)) if is_tls_failure(&e) => Err(anyhow!(Fatal(anyhow!(
            "the agent at {target} and this host do not trust each other ({e}). Both sides must use the same credentials directory: \
             `hotsync credentials --out DIR`, then `--credentials DIR` for `hotsync sync` and `hotsync-agent serve`"
        )))),
        Ok(Err(quinn::ConnectionError::TimedOut)) => {
            Err(anyhow!("no answer from a hotsync agent at {target}: {}", cfg.route.unreachable_hint()))
        }
        Ok(Err(e)) => Err(anyhow!("cannot connect to {target}: {e}")),
    }
}

/// TLS alerts and certificate errors travel as QUIC crypto errors (codes 0x100–0x1ff).
fn is_tls_failure(e: &quinn::ConnectionError) -> bool {
    crypto_error_code(e).is_some_and(|code| (0x100..0x200).contains(&code))
}

/// The TLS alert `no_application_protocol` (120): the agent speaks another protocol version.
fn is_alpn_mismatch(e: &quinn::ConnectionError) -> bool {
    crypto_error_code(e) == Some(0x100 + 120)
}

fn crypto_error_code(e: &quinn::ConnectionError) -> Option<u64> {
    match e {
        quinn::ConnectionError::TransportError(t) => Some(u64::from(t.code)),
        quinn::ConnectionError::ConnectionClosed(c) => Some(u64::from(c.error_code)),
        _ => None,
    }
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Fatal {}

struct Control {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Not sent yet: it goes with the first request.
    hello: Option<HostMsg>,
}

impl Control {
    /// Sends `msg`, after the Hello if it has not gone yet (one write: one packet).
    async fn send(&mut self, msg: &HostMsg) -> anyhow::Result<()> {
        let mut bytes = self.hello.take().map(|hello| hotsync_core::codec::encode(&hello)).unwrap_or_default();
        bytes.extend_from_slice(&hotsync_core::codec::encode(msg));
        self.send.write_all(&bytes).await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<AgentMsg> {
        match read_frame::<AgentMsg>(&mut self.recv).await? {
            Some(AgentMsg::Refused { reason }) => {
                Err(anyhow!(Fatal(anyhow!("the agent refused the session: {reason}"))))
            }
            Some(msg) => Ok(msg),
            None => bail!("the agent closed the session"),
        }
    }

    async fn fetch_index(&mut self) -> anyhow::Result<TreeIndex> {
        self.send(&HostMsg::GetIndex).await?;
        let mut index = TreeIndex::new();
        loop {
            match self.recv().await? {
                AgentMsg::IndexPart { entries, done } => {
                    for (path, entry) in entries {
                        index.insert(&path, entry);
                    }
                    if done {
                        return Ok(index);
                    }
                }
                other => bail!("expected the agent's index, got {other:?}"),
            }
        }
    }
}

async fn sync_connection(
    conn: &quinn::Connection,
    greeting: &mut Greeting,
    cfg: &SessionConfig,
    snapshots: &mut watch::Receiver<Arc<Snapshot>>,
    model: &mut Option<TreeIndex>,
    ui: &Ui,
    next_id: &mut u64,
) -> anyhow::Result<()> {
    let connected_at = Instant::now();
    let (control, root) = (&mut greeting.control, greeting.root);
    // One hash decides whether a file list is needed: the agent has what we last left it
    // with, or exactly our current tree (a new host process, nothing changed).
    let known = model.as_ref().is_some_and(|m| m.root_hash() == root);
    let current = snapshots.borrow().index.clone();
    let same_tree = known || current.root_hash() == root;
    ui.emit(Event::Connected { target: cfg.label.clone(), agent: greeting.agent.clone(), same_tree });
    if !known {
        *model = Some(if same_tree {
            current
        } else if root == TreeIndex::new().root_hash() {
            // An empty tree has nothing to list: no round trip.
            TreeIndex::new()
        } else {
            control.fetch_index().await?
        });
    }
    let model = model.as_mut().expect("set above");

    let mut first = true;
    let mut reported_in_sync = false;
    let mut failures_in_a_row = 0u32;
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let ops = diff::diff(&snap.index, model, &|p: &RelPath, is_dir| snap.keeps(p, is_dir));
        if ops.is_empty() {
            if !reported_in_sync {
                let stats = conn.stats();
                ui.emit(Event::InSync {
                    target: cfg.label.clone(),
                    root: model.root_hash().to_hex(),
                    entries: model.len() as u64,
                    udp_tx_bytes: stats.udp_tx.bytes,
                    udp_rx_bytes: stats.udp_rx.bytes,
                    lost_packets: stats.path.lost_packets,
                });
                reported_in_sync = true;
            }
            if cfg.once {
                return Ok(());
            }
            tokio::select! {
                changed = snapshots.changed() => changed.context("the source watcher stopped")?,
                e = conn.closed() => bail!("connection lost: {e}"),
            }
            continue;
        }
        reported_in_sync = false;
        let started = if first { connected_at } else { snap.changed_at };
        first = false;
        *next_id += 1;
        let failed = send_changeset(conn, cfg, control, *next_id, &ops, model, ui, started).await?;
        if failed {
            // Let the disk settle (a file being written as it was sent), then retry; back off if
            // the same paths keep failing.
            failures_in_a_row += 1;
            let wait = Duration::from_millis(50 << failures_in_a_row.min(8));
            tokio::select! {
                _ = snapshots.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        } else {
            failures_in_a_row = 0;
        }
    }
}

/// Sends one changeset and updates the model; true when some paths failed.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn send_changeset(
    conn: &quinn::Connection,
    cfg: &SessionConfig,
    control: &mut Control,
    id: u64,
    ops: &[Op],
    model: &mut TreeIndex,
    ui: &Ui,
    started: Instant,
) -> anyhow::Result<bool> {
    let summary = diff::summarize(ops);
    let planned = {
        let (root, ops, snapshot_model, memory) =
            (cfg.source_root.clone(), ops.to_vec(), model.clone(), cfg.memory.clone());
        tokio::task::spawn_blocking(move || send::plan(&root, &ops, &snapshot_model, &memory)).await?
    };
    let wire_bytes: u64 = planned.iter().map(send::Planned::wire_bytes).sum();
    let files_total = planned.len() as u64;
    let streams = send::batch(planned);
    let progress = Arc::new(Progress::default());
    let udp_before = conn.stats().udp_tx.bytes;

    let commit = HostMsg::Commit { id, data_streams: streams.len() as u32, ops: ops.to_vec(), reload: true };
    control.send(&commit).await?;
    let mut tasks = JoinSet::new();
    for records in streams {
        tasks.spawn(send::send_stream(conn.clone(), cfg.source_root.clone(), id, records, progress.clone()));
    }
    let reporter = (files_total as usize >= PROGRESS_FILES || wire_bytes >= PROGRESS_BYTES).then(|| {
        let (ui, progress, label) = (ui.clone(), progress.clone(), cfg.label.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.tick().await;
            loop {
                tick.tick().await;
                ui.emit(Event::Progress {
                    target: label.clone(),
                    files_done: progress.files.load(Ordering::Relaxed),
                    files_total,
                    bytes_done: progress.bytes.load(Ordering::Relaxed),
                    bytes_total: wire_bytes,
                });
            }
        })
    });
    let sent = async {
        let mut learned = Vec::new();
        while let Some(done) = tasks.join_next().await {
            learned.extend(done??);
        }
        anyhow::Ok(learned)
    }
    .await;
    if let Some(r) = reporter {
        r.abort();
    }
    let learned = sent?;
    let reply = control.recv().await?;
    let AgentMsg::Applied { id: got, root, failed, reload, .. } = reply else {
        bail!("expected the agent to confirm changeset {id}, got {reply:?}");
    };
    anyhow::ensure!(got == id, "the agent confirmed changeset {got}, expected {id}");
    for l in learned {
        if !failed.iter().any(|f| f.path == l.path) {
            cfg.memory.put(l.hash, l.chunks);
        }
    }
    let latency = started.elapsed();
    diff::apply(model, ops);
    let diverged = model.root_hash() != root;
    if !failed.is_empty() || diverged {
        // What the agent has is not what we think: learn it again (rare: a file changed
        // while being sent, or something else wrote into the agent's root).
        *model = control.fetch_index().await?;
    }
    ui.emit(Event::Synced {
        target: cfg.label.clone(),
        changeset: id,
        written: summary.written,
        deleted: summary.deleted,
        other: summary.other,
        bytes: summary.bytes,
        sent_bytes: wire_bytes,
        udp_bytes: conn.stats().udp_tx.bytes - udp_before,
        latency_ms: latency.as_secs_f64() * 1000.0,
        reload,
        failed: failed.iter().map(|f| format!("{}: {}", f.path, f.reason)).collect(),
        root: root.to_hex(),
    });
    Ok(!failed.is_empty())
}
