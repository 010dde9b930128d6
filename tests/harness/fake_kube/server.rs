//! HTTPS and routing: TLS with the fake's CA, bearer-token authentication, the request log,
//! RBAC denials, and the mapping of paths and methods to verbs.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::errors::{ApiError, delete_success};
use super::resources::{RESOURCES, Resource, find};
use super::selector::{FieldSelector, LabelSelector};
use super::store::Store;
use super::verbs::{self, Deleted, FieldCheck, Part};
use super::{Shared, portforward, watch};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON response.
pub(crate) fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Audit-Id", super::verbs::random_suffix(12))
        .body(full(v.to_string()))
        .expect("a valid response")
}

/// Adds a `Warning: 299 - "…"` header per warning, as the server reports dropped fields.
fn with_warnings(mut r: Response<Body>, check: &FieldCheck) -> Response<Body> {
    for w in &check.warnings {
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - {w:?}")) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

impl ApiError {
    pub(crate) fn response(&self) -> Response<Body> {
        let mut r = json_response(self.code, &self.status);
        if let Some(secs) = self.status["details"]["retryAfterSeconds"].as_u64() {
            r.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        r
    }
}

pub(crate) struct Server {
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Server {
    pub(crate) fn new(
        shared: Arc<Shared>,
        listener: std::net::TcpListener,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::from_std(listener)?;
        Ok(Self { shared, listener, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
    }

    pub(crate) async fn run(self) {
        loop {
            let Ok((tcp, _)) = self.listener.accept().await else { continue };
            let acceptor = self.acceptor.clone();
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(shared, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    }
}

/// What a path names.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) res: &'static Resource,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
}

/// Parses an API path (`/api/v1/namespaces/NS/pods/NAME/portforward`…).
pub(crate) fn route(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_start_matches('/').trim_end_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let owned = |s: &&str| Some((*s).to_owned());
    let t = |res, namespace: Option<&&str>, name: Option<&&str>, sub: Option<&&str>| {
        Some(Target {
            res,
            namespace: namespace.and_then(owned),
            name: name.and_then(owned),
            subresource: sub.and_then(owned),
        })
    };
    match rest {
        ["namespaces", ns, plural, more @ ..] if find(group, version, plural).is_some_and(|r| r.namespaced) => {
            let res = find(group, version, plural)?;
            match more {
                [] => t(res, Some(ns), None, None),
                [name] => t(res, Some(ns), Some(name), None),
                [name, sub] => t(res, Some(ns), Some(name), Some(sub)),
                _ => None,
            }
        }
        [plural, more @ ..] => {
            let res = find(group, version, plural)?;
            match more {
                [] => t(res, None, None, None),
                [name] if !res.namespaced => t(res, None, Some(name), None),
                [name, sub] if !res.namespaced => t(res, None, Some(name), Some(sub)),
                _ => None,
            }
        }
        [] => None,
    }
}

/// Query parameters, percent-decoded; repeated keys kept in order.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters of a request, with lookups.
pub(crate) struct Query(pub Vec<(String, String)>);

impl Query {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub(crate) fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn not_found_page() -> Response<Body> {
    Response::builder()
        .status(404)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("X-Content-Type-Options", "nosniff")
        .body(full("404 page not found\n"))
        .expect("a valid response")
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let path_and_query = req.uri().path_and_query().map_or_else(|| path.clone(), ToString::to_string);
    shared
        .requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((req.method().to_string(), path_and_query));

    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| t == shared.token);
    if !authorized {
        return ApiError::unauthorized().response();
    }
    if let Some(r) = discovery(&path) {
        return r;
    }
    let Some(target) = route(&path) else { return not_found_page() };
    let query = Query(query_pairs(req.uri().query().unwrap_or_default()));
    match serve(&shared, target, query, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

/// The RBAC verb of a request.
fn verb_of(method: &Method, target: &Target, query: &Query) -> &'static str {
    let collection = target.name.is_none();
    match *method {
        Method::GET | Method::HEAD if collection && query.flag("watch") => "watch",
        Method::GET | Method::HEAD if collection => "list",
        // Port-forward over a WebSocket is a GET that needs `create` (as exec and attach do
        // since the apiserver authorizes the upgrade as a create).
        Method::GET if target.subresource.as_deref() == Some("portforward") => "create",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

async fn body_bytes(req: Request<Incoming>) -> Result<(http::request::Parts, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map_err(|e| ApiError::bad_request(&e.to_string()))?.to_bytes();
    Ok((parts, bytes))
}

fn content_type(parts: &http::request::Parts) -> String {
    parts.headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned()
}

/// PUT and POST take JSON only here (the real server also takes YAML and protobuf).
fn json_body(parts: &http::request::Parts, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type(parts);
    if ct.split(';').next().unwrap_or_default().trim() != "application/json" {
        return Err(ApiError::unsupported_media_type(&[
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf",
        ]));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&format!("error decoding body: {e}")))
}

// One match over methods and subresources: it reads as the API's table of verbs.
#[allow(clippy::too_many_lines)]
async fn serve(
    shared: &Arc<Shared>,
    target: Target,
    query: Query,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let res = target.res;
    let verb = verb_of(req.method(), &target, &query);
    let rbac_resource =
        target.subresource.as_ref().map_or_else(|| res.plural.to_owned(), |s| format!("{}/{s}", res.plural));
    if shared.is_denied(verb, &rbac_resource) {
        let ns = if res.namespaced { target.namespace.as_deref() } else { None };
        return Err(ApiError::forbidden(
            res,
            target.subresource.as_deref(),
            target.name.as_deref().unwrap_or_default(),
            verb,
            ns,
        ));
    }
    if let Some(code) = shared.take_failure(verb, &rbac_resource) {
        return Err(ApiError::server_error(code));
    }
    let ns = target.namespace.clone().unwrap_or_default();
    let sub = target.subresource.as_deref();
    match (req.method().clone(), target.name.clone(), sub) {
        (Method::GET, None, None) if query.flag("watch") => {
            watch::start(shared, res, target.namespace.as_deref(), &query)
        }
        (Method::GET, None, None) => list(shared, res, target.namespace.as_deref(), &query),
        (Method::GET, Some(name), Some("portforward")) if res.is("", "pods") => {
            Ok(portforward::handle(shared, req, &ns, &name, &query))
        }
        (Method::GET, Some(name), Some("log")) if res.is("", "pods") => {
            let container = query.get("container").unwrap_or_default().to_owned();
            if shared.store().get(res, &ns, &name).is_none() {
                return Err(ApiError::not_found(res, &name));
            }
            let log = shared.kubelet.log(&ns, &name, &container);
            Ok(Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(full(log))
                .expect("valid"))
        }
        (Method::GET, Some(name), None | Some("status")) => {
            let store = shared.store();
            let obj = store.get(res, &ns, &name).ok_or_else(|| ApiError::not_found(res, &name))?;
            Ok(json_response(200, obj))
        }
        (Method::GET, Some(name), Some("scale")) if has_scale(res) => {
            let store = shared.store();
            let obj = store.get(res, &ns, &name).ok_or_else(|| ApiError::not_found(res, &name))?;
            Ok(json_response(200, &scale_of(obj)))
        }
        (Method::POST, None, None) => {
            let (parts, body) = body_bytes(req).await?;
            let obj = json_body(&parts, &body)?;
            let mut check = FieldCheck::from_query(query.get("fieldValidation"));
            let created = verbs::create_checked(
                &mut *writable(shared, &query)?,
                res,
                target.namespace.as_deref(),
                obj,
                &mut check,
            )?;
            Ok(with_warnings(json_response(201, &created), &check))
        }
        (Method::PUT, Some(name), None | Some("status")) => {
            let (parts, body) = body_bytes(req).await?;
            let obj = json_body(&parts, &body)?;
            let part = if sub == Some("status") { Part::Status } else { Part::Main };
            let mut check = FieldCheck::from_query(query.get("fieldValidation"));
            let updated =
                verbs::update_checked(&mut *writable(shared, &query)?, res, &ns, &name, obj, part, &mut check)?;
            Ok(with_warnings(json_response(200, &updated), &check))
        }
        (Method::PUT, Some(name), Some("scale")) if has_scale(res) => {
            let (parts, body) = body_bytes(req).await?;
            let scale = json_body(&parts, &body)?;
            let mut store = writable(shared, &query)?;
            let mut obj = store.get(res, &ns, &name).cloned().ok_or_else(|| ApiError::not_found(res, &name))?;
            if let Some(rv) = scale["metadata"]["resourceVersion"].as_str() {
                obj["metadata"]["resourceVersion"] = json!(rv);
            }
            obj["spec"]["replicas"] = scale["spec"]["replicas"].clone();
            let updated = verbs::update(&mut store, res, &ns, &name, obj, Part::Main)?;
            Ok(json_response(200, &scale_of(&updated)))
        }
        (Method::PATCH, Some(name), None | Some("status")) => {
            let (parts, body) = body_bytes(req).await?;
            let part = if sub == Some("status") { Part::Status } else { Part::Main };
            let mut check = FieldCheck::from_query(query.get("fieldValidation"));
            let patched = verbs::patch_checked(
                &mut *writable(shared, &query)?,
                res,
                &ns,
                &name,
                &content_type(&parts),
                &body,
                part,
                &mut check,
            )?;
            Ok(with_warnings(json_response(200, &patched), &check))
        }
        (Method::PATCH, Some(name), Some("scale")) if has_scale(res) => {
            let (parts, body) = body_bytes(req).await?;
            let mut store = writable(shared, &query)?;
            let obj = store.get(res, &ns, &name).cloned().ok_or_else(|| ApiError::not_found(res, &name))?;
            let mut scale = scale_of(&obj);
            let ct = content_type(&parts);
            let patch: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(&e.to_string()))?;
            match ct.split(';').next().unwrap_or_default().trim() {
                "application/merge-patch+json" => json_patch::merge(&mut scale, &patch),
                "application/strategic-merge-patch+json" => {
                    scale = super::strategic::apply(&scale, &patch, false).map_err(|e| ApiError::bad_request(&e))?;
                }
                "application/json-patch+json" => {
                    let ops: json_patch::Patch =
                        serde_json::from_value(patch).map_err(|e| ApiError::bad_request(&e.to_string()))?;
                    json_patch::patch(&mut scale, &ops).map_err(|e| ApiError::bad_request(&e.to_string()))?;
                }
                _ => return Err(ApiError::unsupported_media_type(verbs::PATCH_TYPES)),
            }
            let mut new = obj.clone();
            new["spec"]["replicas"] = scale["spec"]["replicas"].clone();
            let updated = verbs::update(&mut store, res, &ns, &name, new, Part::Main)?;
            Ok(json_response(200, &scale_of(&updated)))
        }
        (Method::DELETE, Some(name), None) => {
            let (_, body) = body_bytes(req).await?;
            let opts: Value =
                if body.is_empty() { json!({}) } else { serde_json::from_slice(&body).unwrap_or(json!({})) };
            let grace = query
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| opts["gracePeriodSeconds"].as_i64());
            let precondition = opts["preconditions"]["resourceVersion"].as_str();
            // DeleteOptions may carry `dryRun` in the body rather than the query.
            let mut query = Query(query.0.clone());
            if opts["dryRun"].as_array().is_some_and(|d| d.iter().any(|v| v == "All")) {
                query.0.push(("dryRun".into(), "All".into()));
            }
            match verbs::delete(&mut *writable(shared, &query)?, res, &ns, &name, grace, precondition)? {
                Deleted::Marked(obj) => Ok(json_response(200, &obj)),
                Deleted::Gone(obj) if returns_deleted_object(res) => Ok(json_response(200, &obj)),
                Deleted::Gone(obj) => Ok(json_response(
                    200,
                    &delete_success(res, &name, obj["metadata"]["uid"].as_str().unwrap_or_default()),
                )),
            }
        }
        (Method::DELETE, None, None) => {
            let label = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
                .map_err(|e| ApiError::bad_request(&e))?;
            let (_, body) = body_bytes(req).await?;
            let opts: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
            let mut query = Query(query.0.clone());
            if opts["dryRun"].as_array().is_some_and(|d| d.iter().any(|v| v == "All")) {
                query.0.push(("dryRun".into(), "All".into()));
            }
            let mut store = writable(shared, &query)?;
            let names: Vec<(String, String)> = store
                .list(res, target.namespace.as_deref())
                .into_iter()
                .filter(|o| label.matches_object(o))
                .map(|o| {
                    (
                        o["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                        o["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let mut items = Vec::new();
            for (n, name) in names {
                if let Ok(Deleted::Gone(o) | Deleted::Marked(o)) = verbs::delete(&mut store, res, &n, &name, None, None)
                {
                    items.push(o);
                }
            }
            Ok(json_response(200, &list_body(res, store.rv(), &items)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The store a write goes to: the real one, or with `dryRun=All` a scratch copy (the write is
/// checked and answered as usual, and forgotten).
fn writable<'a>(shared: &'a Shared, query: &Query) -> Result<Writable<'a>, ApiError> {
    match query.get("dryRun") {
        None | Some("") => Ok(Writable::Real(shared.store())),
        Some("All") => Ok(Writable::Scratch(shared.store().scratch())),
        Some(other) => {
            Err(ApiError::bad_request(&format!("dryRun: Unsupported value: {other:?}: supported values: \"All\"")))
        }
    }
}

enum Writable<'a> {
    Real(std::sync::MutexGuard<'a, Store>),
    Scratch(Store),
}

impl std::ops::Deref for Writable<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        match self {
            Writable::Real(g) => g,
            Writable::Scratch(s) => s,
        }
    }
}

impl std::ops::DerefMut for Writable<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        match self {
            Writable::Real(g) => g,
            Writable::Scratch(s) => s,
        }
    }
}

/// Resources whose DELETE answers the object rather than a Success Status.
fn returns_deleted_object(res: &Resource) -> bool {
    res.is("", "pods") || res.is("", "services") || res.is("", "namespaces")
}

fn has_scale(res: &Resource) -> bool {
    res.group == "apps" && matches!(res.plural, "deployments" | "statefulsets" | "replicasets")
}

/// The `autoscaling/v1` Scale of a workload.
fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let selector = super::controllers::selector_string(&obj["spec"]["selector"]);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

pub(crate) fn list_body(res: &Resource, rv: u64, items: &[Value]) -> Value {
    json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

fn list(shared: &Shared, res: &'static Resource, ns: Option<&str>, query: &Query) -> Result<Response<Body>, ApiError> {
    let label =
        LabelSelector::parse(query.get("labelSelector").unwrap_or_default()).map_err(|e| ApiError::bad_request(&e))?;
    let field = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), res.kind)
        .map_err(|e| ApiError::bad_request(&e))?;
    let store = shared.store();
    if query.get("resourceVersionMatch") == Some("Exact")
        && let Some(rv) = query.get("resourceVersion").and_then(|r| r.parse::<u64>().ok())
        && rv != store.rv()
    {
        // Only the present is kept: an exact read of the past is "too old".
        return Err(ApiError::expired("The resourceVersion for the provided list is too old."));
    }
    let items: Vec<Value> = store
        .list(res, ns)
        .into_iter()
        .filter(|o| label.matches_object(o) && field.matches(o))
        .map(|o| {
            let mut o = o.clone();
            // Items of a list carry no kind or apiVersion, as the real server sends them.
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    Ok(json_response(200, &list_body(res, store.rv(), &items)))
}

/// `/version`, `/api`, `/apis` and the group-version resource lists.
fn discovery(path: &str) -> Option<Response<Body>> {
    let path = path.trim_end_matches('/');
    let ok = |v: Value| Some(json_response(200, &v));
    match path {
        "/version" => ok(json!({
            "major": "1", "minor": "34", "gitVersion": "v1.34.0", "gitCommit": "fake",
            "gitTreeState": "clean", "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24.6",
            "compiler": "gc", "platform": "linux/amd64"
        })),
        "/api" => ok(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})),
        "/apis" => {
            let mut groups: Vec<&str> = RESOURCES.iter().map(|r| r.group).filter(|g| !g.is_empty()).collect();
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        _ => {
            let gv = path.strip_prefix("/api/").map(|v| ("", v)).or_else(|| {
                let rest = path.strip_prefix("/apis/")?;
                let (g, v) = rest.split_once('/')?;
                Some((g, v))
            })?;
            if gv.1.contains('/') {
                return None;
            }
            let list: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group == gv.0 && r.version == gv.1)
                .map(|r| {
                    json!({
                        "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                    })
                })
                .collect();
            if list.is_empty() {
                return None;
            }
            let group_version = if gv.0.is_empty() { gv.1.to_owned() } else { format!("{}/{}", gv.0, gv.1) };
            ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_resources() {
        let t = route("/apis/apps/v1/namespaces/default/deployments/web").unwrap();
        assert_eq!(
            (t.res.plural, t.namespace.as_deref(), t.name.as_deref()),
            ("deployments", Some("default"), Some("web"))
        );
        let t = route("/api/v1/namespaces/default").unwrap();
        assert_eq!((t.res.plural, t.namespace, t.name.as_deref()), ("namespaces", None, Some("default")));
        let t = route("/api/v1/namespaces/ns/pods/p/portforward").unwrap();
        assert_eq!(t.subresource.as_deref(), Some("portforward"));
        assert!(route("/api/v1/pods/x").is_none(), "a namespaced resource needs its namespace");
        assert!(route("/apis/apps/v1/widgets").is_none());
        assert_eq!(
            query_pairs("&ports=80%2C1234&x=a+b"),
            vec![("ports".into(), "80,1234".into()), ("x".into(), "a b".into())]
        );
    }
}
