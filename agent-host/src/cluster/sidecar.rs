//! Changing a workload for hotsync, and changing it back: the credentials Secret, the sidecar
//! injected into the pod template (the one injection of `hotsync-inject`), and the record of
//! the original template that `detach` restores.
//!
//! Every write is a read-modify-replace with the object's resourceVersion, retried on a
//! conflict, so a concurrent change by someone else is never overwritten.

use std::path::Path;

use anyhow::{Context, bail};
use hotsync_inject::{ANNOTATION_INJECT, ANNOTATION_SECRET, Options, Outcome, inject};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::{Value, json};

use super::workload::{Kind, WorkloadRef};
use super::{Cluster, is_status};

/// Workload annotation holding what attach changed: `{"template": <the original pod template>}`.
pub const ANNOTATION_ORIGINAL: &str = "hotsync.dev/original";
/// Pod template annotation: a digest of the credentials the pods must mount. When the
/// credentials change, the template changes, and the pods roll.
pub const ANNOTATION_CREDENTIALS: &str = "hotsync.dev/credentials";
/// The field manager hotsync's writes are recorded under.
pub const FIELD_MANAGER: &str = "hotsync";
const CONFLICT_RETRIES: usize = 5;

/// How the workload came to carry the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// Attach injected it now: the pods roll.
    Injected,
    /// It was injected already (an earlier attach, `hotsync inject`): nothing changed.
    AlreadyInjected,
    /// Its pods ask the admission webhook for the sidecar: nothing to change.
    ByWebhook,
    /// A single pod that carries the sidecar already.
    PodInjected,
}

