//! The API verbs with the real server's semantics, on the store: create (defaults, uid,
//! generation), update (optimistic concurrency, status kept, generation bumps), patch
//! (merge and JSON patch), and delete (graceful for pods, finalizers). The HTTP server, the
//! controllers, the kubelet and `FakeCluster`'s helpers all write through here.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use super::admission;
use super::errors::ApiError;
use super::resources::{Resource, by_plural};
use super::store::Store;
use super::{defaults, strategic, validate};

/// The time now, as the API server writes timestamps (RFC 3339, seconds, UTC).
pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Seconds since the epoch of an API timestamp.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    s.parse::<k8s_openapi::jiff::Timestamp>().ok().map(k8s_openapi::jiff::Timestamp::as_second)
}

/// A pseudo-random number (xorshift, seeded from the clock and the process id).
pub(crate) fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = ((t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)) | 1;
        x = match STATE.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => seed,
            Err(cur) => cur,
        };
    }
    loop {
        let mut y = x;
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
        match STATE.compare_exchange(x, y, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return y,
            Err(cur) => x = cur,
        }
    }
}

/// The alphabet of generated name suffixes (no vowels, no look-alikes), as client-go's.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `n` random characters of generated names (`generateName`, pod suffixes).
pub(crate) fn random_suffix(n: usize) -> String {
    (0..n).map(|_| ALPHANUMS[(random() % ALPHANUMS.len() as u64) as usize] as char).collect()
}

/// client-go's `SafeEncodeString`: each character of `s` mapped into the alphabet.
pub(crate) fn safe_encode(s: &str) -> String {
    s.bytes().map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char).collect()
}

fn uid() -> String {
    let (a, b) = (random(), random());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Resources whose spec changes bump `metadata.generation`.
fn tracks_generation(res: &Resource) -> bool {
    res.group == "apps"
}

/// Creates an object as `POST` does. `ns` is the request's namespace (None: cluster scope).
pub(crate) fn create(store: &mut Store, res: &Resource, ns: Option<&str>, obj: Value) -> Result<Value, ApiError> {
    create_checked(store, res, ns, obj, &mut FieldCheck::default())
}

/// `create` with the request's field validation.
pub(crate) fn create_checked(
    store: &mut Store,
    res: &Resource,
    ns: Option<&str>,
    mut obj: Value,
    check: &mut FieldCheck,
) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body of the request was not a JSON object"));
    }
    check_type(res, &mut obj)?;
    let ns = namespace_for(store, res, ns, &obj)?;
    let meta = &mut obj["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    if meta["name"].as_str().unwrap_or_default().is_empty()
        && let Some(prefix) = meta["generateName"].as_str()
    {
        meta["name"] = json!(format!("{prefix}{}", random_suffix(5)));
    }
    if res.namespaced {
        meta["namespace"] = json!(ns);
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    for field in ["uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
        if let Some(m) = meta.as_object_mut() {
            m.remove(field);
        }
    }
    decode(res, &mut obj, check)?;
    merge_string_data(res, &mut obj);
    defaults::apply(res, &mut obj);
    if res.is("", "pods") {
        // Mutating admission runs between defaulting and validation; what it adds is
        // defaulted again.
        admission::mutate_on_create(store, res, &ns, &mut obj)?;
        defaults::apply(res, &mut obj);
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let causes = validate::object(res, &obj);
    if !causes.is_empty() {
        return Err(ApiError::invalid(res, &name, &causes));
    }
    if store.get(res, &ns, &name).is_some() {
        return Err(ApiError::already_exists(res, &name));
    }
    let meta = &mut obj["metadata"];
    meta["uid"] = json!(uid());
    meta["creationTimestamp"] = json!(now());
    if tracks_generation(res) {
        meta["generation"] = json!(1);
    }
    // What PrepareForCreate resets.
    match (res.group, res.plural) {
        ("", "pods") => obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])}),
        ("", "namespaces") => {
            obj["status"] = json!({"phase": "Active"});
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            let labels = &mut obj["metadata"]["labels"];
            if !labels.is_object() {
                *labels = json!({});
            }
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
        ("apps", _) => obj["status"] = json!({}),
        ("", "services") => {
            obj["status"] = json!({"loadBalancer": {}});
            if obj["spec"]["type"] != "ExternalName" && obj["spec"]["clusterIP"].as_str().is_none_or(str::is_empty) {
                let ip = format!("10.96.{}.{}", random() % 256, 1 + random() % 254);
                obj["spec"]["clusterIP"] = json!(ip);
                obj["spec"]["clusterIPs"] = json!([ip]);
            }
        }
        _ => {}
    }
    Ok(store.insert(res, &ns, obj))
}

