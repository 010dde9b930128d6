//! The validation the real server runs on create and update (422 Invalid), limited to what a
//! buggy sidecar injection or a careless update would trip on: names, pod spec consistency,
//! workload selectors, and fields that are immutable.

use std::collections::BTreeSet;

use serde_json::Value;

use super::errors::Cause;
use super::resources::Resource;
use super::selector::{LabelSelector, labels_of};

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Checks a whole object about to be stored (after defaults).
pub(crate) fn object(res: &Resource, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let label_names = matches!(res.plural, "namespaces" | "services");
    if name.is_empty() {
        causes.push(Cause::required("metadata.name", "name or generateName is required"));
    } else if label_names && !is_dns_label(name) {
        causes.push(Cause::invalid("metadata.name", name, DNS1123_LABEL_MSG));
    } else if !label_names && !is_dns_subdomain(name) && res.group != "rbac.authorization.k8s.io" {
        causes.push(Cause::invalid("metadata.name", name, DNS1123_SUBDOMAIN_MSG));
    }
    match (res.group, res.plural) {
        ("", "pods") => pod_spec(&obj["spec"], "spec", &mut causes),
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") => workload(res, obj, &mut causes),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") => webhooks(obj, &mut causes),
        _ => {}
    }
    causes
}

/// A webhook must say its side effects and the AdmissionReview versions it speaks, and name
/// where it is served.
fn webhooks(obj: &Value, causes: &mut Vec<Cause>) {
    for (i, w) in obj["webhooks"].as_array().into_iter().flatten().enumerate() {
        let at = format!("webhooks[{i}]");
        match w["sideEffects"].as_str() {
            Some("None" | "NoneOnDryRun") => {}
            Some(other) => causes.push(Cause {
                reason: "FieldValueNotSupported",
                message: format!("Unsupported value: {other:?}: supported values: \"None\", \"NoneOnDryRun\""),
                field: format!("{at}.sideEffects"),
            }),
            None => causes.push(Cause {
                reason: "FieldValueNotSupported",
                message: "Unsupported value: \"\": supported values: \"None\", \"NoneOnDryRun\"".into(),
                field: format!("{at}.sideEffects"),
            }),
        }
        if w["admissionReviewVersions"].as_array().is_none_or(Vec::is_empty) {
            causes.push(Cause::required(format!("{at}.admissionReviewVersions"), "must specify one of v1, v1beta1"));
        }
        let cc = &w["clientConfig"];
        if cc["url"].is_null() && cc["service"].is_null() {
            causes.push(Cause::required(format!("{at}.clientConfig"), "exactly one of url or service is required"));
        }
        if w["name"].as_str().is_none_or(|n| !is_dns_subdomain(n) || !n.contains('.')) {
            let name = w["name"].as_str().unwrap_or_default();
            causes.push(Cause::invalid(
                format!("{at}.name"),
                name,
                "should be a domain with at least three segments separated by dots",
            ));
        }
    }
}

/// Checks an update against the stored object: the object checks plus immutable fields.
pub(crate) fn update(res: &Resource, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = object(res, new);
    if res.group == "apps" && old["spec"]["selector"] != new["spec"]["selector"] {
        let shown = go_label_selector(&new["spec"]["selector"]);
        causes.push(Cause::invalid_shown("spec.selector", &shown, "field is immutable"));
    }
    if res.is("", "pods") && !pod_update_allowed(&old["spec"], &new["spec"]) {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    causes
}

/// The pod spec fields that may change on a running pod: images, activeDeadlineSeconds,
/// added tolerations.
fn pod_update_allowed(old: &Value, new: &Value) -> bool {
    let strip = |spec: &Value| {
        let mut s = spec.clone();
        for list in ["containers", "initContainers"] {
            for c in super::defaults::items(&mut s, list) {
                c["image"] = Value::Null;
            }
        }
        if let Some(m) = s.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
        }
        s
    };
    strip(old) == strip(new)
}

