//! Waiting for a rollout the way `kubectl rollout status` does, with progress, and saying in
//! plain words why one is stuck (an image that cannot be pulled, a crash loop).

use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::Cluster;
use super::workload::{Kind, WorkloadRef, selector_of};

const POLL: Duration = Duration::from_millis(500);

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// Every pod runs the current template and is available.
    Done { replicas: i64 },
    /// Still rolling: `updated` of `desired` pods run the new template, `available` of them
    /// ready, `total` pods in all (old ones included).
    Progressing { desired: i64, updated: i64, available: i64, total: i64 },
    /// The controller gave up (e.g. the progress deadline passed).
    Failed(String),
}

/// Reads a workload's status the way `kubectl rollout status` does (pure, for tests).
pub fn rollout_state(kind: Kind, obj: &Value) -> RolloutState {
    let int = |ptr: &str| obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0);
    let generation = int("/metadata/generation");
    let observed = int("/status/observedGeneration");
    let (desired, updated, available, total) = match kind {
        Kind::Deployment => {
            let failed = obj.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| {
                cs.iter().find(|c| {
                    c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded" && c["status"] == "False"
                })
            });
            if let Some(c) = failed {
                return RolloutState::Failed(c["message"].as_str().unwrap_or("progress deadline exceeded").to_owned());
            }
            let desired = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            (desired, int("/status/updatedReplicas"), int("/status/availableReplicas"), int("/status/replicas"))
        }
        Kind::StatefulSet => {
            let desired = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            let revisions_match = obj.pointer("/status/updateRevision") == obj.pointer("/status/currentRevision");
            let updated = int("/status/updatedReplicas");
            let updated = if revisions_match { int("/status/replicas").max(updated) } else { updated };
            (desired, updated, int("/status/readyReplicas"), int("/status/replicas"))
        }
        Kind::DaemonSet => {
            let desired = int("/status/desiredNumberScheduled");
            (desired, int("/status/updatedNumberScheduled"), int("/status/numberAvailable"), desired)
        }
        Kind::Pod => return RolloutState::Done { replicas: 1 },
    };
    if observed >= generation && updated >= desired && total <= updated && available >= updated {
        RolloutState::Done { replicas: desired }
    } else {
        RolloutState::Progressing { desired, updated, available, total }
    }
}

/// Why a pod cannot become ready, in plain words, if a container says so.
pub fn pod_problem(pod: &Pod) -> Option<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.as_ref()?;
    let containers = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        let message = waiting.message.as_deref().unwrap_or_default();
        let what = match reason {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => format!(
                "cannot pull image {:?} ({reason}{}). Make it available to the cluster (kind load docker-image, \
                 minikube image load, a registry it can reach), or choose another with --agent-image",
                c.image,
                if message.is_empty() { String::new() } else { format!(": {message}") }
            ),
            "CrashLoopBackOff" | "RunContainerError" | "CreateContainerError" | "CreateContainerConfigError" => {
                let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                let exit = last.map(|t| format!(", last exit code {}", t.exit_code)).unwrap_or_default();
                format!(
                    "keeps failing ({reason}{exit}{}); see `kubectl logs {name} -c {}`",
                    if message.is_empty() { String::new() } else { format!(": {message}") },
                    c.name
                )
            }
            _ => continue,
        };
        return Some(format!("pod {name}, container {}: {what}", c.name));
    }
    None
}

/// Waits until the workload's rollout is done, reporting progress through `progress`.
pub async fn wait(
    cluster: &Cluster,
    workload: &WorkloadRef,
    timeout: Duration,
    mut progress: impl FnMut(&RolloutState),
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + timeout;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut last = None;
    loop {
        let obj: DynamicObject = workload.get(cluster).await?;
        let value = serde_json::to_value(&obj)?;
        let state = rollout_state(workload.kind, &value);
        if last.as_ref() != Some(&state) {
            progress(&state);
            last = Some(state.clone());
        }
        match state {
            RolloutState::Done { replicas } => return Ok(replicas),
            RolloutState::Failed(why) => bail!("the rollout of {workload} failed: {why}"),
            RolloutState::Progressing { .. } => {}
        }
        let selector = selector_of(&obj)?;
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| cluster.explain(e, &format!("cannot list the pods of {workload}")))?;
        // Only pods with the sidecar are the new ones: old ones failing is not our problem.
        let mut new_pods = list.items.iter().filter(|p| p.spec.as_ref().is_some_and(hotsync_inject::is_injected));
        if let Some(problem) = new_pods.find_map(pod_problem) {
            bail!(
                "the rollout of {workload} is stuck: {problem}. `hotsync detach {workload}` puts the workload back as it was"
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the rollout of {workload} did not finish within {} s ({}); see `kubectl rollout status {workload} -n {}`",
                timeout.as_secs(),
                describe(last.as_ref()),
                cluster.namespace
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The progress line for a rollout state.
pub fn describe(state: Option<&RolloutState>) -> String {
    match state {
        Some(RolloutState::Done { replicas }) => format!("{replicas} of {replicas} pods updated and available"),
        Some(RolloutState::Progressing { desired, updated, available, total }) => {
            let old = total - updated;
            let old = if old > 0 { format!(", {old} old still running") } else { String::new() };
            format!("{updated} of {desired} pods updated, {available} available{old}")
        }
        Some(RolloutState::Failed(why)) => why.clone(),
        None => "no status yet".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deployment_is_done_when_every_replica_is_new_and_available() {
        let mut d = json!({
            "metadata": {"generation": 2},
            "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}
        });
        assert!(matches!(rollout_state(Kind::Deployment, &d), RolloutState::Progressing { .. }), "an old pod is left");
        d["status"]["replicas"] = json!(3);
        assert_eq!(rollout_state(Kind::Deployment, &d), RolloutState::Done { replicas: 3 });
        d["metadata"]["generation"] = json!(3);
        assert!(matches!(rollout_state(Kind::Deployment, &d), RolloutState::Progressing { .. }), "not observed yet");
    }

    #[test]
    fn a_passed_progress_deadline_is_a_failure() {
        let d = json!({"status": {"conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet \"web-1\" has timed out progressing."}
        ]}});
        assert!(matches!(rollout_state(Kind::Deployment, &d), RolloutState::Failed(m) if m.contains("timed out")));
    }

    #[test]
    fn an_image_pull_failure_is_said_plainly() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1"},
            "status": {"containerStatuses": [{
                "name": "hotsync-agent", "image": "hotsync-agent:9", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
            }]}
        }))
        .unwrap();
        let p = pod_problem(&pod).unwrap();
        assert!(p.contains("web-1") && p.contains("cannot pull image") && p.contains("--agent-image"), "{p}");
    }
}
