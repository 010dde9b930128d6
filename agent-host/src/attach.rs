//! `hotsync attach` and `hotsync detach`: the Kubernetes inner loop without image builds.
//!
//! attach: find the workload → credentials Secret → sidecar injected into its pod template
//! (the one injection of `hotsync-inject`) → wait for the rollout → one session per ready pod,
//! following pods as they come and go, each reached directly over UDP or through the API
//! server's port-forward.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hotsync_core::proto::AGENT_SERVER_NAME;
use hotsync_inject::{AGENT_PORT, Options};
use hotsync_transport::{Identity, Role};
use kube::api::DynamicObject;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::pods::{PodSet, ReadyPod};
use crate::cluster::sidecar::{self, Injection, Restored, SecretChange};
use crate::cluster::workload::{Kind, WorkloadRef, selector_of};
use crate::cluster::{self, Cluster, ClusterArgs, rollout};
use crate::project::{Project, SyncMapping};
use crate::send::ChunkMemory;
use crate::session::{self, Route, SessionConfig};
use crate::source::{self, Snapshot};
use crate::status::{self, SessionStatus};
use crate::ui::{Event, Ui};

/// How the host reaches the sidecars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterTransport {
    /// Direct UDP when the pods' IPs answer from here, else port-forward.
    Auto,
    /// Through the API server's port-forward (works wherever kubectl works).
    PortForward,
    /// UDP straight to each pod's IP (routable pod network, e.g. a local cluster on Linux).
    Direct,
}

/// Everything `attach` needs, merged from flags and the project file.
#[derive(Debug, Clone)]
pub struct AttachPlan {
    pub workload: WorkloadRef,
    pub cluster: ClusterArgs,
    pub sync: SyncMapping,
    pub options: Options,
    pub ignore: Vec<String>,
    pub transport: ClusterTransport,
    pub once: bool,
    pub json: bool,
    pub rollout_timeout: Duration,
    pub credentials_root: PathBuf,
    pub cache_dir: Option<PathBuf>,
}

/// How long auto waits for a pod's agent to answer on its IP before choosing port-forward.
const DIRECT_PROBE: Duration = Duration::from_millis(1500);
/// How long `--once` waits for the first ready pod after the rollout.
const FIRST_POD: Duration = Duration::from_secs(120);

/// Resolves the project file (explicit, or `./hotsync.yaml`) and returns it, if any.
pub fn load_project(explicit: Option<&PathBuf>) -> anyhow::Result<Option<Project>> {
    match explicit {
        Some(path) => Project::read(path).map(Some),
        None => Project::find(&std::env::current_dir()?),
    }
}

/// Which workload a command names: the argument, else the project file's.
pub fn workload_from(arg: Option<&str>, project: Option<&Project>) -> anyhow::Result<WorkloadRef> {
    match arg.or_else(|| project.and_then(|p| p.workload.as_deref())) {
        Some(w) => w.parse(),
        None => bail!(
            "name the workload, e.g. `hotsync attach deployment/web`, or set `workload:` in {}",
            crate::project::FILE_NAME
        ),
    }
}

/// Fills cluster flags the user did not give from the project file.
pub fn cluster_args(mut args: ClusterArgs, project: Option<&Project>) -> ClusterArgs {
    if let Some(p) = project {
        args.namespace = args.namespace.or_else(|| p.namespace.clone());
        args.context = args.context.or_else(|| p.context.clone());
    }
    args
}

/// Runs `hotsync attach`.
pub async fn attach(plan: AttachPlan) -> anyhow::Result<()> {
    let (ui, events) = Ui::observed(plan.json);
    let root = plan
        .sync
        .local
        .canonicalize()
        .with_context(|| format!("the local directory {} does not exist", plan.sync.local.display()))?;
    anyhow::ensure!(root.is_dir(), "{} is not a directory", root.display());

    let cluster = cluster::connect(&plan.cluster).await?;
    let workload = &plan.workload;
    let (obj, identity) = prepare(&cluster, &plan, &ui).await?;

    let (cache_file, chunks_file) = crate::cli::cache_files(&root, plan.cache_dir.as_deref());
    let snapshots = source::start(&root, &plan.ignore, cache_file, !plan.once, ui.clone())?;
    let memory = Arc::new(ChunkMemory::load(&chunks_file));
    let status_file = status::keep_file(
        SessionStatus {
            pid: std::process::id(),
            workload: workload.to_string(),
            namespace: cluster.namespace.clone(),
            context: cluster.context.clone(),
            source: root.display().to_string(),
            pods: BTreeMap::new(),
        },
        events,
        snapshots.clone(),
    );

    let pods = if workload.kind == Kind::Pod {
        cluster::pods::follow(&cluster, &format!("metadata.name={}", workload.name), true)
    } else {
        cluster::pods::follow(&cluster, &selector_of(&obj)?, false)
    };
    let fan = FanOut {
        cluster,
        identity,
        transport: plan.transport,
        chosen: None,
        once: plan.once,
        source_root: root,
        memory: memory.clone(),
        ui: ui.clone(),
    };
    let result = tokio::select! {
        r = fan.run(pods, snapshots.clone()) => r,
        () = interrupted() => {
            ui.emit(Event::Step { message: format!("stopped; the sidecar stays in {workload} until `hotsync detach {workload}`") });
            Ok(())
        }
    };
    let live = source::content_hashes(&snapshots.borrow().index);
    if let Err(e) = memory.save(&chunks_file, |h| live.contains(h)) {
        tracing::warn!("cannot save chunk lists to {}: {e}", chunks_file.display());
    }
    drop(ui);
    status_file.abort();
    let _ = std::fs::remove_file(status::sessions_dir().join(format!("{}.json", std::process::id())));
    result
}

