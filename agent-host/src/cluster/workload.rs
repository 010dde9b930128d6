//! Workloads named the way kubectl names them (`deployment/web`, `deploy/web`, `sts/db`,
//! `ds/agent`, `pod/web-abc`), fetched as the API server has them.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};

use super::{Cluster, is_status};

/// The kinds hotsync attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Pod,
}

/// `TYPE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadRef {
    pub kind: Kind,
    pub name: String,
}

impl Kind {
    /// kubectl's lower-case singular name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
            Kind::Pod => "pod",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
            Kind::DaemonSet => "daemonsets",
            Kind::Pod => "pods",
        }
    }

    /// The API resource, for requests on objects of this kind as raw JSON.
    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            Kind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
            Kind::Pod => ApiResource::erase::<Pod>(&()),
        }
    }
}

impl FromStr for Kind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // kubectl accepts the singular, the plural, the short name and `kind.group`.
        let kind = s.to_ascii_lowercase();
        let kind = kind.strip_suffix(".apps").unwrap_or(&kind);
        Ok(match kind {
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "statefulset" | "statefulsets" | "sts" => Kind::StatefulSet,
            "daemonset" | "daemonsets" | "ds" => Kind::DaemonSet,
            "pod" | "pods" | "po" => Kind::Pod,
            _ => bail!("hotsync attaches to deployments, statefulsets, daemonsets and pods, not {s:?}"),
        })
    }
}

impl FromStr for WorkloadRef {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((kind, name)) = s.split_once('/') else {
            bail!("{s:?}: name the workload as TYPE/NAME, e.g. deployment/web, sts/db, pod/web-7d4b9c-x2x");
        };
        if name.is_empty() || name.contains('/') {
            bail!("{s:?}: name the workload as TYPE/NAME, e.g. deployment/web");
        }
        Ok(Self { kind: kind.parse()?, name: name.to_owned() })
    }
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

impl WorkloadRef {
    /// The API for objects of this kind in the cluster's namespace, as raw JSON.
    pub fn api(&self, cluster: &Cluster) -> Api<DynamicObject> {
        Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &self.kind.api_resource())
    }

    /// Fetches the workload. Not found: an error listing what the namespace has.
    pub async fn get(&self, cluster: &Cluster) -> anyhow::Result<DynamicObject> {
        match self.api(cluster).get(&self.name).await {
            Ok(obj) => Ok(obj),
            Err(e) if is_status(&e, 404) => Err(self.not_found(cluster).await),
            Err(e) => Err(cluster.explain(e, &format!("cannot read {self}"))),
        }
    }

    async fn not_found(&self, cluster: &Cluster) -> anyhow::Error {
        let ns = &cluster.namespace;
        let plural = self.kind.plural();
        let names = match self.api(cluster).list(&ListParams::default()).await {
            Ok(list) => list.items.into_iter().filter_map(|o| o.metadata.name).collect::<Vec<_>>(),
            Err(e) => return cluster.explain(e, &format!("{self} not found in namespace {ns}; listing {plural}")),
        };
        if names.is_empty() {
            anyhow::anyhow!("{self} not found: there are no {plural} in namespace {ns} (pick another with -n)")
        } else {
            anyhow::anyhow!("{self} not found in namespace {ns}; {plural} there: {}", names.join(", "))
        }
    }
}

/// The label selector of a workload's pods, in the text form the API takes.
pub fn selector_of(obj: &DynamicObject) -> anyhow::Result<String> {
    let selector = obj.data.pointer("/spec/selector").context("the workload has no spec.selector")?;
    let mut terms = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(|l| l.as_object()) {
        for (k, v) in labels {
            terms.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for expr in selector.get("matchExpressions").and_then(|e| e.as_array()).into_iter().flatten() {
        let key = expr["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = expr["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        terms.push(match expr["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            "DoesNotExist" => format!("!{key}"),
            other => bail!("unknown selector operator {other:?}"),
        });
    }
    if terms.is_empty() {
        bail!("the workload's selector selects nothing");
    }
    Ok(terms.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_forms_parse() {
        for (text, kind, name) in [
            ("deployment/web", Kind::Deployment, "web"),
            ("deploy/web", Kind::Deployment, "web"),
            ("deployments.apps/web", Kind::Deployment, "web"),
            ("sts/db", Kind::StatefulSet, "db"),
            ("statefulset/db", Kind::StatefulSet, "db"),
            ("ds/agent", Kind::DaemonSet, "agent"),
            ("pod/web-abc", Kind::Pod, "web-abc"),
            ("po/web-abc", Kind::Pod, "web-abc"),
        ] {
            let r: WorkloadRef = text.parse().unwrap();
            assert_eq!((r.kind, r.name.as_str()), (kind, name), "{text}");
        }
        assert_eq!("deploy/web".parse::<WorkloadRef>().unwrap().to_string(), "deployment/web");
    }

    #[test]
    fn bad_forms_explain_the_form() {
        for text in ["web", "deployment/", "deployment/a/b"] {
            let e = text.parse::<WorkloadRef>().unwrap_err().to_string();
            assert!(e.contains("TYPE/NAME"), "{text}: {e}");
        }
        let e = "service/web".parse::<WorkloadRef>().unwrap_err().to_string();
        assert!(e.contains("deployments, statefulsets"), "{e}");
    }

    #[test]
    fn selectors_become_label_selector_text() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["a", "b"]},
                    {"key": "canary", "operator": "DoesNotExist"}
                ]
            }}
        }))
        .unwrap();
        assert_eq!(selector_of(&obj).unwrap(), "app=web,tier in (a,b),!canary");
    }
}
