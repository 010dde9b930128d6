//! Initial and live sync of real trees.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use hotsync_e2e::{Env, assert_same_tree, listing, noise, wait_same_tree, write, write_atomic};

fn varied_tree(env: &Env) {
    let s = &env.src;
    write(&s.join("README.md"), "# hello\n");
    write(&s.join("src/main.rs"), "fn main() {}\n");
    write(&s.join("src/deeply/nested/dir/tree/leaf.txt"), "leaf");
    write(&s.join("ünïcødé/日本語 ファイル.txt"), "こんにちは");
    write(&s.join("spaces in name/a b c.txt"), "spaces");
    write(&s.join("empty.txt"), "");
    fs::create_dir_all(s.join("empty-dir")).unwrap();
    write(&s.join("bin/run.sh"), "#!/bin/sh\necho hi\n");
    fs::set_permissions(s.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("../README.md", s.join("src/readme-link")).unwrap();
    symlink("/etc/hostname", s.join("absolute-link")).unwrap();
    symlink("does/not/exist", s.join("dangling-link")).unwrap();
    write(&s.join("assets/big.bin"), noise(50 << 20, 1));
}

#[test]
fn initial_sync_of_a_varied_tree() {
    let env = Env::new();
    varied_tree(&env);
    let agent = env.agent(&[]);
    let out = env.sync_once(agent.addr, &[]);
    assert!(out.status.success(), "sync failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&env.src, &env.dst);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.contains("\"event\":\"in_sync\"")), "{stdout}");
}

#[test]
fn live_edits_deletes_renames_and_modes() {
    let env = Env::new();
    write(&env.src.join("app/main.py"), "print(1)\n");
    write(&env.src.join("app/lib/util.py"), "X = 1\n");
    write(&env.src.join("app/lib/more/deep.py"), "Y = 2\n");
    write(&env.src.join("old.txt"), "old");
    let agent = env.agent(&[]);
    let mut host = env.sync(agent.addr, &[]);
    host.wait_in_sync();
    assert_same_tree(&env.src, &env.dst);

    write(&env.src.join("app/main.py"), "print(2)\n");
    wait_same_tree(&env.src, &env.dst);

    write(&env.src.join("app/new/file.py"), "new");
    fs::remove_file(env.src.join("old.txt")).unwrap();
    wait_same_tree(&env.src, &env.dst);

    fs::rename(env.src.join("app/lib"), env.src.join("app/library")).unwrap();
    wait_same_tree(&env.src, &env.dst);
    assert!(!env.dst.join("app/lib").exists(), "the old directory name is gone");

    fs::set_permissions(env.src.join("app/main.py"), fs::Permissions::from_mode(0o755)).unwrap();
    wait_same_tree(&env.src, &env.dst);

    fs::remove_file(env.src.join("app/new/file.py")).unwrap();
    symlink("../main.py", env.src.join("app/new/file.py")).unwrap();
    wait_same_tree(&env.src, &env.dst);

    fs::remove_dir_all(env.src.join("app/library")).unwrap();
    wait_same_tree(&env.src, &env.dst);
}

#[test]
fn a_burst_of_1000_files_is_coalesced() {
    let env = Env::new();
    write(&env.src.join("seed.txt"), "seed");
    let agent = env.agent(&[]);
    let mut host = env.sync(agent.addr, &[]);
    host.wait_in_sync();
    let before = host.drain().len();

    for i in 0..1000 {
        write(&env.src.join(format!("burst/d{}/f{i}.txt", i % 37)), format!("file {i}"));
    }
    wait_same_tree(&env.src, &env.dst);
    host.wait_in_sync();
    let changesets = host.drain()[before..].iter().filter(|e| e["event"] == "synced").count();
    // Without coalescing this would be about 1,000 changesets. The bound leaves room for a
    // loaded machine pausing the writer itself between files (seen in CI with two cores busy).
    assert!(
        (1..=100).contains(&changesets),
        "1,000 files written in a burst should travel in a few changesets, not {changesets}"
    );
}

