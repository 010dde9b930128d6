//! The fake API server checked against the real `kube` client: what a cluster accepts, what it
//! refuses (with the same Status), watches, the controllers and kubelet, and port-forward to a
//! real `hotsync-agent`.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::{StreamExt, TryStreamExt};
use hotsync_e2e::fake_kube::{FakeCluster, FakeOptions, is_ready};
use hotsync_e2e::{PATIENCE, bin, write};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP_IMAGE: &str = "registry.example/web:1";

/// A cluster with one app image whose root holds `/app/index.html`.
fn cluster() -> (FakeCluster, tempfile::TempDir) {
    let image = tempfile::tempdir().unwrap();
    write(&image.path().join("app/index.html"), "hello from the image\n");
    let cluster = FakeCluster::start(FakeOptions {
        agent_binary: bin("hotsync-agent"),
        images: BTreeMap::from([(APP_IMAGE.to_owned(), image.path().to_owned())]),
        namespaces: vec!["team".into()],
    })
    .unwrap();
    (cluster, image)
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The server writes no nulls (Go's omitempty) but for the zero times of structs it embeds:
/// a template's `creationTimestamp`, a condition's `lastProbeTime`. A fake that wrote others
/// would let a client depend on them.
fn assert_no_nulls(v: &Value, at: &str) {
    match v {
        Value::Null if at.ends_with(".creationTimestamp") || at.ends_with(".lastProbeTime") => {}
        Value::Null => panic!("a null at {at}"),
        Value::Object(m) => m.iter().for_each(|(k, v)| assert_no_nulls(v, &format!("{at}.{k}"))),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| assert_no_nulls(v, &format!("{at}[{i}]"))),
        _ => {}
    }
}

fn forward_error(r: Result<kube::api::Portforwarder, kube::Error>) -> Box<kube::core::Status> {
    match r {
        Ok(_) => panic!("port-forward was expected to fail"),
        Err(e) => api_error(e),
    }
}

/// Get, change, replace; again on a 409, as every client of an object a controller also
/// writes must do.
async fn update_deployment(api: &Api<Deployment>, name: &str, change: impl Fn(&mut Value)) -> Deployment {
    loop {
        let mut d = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
        change(&mut d);
        match api.replace(name, &PostParams::default(), &serde_json::from_value(d).unwrap()).await {
            Ok(d) => return d,
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("replace {name}: {e}"),
        }
    }
}

fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": APP_IMAGE, "ports": [{"containerPort": 8000}]}]},
            },
        },
    })
}

#[tokio::test]
async fn get_list_create_update_with_the_real_semantics() {
    let (cluster, _image) = cluster();
    let deploys: Api<Deployment> = Api::default_namespaced(client(cluster.kubeconfig()).await);

    let created =
        deploys.create(&PostParams::default(), &serde_json::from_value(deployment("web", 2)).unwrap()).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.resource_version.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let spec = &created.spec;
    assert_eq!(spec.revision_history_limit, Some(10), "server defaults are applied");
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    let pod_spec = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod_spec.restart_policy.as_deref(), Some("Always"));
    let c = &pod_spec.containers[0];
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(c.termination_message_path.as_deref(), Some("/dev/termination-log"));
    assert_eq!(c.ports.as_ref().unwrap()[0].protocol.as_deref(), Some("TCP"));

    let stored = cluster.get("/apis/apps/v1/namespaces/default/deployments/web").unwrap();
    assert_no_nulls(&stored, "deployment");
    assert!(stored["spec"]["template"]["metadata"]["creationTimestamp"].is_null());
    assert!(stored["spec"]["template"]["metadata"].as_object().unwrap().contains_key("creationTimestamp"));
    let again = api_error(deploys.create(&PostParams::default(), &created).await.unwrap_err());
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(again.message, r#"deployments.apps "web" already exists"#);

    let missing = api_error(deploys.get("nope").await.unwrap_err());
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, r#"deployments.apps "nope" not found"#);

    let listed = deploys.list(&ListParams::default().labels("app=web")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.metadata.resource_version.is_some());
    assert!(deploys.list(&ListParams::default().labels("app notin (web)")).await.unwrap().items.is_empty());

    // An update from a stale copy conflicts; from the fresh one it bumps the generation.
    let mut stale = created.clone();
    let updated = update_deployment(&deploys, "web", |d| d["spec"]["replicas"] = json!(3)).await;
    assert_eq!(updated.metadata.generation, Some(2));
    assert_ne!(updated.metadata.resource_version, created.metadata.resource_version);
    stale.spec.replicas = Some(5);
    let conflict = api_error(deploys.replace("web", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict
            .message
            .starts_with(r#"Operation cannot be fulfilled on deployments.apps "web": the object has been modified"#)
    );

    // A merge patch applies to the current object; the selector is immutable.
    let patched = deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}})))
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2), "metadata changes do not bump the generation");
    let immutable = api_error(
        deploys
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((immutable.code, immutable.reason.as_str()), (422, "Invalid"));
    assert!(immutable.message.contains("field is immutable"), "{}", immutable.message);

    // Someone else's edit makes our copy stale.
    let before = deploys.get("web").await.unwrap();
    let edited = cluster
        .edit("/apis/apps/v1/namespaces/default/deployments/web", |d| d["metadata"]["labels"]["team"] = json!("a"));
    assert_ne!(edited["metadata"]["resourceVersion"], json!(before.metadata.resource_version));
    let e = api_error(deploys.replace("web", &PostParams::default(), &before).await.unwrap_err());
    assert_eq!(e.code, 409);

    // A dry run is checked and answered, and changes nothing.
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let would = deploys.create(&dry, &serde_json::from_value(deployment("dry", 1)).unwrap()).await.unwrap();
    assert_eq!(would.metadata.name.as_deref(), Some("dry"));
    assert!(cluster.get("/apis/apps/v1/namespaces/default/deployments/dry").is_none());
    let e = api_error(deploys.create(&dry, &created).await.unwrap_err());
    assert_eq!(e.code, 409, "a dry run meets the same checks");
    deploys.delete("web", &DeleteParams { dry_run: true, ..DeleteParams::default() }).await.unwrap();
    assert!(cluster.get("/apis/apps/v1/namespaces/default/deployments/web").is_some());

    // Delete answers a Success Status for deployments; the garbage collector takes the rest.
    deploys.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(cluster.get("/apis/apps/v1/namespaces/default/deployments/web").is_none());
    cluster.wait_for("the deployment's pods are gone", |c| c.pods("default", "app=web").is_empty());
}

