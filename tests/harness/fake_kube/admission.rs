//! Mutating admission, as the API server runs it on a create: every
//! MutatingWebhookConfiguration whose rules, namespaceSelector and objectSelector match is
//! called over HTTPS at its Service (a ready pod behind it), trusting only its caBundle and
//! checking the certificate names `SERVICE.NAMESPACE.svc`; an `allowed: false` answer refuses
//! the create, a JSONPatch answer changes the object, and a webhook that cannot be reached is
//! skipped or refuses the create as its `failurePolicy` says.
//!
//! The call is made synchronously under the store lock: the webhook is another process that
//! never calls back into this server, and a test cluster has a handful of creates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::resources::{Resource, by_plural};
use super::selector::{LabelSelector as Selector, labels_of};
use super::store::Store;
use super::verbs::random_suffix;

/// Runs the mutating webhooks that apply to creating `obj` in `ns`.
pub(crate) fn mutate_on_create(store: &Store, res: &Resource, ns: &str, obj: &mut Value) -> Result<(), ApiError> {
    let configs: Vec<Value> = store
        .list(by_plural("admissionregistration.k8s.io", "mutatingwebhookconfigurations"), None)
        .into_iter()
        .cloned()
        .collect();
    for config in configs {
        for webhook in config["webhooks"].as_array().into_iter().flatten() {
            if !applies(store, webhook, res, ns, obj) {
                continue;
            }
            let name = webhook["name"].as_str().unwrap_or_default();
            match call(store, webhook, res, ns, obj) {
                Ok(response) => apply_response(name, &response, obj)?,
                Err(why) if webhook["failurePolicy"] == "Ignore" => {
                    eprintln!("fake kube: webhook {name} failed, ignored (failurePolicy Ignore): {why}");
                }
                Err(why) => {
                    return Err(ApiError::internal(&format!(
                        "Internal error occurred: failed calling webhook \"{name}\": {why}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Whether a webhook's rules and selectors pick this create.
fn applies(store: &Store, webhook: &Value, res: &Resource, ns: &str, obj: &Value) -> bool {
    let rule_matches = webhook["rules"].as_array().into_iter().flatten().any(|rule| {
        let has = |key: &str, want: &str| {
            rule[key].as_array().into_iter().flatten().any(|v| v.as_str().is_some_and(|v| v == "*" || v == want))
        };
        has("apiGroups", res.group)
            && has("apiVersions", res.version)
            && has("operations", "CREATE")
            && has("resources", res.plural)
    });
    if !rule_matches {
        return false;
    }
    let namespace = store.get(by_plural("", "namespaces"), "", ns).cloned().unwrap_or_else(|| json!({}));
    let selects = |selector: &Value, object: &Value| {
        selector.is_null() || Selector::from_object(selector).is_ok_and(|s| s.matches(&labels_of(object)))
    };
    selects(&webhook["namespaceSelector"], &namespace) && selects(&webhook["objectSelector"], obj)
}

/// Calls the webhook with an AdmissionReview for the create; returns its response.
fn call(store: &Store, webhook: &Value, res: &Resource, ns: &str, obj: &Value) -> Result<Value, String> {
    let client = &webhook["clientConfig"];
    let service = &client["service"];
    let (svc_ns, svc_name) =
        (service["namespace"].as_str().unwrap_or_default(), service["name"].as_str().unwrap_or_default());
    let addr = endpoint(store, svc_ns, svc_name, service["port"].as_i64().unwrap_or(443))?;
    let path = service["path"].as_str().unwrap_or("/");
    let timeout = Duration::from_secs(webhook["timeoutSeconds"].as_u64().unwrap_or(10));
    let ca = base64::engine::general_purpose::STANDARD
        .decode(client["caBundle"].as_str().unwrap_or_default())
        .map_err(|e| format!("caBundle: {e}"))?;
    let uid = format!("{}-{}", random_suffix(8), random_suffix(4));
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": res.group, "version": res.version, "kind": res.kind},
            "resource": {"group": res.group, "version": res.version, "resource": res.plural},
            "requestKind": {"group": res.group, "version": res.version, "kind": res.kind},
            "requestResource": {"group": res.group, "version": res.version, "resource": res.plural},
            "name": obj["metadata"]["name"],
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    let server_name = format!("{svc_name}.{svc_ns}.svc");
    let body = post(addr, &server_name, path, &ca, &serde_json::to_vec(&review).expect("JSON"), timeout)?;
    let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let response = answer["response"].clone();
    if response["uid"] != uid.as_str() {
        return Err(format!("expected response.uid {uid:?}, got {}", response["uid"]));
    }
    Ok(response)
}

/// The address of a ready pod behind the Service, on the port the Service forwards `port` to.
fn endpoint(store: &Store, ns: &str, name: &str, port: i64) -> Result<SocketAddr, String> {
    let svc = store.get(by_plural("", "services"), ns, name).ok_or_else(|| format!("service \"{name}\" not found"))?;
    let port_spec = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_i64() == Some(port))
        .ok_or_else(|| format!("service \"{name}\" has no port {port}"))?;
    let selector = Selector::from_object(&json!({"matchLabels": svc["spec"]["selector"]}))?;
    let pods = store.list(by_plural("", "pods"), Some(ns));
    let pod = pods
        .into_iter()
        .find(|p| super::is_ready(p) && selector.matches(&labels_of(p)))
        .ok_or_else(|| format!("no endpoints available for service \"{name}\""))?;
    let target = match &port_spec["targetPort"] {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(named) => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == named.as_str())
            .and_then(|p| p["containerPort"].as_u64())
            .ok_or_else(|| format!("no container port named {named}"))?,
        _ => port as u64,
    };
    let ip: std::net::IpAddr =
        pod["status"]["podIP"].as_str().unwrap_or_default().parse().map_err(|e| format!("pod IP: {e}"))?;
    Ok(SocketAddr::new(ip, target as u16))
}

/// One HTTPS POST (HTTP/1.1, `Connection: close`), trusting only `ca`; the response body.
fn post(
    addr: SocketAddr,
    server_name: &str,
    path: &str,
    ca: &[u8],
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(ca) {
        roots.add(cert).map_err(|e| format!("caBundle: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial tcp {addr}: {e}"))?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = format!(
        "POST {path}?timeout={}s HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        timeout.as_secs(),
        body.len()
    );
    tls.write_all(head.as_bytes())
        .and_then(|()| tls.write_all(body))
        .map_err(|e| format!("Post \"https://{server_name}{path}\": {e}"))?;
    let mut raw = Vec::new();
    if let Err(e) = tls.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(format!("Post \"https://{server_name}{path}\": {e}"));
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("a malformed HTTP answer")?;
    let (head, rest) = (String::from_utf8_lossy(&raw[..split]).into_owned(), raw[split + 4..].to_vec());
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("the webhook answered {}", head.lines().next().unwrap_or_default()));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(&rest));
    }
    Ok(rest)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

/// Applies an admission response: a refusal, or a JSONPatch.
fn apply_response(name: &str, response: &Value, obj: &mut Value) -> Result<(), ApiError> {
    if response["allowed"] != true {
        let message = response["status"]["message"].as_str().unwrap_or("denied");
        return Err(ApiError::admission_denied(name, message));
    }
    let Some(patch) = response["patch"].as_str() else { return Ok(()) };
    if response["patchType"] != "JSONPatch" {
        return Err(ApiError::internal(&format!("webhook {name}: unsupported patchType {}", response["patchType"])));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| ApiError::internal(&format!("webhook {name}: patch is not base64: {e}")))?;
    let patch: json_patch::Patch = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal(&format!("webhook {name}: patch is not a JSONPatch: {e}")))?;
    json_patch::patch(obj, &patch)
        .map_err(|e| ApiError::internal(&format!("webhook {name}: the patch does not apply: {e}")))
}
