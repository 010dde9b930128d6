//! The controllers of kube-controller-manager that hotsync's flows meet: deployment →
//! replicasets → pods (rolling update by surge: new pods first, old ones deleted once the new
//! are Ready), statefulset (ordered pods NAME-0…), daemonset (one node, one pod), and the
//! garbage collector (dependents of a deleted owner go). Level-triggered: every store change
//! (and a slow tick) reconciles everything, under the store lock.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::resources::{Resource, by_plural};
use super::selector::labels_of;
use super::store::Store;
use super::verbs::{self, Part};
use super::{Shared, is_ready};

/// The single node every pod runs on.
pub(crate) const NODE: &str = "fake-node";

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut events = shared.store().subscribe();
    loop {
        reconcile(&mut shared.store());
        // Wake on the next change (draining a burst), or after a while regardless.
        match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
            _ => while events.try_recv().is_ok() {},
        }
    }
}

fn reconcile(store: &mut Store) {
    garbage_collect(store);
    for (ns, name) in names(store, by_plural("apps", "deployments")) {
        deployment(store, &ns, &name);
    }
    for (ns, name) in names(store, by_plural("apps", "replicasets")) {
        replicaset(store, &ns, &name);
    }
    for (ns, name) in names(store, by_plural("apps", "deployments")) {
        deployment_status(store, &ns, &name);
    }
    for (ns, name) in names(store, by_plural("apps", "statefulsets")) {
        statefulset(store, &ns, &name);
    }
    for (ns, name) in names(store, by_plural("apps", "daemonsets")) {
        daemonset(store, &ns, &name);
    }
}

fn names(store: &Store, res: &Resource) -> Vec<(String, String)> {
    store
        .list(res, None)
        .into_iter()
        .map(|o| (str_of(&o["metadata"]["namespace"]), str_of(&o["metadata"]["name"])))
        .collect()
}

/// A count as the API's int64 (counts here are tiny).
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn pods_res() -> &'static Resource {
    by_plural("", "pods")
}

/// Objects whose owners are all gone are deleted (background propagation).
fn garbage_collect(store: &mut Store) {
    let orphans: Vec<(&'static Resource, String, String)> = store
        .owned()
        .into_iter()
        .filter(|(_, o)| {
            o["metadata"]["deletionTimestamp"].is_null()
                && o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().all(|r| !store.uid_exists(r["uid"].as_str().unwrap_or_default())))
        })
        .map(|(r, o)| (r, str_of(&o["metadata"]["namespace"]), str_of(&o["metadata"]["name"])))
        .collect();
    for (res, ns, name) in orphans {
        let _ = verbs::delete(store, res, &ns, &name, None, None);
    }
}

fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
    })
}

fn owned_by<'a>(objs: Vec<&'a Value>, owner: &Value) -> Vec<&'a Value> {
    let uid = &owner["metadata"]["uid"];
    objs.into_iter()
        .filter(|o| o["metadata"]["ownerReferences"].as_array().is_some_and(|r| r.iter().any(|r| r["uid"] == *uid)))
        .collect()
}

/// Pods of an owner that are not being deleted.
fn active_pods(store: &Store, owner: &Value) -> Vec<Value> {
    let ns = owner["metadata"]["namespace"].as_str();
    owned_by(store.list(pods_res(), ns), owner)
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

/// Keys sorted recursively, so equal templates hash equally whatever their key order.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Value::from(k.as_str()), canonical(&m[*k]))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// The `pod-template-hash` of a template: FNV-32a, printed in decimal, safe-encoded (as the
/// deployment controller does, over a different serialization).
pub(crate) fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in canonical(template).bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    verbs::safe_encode(&h.to_string())
}

/// A template with a label added.
fn with_label(template: &Value, key: &str, value: &str) -> Value {
    let mut t = template.clone();
    if !t["metadata"].is_object() {
        t["metadata"] = json!({});
    }
    if !t["metadata"]["labels"].is_object() {
        t["metadata"]["labels"] = json!({});
    }
    t["metadata"]["labels"][key] = json!(value);
    t
}