#[tokio::test]
async fn authentication_rbac_media_types_and_validation_fail_like_a_cluster() {
    let (cluster, _image) = cluster();
    let client = client(cluster.kubeconfig()).await;

    // A bad token: 401.
    let text = std::fs::read_to_string(cluster.kubeconfig()).unwrap().replace(cluster.token(), "wrong");
    let bad_path = cluster.kubeconfig().with_file_name("bad-kubeconfig");
    std::fs::write(&bad_path, text).unwrap();
    let bad: Api<Pod> = Api::default_namespaced(self::client(&bad_path).await);
    let e = api_error(bad.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str(), e.message.as_str()), (401, "Unauthorized", "Unauthorized"));

    // RBAC: 403 with the real message, for the denied verb only.
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    deploys.create(&PostParams::default(), &serde_json::from_value(deployment("web", 0)).unwrap()).await.unwrap();
    cluster.deny("update", "deployments");
    let mut d = deploys.get("web").await.unwrap();
    d.metadata.labels.get_or_insert_default().insert("x".into(), "y".into());
    let e = api_error(deploys.replace("web", &PostParams::default(), &d).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        r#"deployments.apps "web" is forbidden: User "dev" cannot update resource "deployments" in API group "apps" in the namespace "default""#
    );
    cluster.deny("list", "pods");
    let pods: Api<Pod> = Api::all(client.clone());
    let e = api_error(pods.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        e.message,
        r#"pods is forbidden: User "dev" cannot list resource "pods" in API group "" at the cluster scope"#
    );

    // Wrong media types: 415 (authorization comes first, as in the real server).
    cluster.allow("update", "deployments");
    let req = http::Request::put("/apis/apps/v1/namespaces/default/deployments/web")
        .header("content-type", "text/plain")
        .body(b"{}".to_vec())
        .unwrap();
    let e = api_error(client.request::<Value>(req).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (415, "UnsupportedMediaType"));
    let apply = Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 2}}));
    let e = api_error(deploys.patch("web", &PatchParams::apply("test"), &apply).await.unwrap_err());
    assert_eq!(e.code, 415, "server-side apply is not implemented: {}", e.message);

    // A strategic merge patch merges containers by name.
    let sidecar = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.example/web:2"},
        {"name": "side", "image": APP_IMAGE},
    ]}}}});
    let d = deploys.patch("web", &PatchParams::default(), &Patch::Strategic(sidecar)).await.unwrap();
    let containers = d.spec.template.spec.unwrap().containers;
    let summary: Vec<(String, Option<String>, bool)> =
        containers.iter().map(|c| (c.name.clone(), c.image.clone(), c.ports.is_some())).collect();
    assert_eq!(
        summary,
        [("web".into(), Some("registry.example/web:2".into()), true), ("side".into(), Some(APP_IMAGE.into()), false)]
    );

    // A pod template whose volumeMount names no volume: 422 with the field.
    let mut bad = deployment("broken", 1);
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "hotsync-root", "mountPath": "/app"}]);
    let e = api_error(deploys.create(&PostParams::default(), &serde_json::from_value(bad).unwrap()).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        r#"Deployment.apps "broken" is invalid: spec.template.spec.containers[0].volumeMounts[0].name: Not found: "hotsync-root""#
    );
    let causes = e.details.unwrap().causes;
    assert_eq!(causes[0].field, "spec.template.spec.containers[0].volumeMounts[0].name");

    // Duplicate container names across init and app containers, a selector that misses.
    let mut bad = deployment("broken", 1);
    bad["spec"]["template"]["spec"]["initContainers"] = json!([{"name": "web", "image": APP_IMAGE}]);
    bad["spec"]["selector"]["matchLabels"]["app"] = json!("other");
    let e = api_error(deploys.create(&PostParams::default(), &serde_json::from_value(bad).unwrap()).await.unwrap_err());
    assert!(e.message.contains(r#"spec.template.spec.containers[0].name: Duplicate value: "web""#), "{}", e.message);
    assert!(e.message.contains("`selector` does not match template `labels`"), "{}", e.message);

    // Injected server failures: the next request fails, the one after succeeds; kube retries
    // a 503 on its own.
    cluster.fail("get", "deployments", 500, 1);
    let e = api_error(deploys.get("web").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    deploys.get("web").await.unwrap();
    let gets =
        |c: &FakeCluster| c.requests().iter().filter(|(m, p)| m == "GET" && p.ends_with("/deployments/web")).count();
    let before = gets(&cluster);
    cluster.fail("get", "deployments", 503, 1);
    deploys.get("web").await.unwrap();
    assert_eq!(gets(&cluster), before + 2, "one 503, one retry");

    // Nothing was created by the refused requests.
    assert!(cluster.get("/apis/apps/v1/namespaces/default/deployments/broken").is_none());
    assert!(cluster.writes().iter().any(|(m, p)| m == "PUT" && p.ends_with("/deployments/web")));
}

#[tokio::test]
async fn watches_follow_a_label_selector_in_order_and_expire() {
    let (cluster, _image) = cluster();
    let cms: Api<ConfigMap> = Api::namespaced(client(cluster.kubeconfig()).await, "team");
    let cm = |name: &str, app: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}}, "data": {"k": "v"}})).unwrap()
    };
    cms.create(&PostParams::default(), &cm("before", "w")).await.unwrap();
    let start = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();

    let mut stream = cms.watch(&WatchParams::default().labels("app=w"), "0").await.unwrap().boxed();
    let next = |e: Option<Result<WatchEvent<ConfigMap>, kube::Error>>| -> (String, String) {
        match e.expect("the watch goes on").unwrap() {
            WatchEvent::Added(o) => ("ADDED".into(), o.metadata.name.unwrap()),
            WatchEvent::Modified(o) => ("MODIFIED".into(), o.metadata.name.unwrap()),
            WatchEvent::Deleted(o) => ("DELETED".into(), o.metadata.name.unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(next(stream.next().await), ("ADDED".into(), "before".into()), "rv 0 starts with what exists");
    cms.create(&PostParams::default(), &cm("other", "x")).await.unwrap();
    cms.create(&PostParams::default(), &cm("one", "w")).await.unwrap();
    cms.patch("one", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "2"}}))).await.unwrap();
    cms.patch("other", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "w"}}})))
        .await
        .unwrap();
    cms.patch("before", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}})))
        .await
        .unwrap();
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(tokio::time::timeout(PATIENCE, stream.next()).await.map(next).unwrap());
    }
    let pairs: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        pairs,
        [("ADDED", "one"), ("MODIFIED", "one"), ("ADDED", "other"), ("DELETED", "before"), ("DELETED", "one")],
        "selectors turn label changes into ADDED and DELETED"
    );

    // From a resourceVersion: the history after it is replayed.
    let mut replay = cms.watch(&WatchParams::default(), &start).await.unwrap().boxed();
    assert_eq!(next(replay.next().await), ("ADDED".into(), "other".into()));

    // After a compaction the old resourceVersion is gone: one ERROR event, 410 Expired.
    cluster.compact();
    let mut expired = cms.watch(&WatchParams::default(), &start).await.unwrap().boxed();
    match expired.try_next().await.unwrap() {
        Some(WatchEvent::Error(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired"), "{}", s.message),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // kube-runtime's watcher (list, then watch with bookmarks) sees changes.
    // Without bookmarks, so the resourceVersion it resumes from is that of its last event.
    let config = kube::runtime::watcher::Config::default().labels("app=w").disable_bookmarks();
    let watcher = kube::runtime::watcher(cms.clone(), config);
    let mut watcher = Box::pin(watcher);
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, watcher.try_next()).await.unwrap().unwrap() {
            Some(kube::runtime::watcher::Event::InitApply(o)) => initial.push(o.metadata.name.unwrap()),
            Some(kube::runtime::watcher::Event::InitDone) => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["other"]);
    cms.create(&PostParams::default(), &cm("late", "w")).await.unwrap();
    loop {
        if let Some(kube::runtime::watcher::Event::Apply(o)) =
            tokio::time::timeout(PATIENCE, watcher.try_next()).await.unwrap().unwrap()
        {
            assert_eq!(o.metadata.name.as_deref(), Some("late"));
            break;
        }
    }

    // The server drops its watches and forgets its history past a change the watcher did not
    // see: its resumed watch meets 410 Expired, and it lists again.
    cms.create(&PostParams::default(), &cm("unseen", "x")).await.unwrap();
    cluster.compact();
    cluster.close_watches();
    let mut relisted = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, watcher.try_next()).await.unwrap() {
            Ok(Some(kube::runtime::watcher::Event::InitApply(o))) => relisted.push(o.metadata.name.unwrap()),
            Ok(Some(kube::runtime::watcher::Event::InitDone)) => break,
            Ok(_) | Err(kube::runtime::watcher::Error::WatchError(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    relisted.sort();
    assert_eq!(relisted, ["late", "other"]);
}

#[test]
fn deployments_make_ready_pods_scale_roll_and_replace_deleted_ones() {
    let (cluster, _image) = cluster();
    cluster.create(deployment("web", 3));
    cluster.wait_for("3 ready pods", |c| c.ready_pods("default", "app=web").len() == 3);
    let pods = cluster.pods("default", "app=web");
    pods.iter().for_each(|p| assert_no_nulls(p, "pod"));
    let first = &pods[0];
    assert_eq!(first["spec"]["nodeName"], "fake-node");
    assert!(first["status"]["podIP"].as_str().unwrap().starts_with("127."));
    assert_eq!(first["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    let hash = first["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_owned();
    assert!(first["metadata"]["name"].as_str().unwrap().starts_with(&format!("web-{hash}-")));
    let d = cluster.get("/apis/apps/v1/namespaces/default/deployments/web").unwrap();
    cluster.wait_for("the deployment's status counts them", |c| {
        let s = &c.get("/apis/apps/v1/namespaces/default/deployments/web").unwrap()["status"];
        s["readyReplicas"] == 3 && s["updatedReplicas"] == 3 && s["availableReplicas"] == 3
    });
    assert!(cluster.get(&format!("/apis/apps/v1/namespaces/default/replicasets/web-{hash}")).is_some());

    cluster.scale("default", "web", 4);
    cluster.wait_for("4 ready pods", |c| c.ready_pods("default", "app=web").len() == 4);

    // A template change rolls every pod to the new replicaset.
    let res = "/apis/apps/v1/namespaces/default/deployments/web";
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let deploys: Api<Deployment> = Api::default_namespaced(client(cluster.kubeconfig()).await);
        update_deployment(&deploys, "web", |d| d["spec"]["template"]["metadata"]["annotations"] = json!({"rev": "2"}))
            .await;
    });
    // Within maxSurge (25% of 4: 1) and maxUnavailable (1) at every moment we look.
    let (mut most, mut fewest_ready) = (0, usize::MAX);
    cluster.wait_for("the rollout completes", |c| {
        let pods = c.pods("default", "app=web");
        let active = pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).count();
        most = most.max(active);
        fewest_ready = fewest_ready.min(pods.iter().filter(|p| is_ready(p)).count());
        let d = c.get(res).unwrap();
        let s = &d["status"];
        pods.len() == 4
            && pods.iter().all(|p| is_ready(p) && p["metadata"]["labels"]["pod-template-hash"] != hash.as_str())
            && s["observedGeneration"] == d["metadata"]["generation"]
            && s["updatedReplicas"] == 4
            && s["replicas"] == 4
            && s["conditions"][1]["reason"] == "NewReplicaSetAvailable"
    });
    assert!(most <= 5 && fewest_ready >= 3, "surge {most} pods, down to {fewest_ready} ready");
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(cluster.get(res).unwrap()["metadata"]["generation"], 3, "scale and template changes are spec changes");

    // A deleted pod is terminated gracefully and replaced.
    let victim = cluster.pod_names("default", "app=web")[0].clone();
    cluster.delete_pod("default", &victim);
    cluster.wait_for("the pod is gone and replaced", |c| {
        let names = c.pod_names("default", "app=web");
        !names.contains(&victim) && c.ready_pods("default", "app=web").len() == 4
    });
}

#[test]
fn unknown_images_back_off_and_missing_secrets_wait() {
    let (cluster, image) = cluster();
    let mut d = deployment("bad", 1);
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("registry.example/nope:2");
    cluster.create(d);
    cluster.wait_for("the image pull fails", |c| {
        c.pods("default", "app=bad").iter().any(|p| {
            let reason = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
            reason == "ImagePullBackOff" && !is_ready(p)
        })
    });
    cluster.add_image("registry.example/nope:2", image.path());
    cluster.wait_for("the pod runs once the image exists", |c| c.ready_pods("default", "app=bad").len() == 1);

    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "needs-secret", "namespace": "team"},
        "spec": {
            "volumes": [{"name": "creds", "secret": {"secretName": "later"}}],
            "containers": [{"name": "c", "image": APP_IMAGE, "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}],
        },
    });
    cluster.create(pod);
    cluster.wait_for("the pod waits for its secret", |c| {
        c.pods("team", "")
            .iter()
            .any(|p| p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating")
    });
    let waiting = cluster.get("/api/v1/namespaces/team/pods/needs-secret").unwrap();
    assert_eq!(waiting["status"]["phase"], "Pending");
    assert!(waiting["status"]["podIP"].is_null(), "no sandbox, no IP, before the volumes are mounted");
    cluster.create(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "later", "namespace": "team"},
        "data": {"token": "c2VjcmV0"},
    }));
    cluster.wait_for("the pod starts", |c| c.ready_pods("team", "").len() == 1);
    let dir = cluster.pod_volume("team", "needs-secret", "creds").unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "secret");
}

