//! `hotsync inject -f`: the GitOps path. Reads Kubernetes manifests, injects the sidecar into
//! every workload's pod template with the same function `attach` and the webhook use, adds the
//! Secret with each workload's agent credentials, and prints the result for `kubectl apply`.
//! The host's half of each workload's credentials stays on this machine.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hotsync_inject::{Options, Outcome, inject};
use hotsync_transport::credentials::{AGENT_CERT, AGENT_KEY, CA_CERT, GeneratedCredentials};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{Value, json};

/// Kinds whose pods live in `spec.template`.
const WORKLOAD_KINDS: [&str; 5] = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"];

/// What to inject, besides what each manifest says.
pub struct InjectRequest {
    pub options: Options,
    /// Where the host keeps each workload's credentials: `DIR/NAMESPACE/SECRET/` (shared with `attach`).
    pub credentials_root: PathBuf,
}

/// Reads manifests from `path` (`-` = stdin).
pub fn read_manifests(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read manifests from stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Injects into every workload of `text` (YAML, one or more documents, or JSON) and returns
/// the documents to apply, as YAML.
pub fn inject_manifests(text: &str, source: &str, req: &InjectRequest) -> anyhow::Result<String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            Value::deserialize(doc).with_context(|| format!("{source}: document {} is not valid YAML", i + 1))?;
        if value.is_null() {
            continue; // an empty document between two `---`
        }
        docs.push(value);
    }
    if docs.is_empty() {
        bail!("{source}: no Kubernetes objects found");
    }
    let mut out = Vec::new();
    let mut injected = 0;
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let namespace = doc["metadata"]["namespace"].as_str().map(str::to_owned);
        let template_at = if kind == "Pod" {
            None
        } else if WORKLOAD_KINDS.contains(&kind.as_str()) {
            Some("/spec/template")
        } else {
            out.push(doc);
            continue;
        };
        if name.is_empty() {
            bail!("{source}: a {kind} without metadata.name");
        }
        let what = format!("{source}: {kind} {name}");
        let secret = format!("hotsync-{}", name.to_ascii_lowercase());
        let options = Options { secret: secret.clone(), ..req.options.clone() };
        let pod = match template_at {
            Some(ptr) => doc.pointer_mut(ptr).with_context(|| format!("{what} has no spec.template"))?,
            None => &mut doc,
        };
        let mut meta: ObjectMeta = serde_json::from_value(pod.get("metadata").cloned().unwrap_or(json!({})))
            .with_context(|| format!("{what}: invalid pod metadata"))?;
        let mut spec: PodSpec = serde_json::from_value(pod.get("spec").cloned().unwrap_or(json!({})))
            .with_context(|| format!("{what}: invalid pod spec"))?;
        let outcome =
            inject(&mut meta, &mut spec, &options, env!("CARGO_PKG_VERSION")).with_context(|| what.clone())?;
        pod["metadata"] = serde_json::to_value(&meta)?;
        pod["spec"] = serde_json::to_value(&spec)?;
        if outcome == Outcome::Injected {
            injected += 1;
        }
        let ns_dir = namespace.clone().unwrap_or_else(|| "default".into());
        let creds = req.credentials_root.join(ns_dir).join(&secret);
        out.push(doc);
        out.push(secret_for(&secret, namespace.as_deref(), &creds)?);
    }
    if injected == 0 && !out.iter().any(|d| d["kind"] == "Secret") {
        bail!("{source}: no workload to inject into (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or Pod)");
    }
    let mut yaml = String::new();
    for doc in out {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(&doc)?);
    }
    Ok(yaml)
}

/// The Secret with a workload's agent credentials, made once and kept in `dir` (so the output
/// is the same every time, and the host holds the matching key).
pub(crate) fn secret_for(name: &str, namespace: Option<&str>, dir: &Path) -> anyhow::Result<Value> {
    if !dir.join(CA_CERT).exists() {
        GeneratedCredentials::generate()?.write_to(dir)?;
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).with_context(|| format!("cannot read {}", dir.join(f).display()))
    };
    let mut meta = json!({"name": name, "labels": {"app.kubernetes.io/managed-by": "hotsync"}});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": { CA_CERT: read(CA_CERT)?, AGENT_CERT: read(AGENT_CERT)?, AGENT_KEY: read(AGENT_KEY)? },
    }))
}

#[cfg(test)]
mod tests {
    use hotsync_inject::{Reload, SIDECAR};
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};

    use super::*;

    const MANIFESTS: &str = r"
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  LOG_LEVEL: debug
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: registry.example/web:1.4.2
          ports: [{containerPort: 8000}]
";

    fn request(dir: &Path) -> InjectRequest {
        InjectRequest {
            options: Options {
                container: None,
                path: "/app".into(),
                agent_image: "hotsync-agent:test".into(),
                secret: String::new(),
                reload: Reload::Signal { signal: "HUP".into(), process: "gunicorn".into() },
                run_as_user: None,
                run_as_group: None,
            },
            credentials_root: dir.to_owned(),
        }
    }

    fn docs(yaml: &str) -> Vec<Value> {
        serde_yaml::Deserializer::from_str(yaml).map(|d| Value::deserialize(d).unwrap()).collect()
    }

    #[test]
    fn output_is_valid_objects_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let out = inject_manifests(MANIFESTS, "deploy.yaml", &request(dir.path())).unwrap();
        let d = docs(&out);
        assert_eq!(d.len(), 3, "ConfigMap, Deployment, Secret");
        let _: ConfigMap = serde_json::from_value(d[0].clone()).unwrap();
        let deploy: Deployment = serde_json::from_value(d[1].clone()).unwrap();
        let secret: Secret = serde_json::from_value(d[2].clone()).unwrap();
        let pod = deploy.spec.template.spec.unwrap();
        assert!(pod.containers.iter().any(|c| c.name == SIDECAR));
        let creds = pod.volumes.unwrap().into_iter().find_map(|v| v.secret).unwrap();
        assert_eq!(creds.secret_name.as_deref(), Some("hotsync-web"));
        assert_eq!(secret.metadata.name.as_deref(), Some("hotsync-web"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("shop"));
        assert!(secret.string_data.unwrap().contains_key("agent.key"));
        assert!(dir.path().join("shop/hotsync-web/host.key").exists(), "the host keeps its half");

        let again = inject_manifests(MANIFESTS, "deploy.yaml", &request(dir.path())).unwrap();
        assert_eq!(again, out, "same input, same output");
        let twice = inject_manifests(&out, "injected.yaml", &request(dir.path())).unwrap();
        assert_eq!(docs(&twice)[1], d[1], "injecting injected manifests changes nothing");
    }

    #[test]
    fn bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = inject_manifests("kind: [", "bad.yaml", &request(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("bad.yaml: document 1"), "{err:#}");
        let err =
            inject_manifests("kind: ConfigMap\nmetadata: {name: x}\n", "cm.yaml", &request(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("no workload"), "{err:#}");
        let req = InjectRequest {
            options: Options { container: Some("nope".into()), ..request(dir.path()).options },
            ..request(dir.path())
        };
        let err = inject_manifests(MANIFESTS, "deploy.yaml", &req).unwrap_err();
        assert!(format!("{err:#}").contains("Deployment web") && format!("{err:#}").contains("nope"), "{err:#}");
    }
}
