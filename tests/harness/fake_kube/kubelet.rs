//! The "kubelet" of the one fake node: runs every pod as far as hotsync is concerned.
//!
//! Each pod gets an IP in 127.0.0.0/8 (second and third octets random per cluster, so parallel
//! test processes do not collide) and host directories for its volumes (emptyDir: a fresh
//! directory; secret and configMap: their data as files, the pod waiting in ContainerCreating
//! until the Secret exists). Init containers run in order, then containers. A container runs as
//! a real process when its image is the agent's (`hotsync-agent:*`, entrypoint the agent
//! binary) or when it has a `command` and its image is known; command and args are mapped:
//! a path under a volumeMount → that volume's host directory, another absolute path that exists
//! in the image's root → there, `0.0.0.0:PORT` → `POD_IP:PORT` (also inside an argument that
//! is a shell script, for mount paths); `$(VAR)` references expand first, `workingDir` maps the
//! same way (default: the image's root), and `env`/`envFrom` resolve fieldRefs, Secrets and
//! ConfigMaps (CreateContainerConfigError until they exist). App containers without a
//! command are not run: they are reported Running and Ready. Unknown images → ErrImagePull then
//! ImagePullBackOff; a process that exits → CrashLoopBackOff with a rising restartCount.
//!
//! A run container is Ready once its process is up and every TCP port it declares (and its
//! tcpSocket readiness probe) accepts a connection on the pod IP; it is not probed after.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::controllers::NODE;
use super::resources::by_plural;
use super::verbs;
use super::{Image, Shared};

/// What the kubelet exposes of its pods: IPs, volume directories, logs, processes.
pub(crate) struct Registry {
    pods: Mutex<BTreeMap<(String, String), PodEntry>>,
    prefix: (u8, u8),
    next: AtomicU32,
}

#[derive(Default)]
struct PodEntry {
    uid: String,
    ip: Option<Ipv4Addr>,
    volumes: BTreeMap<String, PathBuf>,
    logs: BTreeMap<String, PathBuf>,
    /// What the kubelet waits for (the event it would record), for failure messages.
    note: String,
    /// Process group id of each running container.
    groups: BTreeMap<String, i32>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        let r = verbs::random();
        Self { pods: Mutex::default(), prefix: (1 + (r % 254) as u8, ((r >> 8) % 256) as u8), next: AtomicU32::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), PodEntry>> {
        self.pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn new_ip(&self) -> Ipv4Addr {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let third = self.prefix.1.wrapping_add((n / 250) as u8);
        Ipv4Addr::new(127, self.prefix.0, third, (n % 250) as u8 + 2)
    }

    pub(crate) fn ip(&self, ns: &str, pod: &str) -> Option<Ipv4Addr> {
        self.lock().get(&(ns.to_owned(), pod.to_owned())).and_then(|e| e.ip)
    }

    pub(crate) fn note(&self, ns: &str, pod: &str) -> String {
        self.lock().get(&(ns.to_owned(), pod.to_owned())).map(|e| e.note.clone()).unwrap_or_default()
    }

    pub(crate) fn volume(&self, ns: &str, pod: &str, volume: &str) -> Option<PathBuf> {
        self.lock().get(&(ns.to_owned(), pod.to_owned())).and_then(|e| e.volumes.get(volume).cloned())
    }

    pub(crate) fn log(&self, ns: &str, pod: &str, container: &str) -> String {
        let path = self.lock().get(&(ns.to_owned(), pod.to_owned())).and_then(|e| {
            if container.is_empty() { e.logs.values().next().cloned() } else { e.logs.get(container).cloned() }
        });
        path.and_then(|p| std::fs::read(p).ok()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// SIGKILLs every process the kubelet started.
    pub(crate) fn kill_all(&self) {
        for e in self.lock().values_mut() {
            for g in std::mem::take(&mut e.groups).into_values() {
                signal_group(g, rustix::process::Signal::KILL);
            }
        }
    }

    /// Sends `signal` to a container's processes; false if it runs none now.
    pub(crate) fn signal(&self, ns: &str, pod: &str, container: &str, signal: rustix::process::Signal) -> bool {
        let pods = self.lock();
        let Some(&g) = pods.get(&(ns.to_owned(), pod.to_owned())).and_then(|e| e.groups.get(container)) else {
            return false;
        };
        signal_group(g, signal);
        true
    }

    fn with(&self, ns: &str, pod: &str, uid: &str, f: impl FnOnce(&mut PodEntry)) {
        let mut pods = self.lock();
        let e = pods.entry((ns.to_owned(), pod.to_owned())).or_default();
        if e.uid != uid {
            *e = PodEntry { uid: uid.to_owned(), ..PodEntry::default() };
        }
        f(e);
    }

    /// A pod is gone: no IP or volumes any more; its logs stay readable (until a pod of the
    /// same name replaces them), for the test's failure messages.
    fn forget(&self, ns: &str, pod: &str, uid: &str) {
        let mut pods = self.lock();
        if let Some(e) = pods.get_mut(&(ns.to_owned(), pod.to_owned()))
            && e.uid == uid
        {
            e.ip = None;
            e.volumes.clear();
        }
    }
}

fn signal_group(pgid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Starts a worker for every pod that has none.
pub(crate) async fn run(shared: Arc<Shared>) {
    let running: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut events = shared.store().subscribe();
    loop {
        let pods: Vec<Value> = shared.store().list(by_plural("", "pods"), None).into_iter().cloned().collect();
        for pod in pods {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
            if running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(uid.clone()) {
                let (shared, running) = (shared.clone(), running.clone());
                tokio::spawn(async move {
                    Worker::new(shared, &pod).run().await;
                    running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&uid);
                });
            }
        }
        match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
            _ => while events.try_recv().is_ok() {},
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Waiting { reason: String, message: String },
    Running { started: String },
    Terminated { code: i32, reason: String, started: String, finished: String },
}

impl State {
    fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } if message.is_empty() => json!({"waiting": {"reason": reason}}),
            State::Waiting { reason, message } => json!({"waiting": {"reason": reason, "message": message}}),
            State::Running { started } => json!({"running": {"startedAt": started}}),
            State::Terminated { code, reason, started, finished } => json!({"terminated": {
                "exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished,
            }}),
        }
    }
}

struct Container {
    spec: Value,
    name: String,
    image: String,
    state: State,
    last: Option<State>,
    restarts: u32,
    ready: bool,
    child: Option<tokio::process::Child>,
    pgid: Option<i32>,
    /// The pod's restartPolicy: Always, OnFailure or Never.
    restart_policy: String,
    /// A container that is "run" without a process (an app image's own entrypoint).
    virtual_run: bool,
    backoff: Duration,
    retry_at: Option<Instant>,
    pull_failures: u32,
    id: String,
}

impl Container {
    fn new(spec: &Value, waiting: &str) -> Self {
        Self {
            spec: spec.clone(),
            name: spec["name"].as_str().unwrap_or_default().to_owned(),
            image: spec["image"].as_str().unwrap_or_default().to_owned(),
            state: State::Waiting { reason: waiting.into(), message: String::new() },
            restart_policy: String::new(),
            last: None,
            restarts: 0,
            ready: false,
            child: None,
            pgid: None,
            virtual_run: false,
            backoff: Duration::from_secs(1),
            retry_at: None,
            pull_failures: 0,
            id: String::new(),
        }
    }