/// A pod shaped as `hotsync attach` injects it: install and seed init containers, the agent
/// serving QUIC over UDP and TCP with credentials from a Secret.
fn injected_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "agent"}},
        "spec": {
            "shareProcessNamespace": true,
            "volumes": [
                {"name": "hotsync-root", "emptyDir": {}},
                {"name": "hotsync-bin", "emptyDir": {}},
                {"name": "hotsync-credentials", "secret": {"secretName": "hotsync-credentials", "defaultMode": 0o444}},
            ],
            "initContainers": [
                {"name": "hotsync-install", "image": "hotsync-agent:0.1.0", "args": ["install", "--to", "/hotsync/bin"],
                 "volumeMounts": [{"name": "hotsync-bin", "mountPath": "/hotsync/bin"}]},
                {"name": "hotsync-seed", "image": APP_IMAGE, "command": ["/hotsync/bin/hotsync-agent"],
                 "args": ["seed", "--from", "/app", "--to", "/hotsync/root"],
                 "volumeMounts": [{"name": "hotsync-bin", "mountPath": "/hotsync/bin", "readOnly": true},
                                  {"name": "hotsync-root", "mountPath": "/hotsync/root"}]},
            ],
            "containers": [
                {"name": "web", "image": APP_IMAGE,
                 "volumeMounts": [{"name": "hotsync-root", "mountPath": "/app"}]},
                {"name": "hotsync-agent", "image": "hotsync-agent:0.1.0",
                 "args": ["serve", "--root", "/hotsync/root", "--listen", "0.0.0.0:7470", "--listen-tcp", "0.0.0.0:7470",
                          "--credentials", "/hotsync/credentials", "--log-format", "json"],
                 "ports": [{"name": "hotsync-quic", "containerPort": 7470, "protocol": "UDP"},
                           {"name": "hotsync-tcp", "containerPort": 7470, "protocol": "TCP"}],
                 "volumeMounts": [{"name": "hotsync-root", "mountPath": "/hotsync/root"},
                                  {"name": "hotsync-credentials", "mountPath": "/hotsync/credentials", "readOnly": true}]},
            ],
        },
    })
}

