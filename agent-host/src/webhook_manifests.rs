//! `hotsync webhook manifests`: the objects that run the admission webhook in a cluster,
//! with a fresh serving certificate whose CA goes into the webhook's `caBundle`.
//!
//! Safe by default: `failurePolicy: Ignore` (a webhook outage never blocks pod creation),
//! `kube-system` and the webhook's own namespace skipped, `sideEffects: None`, a 5 s timeout,
//! reinvocation allowed (injection is idempotent).

use base64::Engine;
use hotsync_transport::credentials::ServerTls;
use serde_json::{Value, json};

/// Name of the webhook's Service, Deployment, ServiceAccount and configuration.
pub const NAME: &str = "hotsync-webhook";
const PORT: u16 = 8443;

/// The manifests, as YAML documents.
pub fn manifests(namespace: &str, image: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    for doc in objects(namespace, image, &[])? {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc)?);
    }
    Ok(out)
}

/// The objects, in the order to create them, with a new serving certificate. `also_trusted`:
/// CA certificates (PEM) the caBundle keeps trusting besides the new one, so a rotation never
/// leaves a moment when the API server trusts neither the old nor the new certificate.
pub fn objects(namespace: &str, image: &str, also_trusted: &[String]) -> anyhow::Result<Vec<Value>> {
    let service_dns = format!("{NAME}.{namespace}.svc");
    let tls = ServerTls::generate(&[service_dns.clone(), format!("{service_dns}.cluster.local")])?;
    let mut bundle = tls.ca_pem.clone();
    for ca in also_trusted {
        bundle.push_str(ca);
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let labels = json!({"app.kubernetes.io/name": NAME, "app.kubernetes.io/managed-by": "hotsync"});
    let skip_system = json!({
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", "kube-public", namespace],
    });
    let webhook = |name: &str, path: &str, namespace_selector: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "service": {"name": NAME, "namespace": namespace, "path": path, "port": 443},
                "caBundle": b64(&bundle),
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
            "namespaceSelector": namespace_selector,
        })
    };
    Ok(vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}),
        // The webhook reads nothing from the API: its account has no permissions at all.
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": namespace, "labels": labels}, "automountServiceAccountToken": false}),
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": format!("{NAME}-tls"), "namespace": namespace, "labels": labels},
            "data": {"tls.crt": b64(&tls.cert_pem), "tls.key": b64(&tls.key_pem)},
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": NAME,
                        "automountServiceAccountToken": false,
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532},
                        "containers": [{
                            "name": "webhook",
                            "image": image,
                            "args": ["webhook", "--listen", format!("0.0.0.0:{PORT}"), "--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key", "--agent-image", image, "--log-format", "json"],
                            "ports": [{"name": "https", "containerPort": PORT}],
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": PORT, "scheme": "HTTPS"}, "periodSeconds": 5},
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": PORT, "scheme": "HTTPS"}, "periodSeconds": 10},
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": true}],
                        }],
                        "volumes": [{"name": "tls", "secret": {"secretName": format!("{NAME}-tls")}}],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
            "spec": {"selector": {"app.kubernetes.io/name": NAME}, "ports": [{"name": "https", "port": 443, "targetPort": PORT}]},
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": NAME, "labels": labels},
            "webhooks": [
                // Pods that ask, by annotation, in any namespace but the system ones.
                webhook("pods.hotsync.dev", "/inject", json!({"matchExpressions": [skip_system.clone(), {"key": "hotsync.dev/inject", "operator": "NotIn", "values": ["enabled"]}]})),
                // Every pod of a namespace labelled hotsync.dev/inject=enabled.
                webhook("namespaces.hotsync.dev", "/inject-all", json!({"matchLabels": {"hotsync.dev/inject": "enabled"}, "matchExpressions": [skip_system]})),
            ],
        }),
    ])
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
    use serde::Deserialize;

    use super::*;

    #[test]
    fn manifests_are_valid_objects_with_safe_defaults() {
        let yaml = manifests("hotsync-system", "hotsync-agent:0.1.0").unwrap();
        let docs: Vec<Value> =
            serde_yaml::Deserializer::from_str(&yaml).map(|d| Value::deserialize(d).unwrap()).collect();
        assert_eq!(docs.len(), 6);
        let _: Namespace = serde_json::from_value(docs[0].clone()).unwrap();
        let _: ServiceAccount = serde_json::from_value(docs[1].clone()).unwrap();
        let secret: Secret = serde_json::from_value(docs[2].clone()).unwrap();
        assert!(secret.data.unwrap().contains_key("tls.key"));
        let _: Deployment = serde_json::from_value(docs[3].clone()).unwrap();
        let _: Service = serde_json::from_value(docs[4].clone()).unwrap();
        let config: MutatingWebhookConfiguration = serde_json::from_value(docs[5].clone()).unwrap();
        for w in config.webhooks.unwrap() {
            assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
            assert_eq!(w.side_effects, "None");
            assert_eq!(w.timeout_seconds, Some(5));
            assert!(w.client_config.ca_bundle.is_some());
            let skipped = serde_json::to_string(&w.namespace_selector).unwrap();
            assert!(skipped.contains("kube-system") && skipped.contains("hotsync-system"), "{skipped}");
        }
    }
}