#[test]
fn a_touch_without_a_content_change_sends_nothing() {
    let env = Env::new();
    write(&env.src.join("same.txt"), "unchanged");
    write(&env.src.join("edited.txt"), "v1");
    let agent = env.agent(&[]);
    let mut host = env.sync(agent.addr, &[]);
    host.wait_in_sync();
    let before = host.drain().len();

    // A touch: the mtime changes, the bytes do not.
    let same = fs::OpenOptions::new().write(true).open(env.src.join("same.txt")).unwrap();
    same.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60)).unwrap();
    drop(same);
    write_atomic(&env.src.join("edited.txt"), "v2");
    let synced = host.wait_event("synced", |_| true);
    assert_eq!(synced["written"], 1, "only the real edit is sent: {synced}");
    wait_same_tree(&env.src, &env.dst);
    let written: u64 =
        host.drain()[before..].iter().filter(|e| e["event"] == "synced").map(|e| e["written"].as_u64().unwrap()).sum();
    assert_eq!(written, 1);
}

#[test]
fn ignored_paths_are_left_alone_on_both_sides() {
    let env = Env::new();
    write(&env.src.join(".gitignore"), "node_modules/\n*.log\n");
    write(&env.src.join(".hotsyncignore"), "tmp/\n");
    write(&env.src.join("index.js"), "main");
    write(&env.src.join("node_modules/left-pad/index.js"), "local dependency");
    write(&env.src.join("debug.log"), "local log");
    write(&env.src.join("tmp/scratch"), "scratch");
    write(&env.src.join("secret.env"), "KEY=1");
    write(&env.src.join(".git/HEAD"), "ref: refs/heads/main");
    // What the image built on the agent side must survive.
    write(&env.dst.join("node_modules/left-pad/index.js"), "built in the image");
    write(&env.dst.join("server.log"), "the app's log");
    write(&env.dst.join("stale.js"), "to be deleted");

    let agent = env.agent(&[]);
    let out = env.sync_once(agent.addr, &["--ignore", "*.env"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dst = listing(&env.dst);
    assert_eq!(fs::read_to_string(env.dst.join("node_modules/left-pad/index.js")).unwrap(), "built in the image");
    assert_eq!(fs::read_to_string(env.dst.join("server.log")).unwrap(), "the app's log");
    for absent in ["debug.log", "tmp", "secret.env", ".git", "stale.js"] {
        assert!(!dst.contains_key(absent), "{absent} must not be on the agent: {dst:?}");
    }
    assert_eq!(fs::read_to_string(env.dst.join("index.js")).unwrap(), "main");
}

#[test]
fn a_second_run_rehashes_nothing_and_sends_nothing() {
    let env = Env::new();
    for i in 0..200 {
        write(&env.src.join(format!("d{}/f{i}", i % 10)), noise(3000, i));
    }
    let agent = env.agent(&[]);
    assert!(env.sync_once(agent.addr, &[]).status.success());
    let out = env.sync_once(agent.addr, &[]);
    assert!(out.status.success());
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let scanned = events.iter().find(|e| e["event"] == "scanned").unwrap();
    assert_eq!(scanned["hashed"], 0, "the hash cache vouches for every file: {scanned}");
    let connected = events.iter().find(|e| e["event"] == "connected").unwrap();
    assert_eq!(connected["same_tree"], true, "one Merkle hash tells the trees are equal");
    assert!(!events.iter().any(|e| e["event"] == "synced"), "nothing to send: {events:?}");
    // The whole session (mutual-TLS handshake, welcome) in a few packets: QUIC pads the three
    // handshake datagrams to 1,200 bytes, then the agent's HANDSHAKE_DONE and Welcome and the
    // host's ACK, about 140 bytes. A Hello round trip, path MTU probes (about 2.8 KB), session
    // tickets or connection IDs issued in advance would show here.
    let in_sync = events.iter().find(|e| e["event"] == "in_sync").unwrap();
    let udp = in_sync["udp_tx_bytes"].as_u64().unwrap() + in_sync["udp_rx_bytes"].as_u64().unwrap();
    assert!(udp < 3_850, "a reconnect with nothing to send costs {udp} bytes of UDP payload: {in_sync}");
}

#[test]
fn what_the_app_changes_in_the_agent_root_between_sessions_is_undone_by_the_next() {
    // The agent keeps running between sessions and follows its root's changes (inotify): a
    // session begins from what changed, not from a walk. It must still see everything.
    let env = Env::new();
    for i in 0..40 {
        write(&env.src.join(format!("pkg{}/lib/f{i}.js", i % 4)), format!("file {i}"));
    }
    let agent = env.agent(&[]);
    assert!(env.sync_once(agent.addr, &[]).status.success());
    assert_same_tree(&env.src, &env.dst);

    let d = &env.dst;
    write(&d.join("pkg0/lib/f0.js"), "edited by the app");
    fs::remove_file(d.join("pkg1/lib/f1.js")).unwrap();
    write(&d.join("pkg2/lib/stray.js"), "made by the app");
    fs::rename(d.join("pkg3"), d.join("pkg3-moved")).unwrap();
    write(&d.join("made/by/app.txt"), "a new directory");
    fs::set_permissions(d.join("pkg2/lib/f2.js"), fs::Permissions::from_mode(0o755)).unwrap();

    let out = env.sync_once(agent.addr, &[]);
    assert!(out.status.success(), "sync failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"same_tree\":false"), "the agent must report its changed tree: {stdout}");
    assert_same_tree(&env.src, &env.dst);

    // And with nothing changed since, the next session finds the trees equal.
    let out = env.sync_once(agent.addr, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"same_tree\":true"));
}

