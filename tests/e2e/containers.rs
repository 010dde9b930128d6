//! The sidecar as what it is: a container next to the app's container, sharing its network
//! and PID namespaces and a volume, reached over a Docker network (real UDP across network
//! namespaces). Needs the images from images/build.sh; skipped loudly without a Docker Engine.

use std::time::{Duration, Instant};

use hotsync_e2e::docker::{self, LinkCut, Pod};
use hotsync_e2e::relay::{Impairment, Relay};
use hotsync_e2e::{Env, noise, wait_same_tree, wait_same_tree_within, wait_until, write, write_atomic};

fn pod(test: &str) -> Option<(Env, Pod)> {
    if !docker::available() {
        return None;
    }
    docker::require_images();
    let env = Env::new();
    let name = format!("hotsync-{test}-{}", std::process::id());
    let pod = Pod::start(&name, &env.creds, env.dir.path());
    Some((env, pod))
}

#[test]
fn a_pod_gets_the_tree_and_the_app_its_signal() {
    let Some((env, pod)) = pod("signal") else { return };
    write(&env.src.join("message.txt"), "hello");
    write(&env.src.join("static/app.js"), "console.log(1)");
    let mut host = env.sync(pod.agent_addr(), &[]);
    host.wait_in_sync();
    wait_same_tree(&env.src, &pod.volume_dir);
    wait_until("the app was signalled after the first sync", || pod.app_reloads() >= 1);

    let before = pod.app_reloads();
    write_atomic(&env.src.join("message.txt"), "edited");
    wait_same_tree(&env.src, &pod.volume_dir);
    wait_until("the app was signalled again", || pod.app_reloads() > before);
    let state = std::fs::read_to_string(pod.state_dir.join("app.state")).unwrap();
    assert!(state.ends_with("edited"), "the app read the new content: {state:?}\n{}", pod.logs());
}

#[test]
fn a_restarted_sidecar_gets_only_the_difference() {
    let Some((env, pod)) = pod("restart") else { return };
    for i in 0..100 {
        write(&env.src.join(format!("src/f{i}.txt")), noise(4000, i));
    }
    let mut host = env.sync(pod.agent_addr(), &[]);
    host.wait_in_sync();
    let seen = host.drain().len();
    docker::docker(&["restart", "-t", "2", &format!("{}-agent", pod.name)]);
    write_atomic(&env.src.join("src/f7.txt"), "changed while the sidecar restarted");
    wait_same_tree(&env.src, &pod.volume_dir);
    host.wait_in_sync();
    let events = host.drain()[seen..].to_vec();
    let reconnected = events.iter().rfind(|e| e["event"] == "connected").expect("the host reconnected");
    assert_eq!(reconnected["same_tree"], true, "one hash told the host what the sidecar has: {events:?}");
    let written: u64 = events.iter().filter(|e| e["event"] == "synced").map(|e| e["written"].as_u64().unwrap()).sum();
    assert_eq!(written, 1, "only the edited file was sent: {events:?}");
}

#[test]
fn a_link_cut_for_20_seconds_loses_nothing() {
    let Some((env, pod)) = pod("linkcut") else { return };
    write(&env.src.join("a.txt"), "a");
    let mut host = env.sync(pod.agent_addr(), &[]);
    host.wait_in_sync();
    let cut = LinkCut::cut(&pod.app_pid());
    for i in 0..20 {
        write(&env.src.join(format!("during-cut/{i}.txt")), format!("{i}"));
    }
    std::fs::remove_file(env.src.join("a.txt")).unwrap();
    std::thread::sleep(Duration::from_secs(20));
    drop(cut);
    let t0 = Instant::now();
    wait_same_tree_within(&env.src, &pod.volume_dir, Duration::from_secs(60));
    eprintln!("converged {:.1} s after the link came back", t0.elapsed().as_secs_f64());
}

#[test]
fn a_slow_lossy_reordering_link_still_converges() {
    let Some((env, pod)) = pod("lossy") else { return };
    for i in 0..300 {
        write(&env.src.join(format!("d{}/f{i}.js", i % 12)), noise(3000 + (i as usize % 5) * 700, i));
    }
    write(&env.src.join("big.bin"), noise(4 << 20, 99));
    let imp = Impairment { delay: Duration::from_millis(25), loss: 0.02, reorder: 0.05 };
    let relay = Relay::start(pod.agent_addr(), imp, 7);
    let t0 = Instant::now();
    let out = env.sync_once(relay.addr, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("50 ms RTT, 2% loss, 5% reordering: 301 files (5.6 MiB) in {:.1} s", t0.elapsed().as_secs_f64());
    wait_same_tree(&env.src, &pod.volume_dir);
}