    /// Notices a process that ended: for an init container that succeeded returns Some(true);
    /// otherwise the container goes to CrashLoopBackOff (Some(false)). None: nothing ended.
    fn reap(&mut self, ctx: &PodCtx, init: bool) -> Option<bool> {
        let exit = self.child.as_mut()?.try_wait().ok()??;
        let signal = std::os::unix::process::ExitStatusExt::signal(&exit).unwrap_or(9);
        let code = exit.code().unwrap_or(128 + signal);
        let started = match &self.state {
            State::Running { started } => started.clone(),
            _ => verbs::now(),
        };
        if self.pgid.take().is_some() {
            ctx.shared.kubelet.with(&ctx.ns, &ctx.name, &ctx.uid, |e| {
                e.groups.remove(&self.name);
            });
        }
        self.child = None;
        self.ready = false;
        let reason = if code == 0 { "Completed" } else { "Error" };
        let done = State::Terminated { code, reason: reason.into(), started, finished: verbs::now() };
        if init && code == 0 {
            self.state = done;
            return Some(true);
        }
        let restart = match self.restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if !restart {
            self.state = done;
            return Some(false);
        }
        self.last = Some(done);
        self.crash_loop(ctx, String::new());
        Some(false)
    }

    /// Waits before the next start, as the kubelet's back-off does (shorter here).
    fn crash_loop(&mut self, ctx: &PodCtx, message: String) {
        self.restarts += 1;
        self.retry_at = Some(Instant::now() + self.backoff);
        let message = if message.is_empty() {
            format!(
                "back-off {}s restarting failed container={} pod={}_{}({})",
                self.backoff.as_secs(),
                self.name,
                ctx.name,
                ctx.ns,
                ctx.uid
            )
        } else {
            message
        };
        self.state = State::Waiting { reason: "CrashLoopBackOff".into(), message };
        self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
    }