fn workload(res: &Resource, obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let selector = &spec["selector"];
    if selector.is_null() {
        causes.push(Cause::required("spec.selector", ""));
    } else {
        match LabelSelector::from_object(selector) {
            Ok(sel) if sel.is_empty() => {
                let shown = go_label_selector(selector);
                let detail = format!("empty selector is invalid for {}", res.plural.trim_end_matches('s'));
                causes.push(Cause::invalid_shown("spec.selector", &shown, &detail));
            }
            Ok(sel) => {
                if !sel.matches_object(&spec["template"]) {
                    let shown = go_string_map(&labels_of(&spec["template"]));
                    let detail = "`selector` does not match template `labels`";
                    causes.push(Cause::invalid_shown("spec.template.metadata.labels", &shown, detail));
                }
            }
            Err(e) => causes.push(Cause::invalid("spec.selector", &selector.to_string(), &e)),
        }
    }
    if let Some(r) = spec["replicas"].as_i64()
        && r < 0
    {
        causes.push(Cause::invalid_shown("spec.replicas", &r.to_string(), "must be greater than or equal to 0"));
    }
    let tspec = &spec["template"]["spec"];
    pod_spec(tspec, "spec.template.spec", causes);
    if let Some(policy) = tspec["restartPolicy"].as_str()
        && policy != "Always"
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: {policy:?}: supported values: \"Always\""),
            field: "spec.template.spec.restartPolicy".into(),
        });
    }
}

/// The checks of `ValidatePodSpec` that matter here. `at` is the JSON path of the spec.
pub(crate) fn pod_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    if !spec.is_object() {
        causes.push(Cause::required(at, ""));
        return;
    }
    let mut volumes = BTreeSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let field = format!("{at}.volumes[{i}].name");
        let name = v["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(field, ""));
        } else if !is_dns_label(name) {
            causes.push(Cause::invalid(field, name, DNS1123_LABEL_MSG));
        } else if !volumes.insert(name.to_owned()) {
            causes.push(Cause::duplicate(field, name));
        }
        if v["secret"].is_object() && v["secret"]["secretName"].as_str().unwrap_or_default().is_empty() {
            causes.push(Cause::required(format!("{at}.volumes[{i}].secret.secretName"), ""));
        }
    }
    let containers = spec["containers"].as_array().map_or(&[][..], Vec::as_slice);
    if containers.is_empty() {
        causes.push(Cause::required(format!("{at}.containers"), ""));
    }
    let mut names = BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            container(c, &format!("{at}.{list}[{i}]"), &volumes, &mut names, causes);
        }
    }
}

fn container(c: &Value, at: &str, volumes: &BTreeSet<String>, names: &mut BTreeSet<String>, causes: &mut Vec<Cause>) {
    let name = c["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required(format!("{at}.name"), ""));
    } else if !is_dns_label(name) {
        causes.push(Cause::invalid(format!("{at}.name"), name, DNS1123_LABEL_MSG));
    } else if !names.insert(name.to_owned()) {
        causes.push(Cause::duplicate(format!("{at}.name"), name));
    }
    if c["image"].as_str().unwrap_or_default().is_empty() {
        causes.push(Cause::required(format!("{at}.image"), ""));
    }
    let mut paths = BTreeSet::new();
    for (j, m) in c["volumeMounts"].as_array().into_iter().flatten().enumerate() {
        let vname = m["name"].as_str().unwrap_or_default();
        if vname.is_empty() {
            causes.push(Cause::required(format!("{at}.volumeMounts[{j}].name"), ""));
        } else if !volumes.contains(vname) {
            causes.push(Cause::not_found(format!("{at}.volumeMounts[{j}].name"), vname));
        }
        let path = m["mountPath"].as_str().unwrap_or_default();
        if path.is_empty() {
            causes.push(Cause::required(format!("{at}.volumeMounts[{j}].mountPath"), ""));
        } else if !paths.insert(path.to_owned()) {
            causes.push(Cause::invalid(format!("{at}.volumeMounts[{j}].mountPath"), path, "must be unique"));
        }
    }
    for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
        let port = p["containerPort"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            let field = format!("{at}.ports[{j}].containerPort");
            causes.push(Cause::invalid_shown(field, &port.to_string(), "must be between 1 and 65535, inclusive"));
        }
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                message: format!("Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
                field: format!("{at}.ports[{j}].protocol"),
            });
        }
    }
}

/// `map[string]string{"app":"web"}`, as Go's `%#v` prints a label map.
fn go_string_map(m: &std::collections::BTreeMap<String, String>) -> String {
    let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
    format!("map[string]string{{{}}}", inner.join(", "))
}

/// `v1.LabelSelector{MatchLabels:map[string]string{…}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}`.
fn go_label_selector(sel: &Value) -> String {
    let labels = labels_of(&serde_json::json!({"metadata": {"labels": sel["matchLabels"]}}));
    let exprs = if sel["matchExpressions"].as_array().is_some_and(|a| !a.is_empty()) {
        "[]v1.LabelSelectorRequirement{…}".to_owned()
    } else {
        "[]v1.LabelSelectorRequirement(nil)".to_owned()
    };
    format!("&v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}", go_string_map(&labels))
}
