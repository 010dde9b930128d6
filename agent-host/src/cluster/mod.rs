//! Kubernetes: reach the cluster the user's kubeconfig names, find the workload, inject the
//! sidecar, wait for the rollout, follow the pods and open port-forwards to them.
//!
//! Everything goes through `kube`'s client with the user's kubeconfig, as kubectl would: the
//! same requests whatever API server answers.

pub mod forward;
pub mod install;
pub mod pods;
pub mod rollout;
pub mod sidecar;
pub mod workload;

use std::path::PathBuf;

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// kubectl's flags for reaching a cluster.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Namespace of the workload (default: the context's namespace, else "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// A connected cluster client and the namespace to work in.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
    /// The context's name, for messages.
    pub context: String,
    /// The API server's URL, for messages.
    pub server: String,
}

/// Reads the kubeconfig the way kubectl does and makes a client for the chosen context.
pub async fn connect(args: &ClusterArgs) -> anyhow::Result<Cluster> {
    let kubeconfig = read_kubeconfig(args.kubeconfig.as_ref())?;
    let context = args.context.clone().or_else(|| kubeconfig.current_context.clone()).with_context(|| {
        format!("the kubeconfig names no current context; pick one with --context ({})", contexts(&kubeconfig))
    })?;
    if !kubeconfig.contexts.iter().any(|c| c.name == context) {
        bail!("no context {context:?} in the kubeconfig; it has: {}", contexts(&kubeconfig));
    }
    let options = KubeConfigOptions { context: Some(context.clone()), ..KubeConfigOptions::default() };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("cannot use kubeconfig context {context:?}"))?;
    let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).with_context(|| format!("cannot make a client for {server}"))?;
    Ok(Cluster { client, namespace, context, server })
}

fn read_kubeconfig(path: Option<&PathBuf>) -> anyhow::Result<Kubeconfig> {
    if let Some(path) = path {
        return Kubeconfig::read_from(path).with_context(|| format!("cannot read kubeconfig {}", path.display()));
    }
    if let Some(paths) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let paths: Vec<PathBuf> = std::env::split_paths(&paths).collect();
        if !paths.iter().any(|p| p.exists()) {
            bail!(
                "KUBECONFIG names no existing file ({}); point it at your cluster's kubeconfig, or pass --kubeconfig",
                paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        return Kubeconfig::from_env()?.context("cannot read the kubeconfig files named by KUBECONFIG");
    }
    let default = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"));
    match default {
        Some(path) if path.exists() => {
            Kubeconfig::read_from(&path).with_context(|| format!("cannot read kubeconfig {}", path.display()))
        }
        _ => bail!(
            "no kubeconfig found: KUBECONFIG is not set and ~/.kube/config does not exist. \
             Point KUBECONFIG or --kubeconfig at your cluster's (e.g. `kind export kubeconfig`, `minikube update-context`)"
        ),
    }
}

fn contexts(kubeconfig: &Kubeconfig) -> String {
    let names: Vec<&str> = kubeconfig.contexts.iter().map(|c| c.name.as_str()).collect();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

impl Cluster {
    /// Says in plain words what went wrong talking to the API server.
    pub fn explain(&self, e: kube::Error, doing: &str) -> anyhow::Error {
        match e {
            kube::Error::Api(s) if s.code == 401 => anyhow::anyhow!(
                "{doing}: the API server at {} did not accept our credentials (401 {}): refresh your kubeconfig login",
                self.server,
                s.message
            ),
            kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
                "{doing}: {} (403 Forbidden): ask for that permission, or use a context that has it (--context)",
                s.message
            ),
            kube::Error::Api(s) => anyhow::anyhow!("{doing}: {} ({} {})", s.message, s.code, s.reason),
            other => anyhow::anyhow!(
                "{doing}: cannot reach the API server at {} (context {:?}): {other}",
                self.server,
                self.context
            ),
        }
    }
}

/// True for an API answer with this HTTP status.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}