fn without_label(template: &Value, key: &str) -> Value {
    let mut t = template.clone();
    if let Some(l) = t.get_mut("metadata").and_then(|m| m.get_mut("labels")).and_then(Value::as_object_mut) {
        l.remove(key);
    }
    t
}

fn revision_of(o: &Value) -> i64 {
    o["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Writes `obj` if it differs from what is stored.
fn write(store: &mut Store, res: &Resource, obj: Value) {
    let ns = str_of(&obj["metadata"]["namespace"]);
    let name = str_of(&obj["metadata"]["name"]);
    if store.get(res, &ns, &name) != Some(&obj) {
        let _ = verbs::update(store, res, &ns, &name, obj, Part::Everything);
    }
}

fn deployment(store: &mut Store, ns: &str, name: &str) {
    let (dres, rsres) = (by_plural("apps", "deployments"), by_plural("apps", "replicasets"));
    let Some(d) = store.get(dres, ns, name).cloned() else { return };
    if !d["metadata"]["deletionTimestamp"].is_null() || d["spec"]["paused"] == true {
        return;
    }
    let template = &d["spec"]["template"];
    let hash = template_hash(template);
    let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let rss: Vec<Value> = owned_by(store.list(rsres, Some(ns)), &d).into_iter().cloned().collect();
    let max_revision = rss.iter().map(revision_of).max().unwrap_or(0);
    let current = rss.iter().find(|rs| without_label(&rs["spec"]["template"], "pod-template-hash") == *template);
    let mut new_rs = match current {
        Some(rs) => rs.clone(),
        None => {
            let rs_name = format!("{name}-{hash}");
            let mut selector = d["spec"]["selector"].clone();
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let mut labels = template["metadata"]["labels"].clone();
            labels["pod-template-hash"] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name, "namespace": ns, "labels": labels,
                    "annotations": {
                        "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                        "deployment.kubernetes.io/max-replicas": (desired + 1).to_string(),
                        "deployment.kubernetes.io/revision": (max_revision + 1).to_string(),
                    },
                    "ownerReferences": [owner_ref(&d)],
                },
                "spec": {
                    "replicas": 0, "selector": selector,
                    "template": with_label(template, "pod-template-hash", &hash),
                },
            });
            match verbs::create(store, rsres, Some(ns), rs) {
                Ok(rs) => rs,
                Err(_) => return,
            }
        }
    };
    let new_name = str_of(&new_rs["metadata"]["name"]);
    // A template that comes back (a rollback, a detach) takes the next revision.
    if revision_of(&new_rs) < max_revision || (current.is_some() && revision_of(&new_rs) == 0) {
        new_rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!((max_revision + 1).to_string());
    }
    new_rs["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] = json!(desired.to_string());
    let revision = revision_of(&new_rs);
    let mut olds: Vec<Value> = rss.iter().filter(|rs| rs["metadata"]["name"] != new_name.as_str()).cloned().collect();
    olds.sort_by_key(revision_of);
    let (new_replicas, olds) = if d["spec"]["strategy"]["type"] == "Recreate" {
        recreate(store, desired, &new_rs, olds)
    } else {
        rolling(store, &d, desired, &new_rs, olds)
    };
    new_rs["spec"]["replicas"] = json!(new_replicas);
    write(store, rsres, new_rs);
    for rs in olds {
        write(store, rsres, rs);
    }
    if let Some(mut d) = store.get(dres, ns, name).cloned() {
        if !d["metadata"]["annotations"].is_object() {
            d["metadata"]["annotations"] = json!({});
        }
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!(revision.to_string());
        write(store, dres, d);
    }
}