    /// The image is not there: ErrImagePull, then ImagePullBackOff (the kubelet keeps trying).
    fn pull_failed(&mut self) {
        self.pull_failures += 1;
        let full = full_image_name(&self.image);
        self.state = if self.pull_failures < 10 {
            State::Waiting {
                reason: "ErrImagePull".into(),
                message: format!(
                    "rpc error: code = NotFound desc = failed to pull and unpack image {full:?}: failed to resolve reference {full:?}: {full}: not found"
                ),
            }
        } else {
            State::Waiting {
                reason: "ImagePullBackOff".into(),
                message: format!("Back-off pulling image {:?}", self.image),
            }
        };
    }

    /// Starts the container (a process, or nothing for an app image's own entrypoint); for an
    /// init container that has nothing to run returns true (completed).
    fn start(&mut self, ctx: &PodCtx, image: &Image, init: bool) -> bool {
        let root = match image {
            Image::Agent => None,
            Image::Root(root) => Some(root.as_path()),
        };
        let command: Vec<String> = strings(&self.spec["command"]);
        if root.is_some() && command.is_empty() {
            // The app image's own entrypoint: not run, reported as running.
            let now = verbs::now();
            if init {
                self.state =
                    State::Terminated { code: 0, reason: "Completed".into(), started: now.clone(), finished: now };
                return true;
            }
            self.virtual_run = true;
            self.ready = true;
            self.id = format!("{:016x}", verbs::random());
            self.state = State::Running { started: now };
            return false;
        }
        let mounts: Vec<(String, PathBuf)> = self.spec["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let host = ctx.volumes.get(m["name"].as_str()?)?;
                let host = match m["subPath"].as_str() {
                    Some(sub) if !sub.is_empty() => host.join(sub),
                    _ => host.clone(),
                };
                Some((m["mountPath"].as_str()?.to_owned(), host))
            })
            .collect();
        let env = match self.environment(ctx) {
            Ok(env) => env,
            Err(message) => {
                // The kubelet retries until the Secret or ConfigMap appears.
                self.state = State::Waiting { reason: "CreateContainerConfigError".into(), message };
                return false;
            }
        };
        let map = |a: &str| map_arg(&expand(a, &env), &mounts, root, ctx.ip);
        let (program, mut args) = if command.is_empty() {
            (ctx.shared.agent_binary.display().to_string(), Vec::new())
        } else {
            (map(&command[0]), command[1..].iter().map(|a| map(a)).collect())
        };
        args.extend(strings(&self.spec["args"]).iter().map(|a| map(a)));
        let workdir = self.spec["workingDir"].as_str().map(|w| PathBuf::from(map_arg(w, &mounts, root, ctx.ip)));
        match self.spawn(ctx, &program, &args, &env, workdir.as_deref().or(root)) {
            Ok(child) => {
                let pgid = child.id().and_then(|p| i32::try_from(p).ok());
                if let Some(g) = pgid {
                    ctx.shared.kubelet.with(&ctx.ns, &ctx.name, &ctx.uid, |e| {
                        e.groups.insert(self.name.clone(), g);
                    });
                }
                self.pgid = pgid;
                self.child = Some(child);
                self.id = format!("{:016x}", verbs::random());
                self.state = State::Running { started: verbs::now() };
                self.ready = false;
            }
            Err(e) => {
                let now = verbs::now();
                self.last = Some(State::Terminated {
                    code: 128,
                    reason: "StartError".into(),
                    started: now.clone(),
                    finished: now,
                });
                self.crash_loop(ctx, format!("failed to create containerd task: exec: {program:?}: {e}"));
            }
        }
        false
    }

