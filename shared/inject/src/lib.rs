//! Sidecar injection: what hotsync adds to a pod, in one function that every path uses
//! (`hotsync attach` on a live workload, `hotsync inject` on manifests, and the admission
//! webhook on pods as they are created), so the three can never disagree.
//!
//! [`inject`] adds to a pod spec:
//! - an init container that copies the static agent binary into a shared volume, and one that
//!   runs that copy *in the app's image* to seed an emptyDir with the image's own files at the
//!   synced path (so files the image built survive, and the app image needs nothing of ours);
//! - that emptyDir, mounted at the synced path in the app container;
//! - the `hotsync-agent` sidecar, running as the app's user (so the files it writes are the
//!   app's to read and its signal reaches the app), with every capability dropped but the
//!   one a root app needs for signals;
//! - the Secret with the agent's mutual-TLS credentials, mounted read-only in the sidecar;
//! - `shareProcessNamespace: true`, so the sidecar can signal the app.
//!
//! It is idempotent: a pod that already has the sidecar is left as it is.

pub mod admission;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, PodSpec, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Name of the sidecar container.
pub const SIDECAR: &str = "hotsync-agent";
/// Init container that copies the agent binary into the shared volume.
pub const INIT_INSTALL: &str = "hotsync-install";
/// Init container that seeds the synced tree from the app image.
pub const INIT_SEED: &str = "hotsync-seed";
/// Volume holding the synced tree.
pub const VOLUME_ROOT: &str = "hotsync-root";
/// Volume holding the copied agent binary.
pub const VOLUME_BIN: &str = "hotsync-bin";
/// Volume with the agent's credentials.
pub const VOLUME_CREDENTIALS: &str = "hotsync-credentials";
/// UDP (QUIC) and TCP (QUIC framed over a port-forward) port of the agent.
pub const AGENT_PORT: i32 = 7470;

/// Pod annotation that asks the webhook for injection (`"true"`).
pub const ANNOTATION_INJECT: &str = "hotsync.dev/inject";
/// Pod annotation set on injected pods: the hotsync version that injected it.
pub const ANNOTATION_INJECTED: &str = "hotsync.dev/injected";
/// Annotations that carry options (webhook path).
pub const ANNOTATION_CONTAINER: &str = "hotsync.dev/container";
pub const ANNOTATION_PATH: &str = "hotsync.dev/path";
pub const ANNOTATION_SECRET: &str = "hotsync.dev/secret";
pub const ANNOTATION_RELOAD_SIGNAL: &str = "hotsync.dev/reload-signal";
pub const ANNOTATION_RELOAD_PROCESS: &str = "hotsync.dev/reload-process";
pub const ANNOTATION_RELOAD_EXEC: &str = "hotsync.dev/reload-exec";
pub const ANNOTATION_RUN_AS_USER: &str = "hotsync.dev/run-as-user";
pub const ANNOTATION_RUN_AS_GROUP: &str = "hotsync.dev/run-as-group";

/// Where the sidecar sees things.
const MOUNT_ROOT: &str = "/hotsync/root";
const MOUNT_BIN: &str = "/hotsync/bin";
const MOUNT_CREDENTIALS: &str = "/hotsync/credentials";

/// What the app does after a changeset lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    None,
    /// Send `signal` (e.g. `HUP`) to the processes named `process`.
    Signal {
        signal: String,
        process: String,
    },
    /// Run this command in the synced root (no shell in the sidecar: `sh -c` needs one).
    Exec {
        command: String,
    },
}

/// How to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The app container; `None` = the first container.
    pub container: Option<String>,
    /// Absolute path in the app container that hotsync keeps in sync.
    pub path: String,
    /// The `hotsync-agent` image.
    pub agent_image: String,
    /// Secret holding `ca.pem`, `agent.pem` and `agent.key`.
    pub secret: String,
    pub reload: Reload,
    /// Owner of synced files (and user of the sidecar); `None` = the app container's.
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
}

/// Why a pod cannot be injected as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("the pod has no containers")]
    NoContainers,
    #[error("no container named {wanted:?} in the pod; it has: {}", have.join(", "))]
    NoSuchContainer { wanted: String, have: Vec<String> },
    #[error("sync path {0:?} must be an absolute path such as /app")]
    RelativePath(String),
    #[error("container {container:?} already mounts volume {volume:?} at {path}; sync another path")]
    PathTaken { container: String, volume: String, path: String },
    #[error("annotation {key}={value:?}: {reason}")]
    BadAnnotation { key: &'static str, value: String, reason: String },
}