fn qos_class(spec: &Value) -> &'static str {
    let has_resources = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["resources"]["requests"].is_object() || c["resources"]["limits"].is_object());
    if has_resources { "Burstable" } else { "BestEffort" }
}

/// `kind` and `apiVersion` in the body must be those of the URL's resource (filled if absent).
fn check_type(res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let want = res.api_version();
    match obj["apiVersion"].as_str() {
        None => obj["apiVersion"] = json!(want),
        Some(v) if v == want => {}
        Some(v) => {
            return Err(ApiError::bad_request(&format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )));
        }
    }
    match obj["kind"].as_str() {
        None => obj["kind"] = json!(res.kind),
        Some(k) if k == res.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(&format!(
                "{k} in version {:?} cannot be handled as a {}: the kind in the data ({k}) does not match the expected kind ({})",
                res.version, res.kind, res.kind
            )));
        }
    }
    Ok(())
}

/// How a write treats fields the object's type does not have (`fieldValidation`): the
/// server's default warns (a `Warning` header) and drops them; `Strict` refuses the write.
#[derive(Debug, Default)]
pub(crate) struct FieldCheck {
    pub(crate) strict: bool,
    pub(crate) warnings: Vec<String>,
}

impl FieldCheck {
    /// From the request's `fieldValidation` parameter.
    pub(crate) fn from_query(v: Option<&str>) -> Self {
        Self { strict: v == Some("Strict"), warnings: Vec::new() }
    }
}

/// The object must decode as its typed form (a number where a string belongs is a 400); it is
/// replaced by what the type keeps, unknown fields warned about or (strict) refused.
fn decode(res: &Resource, obj: &mut Value, check: &mut FieldCheck) -> Result<(), ApiError> {
    let typed = (res.decode)(obj).map_err(|e| {
        ApiError::bad_request(&format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            res.kind, res.version, res.kind
        ))
    })?;
    let mut unknown = Vec::new();
    unknown_fields(obj, &typed, "", &mut unknown);
    if check.strict && !unknown.is_empty() {
        let list: Vec<String> = unknown.iter().map(|f| format!("unknown field {f:?}")).collect();
        return Err(ApiError::bad_request(&format!("strict decoding error: {}", list.join(", "))));
    }
    check.warnings.extend(unknown.iter().map(|f| format!("unknown field {f:?}")));
    *obj = typed;
    Ok(())
}

