//! Command line of `hotsync`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hotsync_inject::{Options, Reload};
use hotsync_transport::credentials::GeneratedCredentials;
use hotsync_transport::{Identity, Role};

use crate::attach::{AttachPlan, ClusterTransport};
use crate::cluster::ClusterArgs;
use crate::project::{Project, SyncMapping};
use crate::send::ChunkMemory;
use crate::session::{self, Route, SessionConfig, Transport};
use crate::source;
use crate::ui::Ui;

/// hotsync keeps running containers in sync with your source tree: edit, save, and the app
/// has the new files in milliseconds, with no image build.
///
/// Try it with no cluster at all:   hotsync demo
#[derive(Parser, Debug)]
#[command(name = "hotsync", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More logging (-v debug, -vv trace) on stderr. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole pipeline locally: an agent on loopback, an example app it reloads, and a
    /// few edits with their latency. No cluster needed.
    Demo(DemoArgs),
    /// Sync a directory to a running `hotsync-agent`, then keep it in sync as files change.
    ///
    /// Examples:
    ///   hotsync sync ./src --to 127.0.0.1:7470 --credentials ./creds
    ///   hotsync sync ./src --to 10.0.0.5:7470 --credentials ./creds --once   # sync, verify, exit
    ///   hotsync sync ./src --to 127.0.0.1:7471 --credentials ./creds --transport tcp
    #[command(verbatim_doc_comment)]
    Sync(SyncArgs),
    /// Inject the sidecar into a workload, wait for the rollout, then keep every ready pod in
    /// sync with a local directory: pods that appear later are synced on arrival.
    ///
    /// Reads ./hotsync.yaml when there is one (flags override it).
    ///
    /// Examples:
    ///   hotsync attach deployment/web                        # syncs . to /app in every pod
    ///   hotsync attach deploy/web -n shop --context kind-dev --container app --sync ./src:/app/src
    ///   hotsync attach sts/db --reload-signal HUP --reload-process postgres
    ///   hotsync attach deployment/web --once                 # sync every pod once, verify, exit
    ///
    /// Undo with `hotsync detach deployment/web`.
    #[command(verbatim_doc_comment)]
    Attach(AttachArgs),
    /// Remove what `hotsync attach` added to a workload: its pod template is restored as it
    /// was, the credentials Secret deleted, and a running attach for it stopped.
    ///
    /// Example:
    ///   hotsync detach deployment/web -n shop
    #[command(verbatim_doc_comment)]
    Detach(DetachArgs),
    /// Show every `hotsync attach` running on this machine: its pods, their transport, state,
    /// last sync and how far behind the source they are.
    Status {
        /// Print JSON (one array of sessions).
        #[arg(long)]
        json: bool,
    },
    /// Create mutual-TLS credentials for a host and an agent: a private CA and a certificate
    /// for each side. Give the same directory to both (the agent needs ca.pem, agent.pem and
    /// agent.key; keep host.key on your machine).
    Credentials(CredentialsArgs),
    /// Print manifests with the hotsync sidecar injected, for `kubectl apply` or GitOps.
    ///
    /// Every Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and Pod gets the sidecar and a
    /// Secret with its agent's credentials; the host's half stays on this machine. Other objects
    /// pass through unchanged. Injecting twice changes nothing.
    ///
    /// Example:
    ///   hotsync inject -f deploy.yaml --path /app --reload-signal HUP --reload-process gunicorn | kubectl apply -f -
    #[command(verbatim_doc_comment)]
    Inject(InjectArgs),
    /// The admission webhook that injects the sidecar into pods annotated
    /// `hotsync.dev/inject: "true"`.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// The demo's example app (used by `hotsync demo` and the tests).
    #[command(hide = true)]
    ExampleApp(ExampleAppArgs),
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many scripted edits to make.
    #[arg(long, default_value_t = 3)]
    pub edits: u32,
    /// After the scripted edits, keep syncing until Ctrl-C so you can edit files yourself.
    #[arg(long)]
    pub keep: bool,
    /// Print JSON events, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// The directory to sync.
    pub source: PathBuf,
    /// The agent's address, HOST:PORT (UDP).
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// Directory with ca.pem, host.pem and host.key (from `hotsync credentials`).
    #[arg(long)]
    pub credentials: PathBuf,
    /// How packets reach the agent: udp, or tcp for an agent serving `--listen-tcp` behind a
    /// TCP-only path (port-forward, tunnel).
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    pub transport: Transport,
    /// Sync once, check that the agent's tree equals the source, and exit.
    #[arg(long)]
    pub once: bool,
    /// Print JSON events, one per line (for scripts).
    #[arg(long)]
    pub json: bool,
    /// Also ignore paths matching this gitignore-style pattern (repeatable). `.gitignore`,
    /// `.hotsyncignore` and `.dockerignore` are always read; `.git/` is never synced.
    #[arg(long, value_name = "PATTERN")]
    pub ignore: Vec<String>,
    /// Where to keep the hash cache (default: $XDG_CACHE_HOME/hotsync or ~/.cache/hotsync).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The workload as TYPE/NAME: deployment/web, deploy/web, sts/db, ds/agent, pod/web-abc
    /// (default: `workload` in hotsync.yaml).
    pub workload: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Project file (default: ./hotsync.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The app container whose files are synced (default: the pod's first container).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// What to sync where: LOCAL:REMOTE (default: .:/app).
    #[arg(long, value_name = "LOCAL:REMOTE")]
    pub sync: Option<String>,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    /// The sidecar image (default: hotsync-agent:VERSION; load it into your cluster first).
    #[arg(long, value_name = "IMAGE")]
    pub agent_image: Option<String>,
    /// How to reach the sidecars: auto tries the pods' IPs, then falls back to port-forward.
    #[arg(long, value_enum)]
    pub transport: Option<ClusterTransport>,
    /// Also ignore paths matching this gitignore-style pattern (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub ignore: Vec<String>,
    /// Sync every ready pod once, check each pod's tree equals the source, and exit.
    #[arg(long)]
    pub once: bool,
    /// Print JSON events, one per line.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the rollout.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout: u64,
    /// Where to keep the hash cache (default: $XDG_CACHE_HOME/hotsync or ~/.cache/hotsync).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Where the host keeps workload credentials (default: $XDG_CONFIG_HOME/hotsync/credentials).
    #[arg(long, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// The workload as TYPE/NAME (default: `workload` in hotsync.yaml).
    pub workload: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Project file (default: ./hotsync.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the host keeps workload credentials (default: $XDG_CONFIG_HOME/hotsync/credentials).
    #[arg(long, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum WebhookCommand {
    /// Print the webhook's manifests (Namespace, ServiceAccount, TLS Secret, Deployment,
    /// Service, MutatingWebhookConfiguration with its caBundle) for `kubectl apply -f -`.
    /// Each run makes a new serving certificate: applying again rotates it.
    Manifests {
        /// Namespace the webhook runs in (skipped by the webhook itself).
        #[arg(long, default_value = "hotsync-system")]
        namespace: String,
        /// The hotsync-agent image (it serves the webhook and is the injected sidecar).
        #[arg(long, default_value = concat!("hotsync-agent:", env!("CARGO_PKG_VERSION")))]
        image: String,
    },
    /// Install the webhook in the cluster: the objects `manifests` prints, created or updated
    /// (a new serving certificate each time: installing again rotates it), then waits for its
    /// pods. Afterwards, annotate a workload's pod template with hotsync.dev/inject=true.
    ///
    /// Example:
    ///   hotsync webhook install --context kind-dev
    ///   kubectl patch deploy web -p '{"spec":{"template":{"metadata":{"annotations":{"hotsync.dev/inject":"true"}}}}}'
    #[command(verbatim_doc_comment)]
    Install {
        /// Namespace the webhook runs in (created when missing).
        #[arg(long, default_value = "hotsync-system")]
        namespace: String,
        /// The hotsync-agent image (it serves the webhook and is the injected sidecar).
        #[arg(long, default_value = concat!("hotsync-agent:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// Kubeconfig context to use (default: its current context).
        #[arg(long)]
        context: Option<String>,
        /// Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// How long to wait for the webhook's pods.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        timeout: u64,
    },
    /// Remove the webhook: its configuration first (pods are created untouched from then on),
    /// then its objects, and its namespace if install created it. Injected pods keep running.
    Uninstall {
        /// Namespace the webhook runs in.
        #[arg(long, default_value = "hotsync-system")]
        namespace: String,
        #[arg(long)]
        context: Option<String>,
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// Manifests to read (YAML or JSON, several documents allowed); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Path in the app container that hotsync keeps in sync.
    #[arg(long, default_value = "/app")]
    pub path: String,
    /// The app container (default: the first one).
    #[arg(long)]
    pub container: Option<String>,
    /// The sidecar image.
    #[arg(long, default_value = concat!("hotsync-agent:", env!("CARGO_PKG_VERSION")))]
    pub agent_image: String,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    /// Where the host keeps workload credentials (default: $XDG_CONFIG_HOME/hotsync/credentials).
    #[arg(long, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
}

/// How the injected sidecar behaves (`attach` and `inject`).
#[derive(Args, Debug, Clone, Default)]
pub struct SidecarArgs {
    /// After each changeset, send this signal (HUP, USR1…) to the process named by --reload-process.
    #[arg(long, requires = "reload_process", value_name = "SIGNAL")]
    pub reload_signal: Option<String>,
    /// The process that gets the reload signal: its name, as `ps` shows it (e.g. gunicorn).
    #[arg(long, value_name = "NAME")]
    pub reload_process: Option<String>,
    /// After each changeset, run this command in the synced directory (in the sidecar).
    #[arg(long, conflicts_with = "reload_signal", value_name = "CMD")]
    pub reload_exec: Option<String>,
    /// Owner of the synced files and user of the sidecar (default: the app container's).
    #[arg(long, value_name = "UID")]
    pub run_as_user: Option<i64>,
    #[arg(long, value_name = "GID")]
    pub run_as_group: Option<i64>,
}

impl SidecarArgs {
    /// The reload action the flags give, else the project file's.
    pub fn reload(&self, project: Option<&Project>) -> Reload {
        let from_project = project.and_then(|p| p.reload.clone()).unwrap_or_default();
        let signal = self.reload_signal.clone().or(from_project.signal);
        let process = self.reload_process.clone().or(from_project.process);
        let exec = self.reload_exec.clone().or(from_project.exec);
        match (signal, process, exec) {
            (Some(signal), Some(process), _) if self.reload_exec.is_none() => Reload::Signal { signal, process },
            (_, _, Some(command)) => Reload::Exec { command },
            _ => Reload::None,
        }
    }
}

#[derive(Args, Debug)]
pub struct CredentialsArgs {
    /// Directory to create the credentials in (created, mode 0700; must not hold any yet).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExampleAppArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub state_file: Option<PathBuf>,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(a) => {
            crate::demo::run(crate::demo::DemoOptions { edits: a.edits, keep: a.keep, json: a.json }).await
        }
        Command::Sync(a) => sync(a).await,
        Command::Attach(a) => attach(a).await,
        Command::Detach(a) => {
            let project = crate::attach::load_project(a.config.as_ref())?;
            let workload = crate::attach::workload_from(a.workload.as_deref(), project.as_ref())?;
            let cluster = crate::attach::cluster_args(a.cluster, project.as_ref());
            let creds = a.credentials_dir.unwrap_or_else(|| config_dir().join("credentials"));
            crate::attach::detach(&workload, &cluster, &creds).await
        }
        Command::Status { json } => {
            let sessions = crate::status::running();
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else {
                print!("{}", crate::status::render(&sessions));
            }
            Ok(())
        }
        Command::Credentials(a) => credentials(&a.out),
        Command::Inject(a) => inject(a),
        Command::Webhook(WebhookCommand::Manifests { namespace, image }) => {
            print!("{}", crate::webhook_manifests::manifests(&namespace, &image)?);
            Ok(())
        }
        Command::Webhook(WebhookCommand::Install { namespace, image, context, kubeconfig, timeout }) => {
            let cluster = crate::cluster::connect(&ClusterArgs { namespace: None, context, kubeconfig }).await?;
            let timeout = std::time::Duration::from_secs(timeout);
            crate::cluster::install::install(&cluster, &namespace, &image, timeout, |m| println!("• {m}")).await?;
            println!("• the webhook is ready: pods annotated hotsync.dev/inject=true now get the sidecar");
            Ok(())
        }
        Command::Webhook(WebhookCommand::Uninstall { namespace, context, kubeconfig }) => {
            let cluster = crate::cluster::connect(&ClusterArgs { namespace: None, context, kubeconfig }).await?;
            crate::cluster::install::uninstall(&cluster, &namespace, |m| println!("• {m}")).await
        }
        Command::ExampleApp(a) => crate::example_app::run(a.dir, a.state_file).await,
    }
}

async fn attach(a: AttachArgs) -> anyhow::Result<()> {
    let project = crate::attach::load_project(a.config.as_ref())?;
    let p = project.as_ref();
    let workload = crate::attach::workload_from(a.workload.as_deref(), p)?;
    let sync = match (&a.sync, p) {
        (Some(text), _) => SyncMapping::parse(text, Path::new("."))?,
        (None, Some(project)) => project.sync_mapping()?.unwrap_or(SyncMapping::parse(".:/app", &project.dir)?),
        (None, None) => SyncMapping::parse(".:/app", Path::new("."))?,
    };
    let transport = match (a.transport, p.and_then(|p| p.transport.as_deref())) {
        (Some(t), _) => t,
        (None, Some(t)) => ClusterTransport::from_str(t, true).map_err(|e| anyhow::anyhow!("transport: {e}"))?,
        (None, None) => ClusterTransport::Auto,
    };
    let mut ignore = p.map(|p| p.ignore.clone()).unwrap_or_default();
    ignore.extend(a.ignore);
    let options = Options {
        container: a.container.or_else(|| p.and_then(|p| p.container.clone())),
        path: sync.remote.clone(),
        agent_image: a
            .agent_image
            .or_else(|| p.and_then(|p| p.agent_image.clone()))
            .unwrap_or_else(|| concat!("hotsync-agent:", env!("CARGO_PKG_VERSION")).into()),
        secret: String::new(),
        reload: a.sidecar.reload(p),
        run_as_user: a.sidecar.run_as_user,
        run_as_group: a.sidecar.run_as_group,
    };
    crate::attach::attach(AttachPlan {
        workload,
        cluster: crate::attach::cluster_args(a.cluster, p),
        sync,
        options,
        ignore,
        transport,
        once: a.once,
        json: a.json,
        rollout_timeout: std::time::Duration::from_secs(a.timeout),
        credentials_root: a.credentials_dir.unwrap_or_else(|| config_dir().join("credentials")),
        cache_dir: a.cache_dir,
    })
    .await
}

fn credentials(out: &Path) -> anyhow::Result<()> {
    GeneratedCredentials::generate()?.write_to(out)?;
    println!("wrote hotsync credentials to {}:", out.display());
    println!("  ca.pem               the private CA both sides trust (its key was not kept)");
    println!("  host.pem, host.key   for `hotsync sync --credentials {}`", out.display());
    println!("  agent.pem, agent.key for `hotsync-agent serve --credentials DIR` (with ca.pem)");
    Ok(())
}

fn inject(a: InjectArgs) -> anyhow::Result<()> {
    let reload = a.sidecar.reload(None);
    let options = Options {
        container: a.container,
        path: a.path,
        agent_image: a.agent_image,
        secret: String::new(),
        reload,
        run_as_user: a.sidecar.run_as_user,
        run_as_group: a.sidecar.run_as_group,
    };
    let credentials_root = a.credentials_dir.unwrap_or_else(|| config_dir().join("credentials"));
    let text = crate::manifests::read_manifests(&a.file)?;
    let source = a.file.display().to_string();
    let out = crate::manifests::inject_manifests(
        &text,
        &source,
        &crate::manifests::InjectRequest { options, credentials_root },
    )?;
    print!("{out}");
    Ok(())
}

/// `$XDG_CONFIG_HOME/hotsync`, or `~/.config/hotsync`.
fn config_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(std::env::temp_dir)
        .join("hotsync")
}