fn credentials_secret() -> Value {
    use base64::Engine;
    let creds = hotsync_transport::credentials::GeneratedCredentials::generate().unwrap();
    let data: serde_json::Map<String, Value> = creds
        .files
        .iter()
        .map(|(name, text)| ((*name).to_owned(), json!(base64::engine::general_purpose::STANDARD.encode(text))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hotsync-credentials", "namespace": "default"}, "data": data})
}

#[tokio::test]
async fn an_injected_pod_runs_the_real_agent_and_port_forward_reaches_it() {
    let (cluster, _image) = cluster();
    cluster.create(credentials_secret());
    cluster.create(injected_pod("agent-0"));
    let pods: Api<Pod> = Api::default_namespaced(client(cluster.kubeconfig()).await);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let p = serde_json::to_value(pods.get("agent-0").await.unwrap()).unwrap();
        if is_ready(&p) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready: {p:#}\nagent log: {}",
            cluster.container_log("default", "agent-0", "hotsync-agent")
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The seed init container copied the image's /app into the synced volume.
    let root = cluster.pod_root("default", "agent-0").unwrap();
    assert_eq!(std::fs::read_to_string(root.join("index.html")).unwrap(), "hello from the image\n");

    // Port-forward to the agent's TCP port: the connection opens and closes cleanly.
    let mut pf = pods.portforward("agent-0", &[7470]).await.unwrap();
    let mut stream = pf.take_stream(7470).unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await.unwrap();
    drop(stream);
    tokio::time::timeout(PATIENCE, pf.join()).await.unwrap().unwrap();

    // Bytes both ways: an echo server on the pod IP, forwarded.
    let ip = cluster.pod_ip("default", "agent-0").unwrap();
    let echo = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
    });
    let mut pf = pods.portforward("agent-0", &[port]).await.unwrap();
    let mut stream = pf.take_stream(port).unwrap();
    let payload = hotsync_e2e::noise(200_000, 7);
    let (mut r, mut w) = tokio::io::split(stream);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w
    });
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(PATIENCE, r.read_exact(&mut back)).await.unwrap().unwrap();
    assert!(back == payload, "the echo came back intact");
    stream = r.unsplit(writer.await.unwrap());
    drop(stream);
    pf.abort();

    // A port nobody listens on: the kubelet's message on the error channel.
    let mut pf = pods.portforward("agent-0", &[1]).await.unwrap();
    let err = tokio::time::timeout(PATIENCE, pf.take_error(1).unwrap()).await.unwrap().unwrap();
    assert!(err.contains("error forwarding port 1 to pod"), "{err}");

    // A killed agent is restarted by the kubelet and serves again.
    cluster.kill_container("default", "agent-0", "hotsync-agent");
    cluster
        .wait_for_async("the agent restarted", |c| {
            let p = c.get("/api/v1/namespaces/default/pods/agent-0").unwrap();
            p["status"]["containerStatuses"][1]["restartCount"] == 1 && is_ready(&p)
        })
        .await;
    assert!(tokio::net::TcpStream::connect((ip, 7470)).await.is_ok());

    // Port-forward needs `create` on pods/portforward.
    cluster.deny("create", "pods/portforward");
    let e = forward_error(pods.portforward("agent-0", &[7470]).await);
    assert_eq!(e.code, 403);
    assert!(e.message.contains(r#"cannot create resource "pods/portforward""#), "{}", e.message);
    let e = forward_error(pods.portforward("nope", &[7470]).await);
    assert_eq!(e.code, 403, "RBAC is checked before the pod is looked up");
    cluster.allow("create", "pods/portforward");
    let e = forward_error(pods.portforward("nope", &[7470]).await);
    assert_eq!((e.code, e.message.as_str()), (404, r#"pods "nope" not found"#));
}

#[tokio::test]
async fn unknown_fields_are_dropped_with_a_warning_or_refused_when_strict() {
    let (cluster, _image) = cluster();
    let client = client(cluster.kubeconfig()).await;
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    let mut d = deployment("web", 0);
    d["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = json!([{"name": "typo", "mountPath": "/x"}]);
    // Through a raw request, as the typed client would drop the field itself.
    let req = http::Request::post("/apis/apps/v1/namespaces/default/deployments")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&d).unwrap())
        .unwrap();
    let stored: Value = client.request(req).await.unwrap();
    assert!(stored["spec"]["template"]["spec"]["containers"][0].get("volumeMount").is_none(), "the server drops it");
    let logged = cluster.get("/apis/apps/v1/namespaces/default/deployments/web").unwrap();
    assert!(logged["spec"]["template"]["spec"]["containers"][0].get("volumeMount").is_none());

    let strict =
        PatchParams { field_validation: Some(kube::api::ValidationDirective::Strict), ..PatchParams::default() };
    let e = api_error(deploys.patch("web", &strict, &Patch::Merge(json!({"spec": {"replica": 2}}))).await.unwrap_err());
    assert_eq!((e.code, e.message.as_str()), (400, r#"strict decoding error: unknown field "spec.replica""#));

    // A Secret's stringData lands in data.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::default_namespaced(client);
    let s = serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})).unwrap();
    let s = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(s.data.unwrap()["k"].0, b"v");
    assert!(s.string_data.is_none());
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
}

#[tokio::test]
async fn pods_are_immutable_but_for_images_and_unknown_paths_get_the_plain_404() {
    let (cluster, _image) = cluster();
    let client = client(cluster.kubeconfig()).await;
    cluster.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": APP_IMAGE}]},
    }));
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let e = api_error(
        pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"spec": {"shareProcessNamespace": true}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(
        e.message.starts_with(r#"Pod "p" is invalid: spec: Forbidden: pod updates may not change fields"#),
        "{}",
        e.message
    );
    let image = json!({"spec": {"containers": [{"name": "c", "image": "registry.example/web:2"}]}});
    pods.patch("p", &PatchParams::default(), &Patch::Merge(image)).await.unwrap();

    let e = api_error(
        Api::<Pod>::namespaced(client.clone(), "nowhere")
            .create(
                &PostParams::default(),
                &Pod {
                    metadata: kube::api::ObjectMeta { name: Some("x".into()), ..Default::default() },
                    spec: Some(
                        serde_json::from_value(json!({"containers": [{"name": "c", "image": APP_IMAGE}]})).unwrap(),
                    ),
                    ..Pod::default()
                },
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.message.as_str()), (404, r#"namespaces "nowhere" not found"#));

    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let req = http::Request::get("/apis/widgets.example/v1/widgets").body(Vec::new()).unwrap();
    let text = client.request_text(req).await;
    assert!(matches!(text, Err(kube::Error::Api(s)) if s.code == 404), "an unknown path is a 404");
}

#[test]
fn a_crashing_container_backs_off_with_a_rising_restart_count() {
    let (cluster, _image) = cluster();
    cluster.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crash"},
        "spec": {"containers": [{"name": "c", "image": APP_IMAGE, "command": ["/bin/sh", "-c", "echo dying >&2; exit 3"]}]},
    }));
    cluster.wait_for("two restarts in CrashLoopBackOff", |c| {
        c.pods("default", "").iter().any(|p| {
            let s = &p["status"]["containerStatuses"][0];
            s["restartCount"].as_i64().unwrap_or(0) >= 2
                && s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                && s["lastState"]["terminated"]["exitCode"] == 3
                && !is_ready(p)
        })
    });
    assert!(cluster.container_log("default", "crash", "c").contains("dying"));
}

