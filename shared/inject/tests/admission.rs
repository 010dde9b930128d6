//! The webhook's answers to AdmissionReviews in the real v1 format.

use base64::Engine;
use hotsync_inject::admission::{Scope, review};
use hotsync_inject::{Options, Reload, SIDECAR, inject};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

fn defaults() -> Options {
    Options {
        container: None,
        path: "/app".into(),
        agent_image: "hotsync-agent:0.1.0".into(),
        secret: String::new(),
        reload: Reload::None,
        run_as_user: None,
        run_as_group: None,
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn answer(review_json: &Value, scope: Scope) -> Value {
    review(&serde_json::to_vec(review_json).unwrap(), &defaults(), scope, "0.1.0").unwrap()
}

/// The request's pod with the response's JSONPatch applied, as a typed Pod.
fn patched_pod(request: &Value, response: &Value) -> Pod {
    let mut object = request["request"]["object"].clone();
    let patch =
        base64::engine::general_purpose::STANDARD.decode(response["response"]["patch"].as_str().unwrap()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    json_patch::patch(&mut object, &patch).unwrap();
    serde_json::from_value(object).expect("the patched object is a valid Pod")
}

#[test]
fn an_annotated_deployment_pod_becomes_what_inject_makes_of_it() {
    let req = fixture("deployment-pod.json");
    let resp = answer(&req, Scope::AnnotatedPods);
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(resp["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(resp["response"]["allowed"], true);
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
    let pod = patched_pod(&req, &resp);

    // The same pod through the one injection function, with the same options.
    let mut expected: Pod = serde_json::from_value(req["request"]["object"].clone()).unwrap();
    let options = Options {
        container: Some("web".into()),
        path: "/srv/app".into(),
        secret: "hotsync-web".into(),
        reload: Reload::Signal { signal: "HUP".into(), process: "gunicorn".into() },
        ..defaults()
    };
    inject(&mut expected.metadata, expected.spec.as_mut().unwrap(), &options, "0.1.0").unwrap();
    assert_eq!(pod, expected);
    let spec = pod.spec.unwrap();
    assert!(spec.containers.iter().any(|c| c.name == SIDECAR));
    let web = spec.containers.iter().find(|c| c.name == "web").unwrap();
    assert!(web.volume_mounts.iter().flatten().any(|m| m.mount_path == "/srv/app"));
}

#[test]
fn pods_that_do_not_ask_are_allowed_untouched() {
    let resp = answer(&fixture("bare-pod-not-annotated.json"), Scope::AnnotatedPods);
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"].get("patch").is_none());
}

#[test]
fn a_namespace_that_opted_in_gets_every_pod_injected() {
    let req = fixture("bare-pod-not-annotated.json");
    let resp = answer(&req, Scope::AllPods);
    let pod = patched_pod(&req, &resp);
    let creds = pod.spec.unwrap().volumes.unwrap().into_iter().find_map(|v| v.secret).unwrap();
    assert_eq!(creds.secret_name.as_deref(), Some("hotsync-debug-shell"));
}

#[test]
fn an_existing_volume_of_the_same_name_is_kept() {
    let req = fixture("pod-with-same-volume-name.json");
    let pod = patched_pod(&req, &answer(&req, Scope::AnnotatedPods));
    let spec = pod.spec.unwrap();
    let names: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert!(names.contains(&"hotsync-root") && names.contains(&"hotsync-root-2"), "{names:?}");
}

#[test]
fn reinvocation_on_an_injected_pod_changes_nothing() {
    let req = fixture("deployment-pod.json");
    let pod = patched_pod(&req, &answer(&req, Scope::AnnotatedPods));
    let mut again = req.clone();
    again["request"]["object"] = serde_json::to_value(&pod).unwrap();
    let resp = answer(&again, Scope::AnnotatedPods);
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"].get("patch").is_none(), "already injected: no second sidecar");
}

#[test]
fn a_bad_option_is_denied_with_its_name() {
    let resp = answer(&fixture("pod-bad-annotation.json"), Scope::AnnotatedPods);
    assert_eq!(resp["response"]["allowed"], false);
    assert_eq!(resp["response"]["status"]["code"], 400);
    let message = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("hotsync.dev/reload-signal") && message.contains("BOOM"), "{message}");
}

#[test]
fn malformed_reviews_are_errors_not_crashes() {
    for body in [&b"not json"[..], br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#, br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"object":{"spec":{"containers":"nope"},"metadata":{"annotations":{"hotsync.dev/inject":"true"}}}}}"#] {
        match review(body, &defaults(), Scope::AnnotatedPods, "v") {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(resp) => assert_eq!(resp["response"]["allowed"], false, "an unreadable pod is denied: {resp}"),
        }
    }
}