async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let ui = Ui::new(args.json);
    let identity = Arc::new(Identity::load(&args.credentials, Role::Host)?);
    let addr = resolve(&args.to).await?;
    let root = args
        .source
        .canonicalize()
        .with_context(|| format!("source directory {} does not exist", args.source.display()))?;
    if !root.is_dir() {
        bail!("source {} is not a directory", root.display());
    }
    let (cache_file, chunks_file) = cache_files(&root, args.cache_dir.as_deref());
    // The scan runs while the session connects; its receiver is kept for the save below.
    let scanned = Arc::new(std::sync::OnceLock::new());
    let scan = {
        let (root, ignore, watch, ui, scanned) =
            (root.clone(), args.ignore.clone(), !args.once, ui.clone(), scanned.clone());
        async move {
            let snapshots =
                tokio::task::spawn_blocking(move || source::start(&root, &ignore, cache_file, watch, ui)).await??;
            let _ = scanned.set(snapshots.clone());
            Ok(snapshots)
        }
    };
    let memory = Arc::new(ChunkMemory::load(&chunks_file));
    let cfg = SessionConfig {
        route: Route::new(addr, args.transport),
        label: args.to.clone(),
        identity,
        once: args.once,
        source_root: root,
        memory: memory.clone(),
    };
    let result = tokio::select! {
        r = session::run_while_scanning(cfg, scan, ui) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let Some(snapshots) = scanned.get() else { return result };
    let index = snapshots.borrow().index.clone();
    let live = crate::source::content_hashes(&index);
    if let Err(e) = memory.save(&chunks_file, |h| live.contains(h)) {
        tracing::warn!("cannot save chunk lists to {}: {e}", chunks_file.display());
    }
    result
}

