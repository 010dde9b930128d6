//! `metav1.Status` errors, shaped like the real API server's (message texts included), so a
//! client's error handling meets the same JSON it will meet in a cluster.

use serde_json::{Value, json};

use super::resources::Resource;

/// An API error: an HTTP code and the `Status` body to send with it.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) status: Value,
}

/// One entry of `details.causes` of a 422 Invalid.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    /// `FieldValueRequired`, `FieldValueDuplicate`, `FieldValueNotFound`, `FieldValueInvalid`…
    pub(crate) reason: &'static str,
    /// As the server words it, e.g. `Not found: "x"`.
    pub(crate) message: String,
    /// JSON path of the field, e.g. `spec.template.spec.containers[0].volumeMounts[0].name`.
    pub(crate) field: String,
}

impl Cause {
    pub(crate) fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() { "Required value".to_owned() } else { format!("Required value: {detail}") };
        Self { reason: "FieldValueRequired", message, field: field.into() }
    }
    pub(crate) fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self { reason: "FieldValueDuplicate", message: format!("Duplicate value: {value:?}"), field: field.into() }
    }
    pub(crate) fn not_found(field: impl Into<String>, value: &str) -> Self {
        Self { reason: "FieldValueNotFound", message: format!("Not found: {value:?}"), field: field.into() }
    }
    pub(crate) fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value:?}: {detail}"),
            field: field.into(),
        }
    }
    /// `Invalid value: SHOWN: detail`, for values Go prints without quotes (numbers, structs).
    pub(crate) fn invalid_shown(field: impl Into<String>, shown: &str, detail: &str) -> Self {
        Self { reason: "FieldValueInvalid", message: format!("Invalid value: {shown}: {detail}"), field: field.into() }
    }
    pub(crate) fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self { reason: "FieldValueForbidden", message: format!("Forbidden: {detail}"), field: field.into() }
    }
}

fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> ApiError {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    ApiError { code, status: s }
}

/// `{name, group, kind}` with the plural as `kind`, as the server fills it for most errors.
fn details(res: &Resource, name: &str) -> Value {
    let mut d = json!({ "kind": res.plural });
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !res.group.is_empty() {
        d["group"] = json!(res.group);
    }
    d
}

impl ApiError {
    pub(crate) fn unauthorized() -> Self {
        status(401, "Unauthorized", "Unauthorized", None)
    }

    pub(crate) fn not_found(res: &Resource, name: &str) -> Self {
        status(404, "NotFound", &format!("{} {name:?} not found", res.qualified()), Some(details(res, name)))
    }

    pub(crate) fn namespace_not_found(ns: &str) -> Self {
        status(
            404,
            "NotFound",
            &format!("namespaces {ns:?} not found"),
            Some(json!({"name": ns, "kind": "namespaces"})),
        )
    }

    pub(crate) fn already_exists(res: &Resource, name: &str) -> Self {
        status(409, "AlreadyExists", &format!("{} {name:?} already exists", res.qualified()), Some(details(res, name)))
    }

    pub(crate) fn conflict(res: &Resource, name: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            res.qualified()
        );
        status(409, "Conflict", &msg, Some(details(res, name)))
    }

    /// RBAC said no: `User "dev" cannot VERB resource "R" in API group "G" in the namespace "NS"`.
    pub(crate) fn forbidden(
        res: &Resource,
        subresource: Option<&str>,
        name: &str,
        verb: &str,
        ns: Option<&str>,
    ) -> Self {
        let resource = subresource.map_or_else(|| res.plural.to_owned(), |s| format!("{}/{s}", res.plural));
        let what = if name.is_empty() { res.qualified() } else { format!("{} {name:?}", res.qualified()) };
        let scope = ns.map_or_else(|| "at the cluster scope".to_owned(), |ns| format!("in the namespace {ns:?}"));
        let msg = format!(
            "{what} is forbidden: User \"{}\" cannot {verb} resource {resource:?} in API group {:?} {scope}",
            super::USER,
            res.group
        );
        status(403, "Forbidden", &msg, Some(details(res, name)))
    }

    /// A mutating or validating webhook refused the request.
    pub(crate) fn admission_denied(webhook: &str, message: &str) -> Self {
        status(400, "BadRequest", &format!("admission webhook {webhook:?} denied the request: {message}"), None)
    }

    /// 410 for a resourceVersion older than the retained history.
    pub(crate) fn expired(message: &str) -> Self {
        status(410, "Expired", message, None)
    }

    pub(crate) fn gone_too_old(rv: u64, oldest: u64) -> Self {
        Self::expired(&format!("too old resource version: {rv} ({oldest})"))
    }

    pub(crate) fn unsupported_media_type(supported: &[&str]) -> Self {
        let msg = format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            supported.join(", ")
        );
        status(415, "UnsupportedMediaType", &msg, None)
    }

    pub(crate) fn bad_request(message: &str) -> Self {
        status(400, "BadRequest", message, None)
    }

    pub(crate) fn method_not_allowed() -> Self {
        status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", None)
    }

    /// 422 with its causes: `Kind.group "name" is invalid: field: message` (several in brackets).
    pub(crate) fn invalid(res: &Resource, name: &str, causes: &[Cause]) -> Self {
        let parts: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let list = if parts.len() == 1 { parts[0].clone() } else { format!("[{}]", parts.join(", ")) };
        let kind = if res.group.is_empty() { res.kind.to_owned() } else { format!("{}.{}", res.kind, res.group) };
        let msg = format!("{kind} {name:?} is invalid: {list}");
        let mut d = json!({
            "name": name,
            "kind": res.kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        });
        if !res.group.is_empty() {
            d["group"] = json!(res.group);
        }
        status(422, "Invalid", &msg, Some(d))
    }

    /// What an overloaded or failing server answers: 429, 500, 503, 504 (others: 500's shape).
    pub(crate) fn server_error(code: u16) -> Self {
        let (reason, message) = match code {
            429 => ("TooManyRequests", "Too many requests, please try again later."),
            503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
            504 => ("Timeout", "the server was unable to return a response in the time allotted"),
            _ => ("InternalError", "Internal error occurred: injected by the test"),
        };
        let mut e = status(code, reason, message, None);
        if code == 429 {
            e.status["details"] = json!({"retryAfterSeconds": 1});
        }
        e
    }

    pub(crate) fn internal(message: &str) -> Self {
        status(500, "InternalError", &format!("Internal error occurred: {message}"), None)
    }
}

/// The `Success` Status that DELETE returns for most resources.
pub(crate) fn delete_success(res: &Resource, name: &str, uid: &str) -> Value {
    let mut d = details(res, name);
    d["uid"] = json!(uid);
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}
