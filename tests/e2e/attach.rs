//! `hotsync attach` / `detach` / `status` / `webhook install` against the fake API server:
//! real HTTPS and Kubernetes JSON, pods whose sidecars are real `hotsync-agent` processes,
//! port-forwards over WebSocket. The product reads a kubeconfig and cannot tell.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use hotsync_e2e::fake_kube::{FakeCluster, FakeOptions};
use hotsync_e2e::{Host, bin, listing, listing_without, wait_until, write};
use serde_json::{Value, json};

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/web";
const SECRET: &str = "/api/v1/namespaces/default/secrets/hotsync-web";
const APP_IMAGE: &str = "registry.example/web:1.0";

/// A developer's machine (its own HOME) with a project, and a cluster running `web`.
struct Dev {
    dir: tempfile::TempDir,
    src: PathBuf,
    cluster: FakeCluster,
}

impl Dev {
    fn new(replicas: i32) -> Self {
        let dir = tempfile::Builder::new().prefix("hotsync-attach-").tempdir().unwrap();
        // The app image: what its Dockerfile built into /app, dependencies included.
        let image = dir.path().join("image-web");
        write(&image.join("app/server.py"), "print('built into the image')\n");
        write(&image.join("app/node_modules/dep/index.js"), "module.exports = 1;\n");
        let src = dir.path().join("project");
        write(&src.join("server.py"), "print('hello from the laptop')\n");
        write(&src.join("static/app.js"), "console.log(1);\n");
        write(&src.join(".hotsyncignore"), "node_modules/\n");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let cluster = FakeCluster::start(FakeOptions {
            agent_binary: bin("hotsync-agent"),
            images: BTreeMap::from([(APP_IMAGE.to_owned(), image)]),
            namespaces: vec![],
        })
        .expect("fake cluster");
        cluster.create(web_deployment(replicas));
        let dev = Self { dir, src, cluster };
        dev.wait_pods(replicas as usize, |_| true);
        dev
    }

    /// `hotsync ARGS` as this developer: their HOME, the cluster's kubeconfig.
    fn hotsync(&self, args: &[&str]) -> Command {
        let home = self.dir.path().join("home");
        let mut cmd = Command::new(bin("hotsync"));
        cmd.args(args)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .current_dir(&self.src);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.hotsync(args).output().expect("run hotsync")
    }

    fn attach(&self, extra: &[&str]) -> Host {
        let sync = format!("{}:/app", self.src.display());
        let mut args = vec!["attach", "deployment/web", "--sync", &sync, "--json"];
        args.extend_from_slice(extra);
        Host::start(self.hotsync(&args))
    }

    fn pods(&self) -> Vec<Value> {
        self.cluster.pods("default", "app=web")
    }

    /// Waits until `n` running pods (not being deleted) all satisfy `check`.
    fn wait_pods(&self, n: usize, check: impl Fn(&Value) -> bool) {
        wait_until(&format!("{n} running pods of web that pass the check"), || {
            let pods: Vec<Value> = self
                .pods()
                .into_iter()
                .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
                .collect();
            pods.len() == n && pods.iter().all(&check)
        });
    }

    /// True when the pod's synced directory holds the source, plus what the image built there
    /// and the source ignores.
    fn in_sync(&self, pod: &Value) -> bool {
        if !is_injected(pod) {
            return false;
        }
        let name = pod["metadata"]["name"].as_str().unwrap();
        let Some(root) = self.cluster.pod_root("default", name) else { return false };
        listing_without(&root, &["node_modules"]) == listing(&self.src)
            && root.join("node_modules/dep/index.js").exists()
    }

    fn wait_all_in_sync(&self, n: usize) {
        self.wait_pods(n, |p| self.in_sync(p));
    }

    /// API requests that change something.
    fn writes(&self) -> Vec<(String, String)> {
        self.cluster.requests().into_iter().filter(|(method, _)| method != "GET").collect()
    }
}

fn web_deployment(replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": APP_IMAGE,
                        "ports": [{"containerPort": 8000}],
                        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}
                    }]
                }
            }
        }
    })
}

fn is_injected(pod: &Value) -> bool {
    pod["spec"]["containers"].as_array().is_some_and(|cs| cs.iter().any(|c| c["name"] == "hotsync-agent"))
}