#[test]
fn a_small_edit_of_a_big_file_sends_only_changed_chunks() {
    let env = Env::new();
    let mut data = noise(16 << 20, 9);
    write(&env.src.join("big.bin"), &data);
    let agent = env.agent(&[]);
    assert!(env.sync_once(agent.addr, &[]).status.success());

    let sent = |out: &std::process::Output| -> u64 {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "synced")
            .map(|e| e["sent_bytes"].as_u64().unwrap())
            .sum()
    };

    data[8 << 20] ^= 0xff;
    write(&env.src.join("big.bin"), &data);
    let out = env.sync_once(agent.addr, &[]);
    assert!(out.status.success());
    assert_same_tree(&env.src, &env.dst);
    assert!(sent(&out) <= 128 << 10, "a one-byte edit sent {} bytes", sent(&out));

    data.splice(4 << 20..4 << 20, noise(4096, 10));
    write(&env.src.join("big.bin"), &data);
    let out = env.sync_once(agent.addr, &[]);
    assert!(out.status.success());
    assert_same_tree(&env.src, &env.dst);
    assert!(sent(&out) <= 128 << 10, "a 4 KiB insertion sent {} bytes", sent(&out));
    // The replaced versions were set aside to be freed after the answer: they do not stay.
    hotsync_e2e::wait_until("the replaced versions are freed", || hotsync_e2e::staging_files(&env.dst).is_empty());
}

#[test]
fn quic_framed_over_tcp_syncs_the_same_way() {
    let env = Env::new();
    varied_tree(&env);
    let agent = env.agent(&["--listen-tcp", "127.0.0.1:0"]);
    let tcp = agent.tcp_addr.expect("the agent serves TCP");
    let out = env.sync_once(tcp, &["--transport", "tcp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&env.src, &env.dst);

    let mut host = env.sync(tcp, &["--transport", "tcp"]);
    host.wait_in_sync();
    write_atomic(&env.src.join("README.md"), "# changed over TCP\n");
    fs::remove_dir_all(env.src.join("src/deeply")).unwrap();
    wait_same_tree(&env.src, &env.dst);
}