    /// The process: in its own process group, output appended to the container's log file.
    fn spawn(
        &self,
        ctx: &PodCtx,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        workdir: Option<&Path>,
    ) -> std::io::Result<tokio::process::Child> {
        let logs = ctx.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("{}.log", self.name));
        ctx.shared.kubelet.with(&ctx.ns, &ctx.name, &ctx.uid, |e| {
            e.logs.insert(self.name.clone(), log_path.clone());
        });
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(workdir.filter(|r| r.is_dir()).unwrap_or(&ctx.dir))
            .env("HOSTNAME", &ctx.name)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(true);
        cmd.spawn()
    }

    /// The container's environment: `envFrom`, then `env` (values, `$(VAR)` references,
    /// fieldRefs, secretKeyRefs, configMapKeyRefs). Err: what is missing, as the kubelet says.
    fn environment(&self, ctx: &PodCtx) -> Result<Vec<(String, String)>, String> {
        let lookup = |kind: &str, name: &str| -> Option<BTreeMap<String, String>> {
            let (res, b64) =
                if kind == "secret" { (by_plural("", "secrets"), true) } else { (by_plural("", "configmaps"), false) };
            let obj = ctx.shared.store().get(res, &ctx.ns, name).cloned()?;
            let data = obj["data"].as_object().cloned().unwrap_or_default();
            Some(
                data.iter()
                    .map(|(k, v)| {
                        let s = v.as_str().unwrap_or_default();
                        let text = if b64 {
                            let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default();
                            String::from_utf8_lossy(&bytes).into_owned()
                        } else {
                            s.to_owned()
                        };
                        (k.clone(), text)
                    })
                    .collect(),
            )
        };
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(x, _)| *x != k);
            env.push((k, v));
        };
        for from in self.spec["envFrom"].as_array().into_iter().flatten() {
            let prefix = from["prefix"].as_str().unwrap_or_default();
            for (kind, key) in [("secret", "secretRef"), ("configmap", "configMapRef")] {
                let Some(name) = from[key]["name"].as_str() else { continue };
                match lookup(kind, name) {
                    Some(data) => data.into_iter().for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v)),
                    None if from[key]["optional"] == true => {}
                    None => return Err(format!("{kind} {name:?} not found")),
                }
            }
        }
        for e in self.spec["env"].as_array().into_iter().flatten() {
            let Some(k) = e["name"].as_str() else { continue };
            let from = &e["valueFrom"];
            let v = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => ctx.name.clone(),
                    "metadata.namespace" => ctx.ns.clone(),
                    "metadata.uid" => ctx.uid.clone(),
                    "status.podIP" => ctx.ip.to_string(),
                    "status.hostIP" => "127.0.0.1".to_owned(),
                    "spec.nodeName" => NODE.to_owned(),
                    _ => String::new(),
                }
            } else if let Some((kind, r)) = [("secret", &from["secretKeyRef"]), ("configmap", &from["configMapKeyRef"])]
                .into_iter()
                .find(|(_, r)| r.is_object())
            {
                let name = r["name"].as_str().unwrap_or_default();
                let key = r["key"].as_str().unwrap_or_default();
                match lookup(kind, name).map(|d| d.get(key).cloned()) {
                    Some(Some(v)) => v,
                    _ if r["optional"] == true => continue,
                    Some(None) => return Err(format!("couldn't find key {key} in {kind} {}/{name}", ctx.ns)),
                    None => return Err(format!("{kind} {name:?} not found")),
                }
            } else {
                String::new()
            };
            set(&mut env, k.to_owned(), v);
        }
        Ok(env)
    }

    fn status(&self, image_known: bool) -> Value {
        let mut s = json!({
            "name": self.name,
            "state": self.state.to_json(),
            "lastState": self.last.as_ref().map_or_else(|| json!({}), State::to_json),
            "ready": self.ready,
            "restartCount": self.restarts,
            "image": self.image,
            "imageID": if image_known { json!(format!("fake://{}", self.image)) } else { json!("") },
            "started": matches!(self.state, State::Running { .. }),
        });
        if !self.id.is_empty() {
            s["containerID"] = json!(format!("containerd://{}", self.id));
        }
        s
    }
}

/// What a container needs of its pod.
struct PodCtx {
    shared: Arc<Shared>,
    ns: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    volumes: BTreeMap<String, PathBuf>,
}

struct Worker {
    shared: Arc<Shared>,
    ns: String,
    name: String,
    uid: String,
    ip: Option<Ipv4Addr>,
    dir: PathBuf,
    volumes: BTreeMap<String, PathBuf>,
    volumes_ready: bool,
    /// resourceVersion of the Secret or ConfigMap each volume was written from.
    sources: BTreeMap<String, String>,
    last_refresh: Option<Instant>,
    volume_message: String,
    init: Vec<Container>,
    main: Vec<Container>,
    init_done: usize,
    start_time: String,
    times: BTreeMap<&'static str, (bool, String)>,
    last_status: Value,
    last_probe: Option<Instant>,
}