/// A deployment whose template is what `hotsync attach` makes of `web`.
fn injected_deployment(name: &str) -> Value {
    let pod = injected_pod(name);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": pod["spec"]},
        },
    })
}

#[tokio::test]
async fn a_deleted_pod_stops_its_agent_gracefully_and_a_replacement_takes_over() {
    let (cluster, _image) = cluster();
    cluster.create(credentials_secret());
    cluster.create(injected_deployment("agent"));
    let pods: Api<Pod> = Api::default_namespaced(client(cluster.kubeconfig()).await);
    let ready = |c: &FakeCluster| c.ready_pods("default", "app=agent").len() == 1;
    cluster.wait_for_async("the agent pod is ready", ready).await;
    let old = cluster.pod_names("default", "app=agent").remove(0);
    let old_ip = cluster.pod_ip("default", &old).unwrap();
    assert!(std::net::TcpStream::connect((old_ip, 7470)).is_ok(), "the agent listens on the pod IP");

    let rv = pods.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut events = pods.watch(&WatchParams::default().labels("app=agent"), &rv).await.unwrap().boxed();
    cluster.delete_pod("default", &old);
    let mut seen = Vec::new();
    while !seen.iter().any(|(k, n)| k == "DELETED" && *n == old) {
        let e = tokio::time::timeout(PATIENCE, events.next()).await.unwrap().unwrap().unwrap();
        let (kind, pod) = match e {
            WatchEvent::Added(p) => ("ADDED", p),
            WatchEvent::Modified(p) => ("MODIFIED", p),
            WatchEvent::Deleted(p) => ("DELETED", p),
            _ => continue,
        };
        let name = pod.metadata.name.clone().unwrap();
        if name == old && kind == "MODIFIED" && pod.metadata.deletion_timestamp.is_some() {
            seen.push(("TERMINATING".to_owned(), name));
        } else {
            seen.push((kind.to_owned(), name));
        }
    }
    let first_terminating =
        seen.iter().position(|(k, n)| k == "TERMINATING" && *n == old).expect("a MODIFIED with deletionTimestamp");
    let deleted = seen.iter().position(|(k, n)| k == "DELETED" && *n == old).unwrap();
    assert!(first_terminating < deleted, "{seen:?}");
    assert!(std::net::TcpStream::connect((old_ip, 7470)).is_err(), "the agent was stopped");
    assert!(cluster.pod_ip("default", &old).is_none() && cluster.pod_root("default", &old).is_none());
    assert!(cluster.container_log("default", &old, "hotsync-agent").contains("listening"), "logs outlive the pod");

    cluster.wait_for_async("a replacement is ready", ready).await;
    let new = cluster.pod_names("default", "app=agent").remove(0);
    assert_ne!(new, old);
    let new_ip = cluster.pod_ip("default", &new).unwrap();
    assert_ne!(new_ip, old_ip, "a new pod, a new IP");
    let mut pf = pods.portforward(&new, &[7470]).await.unwrap();
    assert!(pf.take_stream(7470).is_some());
    pf.abort();
}