fn replicas_of(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn ready_of(store: &Store, rs: &Value) -> i64 {
    count(active_pods(store, rs).iter().filter(|p| is_ready(p)).count())
}

/// Recreate: the old replicasets go to zero, and once their pods are gone the new one scales
/// up. Returns the new replicaset's replicas and the old replicasets (changed or not).
fn recreate(store: &Store, desired: i64, new_rs: &Value, mut olds: Vec<Value>) -> (i64, Vec<Value>) {
    let old_pods: usize = olds.iter().map(|rs| all_pods(store, rs)).sum();
    for rs in &mut olds {
        rs["spec"]["replicas"] = json!(0);
    }
    let new_replicas = if old_pods == 0 { desired } else { replicas_of(new_rs) };
    (new_replicas, olds)
}

/// Every pod of an owner, terminating ones included.
fn all_pods(store: &Store, owner: &Value) -> usize {
    owned_by(store.list(pods_res(), owner["metadata"]["namespace"].as_str()), owner).len()
}

/// RollingUpdate as the deployment controller does it: the new replicaset grows within
/// `maxSurge` above the desired count; old ones shrink, unhealthy pods first, as long as
/// `desired - maxUnavailable` pods stay available (Ready: minReadySeconds is not modelled).
fn rolling(store: &Store, d: &Value, desired: i64, new_rs: &Value, mut olds: Vec<Value>) -> (i64, Vec<Value>) {
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = percent_or_int(&ru["maxSurge"], desired, true);
    let mut max_unavailable = percent_or_int(&ru["maxUnavailable"], desired, false);
    if surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let old_total: i64 = olds.iter().map(replicas_of).sum();
    let mut new_replicas = replicas_of(new_rs);
    if old_total == 0 || new_replicas >= desired {
        // Plain scaling, or the new replicaset is complete.
        new_replicas = desired;
    } else {
        let room = desired + surge - (old_total + new_replicas);
        new_replicas += room.clamp(0, desired - new_replicas);
    }
    if old_total == 0 {
        return (new_replicas, olds);
    }
    let new_ready = ready_of(store, new_rs);
    let min_available = desired - max_unavailable;
    // Unhealthy old pods first, within what the new replicaset's unready pods leave.
    let mut budget = old_total + new_replicas - min_available - (new_replicas - new_ready).max(0);
    for rs in &mut olds {
        if budget <= 0 {
            break;
        }
        let unhealthy = (replicas_of(rs) - ready_of(store, rs)).max(0);
        let remove = unhealthy.min(budget);
        rs["spec"]["replicas"] = json!(replicas_of(rs) - remove);
        budget -= remove;
    }
    // Then available ones, keeping min_available.
    let available: i64 = olds.iter().map(|rs| ready_of(store, rs).min(replicas_of(rs))).sum::<i64>() + new_ready;
    let mut budget = available - min_available;
    for rs in &mut olds {
        if budget <= 0 {
            break;
        }
        let remove = replicas_of(rs).min(budget);
        rs["spec"]["replicas"] = json!(replicas_of(rs) - remove);
        budget -= remove;
    }
    (new_replicas, olds)
}

fn replicaset(store: &mut Store, ns: &str, name: &str) {
    let rsres = by_plural("apps", "replicasets");
    let Some(rs) = store.get(rsres, ns, name).cloned() else { return };
    if !rs["metadata"]["deletionTimestamp"].is_null() {
        return;
    }
    let desired = rs["spec"]["replicas"].as_i64().unwrap_or(1);
    let mut active = active_pods(store, &rs);
    let mut failure = None;
    if count(active.len()) < desired {
        for _ in count(active.len())..desired {
            let mut pod = pod_from_template(&rs, &format!("{name}-{}", verbs::random_suffix(5)), &json!({}));
            pod["metadata"]["generateName"] = json!(format!("{name}-"));
            if let Err(e) = verbs::create(store, pods_res(), Some(ns), pod) {
                failure = e.status["message"].as_str().map(str::to_owned);
                break;
            }
        }
    } else if count(active.len()) > desired {
        // Unready pods go first, then the newest.
        active.sort_by_key(|p| (is_ready(p), std::cmp::Reverse(str_of(&p["metadata"]["creationTimestamp"]))));
        for p in active.iter().take(active.len() - usize::try_from(desired).unwrap_or(0)) {
            let _ =
                verbs::delete(store, pods_res(), ns, p["metadata"]["name"].as_str().unwrap_or_default(), None, None);
        }
    }
    let active = active_pods(store, &rs);
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let mut status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": active.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs["metadata"]["generation"],
    });
    if let Some(message) = failure {
        let same =
            rs["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["message"] == message.as_str()));
        if same {
            status["conditions"] = rs["status"]["conditions"].clone();
        } else {
            status["conditions"] = json!([{
                "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message,
                "lastTransitionTime": verbs::now(),
            }]);
        }
    } else if let Some(old) = rs["status"]["conditions"].as_array()
        && count(active.len()) != desired
    {
        status["conditions"] = json!(old);
    }
    strip_zeros(&mut status, &["readyReplicas", "availableReplicas", "fullyLabeledReplicas"]);
    if let Some(mut rs) = store.get(rsres, ns, name).cloned() {
        rs["status"] = status;
        write(store, rsres, rs);
    }
}