/// Credentials, sidecar, rollout: the workload ready to be synced. Returns the workload as
/// read and the host's identity for its sidecars.
async fn prepare(cluster: &Cluster, plan: &AttachPlan, ui: &Ui) -> anyhow::Result<(DynamicObject, Arc<Identity>)> {
    let workload = &plan.workload;
    // Read first: an unknown workload or a forbidden read stops here, having changed nothing.
    let obj = workload.get(cluster).await?;
    let secret = sidecar::secret_name(workload, &obj.data);
    let creds_dir = plan.credentials_root.join(&cluster.namespace).join(&secret);
    let options = Options { secret: secret.clone(), path: plan.sync.remote.clone(), ..plan.options.clone() };

    let secret_change = if workload.kind == Kind::Pod {
        SecretChange::Unchanged
    } else {
        sidecar::ensure_secret(cluster, &secret, &creds_dir).await?
    };
    if secret_change != SecretChange::Unchanged {
        ui.emit(Event::Step { message: format!("Secret {secret} holds the sidecar's credentials") });
    }
    let injected = async {
        let digest = sidecar::credentials_digest(&creds_dir).with_context(|| {
            format!(
                "no local credentials for {workload} in {}; attach to the workload (not a pod) once",
                creds_dir.display()
            )
        })?;
        sidecar::inject_workload(cluster, workload, &options, &digest).await
    }
    .await;
    let injection = match injected {
        Ok(i) => i,
        Err(e) => {
            // Leave nothing behind: a Secret made for a workload that did not change.
            if secret_change == SecretChange::Created {
                sidecar::forget_secret(cluster, &secret).await;
            }
            return Err(e);
        }
    };
    let identity = Arc::new(Identity::load(&creds_dir, Role::Host)?);
    ui.emit(Event::Step {
        message: match injection {
            Injection::Injected => format!("injected the hotsync sidecar into {workload}; waiting for the rollout"),
            Injection::AlreadyInjected => format!("{workload} carries the hotsync sidecar already"),
            Injection::ByWebhook => format!("{workload}'s pods get the sidecar from the admission webhook"),
            Injection::PodInjected => format!("{workload} carries the hotsync sidecar"),
        },
    });
    let progress_ui = ui.clone();
    rollout::wait(cluster, workload, plan.rollout_timeout, |state| {
        progress_ui.emit(Event::Step { message: format!("rollout: {}", rollout::describe(Some(state))) });
    })
    .await?;
    Ok((obj, identity))
}

/// Ctrl-C, or SIGTERM (`hotsync detach` and process supervisors stop an attach so).
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
    }
}

/// One session per ready pod.
struct FanOut {
    cluster: Cluster,
    identity: Arc<Identity>,
    transport: ClusterTransport,
    /// What auto chose, once it has.
    chosen: Option<ClusterTransport>,
    once: bool,
    source_root: PathBuf,
    memory: Arc<ChunkMemory>,
    ui: Ui,
}