#[test]
fn restoring_a_template_rolls_back_to_its_old_replicaset() {
    let (cluster, _image) = cluster();
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    cluster.create(deployment("web", 2));
    cluster.wait_for("2 ready pods", |c| c.ready_pods("default", "app=web").len() == 2);
    let hash = |c: &FakeCluster| -> Vec<String> {
        c.pods("default", "app=web")
            .iter()
            .map(|p| p["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_owned())
            .collect()
    };
    let original_hash = hash(&cluster)[0].clone();
    let original = cluster.get(path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deploys: Api<Deployment> = rt.block_on(async { Api::default_namespaced(client(cluster.kubeconfig()).await) });
    let set_template = |template: &Value| {
        rt.block_on(update_deployment(&deploys, "web", |d| d["spec"]["template"] = template.clone()));
    };
    let mut changed = original["spec"]["template"].clone();
    changed["spec"]["containers"][0]["env"] = json!([{"name": "X", "value": "1"}]);
    set_template(&changed);
    cluster.wait_for("the rollout to the new template", |c| {
        let h = hash(c);
        h.len() == 2 && h.iter().all(|h| *h != original_hash) && c.ready_pods("default", "app=web").len() == 2
    });
    set_template(&original["spec"]["template"]);
    cluster.wait_for("the rollback to the original replicaset", |c| {
        let h = hash(c);
        h.len() == 2 && h.iter().all(|h| *h == original_hash) && c.ready_pods("default", "app=web").len() == 2
    });
    let rs = cluster.get(&format!("/apis/apps/v1/namespaces/default/replicasets/web-{original_hash}")).unwrap();
    assert_eq!(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    assert_eq!(cluster.get(path).unwrap()["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
}

#[test]
fn a_rollout_of_a_missing_image_exceeds_its_progress_deadline() {
    let (cluster, _image) = cluster();
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    cluster.create(deployment("web", 1));
    cluster.wait_for("1 ready pod", |c| c.ready_pods("default", "app=web").len() == 1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let deploys: Api<Deployment> = Api::default_namespaced(client(cluster.kubeconfig()).await);
        update_deployment(&deploys, "web", |d| {
            d["spec"]["progressDeadlineSeconds"] = json!(1);
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("registry.example/web:does-not-exist");
        })
        .await;
    });
    cluster.wait_for("ProgressDeadlineExceeded", |c| {
        c.get(path).unwrap()["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Progressing" && c["status"] == "False" && c["reason"] == "ProgressDeadlineExceeded")
    });
    assert_eq!(cluster.ready_pods("default", "app=web").len(), 1, "the old pod keeps serving");
}

#[test]
fn statefulsets_and_daemonsets_make_their_pods() {
    let (cluster, _image) = cluster();
    let template = json!({
        "metadata": {"labels": {"app": "db"}},
        "spec": {"containers": [{"name": "db", "image": APP_IMAGE}]},
    });
    cluster.create(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": template},
    }));
    cluster.wait_for("db-0, db-1, db-2 ready", |c| {
        let mut names: Vec<String> = c
            .ready_pods("default", "app=db")
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names == ["db-0", "db-1", "db-2"]
    });
    let mut ds_template = template.clone();
    ds_template["metadata"]["labels"] = json!({"app": "node-agent"});
    cluster.create(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "node-agent"},
        "spec": {"selector": {"matchLabels": {"app": "node-agent"}}, "template": ds_template},
    }));
    cluster.wait_for("one daemon pod", |c| {
        c.ready_pods("default", "app=node-agent").len() == 1
            && c.get("/apis/apps/v1/namespaces/default/daemonsets/node-agent").unwrap()["status"]["numberReady"] == 1
    });
    cluster.wait_for("the statefulset's status", |c| {
        let s = &c.get("/apis/apps/v1/namespaces/default/statefulsets/db").unwrap()["status"];
        s["readyReplicas"] == 3 && s["updatedReplicas"] == 3 && s["currentRevision"] == s["updateRevision"]
    });
}

