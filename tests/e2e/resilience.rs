//! Readers never see partial files; a killed agent and edits made while it was down.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hotsync_e2e::{Agent, Env, noise, wait_same_tree, write, write_atomic};

#[test]
fn a_reader_in_the_agent_root_never_sees_a_partial_file() {
    const SIZE: usize = 4 << 20;
    let env = Env::new();
    write(&env.src.join("data.bin"), vec![0u8; SIZE]);
    let agent = env.agent(&[]);
    let mut host = env.sync(agent.addr, &[]);
    host.wait_in_sync();

    let stop = Arc::new(AtomicBool::new(false));
    let versions_seen = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (path, stop, seen) = (env.dst.join("data.bin"), stop.clone(), versions_seen.clone());
        std::thread::spawn(move || {
            let mut last = None;
            while !stop.load(Ordering::Relaxed) {
                let bytes = fs::read(&path).expect("the file is always there");
                assert_eq!(bytes.len(), SIZE, "a reader saw a file of the wrong size");
                let first = bytes[0];
                assert!(bytes.iter().all(|b| *b == first), "a reader saw a mix of two versions");
                if last != Some(first) {
                    seen.fetch_add(1, Ordering::Relaxed);
                    last = Some(first);
                }
            }
        })
    };
    for v in 1..=15u8 {
        write_atomic(&env.src.join("data.bin"), vec![v; SIZE]);
        wait_same_tree(&env.src, &env.dst);
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("the reader found a partial file");
    assert!(versions_seen.load(Ordering::Relaxed) > 1, "the reader really watched the versions change");
}

#[test]
fn an_agent_killed_mid_stream_and_restarted_converges_with_nothing_lost() {
    let env = Env::new();
    for i in 0..200 {
        write(&env.src.join(format!("blobs/{}/b{i}.bin", i % 8)), noise(256 << 10, i));
    }
    let mut agent = env.agent(&[]);
    let addr = agent.addr;
    let mut host = env.sync(addr, &[]);
    host.wait_event("connected", |_| true);
    std::thread::sleep(std::time::Duration::from_millis(150));
    agent.kill();

    // Edits made while the agent is down.
    write(&env.src.join("made-while-down.txt"), "not lost");
    fs::remove_file(env.src.join("blobs/0/b0.bin")).unwrap();
    write(&env.src.join("blobs/1/b1.bin"), "rewritten while down");

    let agent = Agent::start(&env.dst, &env.creds, &addr.to_string(), &[]);
    wait_same_tree(&env.src, &env.dst);
    host.wait_in_sync();
    let left = hotsync_e2e::staging_files(&env.dst);
    assert!(left.is_empty(), "no staging file left behind: {left:?}");
    drop(agent);
}

#[test]
fn a_new_agent_process_sends_only_the_difference() {
    let env = Env::new();
    for i in 0..300 {
        write(&env.src.join(format!("f{i}.txt")), noise(4000, i));
    }
    let mut agent = env.agent(&[]);
    let addr = agent.addr;
    assert!(env.sync_once(addr, &[]).status.success());
    agent.kill();
    write(&env.src.join("f7.txt"), "changed");
    let _agent = Agent::start(&env.dst, &env.creds, &addr.to_string(), &[]);
    let out = env.sync_once(addr, &[]);
    assert!(out.status.success());
    let synced: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "synced")
        .collect();
    assert_eq!(synced.len(), 1);
    assert_eq!(synced[0]["written"], 1, "only the edited file travels: {synced:?}");
    wait_same_tree(&env.src, &env.dst);
}
