//! Strategic merge patch, as the server applies it to built-in types: a JSON merge patch in
//! which lists with a merge key (containers by `name`, volumeMounts by `mountPath`…) are
//! merged element by element, with the `$patch` (replace, delete), `$retainKeys`,
//! `$deleteFromPrimitiveList/…` and `$setElementOrder/…` directives. Fields the type does not
//! know are dropped afterwards by the decoder (warned about, or refused when strict), as the
//! real server does.

use serde_json::{Map, Value};

/// The merge key of a list field, from the Kubernetes types' `patchMergeKey` tags; `None`
/// for atomic lists (replaced whole).
fn merge_key(field: &str, service: bool) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" if service => "port",
        "ports" => "containerPort",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars merged as sets (`patchStrategy: merge` without a key).
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

/// Applies `patch` to `original`. `service` selects the Service merge keys.
pub(crate) fn apply(original: &Value, patch: &Value, service: bool) -> Result<Value, String> {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => Ok(Value::Object(merge_map(o, p, service)?)),
        (_, Value::Object(p)) => Ok(Value::Object(merge_map(&Map::new(), p, service)?)),
        _ => Err("a strategic merge patch must be a JSON object".into()),
    }
}

fn merge_map(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    service: bool,
) -> Result<Map<String, Value>, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => return Ok(strip(patch)),
        Some("delete") => return Ok(Map::new()),
        Some(other) => return Err(format!("unknown patch type: {other:?}")),
        None => {}
    }
    let mut out = original.clone();
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        out.retain(|k, _| keep.iter().any(|x| x == k));
    }
    for (key, value) in patch {
        if key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(gone)) = (out.get_mut(field), value.as_array()) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(format!("unknown directive {key:?}"));
        }
        match (out.get(key), value) {
            (_, Value::Null) => {
                out.remove(key);
            }
            (Some(Value::Object(o)), Value::Object(p)) => {
                let merged = merge_map(o, p, service)?;
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.remove(key);
                } else {
                    out.insert(key.clone(), Value::Object(merged));
                }
            }
            (Some(Value::Array(o)), Value::Array(p)) => {
                let merged = merge_list(key, o, p, service)?;
                out.insert(key.clone(), Value::Array(merged));
            }
            (_, Value::Object(p)) => {
                out.insert(key.clone(), Value::Object(strip_deep(p)));
            }
            (_, Value::Array(p)) => {
                out.insert(key.clone(), Value::Array(p.iter().filter(|v| !is_directive(v)).map(strip_value).collect()));
            }
            (_, v) => {
                out.insert(key.clone(), v.clone());
            }
        }
    }
    for (key, order) in patch {
        if let (Some(field), Some(order)) = (key.strip_prefix("$setElementOrder/"), order.as_array())
            && let Some(Value::Array(list)) = out.get_mut(field)
        {
            reorder(list, order, merge_key(field, service));
        }
    }
    Ok(out)
}

fn merge_list(field: &str, original: &[Value], patch: &[Value], service: bool) -> Result<Vec<Value>, String> {
    if patch.iter().any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(patch.iter().filter(|v| !is_directive(v)).map(strip_value).collect());
    }
    if merges_primitives(field) {
        let mut out = original.to_vec();
        for v in patch {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(out);
    }
    let Some(key) = merge_key(field, service) else {
        return Ok(patch.iter().map(strip_value).collect());
    };
    let mut out = original.to_vec();
    for p in patch {
        let Some(pm) = p.as_object() else { return Err(format!("{field}: elements must be objects")) };
        let Some(id) = pm.get(key) else {
            return Err(format!("map: {pm:?} does not contain declared merge key: {key}"));
        };
        let at = out.iter().position(|o| o.get(key) == Some(id));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = at {
                out.remove(i);
            }
            continue;
        }
        match at {
            Some(i) => {
                let merged = merge_map(out[i].as_object().unwrap_or(&Map::new()), pm, service)?;
                out[i] = Value::Object(merged);
            }
            None => out.push(Value::Object(strip_deep(pm))),
        }
    }
    Ok(out)
}

fn reorder(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let id = |v: &Value| key.map_or_else(|| v.clone(), |k| v.get(k).cloned().unwrap_or(Value::Null));
    let mut sorted = Vec::with_capacity(list.len());
    for o in order {
        let want = id(o);
        if let Some(i) = list.iter().position(|v| id(v) == want) {
            sorted.push(list.remove(i));
        }
    }
    sorted.append(list);
    *list = sorted;
}

fn is_directive(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.contains_key("$patch"))
}

fn strip(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn strip_deep(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_value(v))).collect()
}

fn strip_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_deep(m)),
        Value::Array(a) => Value::Array(a.iter().map(strip_value).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_with_merge_keys_merge_by_key() {
        let pod = json!({"spec": {
            "containers": [{"name": "app", "image": "a:1", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}],
            "volumes": [{"name": "x", "emptyDir": {}}],
            "tolerations": [{"key": "a"}],
        }, "metadata": {"finalizers": ["f1"]}});
        let patch = json!({"spec": {
            "containers": [
                {"name": "app", "image": "a:2", "volumeMounts": [{"name": "y", "mountPath": "/y"}]},
                {"name": "sidecar", "image": "s:1"},
            ],
            "volumes": [{"name": "y", "emptyDir": {}}, {"name": "x", "$patch": "delete"}],
            "tolerations": [{"key": "b"}],
        }, "metadata": {"finalizers": ["f2"]}});
        let out = apply(&pod, &patch, false).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(out["spec"]["containers"][0]["volumeMounts"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["containers"][1]["name"], "sidecar");
        assert_eq!(out["spec"]["volumes"], json!([{"name": "y", "emptyDir": {}}]));
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]), "atomic lists are replaced");
        assert_eq!(out["metadata"]["finalizers"], json!(["f1", "f2"]));
    }

    #[test]
    fn directives_replace_delete_and_order() {
        let obj =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}, "x": {"y": 1}}});
        let patch = json!({"spec": {
            "x": {"$patch": "replace", "z": 2},
            "template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}},
        }});
        let out = apply(&obj, &patch, false).unwrap();
        assert_eq!(out["spec"]["x"], json!({"z": 2}));
        assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name": "b"}, {"name": "a"}]));
        let out = apply(&obj, &json!({"spec": {"x": {"$patch": "delete"}}}), false).unwrap();
        assert!(out["spec"].get("x").is_none());
        assert!(
            apply(&obj, &json!({"spec": {"template": {"spec": {"containers": [{"image": "no-name"}]}}}}), false)
                .is_err()
        );
    }
}