/// The Secret holding the agent's half of a workload's credentials: the one its pods mount
/// already (injected earlier, by `inject` or the webhook), the one its template's annotation
/// names, else `hotsync-NAME`.
pub fn secret_name(workload: &WorkloadRef, obj: &Value) -> String {
    let pod = if workload.kind == Kind::Pod { Some(obj) } else { obj.pointer("/spec/template") };
    let mounted = pod
        .and_then(|p| p.pointer("/spec/volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with(hotsync_inject::VOLUME_CREDENTIALS)))
        .find_map(|v| v.pointer("/secret/secretName").and_then(Value::as_str));
    let annotated = pod
        .and_then(|p| p.pointer("/metadata/annotations"))
        .and_then(|a| a.get(ANNOTATION_SECRET))
        .and_then(Value::as_str);
    mounted.or(annotated).map_or_else(|| format!("hotsync-{}", workload.name), str::to_owned)
}

/// What [`ensure_secret`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretChange {
    Created,
    Updated,
    Unchanged,
}

/// Makes sure the cluster's Secret `name` holds the agent credentials kept in `dir` (made on
/// first use).
pub async fn ensure_secret(cluster: &Cluster, name: &str, dir: &Path) -> anyhow::Result<SecretChange> {
    let mut wanted: Secret = serde_json::from_value(crate::manifests::secret_for(name, Some(&cluster.namespace), dir)?)
        .context("the credentials Secret")?;
    // The API server keeps `stringData` as `data`: compare and write in that form.
    if let Some(text) = wanted.string_data.take() {
        wanted.data = Some(text.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect());
    }
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    for _ in 0..CONFLICT_RETRIES {
        let current = match api.get_opt(name).await {
            Ok(c) => c,
            Err(e) => return Err(cluster.explain(e, &format!("cannot read Secret {name}"))),
        };
        let Some(mut current) = current else {
            match api.create(&params, &wanted).await {
                Ok(_) => return Ok(SecretChange::Created),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(cluster.explain(e, &format!("cannot create Secret {name}"))),
            }
        };
        if current.data == wanted.data {
            return Ok(SecretChange::Unchanged);
        }
        current.data.clone_from(&wanted.data);
        match api.replace(name, &params, &current).await {
            Ok(_) => return Ok(SecretChange::Updated),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(cluster.explain(e, &format!("cannot update Secret {name}"))),
        }
    }
    bail!("Secret {name} kept changing under us; try again")
}

/// Deletes a Secret attach created, when the attach fails before it is used (best effort: the
/// error that made attach fail is the one to report).
pub async fn forget_secret(cluster: &Cluster, name: &str) {
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    if let Err(e) = api.delete(name, &DeleteParams::default()).await {
        tracing::warn!("cannot delete Secret {name} after the failed attach: {e}");
    }
}

/// A short digest of the credentials in `dir`, for [`ANNOTATION_CREDENTIALS`].
pub fn credentials_digest(dir: &Path) -> anyhow::Result<String> {
    let ca = std::fs::read(dir.join(hotsync_transport::credentials::CA_CERT))
        .with_context(|| format!("cannot read credentials in {}", dir.display()))?;
    Ok(hotsync_core::Hash::of(&ca).short())
}

/// Injects the sidecar into the workload's pod template (recording the original), or
/// confirms it is there. `digest` is the credentials' [`credentials_digest`].
pub async fn inject_workload(
    cluster: &Cluster,
    workload: &WorkloadRef,
    options: &Options,
    digest: &str,
) -> anyhow::Result<Injection> {
    if workload.kind == Kind::Pod {
        let pod = workload.get(cluster).await?;
        let spec: PodSpec = serde_json::from_value(pod.data["spec"].clone()).context("the pod's spec")?;
        if hotsync_inject::is_injected(&spec) {
            return Ok(Injection::PodInjected);
        }
        bail!(
            "{workload} has no hotsync sidecar, and a running pod's containers cannot change: attach to the \
             workload that owns it (e.g. deployment/NAME), or annotate that workload with {ANNOTATION_INJECT}=true"
        );
    }
    let api = workload.api(cluster);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    for _ in 0..CONFLICT_RETRIES {
        let mut obj = workload.get(cluster).await?;
        let template = obj.data.pointer("/spec/template").cloned().context("the workload has no pod template")?;
        let mut meta: ObjectMeta =
            serde_json::from_value(template.get("metadata").cloned().unwrap_or_else(|| json!({})))
                .context("the pod template's metadata")?;
        let mut spec: PodSpec = serde_json::from_value(template.get("spec").cloned().unwrap_or_else(|| json!({})))
            .context("the pod template's spec")?;
        if hotsync_inject::wants_injection(&meta) {
            return Ok(Injection::ByWebhook);
        }
        let injected = inject(&mut meta, &mut spec, options, env!("CARGO_PKG_VERSION"))
            .with_context(|| format!("cannot inject the sidecar into {workload}"))?;
        let current_digest = meta.annotations.as_ref().and_then(|a| a.get(ANNOTATION_CREDENTIALS)).cloned();
        if injected == Outcome::AlreadyInjected && current_digest.as_deref() == Some(digest) {
            return Ok(Injection::AlreadyInjected);
        }
        meta.annotations.get_or_insert_with(Default::default).insert(ANNOTATION_CREDENTIALS.into(), digest.into());
        obj.data["spec"]["template"] = json!({ "metadata": meta, "spec": spec });
        if injected == Outcome::Injected {
            // Only a template without the sidecar is the original (one injected by
            // `hotsync inject` has none to restore).
            let annotations = obj.metadata.annotations.get_or_insert_with(Default::default);
            annotations.insert(ANNOTATION_ORIGINAL.into(), json!({ "template": template }).to_string());
        }
        match api.replace(&workload.name, &params, &obj).await {
            Ok(_) => return Ok(Injection::Injected),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(cluster.explain(e, &format!("cannot update {workload}"))),
        }
    }
    bail!("{workload} kept changing under us; try again")
}

/// What detach did to the pod template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Put back exactly as it was before attach.
    Original,
    /// Changed since attach by someone else: hotsync's additions were taken out, the rest kept.
    KeptLaterChanges,
    /// No record of attach: left as it is (injected by `hotsync inject` or the webhook, or
    /// never attached).
    NotAttached,
}