#[test]
fn hotsync_sync_reaches_an_agent_in_a_fake_pod_over_udp_to_its_pod_ip() {
    use base64::Engine;
    let (cluster, _image) = cluster();
    let env = hotsync_e2e::Env::new();
    let data: serde_json::Map<String, Value> = std::fs::read_dir(&env.creds)
        .unwrap()
        .flatten()
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
            )
        })
        .collect();
    cluster.create(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hotsync-credentials"}, "data": data}),
    );
    cluster.create(injected_pod("agent-0"));
    cluster.wait_for("the pod is ready", |c| c.ready_pods("default", "app=agent").len() == 1);
    write(&env.src.join("app.py"), "print('synced')\n");
    let ip = cluster.pod_ip("default", "agent-0").unwrap();
    let out = env.sync_once(std::net::SocketAddr::from((ip, 7470)), &[]);
    assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
    let root = cluster.pod_root("default", "agent-0").unwrap();
    assert_eq!(std::fs::read_to_string(root.join("app.py")).unwrap(), "print('synced')\n");
}

#[test]
fn pods_that_never_restart_end_succeeded_or_failed() {
    let (cluster, _image) = cluster();
    for (name, script) in [("ok", "exit 0"), ("bad", "exit 4")] {
        cluster.create(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": APP_IMAGE, "command": ["/bin/sh", "-c", script]}]},
        }));
    }
    let phase = |c: &FakeCluster, name: &str| {
        c.get(&format!("/api/v1/namespaces/default/pods/{name}")).unwrap()["status"]["phase"].clone()
    };
    cluster.wait_for("both pods end", |c| phase(c, "ok") == "Succeeded" && phase(c, "bad") == "Failed");
    let bad = cluster.get("/api/v1/namespaces/default/pods/bad").unwrap();
    let s = &bad["status"]["containerStatuses"][0];
    assert_eq!((s["restartCount"].as_i64(), s["state"]["terminated"]["exitCode"].as_i64()), (Some(0), Some(4)));
}

