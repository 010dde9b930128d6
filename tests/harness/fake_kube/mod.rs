//! An in-process fake of the Kubernetes API server, faithful for the calls hotsync makes:
//! real HTTPS with a CA of its own, a kubeconfig, real Kubernetes JSON and `Status` errors,
//! resourceVersions and watches, RBAC denials, deployment/statefulset/daemonset controllers,
//! and a "kubelet" that runs the pods' sidecars as real processes with pod IPs on loopback, so
//! port-forward and direct UDP reach a real `hotsync-agent`. The product code cannot tell it
//! from a cluster: it reads the kubeconfig and talks HTTPS.
//!
//! ```no_run
//! # use hotsync_e2e::fake_kube::{FakeCluster, FakeOptions};
//! let cluster = FakeCluster::start(FakeOptions {
//!     agent_binary: hotsync_e2e::bin("hotsync-agent"),
//!     images: [("web:1".to_owned(), "/path/to/image/root".into())].into(),
//!     namespaces: vec!["team".into()],
//! })
//! .unwrap();
//! cluster.create(serde_json::json!({
//!     "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
//!     "spec": {
//!         "replicas": 3,
//!         "selector": {"matchLabels": {"app": "web"}},
//!         "template": {
//!             "metadata": {"labels": {"app": "web"}},
//!             "spec": {"containers": [{"name": "web", "image": "web:1"}]},
//!         },
//!     },
//! }));
//! // KUBECONFIG=cluster.kubeconfig() hotsync attach deployment/web …
//! cluster.wait_for("3 ready pods", |c| c.ready_pods("default", "app=web").len() == 3);
//! ```
//!
//! What it checks and refuses, as the real server does: a missing or wrong bearer token (401);
//! `deny`ed verbs (403, checked before anything else); unknown paths (`404 page not found`);
//! missing objects and namespaces (404); duplicates (409 AlreadyExists); a stale
//! `metadata.resourceVersion` on update or patch, and delete preconditions (409 Conflict);
//! history older than the event log (410 Expired); bodies that are not JSON or patches of
//! other types (415); objects that do not decode as their type, kind or name mismatches,
//! unknown fields with `fieldValidation=Strict` (400); and 422 Invalid for names that are not
//! DNS names, pod specs without containers, duplicate container or volume names, volumeMounts
//! naming no volume, duplicate mountPaths, bad ports, workload selectors that miss the
//! template's labels or change, pod spec changes other than images, webhooks without
//! sideEffects or admissionReviewVersions.
//!
//! What it does not do (callers beware): no admission webhooks are called (injection must be
//! done by the client); no server-side apply (415); no `managedFields`; no YAML, protobuf or
//! CBOR bodies; `limit` returns everything with no `continue`; a list reads the present only
//! (`resourceVersionMatch=Exact` of the past is 410); no foreground or orphan deletion (the
//! garbage collector deletes dependents in the background); no Nodes, Events, Endpoints or
//! custom resources; `pods/log` returns what was written so far (no `follow`); no
//! `shareProcessNamespace` (a signal by process name reaches any process of the host with that
//! name); readOnly mounts, security contexts and resource limits are not enforced; app
//! containers without a `command` are reported Running and Ready but not run; httpGet and exec
//! probes are not run (a run container is Ready once its declared TCP ports accept); native
//! sidecars (init containers with restartPolicy Always) run like other init containers; the
//! restart back-off is 1 s doubling to 10 s (the kubelet's: 10 s to 5 min).

mod admission;
mod controllers;
mod defaults;
mod errors;
mod kubelet;
mod portforward;
mod resources;
mod selector;
mod server;
mod store;
mod strategic;
mod validate;
mod verbs;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use self::resources::Resource;
use self::selector::LabelSelector;
use self::store::Store;

/// The user the kubeconfig authenticates as (named in 403 messages).
pub(crate) const USER: &str = "dev";

/// What the fake cluster runs and knows.
pub struct FakeOptions {
    /// The real `hotsync-agent` binary: the entrypoint of every `hotsync-agent:*` image.
    pub agent_binary: PathBuf,
    /// Image name → directory that is that image's root filesystem. Other images (but the
    /// agent's) fail to pull.
    pub images: BTreeMap<String, PathBuf>,
    /// Namespaces created at start (plus `default` and `kube-system`).
    pub namespaces: Vec<String>,
}