impl FanOut {
    async fn run(
        mut self,
        mut pods: watch::Receiver<PodSet>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> anyhow::Result<()> {
        if self.once {
            let ready = tokio::time::timeout(FIRST_POD, pods.wait_for(|set| !set.is_empty()))
                .await
                .context("no pod of the workload became ready with the sidecar")?
                .context("stopped following pods")?
                .clone();
            let mut sessions = Vec::new();
            for pod in ready.values() {
                let handle = self.start(pod, snapshots.clone()).await?;
                sessions.push((pod.name.clone(), handle));
            }
            let mut failed = Vec::new();
            for (name, handle) in sessions {
                if let Err(e) = handle.await.context("session task")? {
                    failed.push(format!("pod/{name}: {e:#}"));
                }
            }
            if !failed.is_empty() {
                bail!("{} pod(s) not in sync: {}", failed.len(), failed.join("; "));
            }
            return Ok(());
        }
        let mut running: BTreeMap<String, (String, JoinHandle<anyhow::Result<()>>)> = BTreeMap::new();
        // Pods whose session ended with an error retrying cannot fix: not restarted.
        let mut given_up: BTreeSet<String> = BTreeSet::new();
        loop {
            let set = pods.borrow_and_update().clone();
            let gone: Vec<String> = running
                .iter()
                .filter(|(name, (uid, _))| set.get(*name).is_none_or(|p| &p.uid != uid))
                .map(|(name, _)| name.clone())
                .collect();
            for name in gone {
                if let Some((_, handle)) = running.remove(&name) {
                    handle.abort();
                }
                self.ui.emit(Event::PodLeft { pod: name, reason: "deleted, replaced or not ready".into() });
            }
            for pod in set.values() {
                if running.contains_key(&pod.name) || given_up.contains(&pod.uid) {
                    continue;
                }
                let handle = self.start(pod, snapshots.clone()).await?;
                running.insert(pod.name.clone(), (pod.uid.clone(), handle));
            }
            let finished: Vec<String> =
                running.iter().filter(|(_, (_, h))| h.is_finished()).map(|(n, _)| n.clone()).collect();
            for name in finished {
                let (uid, handle) = running.remove(&name).expect("listed above");
                if let Ok(Err(e)) = handle.await {
                    self.ui.emit(Event::Warning { message: format!("pod/{name}: {e:#}") });
                }
                given_up.insert(uid);
            }
            tokio::select! {
                changed = pods.changed() => changed.context("stopped following pods")?,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Starts the session for one pod, on the transport chosen for the workload.
    async fn start(
        &mut self,
        pod: &ReadyPod,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        let transport = self.choose(pod).await?;
        let route = match (transport, pod.ip) {
            (ClusterTransport::Direct, Some(ip)) => Route::Udp(SocketAddr::new(ip, AGENT_PORT as u16)),
            (ClusterTransport::Direct, None) => bail!("pod/{} has no IP yet for --transport direct", pod.name),
            _ => Route::Stream(cluster::forward::opener(&self.cluster, &pod.name, AGENT_PORT as u16)),
        };
        let described = match &route {
            Route::Udp(addr) => format!("direct UDP {addr}"),
            _ => "port-forward".into(),
        };
        self.ui.emit(Event::PodJoined { pod: pod.name.clone(), transport: described });
        let cfg = SessionConfig {
            route,
            label: format!("pod/{}", pod.name),
            identity: self.identity.clone(),
            once: self.once,
            source_root: self.source_root.clone(),
            memory: self.memory.clone(),
        };
        Ok(tokio::spawn(session::run(cfg, snapshots, self.ui.clone())))
    }

    /// The transport for the workload: as asked, or for auto, direct if the first pod's agent
    /// answers on its IP, else port-forward (decided once).
    async fn choose(&mut self, pod: &ReadyPod) -> anyhow::Result<ClusterTransport> {
        if self.transport != ClusterTransport::Auto {
            return Ok(self.transport);
        }
        if let Some(t) = self.chosen {
            return Ok(t);
        }
        let direct = match pod.ip {
            Some(ip) => answers_directly(&self.identity, SocketAddr::new(ip, AGENT_PORT as u16)).await,
            None => false,
        };
        let chosen = if direct { ClusterTransport::Direct } else { ClusterTransport::PortForward };
        self.ui.emit(Event::Step {
            message: if direct {
                "transport: direct UDP to the pods' IPs (they answer from here)".into()
            } else {
                "transport: port-forward through the API server (the pods' IPs do not answer from here)".into()
            },
        });
        self.chosen = Some(chosen);
        Ok(chosen)
    }
}

/// True when a hotsync agent completes a QUIC handshake at `addr` within [`DIRECT_PROBE`].
async fn answers_directly(identity: &Identity, addr: SocketAddr) -> bool {
    let Ok(endpoint) = hotsync_transport::client_endpoint(identity, addr) else { return false };
    let Ok(connecting) = endpoint.connect(addr, AGENT_SERVER_NAME) else { return false };
    match tokio::time::timeout(DIRECT_PROBE, connecting).await {
        Ok(Ok(conn)) => {
            conn.close(0u32.into(), b"probe");
            endpoint.wait_idle().await;
            true
        }
        _ => false,
    }
}

/// Runs `hotsync detach`: stops local attach sessions of the workload, restores its pod
/// template and deletes its credentials Secret.
pub async fn detach(
    workload: &WorkloadRef,
    args: &ClusterArgs,
    credentials_root: &std::path::Path,
) -> anyhow::Result<()> {
    let cluster = cluster::connect(args).await?;
    for s in status::running() {
        if s.workload == workload.to_string() && s.namespace == cluster.namespace && s.context == cluster.context {
            status::stop(s.pid);
            println!("• stopped the running attach (pid {})", s.pid);
        }
    }
    let done = sidecar::detach_workload(&cluster, workload).await?;
    match done.template {
        Restored::Original => {
            println!("• restored the pod template of {workload} exactly as it was before attach; its pods roll back");
        }
        Restored::KeptLaterChanges => println!(
            "• took hotsync's sidecar out of {workload}; its pod template changed since attach, and those changes stay"
        ),
        Restored::NotAttached => println!(
            "• {workload} was not changed by attach (injected by `hotsync inject` or the webhook, or never attached): left as it is"
        ),
    }
    if done.secret_deleted {
        println!("• deleted the credentials Secret {}", done.secret);
    }
    let local = credentials_root.join(&cluster.namespace).join(&done.secret);
    if done.template != Restored::NotAttached && local.exists() {
        std::fs::remove_dir_all(&local).with_context(|| format!("cannot remove {}", local.display()))?;
    }
    Ok(())
}