/// A pod of `owner`'s template, with extra labels.
fn pod_from_template(owner: &Value, name: &str, extra_labels: &Value) -> Value {
    let t = &owner["spec"]["template"];
    let mut labels = t["metadata"]["labels"].clone();
    if let Some(extra) = extra_labels.as_object() {
        for (k, v) in extra {
            labels[k] = v.clone();
        }
    }
    let mut meta = json!({"name": name, "namespace": owner["metadata"]["namespace"], "labels": labels, "ownerReferences": [owner_ref(owner)]});
    if t["metadata"]["annotations"].is_object() {
        meta["annotations"] = t["metadata"]["annotations"].clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"]})
}

/// The API omits zero counts (Go's omitempty).
fn strip_zeros(status: &mut Value, keys: &[&str]) {
    if let Some(m) = status.as_object_mut() {
        for k in keys {
            if m.get(*k).is_some_and(|v| v.as_i64() == Some(0)) {
                m.remove(*k);
            }
        }
    }
}

/// A condition, keeping its transition time when its status did not change.
fn condition(old: &Value, kind: &str, status: &str, reason: &str, message: &str) -> Value {
    let prev = old["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let now = verbs::now();
    let transition = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let update = match prev {
        Some(p) if p["status"] == status && p["reason"] == reason && p["message"] == message => {
            p["lastUpdateTime"].clone()
        }
        _ => json!(now),
    };
    json!({"type": kind, "status": status, "lastUpdateTime": update, "lastTransitionTime": transition, "reason": reason, "message": message})
}

/// The Progressing condition: updated at each step of progress; False with
/// ProgressDeadlineExceeded after `progressDeadlineSeconds` without any.
fn progressing(d: &Value, rs_name: &str, complete: bool, counts: [i64; 3]) -> Value {
    let old = &d["status"];
    if complete {
        let msg = format!("ReplicaSet {rs_name:?} has successfully progressed.");
        return condition(old, "Progressing", "True", "NewReplicaSetAvailable", &msg);
    }
    let before = [&old["replicas"], &old["updatedReplicas"], &old["readyReplicas"]].map(|v| v.as_i64().unwrap_or(0));
    let progressed = before != counts || old["observedGeneration"] != d["metadata"]["generation"];
    let prev = old["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"));
    let msg = format!("ReplicaSet {rs_name:?} is progressing.");
    match prev {
        Some(p) if !progressed => {
            let since = p["lastUpdateTime"].as_str().and_then(verbs::parse_time).unwrap_or(i64::MAX);
            let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
            let now = k8s_openapi::jiff::Timestamp::now().as_second();
            if p["reason"] == "ProgressDeadlineExceeded" || now.saturating_sub(since) > deadline {
                let msg = format!("ReplicaSet {rs_name:?} has timed out progressing.");
                condition(old, "Progressing", "False", "ProgressDeadlineExceeded", &msg)
            } else if p["reason"] == "ReplicaSetUpdated" {
                p.clone()
            } else {
                condition(old, "Progressing", "True", "ReplicaSetUpdated", &msg)
            }
        }
        _ => {
            let mut c = condition(old, "Progressing", "True", "ReplicaSetUpdated", &msg);
            c["lastUpdateTime"] = json!(verbs::now());
            c
        }
    }
}

fn deployment_status(store: &mut Store, ns: &str, name: &str) {
    let (dres, rsres) = (by_plural("apps", "deployments"), by_plural("apps", "replicasets"));
    let Some(d) = store.get(dres, ns, name).cloned() else { return };
    let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let rss: Vec<Value> = owned_by(store.list(rsres, Some(ns)), &d).into_iter().cloned().collect();
    let template = &d["spec"]["template"];
    let new_rs = rss.iter().find(|rs| without_label(&rs["spec"]["template"], "pod-template-hash") == *template);
    let (mut total, mut ready) = (0i64, 0i64);
    for rs in &rss {
        let pods = active_pods(store, rs);
        total += count(pods.len());
        ready += count(pods.iter().filter(|p| is_ready(p)).count());
    }
    let updated = new_rs.map_or(0, |rs| count(active_pods(store, rs).len()));
    let new_ready = new_rs.map_or(0, |rs| count(active_pods(store, rs).iter().filter(|p| is_ready(p)).count()));
    let max_unavailable = percent_or_int(&d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], desired, false);
    let old = &d["status"];
    let available_ok = ready >= desired - max_unavailable;
    let mut conditions = vec![if available_ok {
        condition(old, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    } else {
        condition(
            old,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    }];
    let rs_name = new_rs.map(|rs| str_of(&rs["metadata"]["name"])).unwrap_or_default();
    let complete = updated == desired && total == desired && new_ready == desired;
    conditions.push(progressing(&d, &rs_name, complete, [total, updated, ready]));
    if let Some(f) = new_rs
        .and_then(|rs| rs["status"]["conditions"].as_array())
        .and_then(|c| c.iter().find(|c| c["type"] == "ReplicaFailure"))
    {
        conditions.push(condition(
            old,
            "ReplicaFailure",
            "True",
            "FailedCreate",
            f["message"].as_str().unwrap_or_default(),
        ));
    }
    let mut status = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": (desired - ready).max(0),
        "conditions": conditions,
    });
    strip_zeros(
        &mut status,
        &["replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"],
    );
    let mut d = d.clone();
    d["status"] = status;
    write(store, dres, d);
}