/// State shared by the server, the controllers, the kubelet and the handle.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) denied: Mutex<BTreeSet<(String, String)>>,
    /// (verb, resource, HTTP code, how many more times).
    pub(crate) failures: Mutex<Vec<(String, String, u16, u32)>>,
    pub(crate) requests: Mutex<Vec<(String, String)>>,
    pub(crate) images: Mutex<BTreeMap<String, PathBuf>>,
    pub(crate) agent_binary: PathBuf,
    pub(crate) token: String,
    /// Where pods' volumes and logs live.
    pub(crate) dir: PathBuf,
    pub(crate) kubelet: kubelet::Registry,
    /// Bumped to end every open watch.
    pub(crate) watch_epoch: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock is a bug in the fake; keep serving what is there.
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `deny` forbade `verb` on `resource` (`pods`, `pods/portforward`; `*` matches all).
    pub(crate) fn is_denied(&self, verb: &str, resource: &str) -> bool {
        let denied = self.denied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        denied.iter().any(|(v, r)| (v == verb || v == "*") && (r == resource || r == "*"))
    }

    /// An injected failure for this request, if one is left (counts it down).
    pub(crate) fn take_failure(&self, verb: &str, resource: &str) -> Option<u16> {
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let f =
            failures.iter_mut().find(|f| (f.0 == verb || f.0 == "*") && (f.1 == resource || f.1 == "*") && f.3 > 0)?;
        f.3 -= 1;
        Some(f.2)
    }

    /// The image, if it "exists" (can be pulled).
    pub(crate) fn image(&self, name: &str) -> Option<Image> {
        let last = name.rsplit('/').next().unwrap_or(name);
        if last.starts_with("hotsync-agent:") || last.starts_with("hotsync-agent@") {
            return Some(Image::Agent);
        }
        let images = self.images.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        images.get(name).map(|p| Image::Root(p.clone()))
    }
}

/// An image the kubelet can "pull".
pub(crate) enum Image {
    /// `hotsync-agent:*`: its entrypoint is the agent binary; it has no files of its own.
    Agent,
    /// An app image: this directory is its root filesystem.
    Root(PathBuf),
}