impl Worker {
    fn new(shared: Arc<Shared>, pod: &Value) -> Self {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let dir = shared.dir.join("pods").join(format!("{ns}_{name}_{uid}"));
        let spec = &pod["spec"];
        let list = |k: &str, waiting: &str| -> Vec<Container> {
            spec[k]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let mut c = Container::new(c, waiting);
                    c.restart_policy = spec["restartPolicy"].as_str().unwrap_or("Always").to_owned();
                    c
                })
                .collect()
        };
        let has_init = spec["initContainers"].as_array().is_some_and(|a| !a.is_empty());
        let main_waiting = if has_init { "PodInitializing" } else { "ContainerCreating" };
        Self {
            init: list("initContainers", "PodInitializing"),
            main: list("containers", main_waiting),
            shared,
            ns,
            name,
            uid,
            ip: None,
            dir,
            volumes: BTreeMap::new(),
            volumes_ready: false,
            sources: BTreeMap::new(),
            last_refresh: None,
            volume_message: String::new(),
            init_done: 0,
            start_time: verbs::now(),
            times: BTreeMap::new(),
            last_status: Value::Null,
            last_probe: None,
        }
    }

    /// The pod as stored now, if it is still this pod.
    fn current(&self) -> Option<Value> {
        self.shared
            .store()
            .get(pods_res(), &self.ns, &self.name)
            .filter(|p| p["metadata"]["uid"] == self.uid.as_str())
            .cloned()
    }

    async fn run(mut self) {
        loop {
            let Some(pod) = self.current() else {
                self.kill(rustix::process::Signal::KILL);
                self.shared.kubelet.forget(&self.ns, &self.name, &self.uid);
                return;
            };
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                self.terminate(&pod).await;
                return;
            }
            if pod["spec"]["nodeName"].as_str().unwrap_or_default().is_empty() {
                self.schedule(pod);
                continue;
            }
            self.step(&pod).await;
            self.publish(&pod);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Binds the pod to the node, as the scheduler does.
    fn schedule(&mut self, mut pod: Value) {
        pod["spec"]["nodeName"] = json!(NODE);
        let now = verbs::now();
        pod["status"]["conditions"] =
            json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}]);
        self.times.insert("PodScheduled", (true, now));
        let mut store = self.shared.store();
        if store.get(pods_res(), &self.ns, &self.name).is_some_and(|p| p["metadata"]["uid"] == self.uid.as_str()) {
            store.replace(pods_res(), &self.ns, pod);
        }
    }

    async fn step(&mut self, pod: &Value) {
        if !self.volumes_ready {
            match self.prepare_volumes(pod) {
                Ok(()) => {
                    self.volumes_ready = true;
                    self.shared.kubelet.with(&self.ns, &self.name, &self.uid, |e| e.note.clear());
                }
                Err(msg) => {
                    // The kubelet reports this as an event (which the fake does not serve);
                    // the container statuses say ContainerCreating meanwhile.
                    if msg != self.volume_message {
                        self.volume_message.clone_from(&msg);
                        self.shared.kubelet.with(&self.ns, &self.name, &self.uid, |e| e.note = msg);
                    }
                    return;
                }
            }
        }
        // The sandbox, and with it the pod's IP, comes once its volumes are mounted.
        if self.ip.is_none() {
            let ip = self.shared.kubelet.new_ip();
            self.ip = Some(ip);
            self.shared.kubelet.with(&self.ns, &self.name, &self.uid, |e| e.ip = Some(ip));
        }
        self.refresh_volumes(pod);
        if self.init_done < self.init.len() {
            let i = self.init_done;
            if self.drive(i, true) {
                self.init_done += 1;
                for c in &mut self.main {
                    if matches!(c.state, State::Waiting { .. }) && c.restarts == 0 && self.init_done == self.init.len()
                    {
                        c.state = State::Waiting { reason: "ContainerCreating".into(), message: String::new() };
                    }
                }
            }
            return;
        }
        for i in 0..self.main.len() {
            self.drive(i, false);
        }
        self.probe().await;
    }

    /// What a container needs to know of its pod.
    fn ctx(&self) -> PodCtx {
        PodCtx {
            shared: self.shared.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            ip: self.ip.unwrap_or(Ipv4Addr::LOCALHOST),
            dir: self.dir.clone(),
            volumes: self.volumes.clone(),
        }
    }

    /// Advances one container; for init containers returns true once it completed.
    fn drive(&mut self, i: usize, init: bool) -> bool {
        let ctx = self.ctx();
        let c = if init { &mut self.init[i] } else { &mut self.main[i] };
        if let Some(completed) = c.reap(&ctx, init) {
            return completed;
        }
        if c.child.is_some() || c.virtual_run {
            return false;
        }
        if let State::Terminated { code, .. } = c.state {
            return init && code == 0;
        }
        if c.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match ctx.shared.image(&c.image) {
            None => {
                c.pull_failed();
                false
            }
            Some(image) => c.start(&ctx, &image, init),
        }
    }

    /// Readiness of run containers: their declared TCP ports accept a connection.
    async fn probe(&mut self) {
        if self.last_probe.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.last_probe = Some(Instant::now());
        let ip = self.ip.unwrap_or(Ipv4Addr::LOCALHOST);
        for c in &mut self.main {
            if c.ready || c.child.is_none() {
                continue;
            }
            let mut ports: Vec<u16> = c.spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP")
                .filter_map(|p| p["containerPort"].as_u64().and_then(|p| u16::try_from(p).ok()))
                .collect();
            if let Some(p) = c.spec["readinessProbe"]["tcpSocket"]["port"].as_u64().and_then(|p| u16::try_from(p).ok())
            {
                ports.push(p);
            }
            let mut ok = true;
            for port in ports {
                let connect = tokio::net::TcpStream::connect((ip, port));
                if !matches!(tokio::time::timeout(Duration::from_millis(200), connect).await, Ok(Ok(_))) {
                    ok = false;
                    break;
                }
            }
            c.ready = ok;
        }
    }

    fn prepare_volumes(&mut self, pod: &Value) -> Result<(), String> {
        let mut made = BTreeMap::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let Some(vname) = v["name"].as_str() else { continue };
            let dir = self.dir.join("volumes").join(vname);
            let _ = std::fs::create_dir_all(&dir);
            if let Some(host) = v["hostPath"]["path"].as_str() {
                made.insert(vname.to_owned(), PathBuf::from(host));
                continue;
            }
            self.fill(v, &dir)?;
            made.insert(vname.to_owned(), dir);
        }
        self.volumes = made.clone();
        self.shared.kubelet.with(&self.ns, &self.name, &self.uid, |e| e.volumes = made);
        Ok(())
    }

    /// Writes a secret or configMap volume's files when its source changed (the kubelet
    /// refreshes them too, atomically, within its sync period).
    fn fill(&mut self, v: &Value, dir: &Path) -> Result<(), String> {
        let vname = v["name"].as_str().unwrap_or_default();
        let (source, res, name, base64) = if v["secret"].is_object() {
            (&v["secret"], by_plural("", "secrets"), v["secret"]["secretName"].as_str().unwrap_or_default(), true)
        } else if v["configMap"].is_object() {
            (&v["configMap"], by_plural("", "configmaps"), v["configMap"]["name"].as_str().unwrap_or_default(), false)
        } else {
            return Ok(());
        };
        let obj = self.shared.store().get(res, &self.ns, name).cloned();
        let Some(obj) = obj else {
            if source["optional"] == true {
                return Ok(());
            }
            let what = if base64 { "secret" } else { "configmap" };
            return Err(format!("MountVolume.SetUp failed for volume {vname:?} : {what} {name:?} not found"));
        };
        let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
        if self.sources.get(vname) == Some(&rv) {
            return Ok(());
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path()).or_else(|_| std::fs::remove_dir_all(e.path()));
            }
        }
        let mode = source["defaultMode"].as_u64().map_or(0o644, |m| m as u32);
        write_files(dir, &obj, &source["items"], mode, base64);
        self.sources.insert(vname.to_owned(), rv);
        Ok(())
    }

    /// Refreshes secret and configMap volumes of a running pod, about once a second.
    fn refresh_volumes(&mut self, pod: &Value) {
        if self.last_refresh.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.last_refresh = Some(Instant::now());
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            if let Some(dir) = v["name"].as_str().and_then(|n| self.volumes.get(n)).cloned() {
                let _ = self.fill(v, &dir);
            }
        }
    }

    fn kill(&mut self, sig: rustix::process::Signal) {
        for c in self.init.iter_mut().chain(self.main.iter_mut()) {
            if let Some(g) = c.pgid {
                signal_group(g, sig);
            }
        }
    }

    /// Graceful deletion: SIGTERM, wait for the processes up to the grace period, SIGKILL,
    /// report the containers terminated, then remove the pod (DELETED).
    async fn terminate(&mut self, pod: &Value) {
        self.kill(rustix::process::Signal::TERM);
        let deadline = pod["metadata"]["deletionTimestamp"]
            .as_str()
            .and_then(verbs::parse_time)
            .map_or(30, |t| (t - k8s_openapi::jiff::Timestamp::now().as_second()).max(0));
        let until = Instant::now() + Duration::from_secs(u64::try_from(deadline).unwrap_or(0));
        loop {
            let mut alive = false;
            for c in self.init.iter_mut().chain(self.main.iter_mut()) {
                if let Some(child) = c.child.as_mut() {
                    if matches!(child.try_wait(), Ok(None)) {
                        alive = true;
                    } else {
                        c.child = None;
                    }
                }
            }
            if !alive || self.current().is_none() {
                break;
            }
            if Instant::now() >= until {
                self.kill(rustix::process::Signal::KILL);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let now = verbs::now();
        for c in &mut self.main {
            if let State::Running { started } = &c.state {
                c.state = State::Terminated {
                    code: 0,
                    reason: "Completed".into(),
                    started: started.clone(),
                    finished: now.clone(),
                };
            }
            c.ready = false;
            c.child = None;
            c.virtual_run = false;
        }
        if let Some(p) = self.current() {
            self.publish(&p);
            let mut store = self.shared.store();
            if store.get(pods_res(), &self.ns, &self.name).is_some_and(|p| p["metadata"]["uid"] == self.uid.as_str()) {
                store.remove(pods_res(), &self.ns, &self.name);
            }
        }
        self.shared.kubelet.forget(&self.ns, &self.name, &self.uid);
    }

    fn condition(&mut self, kind: &'static str, ok: bool, reason: &str, message: &str) -> Value {
        let entry = self.times.entry(kind).or_insert_with(|| (ok, verbs::now()));
        if entry.0 != ok {
            *entry = (ok, verbs::now());
        }
        let mut c = json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": entry.1});
        if !ok && !reason.is_empty() {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        c
    }

    /// Writes the pod's status when it changed.
    fn publish(&mut self, pod: &Value) {
        let initialized = self.init_done == self.init.len();
        let running = initialized && self.main.iter().all(|c| matches!(c.state, State::Running { .. }));
        let any_running = initialized && self.main.iter().any(|c| matches!(c.state, State::Running { .. }));
        let exit_code = |c: &Container| match c.state {
            State::Terminated { code, .. } => Some(code),
            _ => None,
        };
        let init_failed = self.init.iter().any(|c| exit_code(c).is_some_and(|code| code != 0));
        let all_exited = initialized && !self.main.is_empty() && self.main.iter().all(|c| exit_code(c).is_some());
        let phase = if init_failed || (all_exited && self.main.iter().any(|c| exit_code(c) != Some(0))) {
            "Failed"
        } else if all_exited {
            "Succeeded"
        } else if any_running {
            "Running"
        } else {
            "Pending"
        };
        let unready: Vec<String> = self.main.iter().filter(|c| !c.ready).map(|c| c.name.clone()).collect();
        let incomplete: Vec<String> =
            self.init[self.init_done.min(self.init.len())..].iter().map(|c| c.name.clone()).collect();
        let ready = running && unready.is_empty();
        let not_ready = if matches!(phase, "Succeeded" | "Failed") { "PodCompleted" } else { "ContainersNotReady" };
        let unready_msg = format!("containers with unready status: [{}]", unready.join(" "));
        let sandbox = self.volumes_ready;
        let conditions = vec![
            self.condition("PodReadyToStartContainers", sandbox, "", ""),
            self.condition(
                "Initialized",
                initialized,
                "ContainersNotInitialized",
                &format!("containers with incomplete status: [{}]", incomplete.join(" ")),
            ),
            self.condition("Ready", ready, not_ready, &unready_msg),
            self.condition("ContainersReady", ready, not_ready, &unready_msg),
            self.condition("PodScheduled", true, "", ""),
        ];
        let ip = self.ip.map(|i| i.to_string());
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "qosClass": pod["status"]["qosClass"],
            "containerStatuses": self.main.iter().map(|c| c.status(self.shared.image(&c.image).is_some())).collect::<Vec<_>>(),
        });
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if !self.init.is_empty() {
            status["initContainerStatuses"] =
                json!(self.init.iter().map(|c| c.status(self.shared.image(&c.image).is_some())).collect::<Vec<_>>());
        }
        if status == self.last_status {
            return;
        }
        let mut store = self.shared.store();
        let Some(mut current) =
            store.get(pods_res(), &self.ns, &self.name).filter(|p| p["metadata"]["uid"] == self.uid.as_str()).cloned()
        else {
            return;
        };
        if current["status"] != status {
            current["status"] = status.clone();
            store.replace(pods_res(), &self.ns, current);
        }
        self.last_status = status;
    }
}

