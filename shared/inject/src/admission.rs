//! The admission webhook's decision, as a pure function: an `admission.k8s.io/v1`
//! AdmissionReview in, the AdmissionReview answer out. Pods that ask for injection get a
//! JSONPatch that turns them into exactly what [`inject`](crate::inject) makes of them; every
//! other pod is allowed unchanged; a bad option value is denied with a message that names it.

use base64::Engine;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{ANNOTATION_SECRET, InjectError, Options, inject, wants_injection};

/// How the webhook was asked: only annotated pods, or every pod (a namespace that opted in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    AnnotatedPods,
    AllPods,
}

/// The part of an AdmissionReview the webhook reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: Option<GroupVersionKind>,
    object: Option<Value>,
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    kind: String,
}

/// The answer's `response`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Response {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize, Debug, PartialEq)]
struct Status {
    code: u16,
    message: String,
}

/// A request the webhook cannot read at all (answered with HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("not an AdmissionReview: {0}")]
    Malformed(String),
    #[error("AdmissionReview without a request")]
    NoRequest,
    #[error("unsupported {0}: this webhook speaks admission.k8s.io/v1")]
    Version(String),
}

/// Answers one AdmissionReview. `defaults` are the options before the pod's annotations.
pub fn review(body: &[u8], defaults: &Options, scope: Scope, version: &str) -> Result<Value, ReviewError> {
    let review: Review = serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(ReviewError::Version(format!("{} {}", review.api_version, review.kind)));
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    let response = decide(&request, defaults, scope, version);
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

fn decide(request: &Request, defaults: &Options, scope: Scope, version: &str) -> Response {
    let allow = |warnings: Vec<String>| Response {
        uid: request.uid.clone(),
        allowed: true,
        status: None,
        patch_type: None,
        patch: None,
        warnings,
    };
    let deny = |message: String| Response {
        uid: request.uid.clone(),
        allowed: false,
        status: Some(Status { code: 400, message }),
        patch_type: None,
        patch: None,
        warnings: Vec::new(),
    };
    let is_pod = request.kind.as_ref().is_some_and(|k| k.kind == "Pod");
    let Some(object) = request.object.as_ref().filter(|_| is_pod) else { return allow(Vec::new()) };
    let meta: ObjectMeta = match serde_json::from_value(object.get("metadata").cloned().unwrap_or(json!({}))) {
        Ok(m) => m,
        Err(e) => return deny(format!("hotsync: cannot read the pod's metadata: {e}")),
    };
    if scope == Scope::AnnotatedPods && !wants_injection(&meta) {
        return allow(Vec::new());
    }
    let mut spec: PodSpec = match serde_json::from_value(object.get("spec").cloned().unwrap_or(json!({}))) {
        Ok(s) => s,
        Err(e) => return deny(format!("hotsync: cannot read the pod's spec: {e}")),
    };
    let mut defaults = defaults.clone();
    if !meta.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION_SECRET)) {
        defaults.secret = format!("hotsync-{}", workload_name(&meta));
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let options = match Options::from_annotations(&annotations, &defaults) {
        Ok(o) => o,
        Err(e) => return deny(format!("hotsync: {e}")),
    };
    let mut new_meta = meta.clone();
    match inject(&mut new_meta, &mut spec, &options, version) {
        Ok(_) => {}
        Err(e @ InjectError::BadAnnotation { .. }) => return deny(format!("hotsync: {e}")),
        Err(e) => {
            let ns = request.namespace.as_deref().unwrap_or("default");
            return deny(format!("hotsync cannot inject this pod (namespace {ns}): {e}"));
        }
    }
    let mut patched = object.clone();
    patched["metadata"] = serde_json::to_value(&new_meta).unwrap_or_default();
    patched["spec"] = serde_json::to_value(&spec).unwrap_or_default();
    let patch = json_patch::diff(object, &patched);
    if patch.0.is_empty() {
        return allow(Vec::new());
    }
    let bytes = serde_json::to_vec(&patch).unwrap_or_default();
    Response {
        patch_type: Some("JSONPatch"),
        patch: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ..allow(Vec::new())
    }
}

/// The workload a pod belongs to, from its name or `generateName`: `web-5d8f9c7b6d-x7k2p` →
/// `web` for a Deployment's pod, `db-0` → `db` for a StatefulSet's.
pub fn workload_name(meta: &ObjectMeta) -> String {
    let owner = meta.owner_references.iter().flatten().next();
    let base = match (owner, meta.generate_name.as_deref()) {
        (Some(o), _) if o.kind == "ReplicaSet" => strip_hash(&o.name).to_owned(),
        (Some(o), _) => o.name.clone(),
        (None, Some(g)) => g.trim_end_matches('-').to_owned(),
        (None, None) => meta.name.clone().unwrap_or_else(|| "pod".into()),
    };
    base.to_ascii_lowercase()
}

/// `web-5d8f9c7b6d` → `web` (a ReplicaSet named after its Deployment and a template hash).
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((base, hash))
            if !base.is_empty()
                && (6..=10).contains(&hash.len())
                && hash.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            base
        }
        _ => name,
    }
}