/// `25%` of `total` (rounded down for maxUnavailable, up for maxSurge) or a plain number.
fn percent_or_int(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            if round_up { (p * total + 99) / 100 } else { p * total / 100 }
        }
        _ => 0,
    }
}

fn statefulset(store: &mut Store, ns: &str, name: &str) {
    let res = by_plural("apps", "statefulsets");
    let Some(s) = store.get(res, ns, name).cloned() else { return };
    if !s["metadata"]["deletionTimestamp"].is_null() {
        return;
    }
    let desired = s["spec"]["replicas"].as_i64().unwrap_or(1);
    let revision = format!("{name}-{}", template_hash(&s["spec"]["template"]));
    let all: Vec<Value> = owned_by(store.list(pods_res(), Some(ns)), &s).into_iter().cloned().collect();
    let ordinal = |p: &Value| -> i64 {
        p["metadata"]["name"].as_str().and_then(|n| n.rsplit('-').next()).and_then(|o| o.parse().ok()).unwrap_or(-1)
    };
    let terminating = all.iter().any(|p| !p["metadata"]["deletionTimestamp"].is_null());
    let active: Vec<&Value> = all.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
    let all_ready = active.iter().all(|p| is_ready(p));
    if !terminating {
        // Scale down from the highest ordinal, one at a time.
        if let Some(extra) = active.iter().filter(|p| ordinal(p) >= desired).max_by_key(|p| ordinal(p)) {
            let _ = verbs::delete(
                store,
                pods_res(),
                ns,
                extra["metadata"]["name"].as_str().unwrap_or_default(),
                None,
                None,
            );
        } else if let Some(missing) = (0..desired).find(|i| !active.iter().any(|p| ordinal(p) == *i)) {
            // OrderedReady: the next pod once all before it are Ready.
            if all_ready || s["spec"]["podManagementPolicy"] == "Parallel" {
                let pod_name = format!("{name}-{missing}");
                let extra = json!({
                    "controller-revision-hash": revision,
                    "statefulset.kubernetes.io/pod-name": pod_name,
                    "apps.kubernetes.io/pod-index": missing.to_string(),
                });
                let mut pod = pod_from_template(&s, &pod_name, &extra);
                pod["spec"]["hostname"] = json!(pod_name);
                if let Some(svc) = s["spec"]["serviceName"].as_str() {
                    pod["spec"]["subdomain"] = json!(svc);
                }
                let _ = verbs::create(store, pods_res(), Some(ns), pod);
            }
        } else if all_ready
            && let Some(stale) = active
                .iter()
                .filter(|p| p["metadata"]["labels"]["controller-revision-hash"] != revision.as_str())
                .max_by_key(|p| ordinal(p))
        {
            // Rolling update: the highest stale ordinal, once everything is Ready.
            let _ = verbs::delete(
                store,
                pods_res(),
                ns,
                stale["metadata"]["name"].as_str().unwrap_or_default(),
                None,
                None,
            );
        }
    }
    let active: Vec<Value> = active_pods(store, &s);
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let updated =
        active.iter().filter(|p| p["metadata"]["labels"]["controller-revision-hash"] == revision.as_str()).count();
    let mut status = json!({
        "observedGeneration": s["metadata"]["generation"],
        "replicas": active.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": updated,
        "updatedReplicas": updated,
        "currentRevision": revision,
        "updateRevision": revision,
        "collisionCount": 0,
    });
    strip_zeros(&mut status, &["readyReplicas", "availableReplicas", "currentReplicas", "updatedReplicas"]);
    if let Some(mut s) = store.get(res, ns, name).cloned() {
        s["status"] = status;
        write(store, res, s);
    }
}