fn pods_res() -> &'static super::resources::Resource {
    by_plural("", "pods")
}

/// `nginx:1` → `docker.io/library/nginx:1`, as containerd names what it pulls.
fn full_image_name(image: &str) -> String {
    let first = image.split('/').next().unwrap_or_default();
    if image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
        image.to_owned()
    } else if image.contains('/') {
        format!("docker.io/{image}")
    } else {
        format!("docker.io/library/{image}")
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
}

/// Expands `$(VAR)` references to the container's environment, as the kubelet does in
/// command, args and env values; `$$(` escapes; unknown references stay as written.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Maps one argument of a container's command line from the pod's view to the host's.
pub(crate) fn map_arg(arg: &str, mounts: &[(String, PathBuf)], image_root: Option<&Path>, ip: Ipv4Addr) -> String {
    if let Some((flag, value)) = arg.split_once('=')
        && flag.starts_with('-')
    {
        return format!("{flag}={}", map_arg(value, mounts, image_root, ip));
    }
    if let Some(port) = arg.strip_prefix("0.0.0.0:") {
        return format!("{ip}:{port}");
    }
    if arg == "0.0.0.0" {
        return ip.to_string();
    }
    if arg.contains(char::is_whitespace) {
        return map_script(arg, mounts, ip);
    }
    if !arg.starts_with('/') {
        return arg.to_owned();
    }
    let best = mounts
        .iter()
        .filter(|(m, _)| {
            let m = m.trim_end_matches('/');
            arg == m || arg.starts_with(&format!("{m}/")) || m.is_empty()
        })
        .max_by_key(|(m, _)| m.len());
    if let Some((m, host)) = best {
        let rest = arg[m.trim_end_matches('/').len()..].trim_start_matches('/');
        return if rest.is_empty() { host.display().to_string() } else { host.join(rest).display().to_string() };
    }
    if let Some(root) = image_root {
        let candidate = root.join(arg.trim_start_matches('/'));
        if candidate.exists() {
            return candidate.display().to_string();
        }
    }
    arg.to_owned()
}