/// Paths (`spec.template.spec.containers[0].foo`) present in `given` but not in `kept`.
fn unknown_fields(given: &Value, kept: &Value, at: &str, out: &mut Vec<String>) {
    match (given, kept) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, v) in g {
                let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                match k.get(key) {
                    None if !v.is_null() => out.push(path),
                    Some(kv) => unknown_fields(v, kv, &path, out),
                    None => {}
                }
            }
        }
        (Value::Array(g), Value::Array(k)) if g.len() == k.len() => {
            for (i, (a, b)) in g.iter().zip(k).enumerate() {
                unknown_fields(a, b, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A Secret's `stringData` is write-only: the server merges it into `data`, base64-encoded.
fn merge_string_data(res: &Resource, obj: &mut Value) {
    use base64::Engine;
    if !res.is("", "secrets") {
        return;
    }
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else { return };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in string_data {
        let encoded = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
        obj["data"][k] = json!(encoded);
    }
}

/// The namespace an object goes to; it must exist, and the body must not name another.
fn namespace_for(store: &Store, res: &Resource, ns: Option<&str>, obj: &Value) -> Result<String, ApiError> {
    if !res.namespaced {
        return Ok(String::new());
    }
    let body_ns = obj["metadata"]["namespace"].as_str().filter(|s| !s.is_empty());
    let ns = match (ns, body_ns) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        (Some(a), _) => a.to_owned(),
        (None, Some(b)) => b.to_owned(),
        (None, None) => "default".to_owned(),
    };
    if store.get(by_plural("", "namespaces"), "", &ns).is_none() {
        return Err(ApiError::namespace_not_found(&ns));
    }
    Ok(ns)
}

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The main resource: status is kept as stored.
    Main,
    /// The `/status` subresource: only status changes.
    Status,
    /// Writes of the fake's own controllers and kubelet: everything.
    Everything,
}

/// Replaces an object as `PUT` does.
pub(crate) fn update(
    store: &mut Store,
    res: &Resource,
    ns: &str,
    name: &str,
    obj: Value,
    part: Part,
) -> Result<Value, ApiError> {
    update_checked(store, res, ns, name, obj, part, &mut FieldCheck::default())
}

/// `update` with the request's field validation.
pub(crate) fn update_checked(
    store: &mut Store,
    res: &Resource,
    ns: &str,
    name: &str,
    mut obj: Value,
    part: Part,
    check: &mut FieldCheck,
) -> Result<Value, ApiError> {
    let Some(old) = store.get(res, ns, name).cloned() else {
        return Err(ApiError::not_found(res, name));
    };
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body of the request was not a JSON object"));
    }
    check_type(res, &mut obj)?;
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj["metadata"]["name"].as_str() {
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::bad_request(&format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        None => obj["metadata"]["name"] = json!(name),
    }
    if res.namespaced {
        match obj["metadata"]["namespace"].as_str() {
            Some(n) if n != ns && !n.is_empty() => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
    }
    if let Some(rv) = obj["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty())
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(res, name));
    }
    decode(res, &mut obj, check)?;
    merge_string_data(res, &mut obj);
    match part {
        Part::Main => match old.get("status") {
            Some(s) => obj["status"] = s.clone(),
            None => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
        },
        Part::Status => {
            let status = obj["status"].clone();
            obj = old.clone();
            obj["status"] = status;
        }
        Part::Everything => {}
    }
    // Set by the server only.
    for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
        match old["metadata"].get(field) {
            Some(v) => obj["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if res.is("", "services") && obj["spec"]["clusterIP"].is_null() && !old["spec"]["clusterIP"].is_null() {
        // The allocated address stays when an update leaves it out.
        obj["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
        obj["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
    }
    defaults::apply(res, &mut obj);
    let causes = validate::update(res, &old, &obj);
    if !causes.is_empty() {
        return Err(ApiError::invalid(res, name, &causes));
    }
    if tracks_generation(res) && old["spec"] != obj["spec"] {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        obj["metadata"]["generation"] = json!(generation);
    }
    obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    if obj == old {
        // A no-op write: the real server does not bump the resourceVersion.
        return Ok(old);
    }
    // The last finalizer removed from an object being deleted: it goes.
    if !old["metadata"]["deletionTimestamp"].is_null()
        && obj["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty)
        && !res.is("", "pods")
    {
        return Ok(store.remove(res, ns, name).unwrap_or(obj));
    }
    Ok(store.replace(res, ns, obj))
}

/// The media types PATCH accepts here. Server-side apply (`application/apply-patch+yaml`) is
/// not implemented: the fake answers it 415, as a server does for a patch type it does not
/// serve, so a client depending on it fails loudly rather than meeting made-up semantics.
pub(crate) const PATCH_TYPES: &[&str] =
    &["application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json"];

/// Patches an object as `PATCH` does, then stores it as an update (same checks).
pub(crate) fn patch(
    store: &mut Store,
    res: &Resource,
    ns: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
    part: Part,
) -> Result<Value, ApiError> {
    patch_checked(store, res, ns, name, content_type, body, part, &mut FieldCheck::default())
}

/// `patch` with the request's field validation.
#[allow(clippy::too_many_arguments)] // the request's parts, as the handler has them
pub(crate) fn patch_checked(
    store: &mut Store,
    res: &Resource,
    ns: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
    part: Part,
    check: &mut FieldCheck,
) -> Result<Value, ApiError> {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    if !PATCH_TYPES.contains(&ct) {
        return Err(ApiError::unsupported_media_type(PATCH_TYPES));
    }
    let Some(current) = store.get(res, ns, name).cloned() else {
        return Err(ApiError::not_found(res, name));
    };
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&format!("error decoding patch: {e}")))?;
    let mut obj = current.clone();
    if ct == "application/merge-patch+json" {
        json_patch::merge(&mut obj, &patch);
    } else if ct == "application/strategic-merge-patch+json" {
        obj = strategic::apply(&obj, &patch, res.is("", "services")).map_err(|e| ApiError::bad_request(&e))?;
    } else {
        let ops: json_patch::Patch =
            serde_json::from_value(patch).map_err(|e| ApiError::bad_request(&format!("error decoding patch: {e}")))?;
        json_patch::patch(&mut obj, &ops).map_err(|e| {
            let mut err = ApiError::internal(&e.to_string());
            err.code = 422;
            err.status["code"] = json!(422);
            err.status["reason"] = json!("Invalid");
            err
        })?;
    }
    // A resourceVersion in the patch is a precondition; without one the patch applies to the
    // current object.
    if obj["metadata"]["resourceVersion"].is_null() {
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    }
    update_checked(store, res, ns, name, obj, part, check)
}

/// What a DELETE answered and did.
pub(crate) enum Deleted {
    /// Gone now; the real server answers a `Success` Status for most resources.
    Gone(Value),
    /// Marked for deletion (graceful pod, finalizers): the object with its deletionTimestamp.
    Marked(Value),
}

/// Deletes an object as `DELETE` does. `grace` is `gracePeriodSeconds` from the request.
pub(crate) fn delete(
    store: &mut Store,
    res: &Resource,
    ns: &str,
    name: &str,
    grace: Option<i64>,
    precondition_rv: Option<&str>,
) -> Result<Deleted, ApiError> {
    let Some(old) = store.get(res, ns, name).cloned() else {
        return Err(ApiError::not_found(res, name));
    };
    if let Some(rv) = precondition_rv
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        let mut e = ApiError::conflict(res, name);
        let msg = format!(
            "Operation cannot be fulfilled on {} {name:?}: the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
            res.qualified(),
            old["metadata"]["resourceVersion"].as_str().unwrap_or_default()
        );
        e.status["message"] = json!(msg);
        return Err(e);
    }
    if res.is("", "namespaces") {
        for (r, n) in store.keys_in_namespace(name) {
            store.remove(r, name, &n);
        }
        let mut gone = store.remove(res, ns, name).unwrap_or(old);
        gone["metadata"]["deletionTimestamp"] = json!(now());
        gone["status"]["phase"] = json!("Terminating");
        return Ok(Deleted::Marked(gone));
    }
    if res.is("", "pods") {
        let grace = grace.or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30);
        let scheduled = old["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        if grace <= 0 || !scheduled {
            return Ok(Deleted::Marked(store.remove(res, ns, name).unwrap_or(old)));
        }
        if !old["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Deleted::Marked(old));
        }
        let mut obj = old;
        let at = k8s_openapi::jiff::Timestamp::now().as_second() + grace;
        let at = k8s_openapi::jiff::Timestamp::from_second(at)
            .map_or_else(|_| now(), |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        obj["metadata"]["deletionTimestamp"] = json!(at);
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        return Ok(Deleted::Marked(store.replace(res, ns, obj)));
    }
    if old["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
        if !old["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Deleted::Marked(old));
        }
        let mut obj = old;
        obj["metadata"]["deletionTimestamp"] = json!(now());
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        return Ok(Deleted::Marked(store.replace(res, ns, obj)));
    }
    Ok(Deleted::Gone(store.remove(res, ns, name).unwrap_or(old)))
}
