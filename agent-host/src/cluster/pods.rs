//! Following a workload's pods: which of them carry the sidecar and are ready, as pods come
//! (scale up, restarts, evictions) and go.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::Cluster;

/// A pod whose sidecar can be synced to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPod {
    pub name: String,
    /// Changes when a pod of the same name is a new pod (a StatefulSet's restart).
    pub uid: String,
    pub ip: Option<IpAddr>,
}

/// Ready pods by name.
pub type PodSet = BTreeMap<String, ReadyPod>;

/// The pod as a sync target, when it carries the sidecar, runs, is ready and is not going away.
pub fn ready_agent(pod: &Pod) -> Option<ReadyPod> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let sidecar_running = status
        .container_statuses
        .iter()
        .flatten()
        .any(|c| c.name == hotsync_inject::SIDECAR && c.state.as_ref().is_some_and(|s| s.running.is_some()));
    let usable = hotsync_inject::is_injected(spec)
        && pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && (ready || sidecar_running);
    usable.then(|| ReadyPod {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        ip: status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
    })
}

/// Watches the pods `selector` picks (a label selector, or `metadata.name=…` as a field
/// selector when `by_name`) and publishes the set of ready agents whenever it changes. The
/// watch re-lists and resumes by itself after errors.
pub fn follow(cluster: &Cluster, selector: &str, by_name: bool) -> watch::Receiver<PodSet> {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let config =
        if by_name { watcher::Config::default().fields(selector) } else { watcher::Config::default().labels(selector) };
    let (tx, rx) = watch::channel(PodSet::new());
    tokio::spawn(async move {
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        let mut relisting: Option<BTreeMap<String, Pod>> = None;
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(p)) => {
                    pods.insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    pods.remove(p.metadata.name.as_deref().unwrap_or_default());
                }
                Ok(watcher::Event::Init) => relisting = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(p)) => {
                    relisting.get_or_insert_with(BTreeMap::new).insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                Ok(watcher::Event::InitDone) => pods = relisting.take().unwrap_or_default(),
                Err(e) => {
                    tracing::warn!("watching pods: {e} (retrying)");
                    continue;
                }
            }
            if relisting.is_some() {
                continue;
            }
            let ready: PodSet = pods.values().filter_map(ready_agent).map(|p| (p.name.clone(), p)).collect();
            tx.send_if_modified(|current| {
                let changed = *current != ready;
                if changed {
                    *current = ready;
                }
                changed
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}