/// What [`inject`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// The sidecar was there already; nothing changed.
    AlreadyInjected,
}

/// True when the pod already carries the sidecar.
pub fn is_injected(spec: &PodSpec) -> bool {
    spec.containers.iter().any(|c| c.name == SIDECAR)
}

/// True when the pod's annotations ask for injection.
pub fn wants_injection(meta: &ObjectMeta) -> bool {
    meta.annotations.as_ref().and_then(|a| a.get(ANNOTATION_INJECT)).is_some_and(|v| v == "true")
}

/// Injects the sidecar into a pod (or a pod template's) `meta` and `spec`.
pub fn inject(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    opts: &Options,
    version: &str,
) -> Result<Outcome, InjectError> {
    if is_injected(spec) {
        return Ok(Outcome::AlreadyInjected);
    }
    if !opts.path.starts_with('/') {
        return Err(InjectError::RelativePath(opts.path.clone()));
    }
    let app_index = app_container(spec, opts.container.as_deref())?;
    let app = spec.containers[app_index].clone();
    let path = opts.path.trim_end_matches('/').to_owned();
    let path = if path.is_empty() { "/".to_owned() } else { path };
    if let Some(m) = app.volume_mounts.iter().flatten().find(|m| m.mount_path.trim_end_matches('/') == path) {
        return Err(InjectError::PathTaken { container: app.name.clone(), volume: m.name.clone(), path });
    }

    let taken: Vec<String> = spec.volumes.iter().flatten().map(|v| v.name.clone()).collect();
    let vol_root = free_name(VOLUME_ROOT, &taken);
    let vol_bin = free_name(VOLUME_BIN, &taken);
    let vol_creds = free_name(VOLUME_CREDENTIALS, &taken);

    let (uid, gid) = app_identity(spec, &app, opts);
    let sidecar_security = sidecar_security(uid, gid);

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: vol_root.clone(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: vol_bin.clone(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: vol_creds.clone(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(opts.secret.clone()),
            default_mode: Some(0o444),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });

    spec.containers[app_index].volume_mounts.get_or_insert_with(Vec::new).push(mount(&vol_root, &path, false));

    let install = Container {
        name: INIT_INSTALL.into(),
        image: Some(opts.agent_image.clone()),
        args: Some(vec!["install".into(), "--to".into(), MOUNT_BIN.into()]),
        volume_mounts: Some(vec![mount(&vol_bin, MOUNT_BIN, false)]),
        security_context: Some(sidecar_security.clone()),
        ..Container::default()
    };
    let seed = Container {
        name: INIT_SEED.into(),
        image: app.image.clone(),
        image_pull_policy: app.image_pull_policy.clone(),
        command: Some(vec![format!("{MOUNT_BIN}/hotsync-agent")]),
        args: Some(vec!["seed".into(), "--from".into(), path.clone(), "--to".into(), MOUNT_ROOT.into()]),
        volume_mounts: Some(vec![mount(&vol_bin, MOUNT_BIN, true), mount(&vol_root, MOUNT_ROOT, false)]),
        // The app's own identity: the seeded files belong to the app.
        security_context: app.security_context.clone(),
        ..Container::default()
    };
    let init = spec.init_containers.get_or_insert_with(Vec::new);
    init.insert(0, seed);
    init.insert(0, install);

    let args = agent_args(&opts.reload);
    spec.containers.push(Container {
        name: SIDECAR.into(),
        image: Some(opts.agent_image.clone()),
        args: Some(args),
        ports: Some(vec![
            ContainerPort {
                name: Some("hotsync-quic".into()),
                container_port: AGENT_PORT,
                protocol: Some("UDP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("hotsync-tcp".into()),
                container_port: AGENT_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        volume_mounts: Some(vec![mount(&vol_root, MOUNT_ROOT, false), mount(&vol_creds, MOUNT_CREDENTIALS, true)]),
        security_context: Some(sidecar_security),
        ..Container::default()
    });
    spec.share_process_namespace = Some(true);
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(ANNOTATION_INJECTED.into(), version.into());
    Ok(Outcome::Injected)
}

/// Takes out of a pod (template) everything [`inject`] put in: the sidecar, its init steps,
/// its volumes and the app's mount of the synced tree, `shareProcessNamespace` and the
/// annotation. What else the pod has, including changes made since the injection, stays.
/// Returns false when the pod had no sidecar (then nothing changes).
///
/// `shareProcessNamespace` goes back to unset, as most pods have it; a caller that knows the
/// original pod (`hotsync detach`) restores that instead when nothing else changed.
pub fn uninject(meta: &mut ObjectMeta, spec: &mut PodSpec) -> bool {
    let Some(at) = spec.containers.iter().position(|c| c.name == SIDECAR) else { return false };
    let sidecar = spec.containers.remove(at);
    let mut ours: Vec<String> = sidecar.volume_mounts.iter().flatten().map(|m| m.name.clone()).collect();
    if let Some(init) = spec.init_containers.as_mut() {
        for c in init.iter().filter(|c| c.name == INIT_INSTALL || c.name == INIT_SEED) {
            ours.extend(c.volume_mounts.iter().flatten().map(|m| m.name.clone()));
        }
        init.retain(|c| c.name != INIT_INSTALL && c.name != INIT_SEED);
    }
    let ours: Vec<String> = ours
        .into_iter()
        .filter(|n| [VOLUME_ROOT, VOLUME_BIN, VOLUME_CREDENTIALS].iter().any(|base| is_named(n, base)))
        .collect();
    for c in &mut spec.containers {
        if let Some(mounts) = c.volume_mounts.as_mut() {
            mounts.retain(|m| !ours.contains(&m.name));
        }
        none_if_empty(&mut c.volume_mounts);
    }
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| !ours.contains(&v.name));
    }
    none_if_empty(&mut spec.volumes);
    none_if_empty(&mut spec.init_containers);
    spec.share_process_namespace = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(ANNOTATION_INJECTED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
    true
}

/// `base` or one of the `base-N` names [`free_name`] gives.
fn is_named(name: &str, base: &str) -> bool {
    name == base || name.strip_prefix(base).and_then(|r| r.strip_prefix('-')).is_some_and(|n| n.parse::<u32>().is_ok())
}

/// The API server leaves an empty list out; so do we.
fn none_if_empty<T>(list: &mut Option<Vec<T>>) {
    if list.as_ref().is_some_and(Vec::is_empty) {
        *list = None;
    }
}

/// The sidecar's command line.
fn agent_args(reload: &Reload) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--root".into(),
        MOUNT_ROOT.into(),
        "--listen".into(),
        format!("0.0.0.0:{AGENT_PORT}"),
        // The same port on TCP: what a port-forward reaches when UDP to the pod cannot.
        "--listen-tcp".into(),
        format!("0.0.0.0:{AGENT_PORT}"),
        "--credentials".into(),
        MOUNT_CREDENTIALS.into(),
        "--log-format".into(),
        "json".into(),
    ];
    match reload {
        Reload::None => {}
        Reload::Signal { signal, process } => {
            args.extend(["--on-change-signal".into(), signal.clone(), "--signal-process".into(), process.clone()]);
        }
        Reload::Exec { command } => args.extend(["--on-change-exec".into(), command.clone()]),
    }
    args
}

fn app_container(spec: &PodSpec, wanted: Option<&str>) -> Result<usize, InjectError> {
    if spec.containers.is_empty() {
        return Err(InjectError::NoContainers);
    }
    match wanted {
        None => Ok(0),
        Some(name) => spec.containers.iter().position(|c| c.name == name).ok_or_else(|| InjectError::NoSuchContainer {
            wanted: name.into(),
            have: spec.containers.iter().map(|c| c.name.clone()).collect(),
        }),
    }
}

/// The app's user and group: the options, else the container's securityContext, else the pod's.
fn app_identity(spec: &PodSpec, app: &Container, opts: &Options) -> (Option<i64>, Option<i64>) {
    let container = app.security_context.as_ref();
    let pod = spec.security_context.as_ref();
    let uid = opts.run_as_user.or(container.and_then(|s| s.run_as_user)).or(pod.and_then(|s| s.run_as_user));
    let gid = opts.run_as_group.or(container.and_then(|s| s.run_as_group)).or(pod.and_then(|s| s.run_as_group));
    (uid, gid)
}

/// The sidecar runs as the app. When the app's user is root or unknown (the image decides),
/// the sidecar runs as root with every capability dropped but KILL, so it can signal the app
/// whatever user the image picks.
fn sidecar_security(uid: Option<i64>, gid: Option<i64>) -> SecurityContext {
    let (run_as_user, add) = match uid {
        Some(u) if u != 0 => (Some(u), None),
        _ => (Some(0), Some(vec!["KILL".to_owned()])),
    };
    SecurityContext {
        run_as_user,
        run_as_group: gid.or(run_as_user),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add }),
        ..SecurityContext::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// `base`, or `base-2`, `base-3`… whichever the pod does not use yet.
fn free_name(base: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_owned();
    }
    // At most `taken.len()` names can be in the way, so one of these is free.
    (2..=taken.len() + 2).map(|i| format!("{base}-{i}")).find(|n| !taken.contains(n)).unwrap_or_else(|| base.to_owned())
}

impl Options {
    /// Options from a pod's annotations (the webhook path), over `defaults`.
    pub fn from_annotations(annotations: &BTreeMap<String, String>, defaults: &Options) -> Result<Self, InjectError> {
        let get = |k: &str| annotations.get(k).map(String::as_str);
        let mut o = defaults.clone();
        if let Some(c) = get(ANNOTATION_CONTAINER) {
            o.container = Some(c.to_owned());
        }
        if let Some(p) = get(ANNOTATION_PATH) {
            if !p.starts_with('/') {
                return Err(bad(ANNOTATION_PATH, p, "must be an absolute path such as /app"));
            }
            p.clone_into(&mut o.path);
        }
        if let Some(s) = get(ANNOTATION_SECRET) {
            if !is_dns_label(s) {
                return Err(bad(ANNOTATION_SECRET, s, "must be a Secret name (lowercase letters, digits, '-')"));
            }
            s.clone_into(&mut o.secret);
        }
        match (get(ANNOTATION_RELOAD_SIGNAL), get(ANNOTATION_RELOAD_PROCESS), get(ANNOTATION_RELOAD_EXEC)) {
            (Some(_), _, Some(_)) => {
                return Err(bad(
                    ANNOTATION_RELOAD_EXEC,
                    "",
                    "give either a reload signal or a reload command, not both",
                ));
            }
            (Some(sig), Some(proc), None) => {
                if !is_signal_name(sig) {
                    return Err(bad(ANNOTATION_RELOAD_SIGNAL, sig, "use a signal name such as HUP, USR1, TERM"));
                }
                o.reload = Reload::Signal { signal: sig.to_owned(), process: proc.to_owned() };
            }
            (Some(sig), None, None) => {
                return Err(bad(
                    ANNOTATION_RELOAD_SIGNAL,
                    sig,
                    "also set hotsync.dev/reload-process to the app's process name",
                ));
            }
            (None, _, Some(cmd)) if cmd.trim().is_empty() => {
                return Err(bad(ANNOTATION_RELOAD_EXEC, cmd, "empty command"));
            }
            (None, _, Some(cmd)) => o.reload = Reload::Exec { command: cmd.to_owned() },
            (None, _, None) => {}
        }
        for (key, slot) in
            [(ANNOTATION_RUN_AS_USER, &mut o.run_as_user), (ANNOTATION_RUN_AS_GROUP, &mut o.run_as_group)]
        {
            if let Some(v) = get(key) {
                *slot = Some(
                    v.parse::<i64>()
                        .ok()
                        .filter(|n| (0..=i64::from(u32::MAX)).contains(n))
                        .ok_or_else(|| bad(key, v, "must be a numeric id"))?,
                );
            }
        }
        Ok(o)
    }
}

fn bad(key: &'static str, value: &str, reason: &str) -> InjectError {
    InjectError::BadAnnotation { key, value: value.to_owned(), reason: reason.to_owned() }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_signal_name(s: &str) -> bool {
    let name = s.trim_start_matches("SIG");
    ["HUP", "INT", "QUIT", "TERM", "USR1", "USR2", "WINCH"].contains(&name)
        || s.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
}

#[cfg(test)]
mod tests;