/// Maps a shell script given as one argument (`sh -c '…'`): mount paths and `0.0.0.0:` where
/// they stand as words.
fn map_script(script: &str, mounts: &[(String, PathBuf)], ip: Ipv4Addr) -> String {
    let mut sorted: Vec<&(String, PathBuf)> = mounts.iter().filter(|(m, _)| m.len() > 1).collect();
    sorted.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    let starts = |c: Option<char>| c.is_none_or(|c| c.is_whitespace() || "'\"=:;(`".contains(c));
    let ends = |c: Option<char>| c.is_none_or(|c| c.is_whitespace() || "/'\";)`".contains(c));
    let mut out = String::new();
    let mut i = 0;
    'scan: while i < script.len() {
        let before = script[..i].chars().next_back();
        if starts(before) {
            let rest = &script[i..];
            for (m, host) in &sorted {
                let m = m.trim_end_matches('/');
                if let Some(after) = rest.strip_prefix(m)
                    && ends(after.chars().next())
                {
                    out.push_str(&host.display().to_string());
                    i += m.len();
                    continue 'scan;
                }
            }
            if let Some(after) = rest.strip_prefix("0.0.0.0")
                && (after.starts_with(':') || ends(after.chars().next()))
            {
                out.push_str(&ip.to_string());
                i += "0.0.0.0".len();
                continue 'scan;
            }
        }
        let c = script[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Writes a Secret's (base64 `data`) or ConfigMap's (`data`) entries as files.
fn write_files(dir: &Path, obj: &Value, items: &Value, mode: u32, base64: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let s = v.as_str().unwrap_or_default();
        let bytes = if base64 {
            base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
        } else {
            s.as_bytes().to_vec()
        };
        entries.push((k.clone(), bytes));
    }
    if !base64 {
        for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
            entries.push((
                k.clone(),
                base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap_or_default(),
            ));
        }
    }
    for (k, v) in obj["stringData"].as_object().into_iter().flatten() {
        entries.push((k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec()));
    }
    let wanted: Option<Vec<(String, String)>> = items.as_array().map(|a| {
        a.iter().filter_map(|i| Some((i["key"].as_str()?.to_owned(), i["path"].as_str()?.to_owned()))).collect()
    });
    for (k, bytes) in entries {
        let path = match &wanted {
            Some(w) => match w.iter().find(|(key, _)| *key == k) {
                Some((_, p)) => dir.join(p),
                None => continue,
            },
            None => dir.join(&k),
        };
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if std::fs::write(&path, bytes).is_ok() {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_map_to_volumes_images_and_the_pod_ip() {
        let image = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(image.path().join("app")).unwrap();
        let mounts = vec![
            ("/hotsync/root".to_owned(), PathBuf::from("/h/root")),
            ("/hotsync/bin".to_owned(), PathBuf::from("/h/bin")),
        ];
        let ip = Ipv4Addr::new(127, 9, 8, 7);
        let m = |a| map_arg(a, &mounts, Some(image.path()), ip);
        assert_eq!(m("/hotsync/root"), "/h/root");
        assert_eq!(m("/hotsync/bin/hotsync-agent"), "/h/bin/hotsync-agent");
        assert_eq!(m("/hotsync/rootless"), "/hotsync/rootless", "a prefix of a name is not a mount");
        assert_eq!(m("/app"), image.path().join("app").display().to_string());
        assert_eq!(m("/nowhere"), "/nowhere");
        assert_eq!(m("0.0.0.0:7470"), "127.9.8.7:7470");
        assert_eq!(m("0.0.0.0"), "127.9.8.7");
        assert_eq!(m("--listen=0.0.0.0:80"), "--listen=127.9.8.7:80");
        assert_eq!(m("serve"), "serve");
    }

    #[test]
    fn scripts_map_their_mount_paths_and_listen_addresses() {
        let mounts = vec![("/data".to_owned(), PathBuf::from("/h/data"))];
        let ip = Ipv4Addr::new(127, 1, 2, 3);
        assert_eq!(
            map_script("echo hi > /data/out; cat '/data' /database; serve 0.0.0.0:80", &mounts, ip),
            "echo hi > /h/data/out; cat '/h/data' /database; serve 127.1.2.3:80"
        );
    }

    #[test]
    fn references_expand_like_the_kubelet() {
        let env = vec![("PORT".to_owned(), "8000".to_owned())];
        assert_eq!(expand("0.0.0.0:$(PORT)", &env), "0.0.0.0:8000");
        assert_eq!(expand("$(MISSING) $$(PORT) $5", &env), "$(MISSING) $(PORT) $5");
    }
}
