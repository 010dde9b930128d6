//! The defaults the real API server fills in on create and update (its `SetDefaults_*`
//! functions and the admission plugins every cluster runs), so stored objects look like a
//! cluster's and a client that compares specs meets the same surprises.

use serde_json::{Value, json};

use super::resources::Resource;

/// Applies the defaults of `res` to `obj` (in place). Pods also get what admission adds
/// (service account, priority, tolerations), which templates do not.
pub(crate) fn apply(res: &Resource, obj: &mut Value) {
    match (res.group, res.plural) {
        ("", "pods") => {
            pod_spec(&mut obj["spec"]);
            pod_admission(&mut obj["spec"]);
        }
        ("", "secrets") => set(obj, "type", json!("Opaque")),
        ("", "services") => service(obj),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") => webhooks(obj),
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") => {
            template_meta(&mut obj["spec"]);
            workload(res, obj);
        }
        _ => {}
    }
}

/// The defaults of the apps/v1 workloads.
fn workload(res: &Resource, obj: &mut Value) {
    match res.plural {
        "deployments" => {
            let spec = &mut obj["spec"];
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            set(spec, "strategy", json!({}));
            let strategy = &mut spec["strategy"];
            set(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                set(strategy, "rollingUpdate", json!({}));
                set(&mut strategy["rollingUpdate"], "maxSurge", json!("25%"));
                set(&mut strategy["rollingUpdate"], "maxUnavailable", json!("25%"));
            }
            pod_spec(&mut spec["template"]["spec"]);
        }
        "replicasets" => {
            set(&mut obj["spec"], "replicas", json!(1));
            pod_spec(&mut obj["spec"]["template"]["spec"]);
        }
        "statefulsets" => {
            let spec = &mut obj["spec"];
            set(spec, "replicas", json!(1));
            set(spec, "podManagementPolicy", json!("OrderedReady"));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
            set(spec, "persistentVolumeClaimRetentionPolicy", json!({"whenDeleted": "Retain", "whenScaled": "Retain"}));
            pod_spec(&mut spec["template"]["spec"]);
        }
        "daemonsets" => {
            let spec = &mut obj["spec"];
            set(spec, "revisionHistoryLimit", json!(10));
            set(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            pod_spec(&mut spec["template"]["spec"]);
        }
        _ => {}
    }
}

/// The elements of the list at `obj[key]`, if there is one. (Indexing a `Value` mutably
/// would insert a null where the key is absent, where the server omits the empty field.)
pub(crate) fn items<'a>(obj: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    obj.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten()
}

/// A workload's template metadata as the server writes it: Go prints the zero
/// `creationTimestamp` of an embedded ObjectMeta as `null`.
fn template_meta(spec: &mut Value) {
    let Some(t) = spec.get_mut("template").filter(|t| t.is_object()) else { return };
    if !t["metadata"].is_object() {
        t["metadata"] = json!({});
    }
    t["metadata"]["creationTimestamp"] = Value::Null;
}

/// Sets `obj[key]` when it is absent or null (and `obj` is an object).
fn set(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut()
        && map.get(key).is_none_or(Value::is_null)
    {
        map.insert(key.to_owned(), value);
    }
}

/// `SetDefaults_PodSpec` and friends: what a pod spec (or a template's) gets.
pub(crate) fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        for c in items(spec, list) {
            container(c);
        }
    }
    for v in items(spec, "volumes") {
        for source in ["secret", "configMap"] {
            if let Some(src) = v.get_mut(source).filter(|s| s.is_object()) {
                set(src, "defaultMode", json!(0o644));
            }
        }
    }
}

fn container(c: &mut Value) {
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    set(c, "resources", json!({}));
    let image = c["image"].as_str().unwrap_or_default().to_owned();
    set(c, "imagePullPolicy", json!(default_pull_policy(&image)));
    for p in items(c, "ports") {
        set(p, "protocol", json!("TCP"));
    }
}

/// `Always` for `:latest` or an untagged image, else `IfNotPresent` (a digest counts as a tag).
pub(crate) fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// What admission plugins add to a pod: the ServiceAccount, Priority and
/// DefaultTolerationSeconds plugins, and the kube-apiserver's service links default.
fn pod_admission(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "serviceAccountName", json!("default"));
    let sa = spec["serviceAccountName"].clone();
    set(spec, "serviceAccount", sa);
    set(spec, "enableServiceLinks", json!(true));
    set(spec, "priority", json!(0));
    set(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set(
        spec,
        "tolerations",
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]),
    );
}

fn service(obj: &mut Value) {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    set(spec, "ipFamilies", json!(["IPv4"]));
    set(spec, "ipFamilyPolicy", json!("SingleStack"));
    set(spec, "internalTrafficPolicy", json!("Cluster"));
    for p in items(spec, "ports") {
        set(p, "protocol", json!("TCP"));
        let port = p["port"].clone();
        set(p, "targetPort", port);
    }
}

/// `SetDefaults_MutatingWebhook`: what each webhook of a configuration gets.
fn webhooks(obj: &mut Value) {
    for w in items(obj, "webhooks") {
        set(w, "failurePolicy", json!("Fail"));
        set(w, "matchPolicy", json!("Equivalent"));
        set(w, "namespaceSelector", json!({}));
        set(w, "objectSelector", json!({}));
        set(w, "timeoutSeconds", json!(10));
        set(w, "reinvocationPolicy", json!("Never"));
        if let Some(svc) = w.get_mut("clientConfig").and_then(|c| c.get_mut("service")).filter(|s| s.is_object()) {
            set(svc, "port", json!(443));
        }
        for r in items(w, "rules") {
            set(r, "scope", json!("*"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_like_the_server() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/web"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/web:2"), "IfNotPresent");
        assert_eq!(default_pull_policy("web@sha256:abcd"), "IfNotPresent");
    }
}
