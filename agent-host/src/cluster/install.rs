//! `hotsync webhook install` and `uninstall`: the admission webhook's objects
//! ([`crate::webhook_manifests`]) created or updated in the cluster, with its serving
//! certificate rotated on every install.

use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use serde_json::Value;

use super::workload::{Kind, WorkloadRef};
use super::{Cluster, is_status, rollout};
use crate::webhook_manifests::{NAME, objects};

/// How an object that exists already is treated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IfPresent {
    /// Left as it is (a Namespace, a Service: nothing of ours to change, immutable fields).
    Keep,
    /// Replaced with ours (the new certificate, image, caBundle).
    Replace,
}

fn resource(kind: &str) -> anyhow::Result<(ApiResource, bool, IfPresent)> {
    Ok(match kind {
        "Namespace" => (ApiResource::erase::<Namespace>(&()), false, IfPresent::Keep),
        "ServiceAccount" => (ApiResource::erase::<ServiceAccount>(&()), true, IfPresent::Keep),
        "Secret" => (ApiResource::erase::<Secret>(&()), true, IfPresent::Replace),
        "Deployment" => (ApiResource::erase::<Deployment>(&()), true, IfPresent::Replace),
        "Service" => (ApiResource::erase::<Service>(&()), true, IfPresent::Keep),
        "MutatingWebhookConfiguration" => {
            (ApiResource::erase::<MutatingWebhookConfiguration>(&()), false, IfPresent::Replace)
        }
        other => bail!("no install step for a {other}"),
    })
}

fn api_for(cluster: &Cluster, obj: &Value) -> anyhow::Result<(Api<DynamicObject>, IfPresent)> {
    let kind = obj["kind"].as_str().context("an object without kind")?;
    let (resource, namespaced, if_present) = resource(kind)?;
    let api = if namespaced {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(&cluster.namespace);
        Api::namespaced_with(cluster.client.clone(), ns, &resource)
    } else {
        Api::all_with(cluster.client.clone(), &resource)
    };
    Ok((api, if_present))
}

/// The CA certificates the installed webhook's caBundle trusts now (none when not installed).
async fn trusted_now(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let current = api.get_opt(NAME).await.map_err(|e| cluster.explain(e, "cannot read the webhook configuration"))?;
    let bundle = current
        .and_then(|c| c.webhooks)
        .and_then(|w| w.into_iter().next())
        .and_then(|w| w.client_config.ca_bundle)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
    // Keep the newest CA of the old bundle: the one the running pods' certificate is from.
    Ok(bundle
        .and_then(|b| b.split_inclusive("-----END CERTIFICATE-----\n").next().map(str::to_owned))
        .into_iter()
        .collect())
}

/// Creates or updates every object, then waits for the webhook's pods. Reports each step.
pub async fn install(
    cluster: &Cluster,
    namespace: &str,
    image: &str,
    timeout: Duration,
    mut say: impl FnMut(String),
) -> anyhow::Result<()> {
    let old_cas = trusted_now(cluster).await?;
    let params = PostParams { field_manager: Some(super::sidecar::FIELD_MANAGER.into()), ..PostParams::default() };
    for obj in objects(namespace, image, &old_cas)? {
        let (api, if_present) = api_for(cluster, &obj)?;
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).context("an object without a name")?;
        let what = format!("{} {name}", obj["kind"].as_str().unwrap_or_default());
        let mut wanted: DynamicObject = serde_json::from_value(obj.clone())?;
        match api.get_opt(name).await.map_err(|e| cluster.explain(e, &format!("cannot read {what}")))? {
            None => {
                api.create(&params, &wanted).await.map_err(|e| cluster.explain(e, &format!("cannot create {what}")))?;
                say(format!("created {what}"));
            }
            Some(_) if if_present == IfPresent::Keep => say(format!("{what} exists")),
            Some(current) => {
                wanted.metadata.resource_version = current.metadata.resource_version;
                match api.replace(name, &params, &wanted).await {
                    Ok(_) => say(format!("updated {what}")),
                    Err(e) if is_status(&e, 409) => bail!("{what} changed while installing; run the install again"),
                    Err(e) => return Err(cluster.explain(e, &format!("cannot update {what}"))),
                }
            }
        }
    }
    if !old_cas.is_empty() {
        say("rotated the serving certificate (the caBundle trusts the old and the new CA meanwhile)".into());
    }
    let in_namespace = Cluster { namespace: namespace.to_owned(), ..cluster.clone() };
    let deployment = WorkloadRef { kind: Kind::Deployment, name: NAME.into() };
    rollout::wait(&in_namespace, &deployment, timeout, |state| {
        say(format!("webhook rollout: {}", rollout::describe(Some(state))));
    })
    .await
    .map(|_| ())
}

/// Deletes what install made: the webhook configuration first (so no API call waits on a
/// webhook being removed), then the namespace if install created it, else its objects.
pub async fn uninstall(cluster: &Cluster, namespace: &str, mut say: impl FnMut(String)) -> anyhow::Result<()> {
    let placeholder = objects(namespace, "unused", &[])?;
    let mut gone = 0;
    for obj in placeholder.iter().rev() {
        let (api, _) = api_for(cluster, obj)?;
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let what = format!("{} {name}", obj["kind"].as_str().unwrap_or_default());
        if obj["kind"] == "Namespace" {
            // Only a namespace hotsync made goes: never a namespace the user had.
            let ours = api
                .get_opt(name)
                .await
                .map_err(|e| cluster.explain(e, &format!("cannot read {what}")))?
                .is_some_and(|ns| {
                    ns.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/managed-by")).map(String::as_str)
                        == Some("hotsync")
                });
            if !ours {
                continue;
            }
        }
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                say(format!("deleted {what}"));
                gone += 1;
            }
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(cluster.explain(e, &format!("cannot delete {what}"))),
        }
    }
    if gone == 0 {
        say(format!("no hotsync webhook was installed in namespace {namespace}"));
    }
    Ok(())
}
