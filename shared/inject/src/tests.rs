use serde_json::json;

use super::*;

fn opts() -> Options {
    Options {
        container: None,
        path: "/app".into(),
        agent_image: "hotsync-agent:0.1.0".into(),
        secret: "hotsync-web".into(),
        reload: Reload::Signal { signal: "HUP".into(), process: "gunicorn".into() },
        run_as_user: None,
        run_as_group: None,
    }
}

/// A pod template as `kubectl get deploy web -o json` shows it (trimmed).
fn web_template() -> (ObjectMeta, PodSpec) {
    let meta: ObjectMeta = serde_json::from_value(json!({"labels": {"app": "web"}})).unwrap();
    let spec: PodSpec = serde_json::from_value(json!({
        "containers": [{
            "name": "web",
            "image": "registry.example/web:1.4.2",
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 8000, "protocol": "TCP"}],
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}]
        }, {
            "name": "metrics",
            "image": "registry.example/exporter:2"
        }],
        "volumes": [{"name": "config", "configMap": {"name": "web-config"}}],
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst"
    }))
    .unwrap();
    (meta, spec)
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name).unwrap()
}

#[test]
fn adds_everything_the_sync_needs() {
    let (mut meta, mut spec) = web_template();
    assert_eq!(inject(&mut meta, &mut spec, &opts(), "0.1.0"), Ok(Outcome::Injected));

    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", "metrics", SIDECAR]);
    let init: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(init, [INIT_INSTALL, INIT_SEED], "the binary is installed before the seed runs it");
    assert_eq!(spec.share_process_namespace, Some(true));
    assert_eq!(meta.annotations.as_ref().unwrap()[ANNOTATION_INJECTED], "0.1.0");

    let web = container(&spec, "web");
    assert!(web.volume_mounts.iter().flatten().any(|m| m.name == VOLUME_ROOT && m.mount_path == "/app"));
    let seed = container(&spec, INIT_SEED);
    assert_eq!(seed.image.as_deref(), Some("registry.example/web:1.4.2"), "seeded from the app's own image");
    assert_eq!(seed.command.as_ref().unwrap()[0], "/hotsync/bin/hotsync-agent");
    let agent = container(&spec, SIDECAR);
    let args = agent.args.as_ref().unwrap().join(" ");
    assert!(args.contains("--on-change-signal HUP --signal-process gunicorn"), "{args}");
    let secret = spec.volumes.iter().flatten().find(|v| v.name == VOLUME_CREDENTIALS).unwrap();
    assert_eq!(secret.secret.as_ref().unwrap().secret_name.as_deref(), Some("hotsync-web"));
    let sc = agent.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1000), Some(1000)), "the sidecar runs as the app");
    assert_eq!(sc.capabilities.as_ref().unwrap().add, None, "same user: no capability needed");

    // The result is a valid pod spec in Kubernetes' JSON, and reads back the same.
    let text = serde_json::to_string(&spec).unwrap();
    let back: PodSpec = serde_json::from_str(&text).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn injecting_twice_changes_nothing() {
    let (mut meta, mut spec) = web_template();
    inject(&mut meta, &mut spec, &opts(), "0.1.0").unwrap();
    let (meta1, spec1) = (meta.clone(), spec.clone());
    assert_eq!(inject(&mut meta, &mut spec, &opts(), "0.1.0"), Ok(Outcome::AlreadyInjected));
    assert_eq!((meta, spec), (meta1, spec1));
}

#[test]
fn a_root_or_unknown_user_gets_root_with_only_kill() {
    let (mut meta, mut spec) = web_template();
    spec.containers[0].security_context = None;
    inject(&mut meta, &mut spec, &opts(), "v").unwrap();
    let sc = container(&spec, SIDECAR).security_context.clone().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(caps.add, Some(vec!["KILL".to_owned()]));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
}

#[test]
fn the_pod_level_user_and_explicit_mapping_are_honoured() {
    let (mut meta, mut spec) = web_template();
    spec.containers[0].security_context = None;
    spec.security_context = Some(serde_json::from_value(json!({"runAsUser": 2000, "runAsGroup": 3000})).unwrap());
    inject(&mut meta, &mut spec.clone(), &opts(), "v").unwrap();
    let mut pod_level = spec.clone();
    inject(&mut meta, &mut pod_level, &opts(), "v").unwrap();
    let sc = container(&pod_level, SIDECAR).security_context.clone().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(2000), Some(3000)));

    let mapped = Options { run_as_user: Some(33), run_as_group: Some(33), ..opts() };
    inject(&mut meta, &mut spec, &mapped, "v").unwrap();
    let sc = container(&spec, SIDECAR).security_context.clone().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(33), Some(33)));
}

#[test]
fn picks_the_named_container_and_names_the_choices_when_wrong() {
    let (mut meta, mut spec) = web_template();
    let o = Options { container: Some("metrics".into()), ..opts() };
    inject(&mut meta, &mut spec.clone(), &o, "v").unwrap();
    let o = Options { container: Some("nope".into()), ..opts() };
    let err = inject(&mut meta, &mut spec, &o, "v").unwrap_err();
    assert_eq!(err.to_string(), "no container named \"nope\" in the pod; it has: web, metrics");
}