/// The object minus what the server changes on every write, and the revision the deployment
/// controller counts up on every rollout (attach and detach are two).
fn stable(mut obj: Value) -> Value {
    let meta = obj["metadata"].as_object_mut().unwrap();
    for volatile in ["resourceVersion", "generation", "managedFields"] {
        meta.remove(volatile);
    }
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("deployment.kubernetes.io/revision");
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
    obj.as_object_mut().unwrap().remove("status");
    obj
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn attach_keeps_every_replica_in_sync_follows_pods_and_detach_restores_the_original() {
    let dev = Dev::new(3);
    let original = dev.cluster.get(DEPLOYMENT).unwrap();

    let mut attach = dev.attach(&[]);
    dev.wait_all_in_sync(3);
    assert!(dev.pods().iter().all(is_injected), "every pod was rolled to the injected template");

    // An edit reaches every replica.
    write(&dev.src.join("server.py"), "print('edit #1')\n");
    dev.wait_all_in_sync(3);

    // Scale up: the new pod gets the current tree on arrival.
    dev.cluster.scale("default", "web", 4);
    dev.wait_all_in_sync(4);

    // A pod deleted while edits flow: its replacement catches up, the others keep syncing.
    let victim = dev.pods()[0]["metadata"]["name"].as_str().unwrap().to_owned();
    write(&dev.src.join("static/app.js"), "console.log(2);\n");
    dev.cluster.delete_pod("default", &victim);
    write(&dev.src.join("static/new.css"), "body {}\n");
    dev.wait_all_in_sync(4);
    assert!(dev.pods().iter().all(|p| p["metadata"]["name"] != victim.as_str()), "the deleted pod is gone");
    attach.wait_event("pod_left", |e| e["pod"] == victim.as_str());
    assert!(attach.child.try_wait().unwrap().is_none(), "attach keeps running");

    // status shows the session and its pods.
    wait_until("hotsync status lists the 4 pods", || {
        let out = dev.run(&["status", "--json"]);
        let sessions: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        sessions[0]["workload"] == "deployment/web" && sessions[0]["pods"].as_object().is_some_and(|p| p.len() == 4)
    });
    let text = String::from_utf8_lossy(&dev.run(&["status"]).stdout).into_owned();
    assert!(text.contains("deployment/web") && text.contains("in sync"), "{text}");

    // detach stops the attach, restores the template byte for byte, deletes the Secret.
    let out = dev.run(&["detach", "deployment/web"]);
    assert!(out.status.success(), "detach: {}", stderr(&out));
    assert_eq!(attach.child.wait().unwrap().code(), Some(0), "the running attach stopped cleanly");
    let mut restored = stable(dev.cluster.get(DEPLOYMENT).unwrap());
    let mut expected = stable(original);
    // Only the replica count we changed with `scale` differs.
    restored["spec"]["replicas"] = json!(3);
    expected["spec"]["replicas"] = json!(3);
    assert_eq!(serde_json::to_string_pretty(&restored).unwrap(), serde_json::to_string_pretty(&expected).unwrap());
    assert!(dev.cluster.get(SECRET).is_none(), "the credentials Secret is deleted");
    dev.wait_pods(4, |p| !is_injected(p));
}

#[test]
fn attach_once_through_port_forward_and_attaching_twice_changes_nothing() {
    let dev = Dev::new(2);
    let out = dev.run(&["attach", "deploy/web", "--sync", ".:/app", "--transport", "port-forward", "--once"]);
    assert!(out.status.success(), "attach --once: {}", stderr(&out));
    dev.wait_all_in_sync(2);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("port-forward"), "the transport is shown: {text}");
    assert!(
        dev.cluster.requests().iter().any(|(_, path)| path.contains("/portforward")),
        "the sidecars were reached through the API server"
    );

    let before = dev.cluster.get(DEPLOYMENT).unwrap();
    let writes_before = dev.writes().len();
    write(&dev.src.join("server.py"), "print('second run')\n");
    let out = dev.run(&["attach", "deployment/web", "--sync", ".:/app", "--transport", "port-forward", "--once"]);
    assert!(out.status.success(), "second attach --once: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("carries the hotsync sidecar already"));
    assert_eq!(dev.cluster.get(DEPLOYMENT).unwrap(), before, "attaching twice changes nothing");
    assert_eq!(dev.writes().len(), writes_before, "no write to the API the second time");
    dev.wait_all_in_sync(2);
}

#[test]
fn a_project_file_names_the_workload_and_the_mapping() {
    let dev = Dev::new(1);
    write(&dev.src.join("hotsync.yaml"), "workload: deployment/web\nsync: .:/app\ntransport: direct\n");
    let out = dev.run(&["attach", "--once"]);
    assert!(out.status.success(), "attach --once from hotsync.yaml: {}", stderr(&out));
    dev.wait_all_in_sync(1);
    assert!(String::from_utf8_lossy(&out.stdout).contains("direct UDP"));

    write(&dev.src.join("hotsync.yaml"), "workload: deployment/web\nsinc: .:/app\n");
    let out = dev.run(&["attach", "--once"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("hotsync.yaml") && err.contains("sinc") && err.contains("line 2"), "{err}");
}

#[test]
fn an_unknown_workload_lists_what_exists_and_changes_nothing() {
    let dev = Dev::new(1);
    let out = dev.run(&["attach", "deployment/wbe", "--once"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("deployment/wbe not found") && err.contains("web"), "{err}");
    assert!(dev.writes().is_empty(), "nothing was written: {:?}", dev.writes());

    let out = dev.run(&["attach", "deployment/web", "-n", "nowhere", "--once"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no deployments in namespace nowhere"), "{}", stderr(&out));
    assert!(dev.writes().is_empty());
}

#[test]
fn forbidden_changes_are_explained_and_leave_nothing_behind() {
    let dev = Dev::new(1);
    let raw_before = dev.cluster.get(DEPLOYMENT).unwrap();
    let before = stable(raw_before.clone());
    dev.cluster.deny("update", "deployments");
    let out = dev.run(&["attach", "deployment/web", "--once"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("forbidden") && err.contains("403"), "{err}");
    assert_eq!(stable(dev.cluster.get(DEPLOYMENT).unwrap()), before, "the deployment's spec is unchanged");
    let after = dev.cluster.get(DEPLOYMENT).unwrap();
    assert_eq!(after["metadata"]["generation"], raw_before["metadata"]["generation"], "no spec change went through");
    assert!(dev.cluster.get(SECRET).is_none(), "the Secret made for it was deleted again");
}

#[test]
fn a_missing_kubeconfig_is_explained() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(bin("hotsync"))
        .args(["attach", "deployment/web"])
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no kubeconfig found") && err.contains("KUBECONFIG"), "{err}");
}

#[test]
fn a_rollout_that_cannot_pull_the_sidecar_is_explained_and_detach_undoes_it() {
    let dev = Dev::new(1);
    let original = stable(dev.cluster.get(DEPLOYMENT).unwrap());
    let out = dev.run(&["attach", "deployment/web", "--agent-image", "registry.example/no-such-agent:1", "--once"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot pull image") && err.contains("hotsync detach deployment/web"), "{err}");
    let out = dev.run(&["detach", "deployment/web"]);
    assert!(out.status.success(), "detach: {}", stderr(&out));
    assert_eq!(stable(dev.cluster.get(DEPLOYMENT).unwrap()), original);
}

#[test]
fn webhook_install_rotates_its_certificate_and_uninstall_removes_it() {
    let dev = Dev::new(1);
    let config = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/hotsync-webhook";
    let tls = "/api/v1/namespaces/hotsync-system/secrets/hotsync-webhook-tls";
    let out = dev.run(&["webhook", "install", "--timeout", "120"]);
    assert!(out.status.success(), "install: {}", stderr(&out));
    let first = dev.cluster.get(config).expect("the webhook configuration");
    let first_cert = dev.cluster.get(tls).unwrap()["data"]["tls.crt"].clone();
    assert!(dev.cluster.get("/api/v1/namespaces/hotsync-system/services/hotsync-webhook").is_some());
    // Its pods run the real `hotsync-agent webhook`, serving HTTPS with the installed certificate.
    let pods = dev.cluster.pods("hotsync-system", "app.kubernetes.io/name=hotsync-webhook");
    assert_eq!(pods.len(), 2, "two webhook replicas");
    let pod = pods[0]["metadata"]["name"].as_str().unwrap();
    let log = dev.cluster.container_log("hotsync-system", pod, "webhook");
    assert!(log.contains("hotsync webhook listening"), "webhook log: {log}");

    let out = dev.run(&["webhook", "install", "--timeout", "120"]);
    assert!(out.status.success(), "install again: {}", stderr(&out));
    assert_ne!(dev.cluster.get(tls).unwrap()["data"]["tls.crt"], first_cert, "a new serving certificate");
    let bundle = ca_bundle(&dev.cluster.get(config).unwrap());
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "old and new CA trusted during the rotation");
    assert!(bundle.contains(ca_bundle(&first).trim()), "the old CA is still trusted");

    let out = dev.run(&["webhook", "uninstall"]);
    assert!(out.status.success(), "uninstall: {}", stderr(&out));
    assert!(dev.cluster.get(config).is_none());
    assert!(dev.cluster.get("/api/v1/namespaces/hotsync-system").is_none(), "the namespace install made is gone");
}

fn ca_bundle(config: &Value) -> String {
    use base64::Engine;
    let b64 = config["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

#[test]
fn a_statefulset_is_attached_like_a_deployment() {
    let dev = Dev::new(1);
    dev.cluster.create(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": APP_IMAGE}]}
            }
        }
    }));
    let out = dev.run(&["attach", "sts/db", "--sync", ".:/app", "--once"]);
    assert!(out.status.success(), "attach sts/db: {}", stderr(&out));
    let pods = dev.cluster.pods("default", "app=db");
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        assert!(is_injected(pod));
        let root = dev.cluster.pod_root("default", pod["metadata"]["name"].as_str().unwrap()).unwrap();
        assert_eq!(listing_without(&root, &["node_modules"]), listing(&dev.src));
    }
    let out = dev.run(&["detach", "statefulset/db"]);
    assert!(out.status.success(), "detach: {}", stderr(&out));
    assert!(dev.cluster.get("/api/v1/namespaces/default/secrets/hotsync-db").is_none());
}

#[test]
fn pods_annotated_for_the_webhook_get_the_sidecar_and_attach_just_connects() {
    let dev = Dev::new(1);
    let out = dev.run(&["webhook", "install", "--timeout", "120"]);
    assert!(out.status.success(), "install: {}", stderr(&out));

    // The user's one change: the annotation in the pod template (as `kubectl patch` does).
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"hotsync.dev/inject": "true"}}}}});
    merge_patch(&dev.cluster, "web", &patch);
    // The API server asks the webhook: the new pod comes with the sidecar, which waits for its
    // credentials Secret.
    wait_until("a pod injected by the webhook", || dev.pods().iter().any(is_injected));
    let template_before = dev.cluster.get(DEPLOYMENT).unwrap()["spec"]["template"].clone();

    let out = dev.run(&["attach", "deployment/web", "--sync", ".:/app", "--once"]);
    assert!(out.status.success(), "attach: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("from the admission webhook"));
    assert_eq!(
        dev.cluster.get(DEPLOYMENT).unwrap()["spec"]["template"],
        template_before,
        "attach left the template alone"
    );
    assert!(dev.cluster.get(SECRET).is_some(), "attach made the Secret the injected pods mount");
    dev.wait_all_in_sync(1);
}