/// What detach did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    pub template: Restored,
    /// The credentials Secret's name, and whether it was deleted.
    pub secret: String,
    pub secret_deleted: bool,
}

/// A pod template through the typed structs, for comparing two templates the same way.
fn typed_template(template: &Value) -> anyhow::Result<(ObjectMeta, PodSpec)> {
    let meta = serde_json::from_value(template.get("metadata").cloned().unwrap_or_else(|| json!({})))
        .context("the pod template's metadata")?;
    let spec = serde_json::from_value(template.get("spec").cloned().unwrap_or_else(|| json!({})))
        .context("the pod template's spec")?;
    Ok((meta, spec))
}

/// The template with hotsync's additions taken out.
fn without_sidecar(template: &Value) -> anyhow::Result<Value> {
    let (mut meta, mut spec) = typed_template(template)?;
    hotsync_inject::uninject(&mut meta, &mut spec);
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(ANNOTATION_CREDENTIALS);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
    Ok(json!({ "metadata": meta, "spec": spec }))
}

/// Restores the workload's pod template and deletes its credentials Secret. When the template
/// was not changed since attach, it is restored exactly (byte for byte); otherwise only
/// hotsync's additions are taken out, so nobody's later change is lost.
pub async fn detach_workload(cluster: &Cluster, workload: &WorkloadRef) -> anyhow::Result<Detached> {
    if workload.kind == Kind::Pod {
        bail!("detach the workload that owns the pod (e.g. deployment/NAME): a pod's containers cannot change");
    }
    let api = workload.api(cluster);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let mut restored = Restored::NotAttached;
    let mut secret = None;
    for attempt in 0..=CONFLICT_RETRIES {
        if attempt == CONFLICT_RETRIES {
            bail!("{workload} kept changing under us; try again");
        }
        let mut obj: DynamicObject = workload.get(cluster).await?;
        secret = Some(secret_name(workload, &obj.data));
        let Some(record) = obj.metadata.annotations.as_mut().and_then(|a| a.remove(ANNOTATION_ORIGINAL)) else {
            break;
        };
        let record: Value = serde_json::from_str(&record)
            .with_context(|| format!("{workload}: annotation {ANNOTATION_ORIGINAL} is not hotsync's record"))?;
        let original = record.get("template").cloned().with_context(|| {
            format!("{workload}: annotation {ANNOTATION_ORIGINAL} holds no template; restore the spec by hand")
        })?;
        let current = obj.data.pointer("/spec/template").cloned().context("the workload has no pod template")?;
        let stripped = without_sidecar(&current)?;
        let (original_meta, original_spec) = typed_template(&original)?;
        let unchanged = stripped == json!({ "metadata": original_meta, "spec": original_spec });
        let outcome = if unchanged { Restored::Original } else { Restored::KeptLaterChanges };
        obj.data["spec"]["template"] = if unchanged { original } else { stripped };
        // The API server never returns an empty map: drop it, as it was before attach.
        if obj.metadata.annotations.as_ref().is_some_and(std::collections::BTreeMap::is_empty) {
            obj.metadata.annotations = None;
        }
        match api.replace(&workload.name, &params, &obj).await {
            Ok(_) => {
                restored = outcome;
                break;
            }
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(cluster.explain(e, &format!("cannot restore {workload}"))),
        }
    }
    let name = secret.expect("set by the first read");
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let secret_deleted = match secrets.delete(&name, &DeleteParams::default()).await {
        Ok(_) => true,
        Err(e) if is_status(&e, 404) => false,
        Err(e) => return Err(cluster.explain(e, &format!("cannot delete Secret {name}"))),
    };
    Ok(Detached { template: restored, secret: name, secret_deleted })
}
