//! The reload action: a real child process gets one signal per changeset; a command runs
//! once per changeset.

use std::fs;
use std::process::{Child, Command, Stdio};

use hotsync_e2e::{Env, bin, wait_same_tree, wait_until, write};

/// The example app under a name of its own (so `--signal-process` finds only it).
struct App {
    child: Child,
    state: std::path::PathBuf,
}

impl App {
    fn start(env: &Env, name: &str) -> Self {
        let exe = env.path(name);
        fs::copy(bin("hotsync"), &exe).unwrap();
        let state = env.path("app.state");
        let child = Command::new(&exe)
            .arg("example-app")
            .arg("--dir")
            .arg(&env.dst)
            .arg("--state-file")
            .arg(&state)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let app = Self { child, state };
        wait_until("the app started", || app.reloads().is_some());
        app
    }

    fn reloads(&self) -> Option<u64> {
        fs::read_to_string(&self.state).ok()?.lines().next()?.parse().ok()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_app_gets_one_signal_per_changeset() {
    let env = Env::new();
    write(&env.src.join("message.txt"), "v0");
    let name = format!("hsapp{}", std::process::id() % 100_000);
    let app = App::start(&env, &name);
    let agent = env.agent(&["--on-change-signal", "HUP", "--signal-process", &name]);
    let mut host = env.sync(agent.addr, &[]);
    host.wait_in_sync();
    for i in 1..=5 {
        write(&env.src.join("message.txt"), format!("v{i}"));
        write(&env.src.join(format!("extra/{i}.txt")), "x");
        wait_same_tree(&env.src, &env.dst);
        host.wait_in_sync();
    }
    let changesets = host.drain().iter().filter(|e| e["event"] == "synced").count() as u64;
    wait_until("the app counted every signal", || app.reloads() == Some(changesets));
    let message = fs::read_to_string(&app.state).unwrap();
    assert!(message.ends_with("v5"), "the app read the final content on its last reload: {message:?}");
}

#[test]
fn a_reload_command_runs_once_per_changeset() {
    let env = Env::new();
    write(&env.src.join("a.txt"), "1");
    let marker = env.path("reloads");
    let cmd = format!("sh -c 'echo reloaded >> {}'", marker.display());
    let agent = env.agent(&["--on-change-exec", &cmd]);
    let mut host = env.sync(agent.addr, &[]);
    host.wait_in_sync();
    write(&env.src.join("a.txt"), "2");
    host.wait_event("synced", |_| true);
    host.wait_in_sync();
    let changesets = host.drain().iter().filter(|e| e["event"] == "synced").count();
    wait_until("the command ran once per changeset", || {
        fs::read_to_string(&marker).map(|s| s.lines().count()).unwrap_or(0) == changesets
    });
}