/// A running fake cluster. Dropping it stops the server and kills every process it started.
pub struct FakeCluster {
    shared: Arc<Shared>,
    kubeconfig: PathBuf,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl FakeCluster {
    /// Starts the server (on its own runtime thread, so it serves from plain `#[test]`s and
    /// `#[tokio::test]`s alike) and writes the kubeconfig.
    pub fn start(opts: FakeOptions) -> anyhow::Result<FakeCluster> {
        let dir = tempfile::Builder::new().prefix("fake-kube-").tempdir().context("temp dir")?;
        let token = format!("fake-token-{}", verbs::random_suffix(20));
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            denied: Mutex::default(),
            failures: Mutex::default(),
            requests: Mutex::default(),
            images: Mutex::new(opts.images),
            agent_binary: opts.agent_binary,
            token: token.clone(),
            dir: dir.path().to_owned(),
            kubelet: kubelet::Registry::new(),
            watch_epoch: tokio::sync::watch::Sender::new(0),
        });
        {
            let mut store = shared.store();
            let ns = resources::by_plural("", "namespaces");
            let mut names = vec!["default".to_owned(), "kube-system".to_owned()];
            names.extend(opts.namespaces);
            for name in names {
                if store.get(ns, "", &name).is_none() {
                    verbs::create(&mut store, ns, None, json!({"metadata": {"name": name}}))
                        .map_err(|e| anyhow::anyhow!("namespace {name}: {}", e.status))?;
                }
            }
        }
        let tls = hotsync_transport::credentials::ServerTls::generate(&["localhost".into(), "127.0.0.1".into()])?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the API server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(addr, &tls.ca_pem, &token))?;

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new().name("fake-kube".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let server = match server::Server::new(sh.clone(), listener, &tls.cert_pem, &tls.key_pem) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                tokio::spawn(server.run());
                tokio::spawn(controllers::run(sh.clone()));
                tokio::spawn(kubelet::run(sh.clone()));
                let _ = ready_tx.send(Ok(()));
                let _ = stopped.await;
                sh.kubelet.kill_all();
            });
            rt.shutdown_timeout(Duration::from_secs(2));
        })?;
        ready_rx.recv().context("the fake API server thread died")??;
        Ok(FakeCluster { shared, kubeconfig, addr, stop: Some(stop), thread: Some(thread), _dir: dir })
    }

    /// The kubeconfig: cluster `fake`, user `dev` (a bearer token), context `fake`
    /// (namespace `default`), current.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Seeds an object as a POST would (defaults, uid, resourceVersion, checks); returns it
    /// as stored. Panics when the server would refuse it.
    pub fn create(&self, obj: Value) -> Value {
        let res = resources::of_object(&obj)
            .unwrap_or_else(|| panic!("fake kube: no served resource for {} {}", obj["apiVersion"], obj["kind"]));
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
        let ns = if res.namespaced { Some(ns.unwrap_or_else(|| "default".into())) } else { None };
        verbs::create(&mut self.shared.store(), res, ns.as_deref(), obj)
            .unwrap_or_else(|e| panic!("fake kube: create refused: {}", e.status))
    }

    /// The stored object at an API path, e.g. `/apis/apps/v1/namespaces/default/deployments/web`.
    pub fn get(&self, path: &str) -> Option<Value> {
        let target = server::route(path)?;
        let name = target.name.as_deref()?;
        self.shared.store().get(target.res, target.namespace.as_deref().unwrap_or_default(), name).cloned()
    }

    /// Changes a stored object as a `PUT` by someone else would (`kubectl edit`): defaults,
    /// checks, a new resourceVersion, a MODIFIED event, a generation bump for spec changes.
    /// Returns it as stored; panics when the server would refuse the change.
    pub fn edit(&self, path: &str, change: impl FnOnce(&mut Value)) -> Value {
        let target = server::route(path).unwrap_or_else(|| panic!("fake kube: no resource at {path}"));
        let name = target.name.as_deref().unwrap_or_else(|| panic!("fake kube: {path} names no object"));
        let ns = target.namespace.as_deref().unwrap_or_default();
        let mut store = self.shared.store();
        let mut obj =
            store.get(target.res, ns, name).cloned().unwrap_or_else(|| panic!("fake kube: nothing at {path}"));
        change(&mut obj);
        verbs::update(&mut store, target.res, ns, name, obj, verbs::Part::Main)
            .unwrap_or_else(|e| panic!("fake kube: edit refused: {}", e.status))
    }

    /// Deletes an object as `DELETE` would (graceful for pods); false if there was none.
    pub fn delete(&self, path: &str) -> bool {
        let target = server::route(path).unwrap_or_else(|| panic!("fake kube: no resource at {path}"));
        let name = target.name.as_deref().unwrap_or_else(|| panic!("fake kube: {path} names no object"));
        let ns = target.namespace.as_deref().unwrap_or_default();
        verbs::delete(&mut self.shared.store(), target.res, ns, name, None, None).is_ok()
    }

    /// Pods of `namespace` whose labels match `label_selector` (`""`: all), by name.
    pub fn pods(&self, namespace: &str, label_selector: &str) -> Vec<Value> {
        let sel = LabelSelector::parse(label_selector).unwrap_or_else(|e| panic!("label selector: {e}"));
        let store = self.shared.store();
        store.list(pods(), Some(namespace)).into_iter().filter(|p| sel.matches_object(p)).cloned().collect()
    }

    /// Names of the pods `pods` returns.
    pub fn pod_names(&self, namespace: &str, label_selector: &str) -> Vec<String> {
        self.pods(namespace, label_selector)
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Host directory backing the pod's `hotsync-root` emptyDir (what the app sees at the
    /// synced path), once the kubelet made it.
    pub fn pod_root(&self, namespace: &str, pod: &str) -> Option<PathBuf> {
        self.pod_volume(namespace, pod, "hotsync-root")
    }

    /// Host directory backing any volume of a pod.
    pub fn pod_volume(&self, namespace: &str, pod: &str, volume: &str) -> Option<PathBuf> {
        self.shared.kubelet.volume(namespace, pod, volume)
    }

    /// The pod's IP (in 127.0.0.0/8), once the kubelet gave it one.
    pub fn pod_ip(&self, namespace: &str, pod: &str) -> Option<std::net::Ipv4Addr> {
        self.shared.kubelet.ip(namespace, pod)
    }

    /// What a container of a pod wrote to stdout and stderr so far (all its restarts).
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        self.shared.kubelet.log(namespace, pod, container)
    }

    /// Kills a container's processes with SIGKILL, as a crash or the OOM killer would; the
    /// kubelet restarts it after its back-off (restartCount + 1). Panics if it runs no process.
    pub fn kill_container(&self, namespace: &str, pod: &str, container: &str) {
        assert!(
            self.shared.kubelet.signal(namespace, pod, container, rustix::process::Signal::KILL),
            "fake kube: {namespace}/{pod} runs no process for container {container:?}"
        );
    }

    /// Ends every open watch now, as an API server restart (or a load balancer) does; clients
    /// watch again from their last resourceVersion (410 Expired after a `compact`).
    pub fn close_watches(&self) {
        self.shared.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Sets `spec.replicas` of a deployment, like `kubectl scale` (through the store: a new
    /// resourceVersion and a MODIFIED event; the controller reacts).
    pub fn scale(&self, namespace: &str, deployment: &str, replicas: i32) {
        let res = resources::by_plural("apps", "deployments");
        let body = json!({"spec": {"replicas": replicas}}).to_string();
        verbs::patch(
            &mut self.shared.store(),
            res,
            namespace,
            deployment,
            "application/merge-patch+json",
            body.as_bytes(),
            verbs::Part::Main,
        )
        .unwrap_or_else(|e| panic!("fake kube: scale refused: {}", e.status));
    }

    /// Deletes a pod like `kubectl delete pod`: graceful (deletionTimestamp, MODIFIED; the
    /// kubelet stops its processes, then DELETED). Its controller makes a replacement.
    pub fn delete_pod(&self, namespace: &str, pod: &str) {
        verbs::delete(&mut self.shared.store(), pods(), namespace, pod, None, None)
            .unwrap_or_else(|e| panic!("fake kube: delete refused: {}", e.status));
    }

    /// RBAC: from now on `verb` on `resource` is forbidden (403, the real message). Verbs are
    /// get, list, watch, create, update, patch, delete, deletecollection; resources are plurals
    /// or `plural/subresource` (`pods/portforward`, `deployments/scale`); `*` matches any.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.shared.denied.lock().unwrap().insert((verb.to_owned(), resource.to_owned()));
    }

    /// The next `times` requests for `verb` on `resource` (as for `deny`) fail with `code`
    /// (429 with a Retry-After of 1 s, 500, 503, 504) before anything else happens, as from an
    /// overloaded or restarting API server.
    pub fn fail(&self, verb: &str, resource: &str, code: u16, times: u32) {
        self.shared.failures.lock().unwrap().push((verb.to_owned(), resource.to_owned(), code, times));
    }

    /// Undoes a `deny`.
    pub fn allow(&self, verb: &str, resource: &str) {
        self.shared.denied.lock().unwrap().remove(&(verb.to_owned(), resource.to_owned()));
    }

    /// (method, path?query) of every API request so far, in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The requests that could have changed something (POST, PUT, PATCH, DELETE).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.requests().into_iter().filter(|(m, _)| m != "GET" && m != "HEAD").collect()
    }

    /// Makes an image pullable from now on (pods waiting in ImagePullBackOff then start).
    pub fn add_image(&self, name: &str, root: &Path) {
        self.shared.images.lock().unwrap().insert(name.to_owned(), root.to_owned());
    }

    /// Forgets the watch history, as an etcd compaction does: a watch from any earlier
    /// resourceVersion gets 410 Expired.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// The current resourceVersion of the store.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv()
    }

    /// Polls `check` until it holds; panics naming `what` after [`crate::PATIENCE`].
    pub fn wait_for(&self, what: &str, mut check: impl FnMut(&FakeCluster) -> bool) {
        let deadline = Instant::now() + crate::PATIENCE;
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("fake kube: timed out waiting until {what}\n{}", self.describe());
    }

    /// `wait_for` for async tests: sleeps without blocking the runtime.
    pub async fn wait_for_async(&self, what: &str, mut check: impl FnMut(&FakeCluster) -> bool) {
        let deadline = Instant::now() + crate::PATIENCE;
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fake kube: timed out waiting until {what}\n{}", self.describe());
    }

    /// Pods that are Running and Ready among `pods(namespace, selector)`.
    pub fn ready_pods(&self, namespace: &str, label_selector: &str) -> Vec<Value> {
        self.pods(namespace, label_selector).into_iter().filter(is_ready).collect()
    }

    /// A summary of workloads and pods, for failure messages.
    pub fn describe(&self) -> String {
        let store = self.shared.store();
        let mut out = String::new();
        for d in store.list(resources::by_plural("apps", "deployments"), None) {
            let _ = writeln!(
                out,
                "deployment {}/{}: spec.replicas={} status={}",
                d["metadata"]["namespace"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default(),
                d["spec"]["replicas"],
                d["status"]
            );
        }
        for p in store.list(pods(), None) {
            let _ = writeln!(
                out,
                "pod {}/{}: phase={} deleting={} ready={} statuses={}",
                p["metadata"]["namespace"].as_str().unwrap_or_default(),
                p["metadata"]["name"].as_str().unwrap_or_default(),
                p["status"]["phase"],
                !p["metadata"]["deletionTimestamp"].is_null(),
                is_ready(p),
                json!([p["status"]["initContainerStatuses"], p["status"]["containerStatuses"]])
            );
            let note = self.shared.kubelet.note(
                p["metadata"]["namespace"].as_str().unwrap_or_default(),
                p["metadata"]["name"].as_str().unwrap_or_default(),
            );
            if !note.is_empty() {
                let _ = writeln!(out, "  kubelet: {note}");
            }
        }
        out
    }
}

/// Whether a pod is Running with condition Ready True and not being deleted.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.shared.kubelet.kill_all();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.kubelet.kill_all();
    }
}

fn pods() -> &'static Resource {
    resources::by_plural("", "pods")
}

fn kubeconfig_yaml(addr: std::net::SocketAddr, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: https://{addr}
    certificate-authority-data: {ca}
users:
- name: {USER}
  user:
    token: {token}
contexts:
- name: fake
  context:
    cluster: fake
    user: {USER}
    namespace: default
current-context: fake
preferences: {{}}
"
    )
}
