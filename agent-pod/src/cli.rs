//! Command line of `hotsync-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::reload::{ReloadAction, SignalTarget, parse_signal};
use crate::server::{Agent, AgentConfig};

/// The hotsync sidecar: receives file changes from `hotsync` over QUIC (mutual TLS) and
/// applies them atomically in its root, then reloads the app.
#[derive(Parser, Debug)]
#[command(name = "hotsync-agent", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log format: human text, or one JSON object per line (for log collectors in a pod).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve a sync root: accept changesets from the host holding the matching credentials.
    ///
    /// Example:
    ///   hotsync-agent serve --root /srv/app --listen 0.0.0.0:7470 --credentials /etc/hotsync \
    ///       --on-change-signal HUP --signal-process myapp
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Serve the mutating admission webhook over HTTPS: pods annotated
    /// `hotsync.dev/inject: "true"` (or in a namespace labelled `hotsync.dev/inject=enabled`)
    /// get the sidecar. Install it with `hotsync webhook manifests | kubectl apply -f -`.
    Webhook(WebhookArgs),
    /// Exit 0 when ROOT is a directory the agent has prepared (its state directory is there):
    /// the container image's health check.
    Health {
        #[arg(long)]
        root: PathBuf,
    },
    /// Copy this binary into DIR (an injected pod's first init step: the app image then runs
    /// the copy, so it needs nothing of hotsync's).
    Install {
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Copy the app image's files at FROM into the synced volume at TO, once (an injected
    /// pod's second init step, run inside the app's image).
    Seed {
        #[arg(long, value_name = "FROM")]
        from: PathBuf,
        #[arg(long, value_name = "TO")]
        to: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// HTTPS address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain (re-read when it changes, so rotation needs no restart).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// PEM private key.
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
    /// The sidecar image injected pods get.
    #[arg(long, default_value = concat!("hotsync-agent:", env!("CARGO_PKG_VERSION")))]
    pub agent_image: String,
    /// Synced path when a pod does not say (annotation hotsync.dev/path).
    #[arg(long, default_value = "/app")]
    pub path: String,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory to keep in sync (the app's view of the source). Must exist and be writable.
    #[arg(long)]
    pub root: PathBuf,
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7470")]
    pub listen: SocketAddr,
    /// Also serve QUIC framed over TCP on this address, for hosts that reach the agent through
    /// a TCP-only path (a Kubernetes port-forward, an SSH tunnel).
    #[arg(long, value_name = "ADDR")]
    pub listen_tcp: Option<SocketAddr>,
    /// Directory with ca.pem, agent.pem and agent.key (from `hotsync credentials`).
    #[arg(long)]
    pub credentials: PathBuf,
    /// After each changeset, send this signal (HUP, USR1, TERM, a number…) to the app.
    #[arg(long, value_name = "SIGNAL", requires = "signal_who")]
    pub on_change_signal: Option<String>,
    /// Which process gets the signal: its name (as in `ps`, e.g. `myapp`).
    #[arg(long, value_name = "NAME", group = "signal_who")]
    pub signal_process: Option<String>,
    /// Which process gets the signal: its pid.
    #[arg(long, value_name = "PID", group = "signal_who")]
    pub signal_pid: Option<i32>,
    /// After each changeset, run this command in the root (split like a shell would; no shell
    /// is involved, so write `sh -c '…'` if you need one).
    #[arg(long, value_name = "CMD", conflicts_with = "on_change_signal")]
    pub on_change_exec: Option<String>,
}

impl ServeArgs {
    /// The reload action the flags describe.
    pub fn reload_action(&self) -> anyhow::Result<ReloadAction> {
        if let Some(sig) = &self.on_change_signal {
            let signal = parse_signal(sig).map_err(anyhow::Error::msg)?;
            let target = match (&self.signal_process, self.signal_pid) {
                (Some(name), _) => SignalTarget::Name(name.clone()),
                (None, Some(pid)) => SignalTarget::Pid(pid),
                (None, None) => bail!("--on-change-signal needs --signal-process NAME or --signal-pid PID"),
            };
            return Ok(ReloadAction::Signal { signal, target });
        }
        if let Some(cmd) = &self.on_change_exec {
            let argv = shlex::split(cmd)
                .filter(|a| !a.is_empty())
                .with_context(|| format!("--on-change-exec {cmd:?}: unbalanced quotes or empty command"))?;
            return Ok(ReloadAction::Exec { argv });
        }
        Ok(ReloadAction::None)
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Install { to } => crate::pod_setup::install(&to),
        Command::Health { root } => {
            let state = root.join(hotsync_core::path::AGENT_STATE_DIR).join("tmp");
            anyhow::ensure!(state.is_dir(), "{} is not prepared by a running agent", root.display());
            Ok(())
        }
        Command::Webhook(a) => {
            let defaults = hotsync_inject::Options {
                container: None,
                path: a.path,
                agent_image: a.agent_image,
                secret: String::new(),
                reload: hotsync_inject::Reload::None,
                run_as_user: None,
                run_as_group: None,
            };
            let config =
                crate::webhook::WebhookConfig { listen: a.listen, tls_cert: a.tls_cert, tls_key: a.tls_key, defaults };
            let webhook = crate::webhook::Webhook::bind(config).await?;
            tracing::info!(addr = %webhook.local_addr()?, "hotsync webhook listening");
            tokio::select! {
                r = webhook.run() => r,
                () = shutdown_signal() => Ok(()),
            }
        }
        Command::Seed { from, to } => {
            match crate::pod_setup::seed(&from, &to)? {
                Some(s) => tracing::info!(
                    files = s.files,
                    dirs = s.dirs,
                    links = s.links,
                    bytes = s.bytes,
                    "seeded from the image"
                ),
                None => tracing::info!("already seeded; synced files kept"),
            }
            Ok(())
        }
        Command::Serve(args) => {
            let reload = args.reload_action()?;
            let identity = hotsync_transport::Identity::load(&args.credentials, hotsync_transport::Role::Agent)?;
            let config = AgentConfig {
                root: args.root.clone(),
                listen: args.listen,
                listen_tcp: args.listen_tcp,
                identity,
                reload,
            };
            let agent = Agent::start(config)?;
            let addr = agent.local_addr()?;
            if let Some(tcp) = agent.tcp_addr() {
                tracing::info!(%addr, %tcp, root = %args.root.display(), "hotsync-agent listening");
            } else {
                tracing::info!(%addr, root = %args.root.display(), "hotsync-agent listening");
            }
            let endpoints = agent.endpoints();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                for e in endpoints {
                    e.close(0u32.into(), b"agent shutting down");
                }
            });
            agent.run().await
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