fn daemonset(store: &mut Store, ns: &str, name: &str) {
    let res = by_plural("apps", "daemonsets");
    let Some(ds) = store.get(res, ns, name).cloned() else { return };
    if !ds["metadata"]["deletionTimestamp"].is_null() {
        return;
    }
    let hash = template_hash(&ds["spec"]["template"]);
    let all: Vec<Value> = owned_by(store.list(pods_res(), Some(ns)), &ds).into_iter().cloned().collect();
    let terminating = all.iter().any(|p| !p["metadata"]["deletionTimestamp"].is_null());
    let active: Vec<&Value> = all.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
    if !terminating {
        if let Some(stale) =
            active.iter().find(|p| p["metadata"]["labels"]["controller-revision-hash"] != hash.as_str())
        {
            let _ = verbs::delete(
                store,
                pods_res(),
                ns,
                stale["metadata"]["name"].as_str().unwrap_or_default(),
                None,
                None,
            );
        } else if active.is_empty() {
            let extra = json!({
                "controller-revision-hash": hash,
                "pod-template-generation": ds["metadata"]["generation"].as_i64().unwrap_or(1).to_string(),
            });
            let mut pod = pod_from_template(&ds, &format!("{name}-{}", verbs::random_suffix(5)), &extra);
            pod["metadata"]["generateName"] = json!(format!("{name}-"));
            let _ = verbs::create(store, pods_res(), Some(ns), pod);
        }
    }
    let active = active_pods(store, &ds);
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let updated =
        active.iter().filter(|p| p["metadata"]["labels"]["controller-revision-hash"] == hash.as_str()).count();
    let mut status = json!({
        "observedGeneration": ds["metadata"]["generation"],
        "desiredNumberScheduled": 1,
        "currentNumberScheduled": active.len(),
        "numberMisscheduled": 0,
        "numberReady": ready,
        "numberAvailable": ready,
        "numberUnavailable": 1 - ready.min(1),
        "updatedNumberScheduled": updated,
    });
    strip_zeros(&mut status, &["numberAvailable", "numberUnavailable", "updatedNumberScheduled"]);
    if let Some(mut ds) = store.get(res, ns, name).cloned() {
        ds["status"] = status;
        write(store, res, ds);
    }
}

/// A label selector object as a `labelSelector=` string (the Scale's `status.selector`).
pub(crate) fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = labels_of(&json!({"metadata": {"labels": sel["matchLabels"]}}))
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = str_of(&e["key"]);
        let values: Vec<String> = e["values"].as_array().into_iter().flatten().map(str_of).collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key,
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}