/// `kubectl patch deployment NAME --type merge -p PATCH`, through the real client.
fn merge_patch(cluster: &FakeCluster, name: &str, patch: &Value) {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, Patch, PatchParams};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let api: Api<Deployment> = Api::namespaced(client, "default");
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    });
}

#[test]
fn attach_survives_a_sidecar_crash_and_an_api_server_that_drops_its_watches() {
    let dev = Dev::new(2);
    let _attach = dev.attach(&[]);
    dev.wait_all_in_sync(2);

    // The sidecar of one pod crashes; edits made meanwhile reach it once the kubelet restarts it.
    let pod = dev.pods()[0]["metadata"]["name"].as_str().unwrap().to_owned();
    dev.cluster.kill_container("default", &pod, "hotsync-agent");
    write(&dev.src.join("server.py"), "print('edited while the sidecar was down')\n");
    dev.wait_all_in_sync(2);

    // The API server ends every watch and forgets their history (410 on resume): the pod
    // watch lists again, and a pod made after that is still found and synced.
    dev.cluster.compact();
    dev.cluster.close_watches();
    dev.cluster.scale("default", "web", 3);
    dev.wait_all_in_sync(3);
}

#[test]
fn an_overloaded_api_server_is_retried() {
    let dev = Dev::new(1);
    dev.cluster.fail("get", "deployments", 503, 2);
    dev.cluster.fail("update", "deployments", 429, 1);
    dev.cluster.fail("create", "secrets", 504, 1);
    let out = dev.run(&["attach", "deployment/web", "--sync", ".:/app", "--once"]);
    assert!(out.status.success(), "attach through 503, 429 and 504 answers: {}", stderr(&out));
    dev.wait_all_in_sync(1);
}