#[test]
fn existing_volume_names_are_not_clobbered() {
    let (mut meta, mut spec) = web_template();
    spec.volumes.as_mut().unwrap().push(serde_json::from_value(json!({"name": VOLUME_ROOT, "emptyDir": {}})).unwrap());
    inject(&mut meta, &mut spec, &opts(), "v").unwrap();
    let web = container(&spec, "web");
    let m = web.volume_mounts.iter().flatten().find(|m| m.mount_path == "/app").unwrap();
    assert_eq!(m.name, "hotsync-root-2");
    let names: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(names.iter().filter(|n| n.starts_with(VOLUME_ROOT)).count(), 2);
}

#[test]
fn bad_requests_change_nothing() {
    let (mut meta, mut spec) = web_template();
    let before = spec.clone();
    let relative = Options { path: "app".into(), ..opts() };
    assert!(matches!(inject(&mut meta, &mut spec, &relative, "v"), Err(InjectError::RelativePath(_))));
    let taken = Options { path: "/etc/web/".into(), ..opts() };
    assert!(matches!(inject(&mut meta, &mut spec, &taken, "v"), Err(InjectError::PathTaken { .. })));
    assert_eq!(spec, before);
    let mut empty = PodSpec::default();
    assert_eq!(inject(&mut meta, &mut empty, &opts(), "v"), Err(InjectError::NoContainers));
}

#[test]
fn options_travel_as_validated_annotations() {
    let a = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>()
    };
    let o = Options::from_annotations(
        &a(&[
            (ANNOTATION_CONTAINER, "web"),
            (ANNOTATION_PATH, "/srv"),
            (ANNOTATION_RELOAD_SIGNAL, "USR1"),
            (ANNOTATION_RELOAD_PROCESS, "node"),
            (ANNOTATION_RUN_AS_USER, "1001"),
        ]),
        &opts(),
    )
    .unwrap();
    assert_eq!(o.container.as_deref(), Some("web"));
    assert_eq!(o.path, "/srv");
    assert_eq!(o.reload, Reload::Signal { signal: "USR1".into(), process: "node".into() });
    assert_eq!(o.run_as_user, Some(1001));

    for bad in [
        a(&[(ANNOTATION_PATH, "relative")]),
        a(&[(ANNOTATION_RELOAD_SIGNAL, "BOOM"), (ANNOTATION_RELOAD_PROCESS, "x")]),
        a(&[(ANNOTATION_RELOAD_SIGNAL, "HUP")]),
        a(&[(ANNOTATION_RELOAD_SIGNAL, "HUP"), (ANNOTATION_RELOAD_PROCESS, "x"), (ANNOTATION_RELOAD_EXEC, "make")]),
        a(&[(ANNOTATION_RUN_AS_USER, "root")]),
        a(&[(ANNOTATION_SECRET, "Not_A_Name")]),
    ] {
        let err = Options::from_annotations(&bad, &opts()).unwrap_err();
        assert!(matches!(err, InjectError::BadAnnotation { .. }), "{bad:?} → {err}");
    }
}

#[test]
fn only_pods_that_ask_are_injected_by_annotation() {
    let mut meta = ObjectMeta::default();
    assert!(!wants_injection(&meta));
    meta.annotations = Some([(ANNOTATION_INJECT.to_owned(), "true".to_owned())].into());
    assert!(wants_injection(&meta));
}

#[test]
fn uninject_takes_out_exactly_what_inject_put_in() {
    let (original_meta, original_spec) = web_template();
    let (mut meta, mut spec) = web_template();
    inject(&mut meta, &mut spec, &opts(), "0.1.0").unwrap();
    assert!(uninject(&mut meta, &mut spec));
    assert_eq!(serde_json::to_value(&spec).unwrap(), serde_json::to_value(&original_spec).unwrap());
    assert_eq!(serde_json::to_value(&meta).unwrap(), serde_json::to_value(&original_meta).unwrap());
    assert!(!uninject(&mut meta, &mut spec), "nothing left to take out");
}

#[test]
fn uninject_keeps_changes_made_since_and_volumes_named_like_ours() {
    let (mut meta, mut spec) = web_template();
    // The pod has a volume named like ours already: inject picks another name for its own.
    spec.volumes.as_mut().unwrap().push(Volume { name: VOLUME_ROOT.into(), ..Volume::default() });
    inject(&mut meta, &mut spec, &opts(), "0.1.0").unwrap();
    spec.containers[0].image = Some("registry.example/web:1.5.0".into());
    uninject(&mut meta, &mut spec);
    let names: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["config", VOLUME_ROOT], "the pod's own volume stays");
    assert_eq!(spec.containers[0].image.as_deref(), Some("registry.example/web:1.5.0"), "later edits stay");
    assert_eq!(spec.containers.len(), 2);
    assert!(spec.init_containers.is_none());
}