#[test]
fn the_webhook_manifests_install_and_their_pods_serve() {
    use serde::Deserialize;
    let (cluster, _image) = cluster();
    let out = std::process::Command::new(bin("hotsync")).args(["webhook", "manifests"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let obj = Value::deserialize(doc).unwrap();
        let stored = cluster.create(obj);
        assert!(stored["metadata"]["uid"].is_string());
    }
    let mwc =
        cluster.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/hotsync-webhook").unwrap();
    assert_eq!(mwc["webhooks"][0]["matchPolicy"], "Equivalent", "defaults as the server fills them");
    assert_eq!(mwc["webhooks"][0]["objectSelector"], json!({}));
    let svc = cluster.get("/api/v1/namespaces/hotsync-system/services/hotsync-webhook").unwrap();
    assert!(svc["spec"]["clusterIP"].as_str().unwrap().starts_with("10.96."));
    let ns = "hotsync-system";
    cluster
        .wait_for("both webhook pods serve", |c| c.ready_pods(ns, "app.kubernetes.io/name=hotsync-webhook").len() == 2);
    let pod = cluster.pod_names(ns, "app.kubernetes.io/name=hotsync-webhook").remove(0);
    assert!(cluster.container_log(ns, &pod, "webhook").contains("hotsync webhook listening"));
}

#[test]
fn containers_get_their_environment_working_dir_and_references() {
    let (cluster, image) = cluster();
    cluster.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "envy"},
        "spec": {
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "c", "image": APP_IMAGE, "workingDir": "/app",
                "command": ["/bin/sh", "-c", "echo \"$GREETING $(WHO) $TOKEN $POD_IP\" > /data/out; ls >> /data/out; exec sleep 600"],
                "envFrom": [{"configMapRef": {"name": "settings"}}],
                "env": [
                    {"name": "WHO", "value": "$(GREETING)-world"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                ],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
        },
    }));
    cluster.wait_for("the container waits for its configuration", |c| {
        c.pods("default", "")[0]["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
    });
    cluster.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"GREETING": "hello"}}));
    cluster.create(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}),
    );
    cluster.wait_for("the container runs", |c| c.ready_pods("default", "").len() == 1);
    let out = cluster.pod_volume("default", "envy", "data").unwrap().join("out");
    cluster.wait_for("it wrote its environment", |_| {
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("index.html"))
    });
    let ip = cluster.pod_ip("default", "envy").unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text, format!("hello hello-world s3cret {ip}\nindex.html\n"), "working dir is the image's /app");
    assert!(image.path().join("app/index.html").exists());
}

#[test]
fn a_recreate_rollout_stops_the_old_pods_before_starting_new_ones() {
    let (cluster, _image) = cluster();
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let mut d = deployment("web", 2);
    d["spec"]["strategy"] = json!({"type": "Recreate"});
    cluster.create(d);
    cluster.wait_for("2 ready pods", |c| c.ready_pods("default", "app=web").len() == 2);
    cluster.edit(path, |d| d["spec"]["template"]["metadata"]["annotations"] = json!({"rev": "2"}));
    let mut mixed = false;
    cluster.wait_for("the new pods", |c| {
        let pods = c.pods("default", "app=web");
        let hashes: std::collections::BTreeSet<_> =
            pods.iter().map(|p| p["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_owned()).collect();
        mixed |= hashes.len() > 1;
        let d = c.get(path).unwrap();
        d["status"]["updatedReplicas"] == 2
            && d["status"]["replicas"] == 2
            && c.ready_pods("default", "app=web").len() == 2
    });
    assert!(!mixed, "old and new pods never ran together");
}