async fn resolve(to: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = to.parse() {
        return Ok(addr);
    }
    if !to.contains(':') {
        bail!("--to {to:?}: give HOST:PORT, e.g. 127.0.0.1:7470");
    }
    tokio::net::lookup_host(to)
        .await
        .with_context(|| format!("cannot resolve --to {to:?}"))?
        .next()
        .with_context(|| format!("--to {to:?} resolves to no address"))
}

/// The hash cache and chunk-list files for a source root.
pub(crate) fn cache_files(root: &Path, dir: Option<&Path>) -> (PathBuf, PathBuf) {
    let dir = dir.map_or_else(
        || {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("hotsync")
        },
        Path::to_owned,
    );
    let key = hotsync_core::Hash::of(root.as_os_str().as_encoded_bytes()).short();
    (dir.join(format!("{key}.hashes")), dir.join(format!("{key}.chunks")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_flags_override_the_project_file() {
        let project = Project::parse("reload: {exec: make reload}\n", "hotsync.yaml", Path::new(".")).unwrap();
        let none = SidecarArgs::default();
        assert_eq!(none.reload(Some(&project)), Reload::Exec { command: "make reload".into() });
        assert_eq!(none.reload(None), Reload::None);
        let signal = SidecarArgs {
            reload_signal: Some("HUP".into()),
            reload_process: Some("app".into()),
            ..SidecarArgs::default()
        };
        assert_eq!(signal.reload(Some(&project)), Reload::Signal { signal: "HUP".into(), process: "app".into() });
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
