//! `hotsync demo`: the whole pipeline on this machine, no cluster. A local agent on loopback
//! (real QUIC, mutual TLS), a real app process that the agent signals, an example tree synced
//! to the agent's root, and a few scripted edits with the time each took to reach the app.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hotsync_agent::{Agent, AgentConfig, ReloadAction, SignalTarget};
use hotsync_transport::credentials::GeneratedCredentials;
use hotsync_transport::{Identity, Role};

use crate::example_app::read_state;
use crate::send::ChunkMemory;
use crate::session::{self, SessionConfig};
use crate::source;
use crate::ui::{Event, Ui};

/// The example tree, built into the binary so the demo runs from anywhere.
const EXAMPLE: &[(&str, &str)] = &[
    ("message.txt", include_str!("../../examples/demo/message.txt")),
    ("index.html", include_str!("../../examples/demo/index.html")),
    ("static/app.js", include_str!("../../examples/demo/static/app.js")),
    (".gitignore", include_str!("../../examples/demo/.gitignore")),
    // Ignored by the example's .gitignore, so it cannot live in the repository: made here.
    ("debug.log", "This file is ignored by .gitignore: it stays on your machine.\n"),
];

/// Options of `hotsync demo`.
pub struct DemoOptions {
    pub edits: u32,
    pub keep: bool,
    pub json: bool,
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let base = tempfile::Builder::new().prefix("hotsync-demo-").tempdir().context("cannot make a temp directory")?;
    let (src, pod, creds) = (base.path().join("src"), base.path().join("pod"), base.path().join("creds"));
    write_example(&src)?;
    std::fs::create_dir_all(&pod)?;
    GeneratedCredentials::generate()?.write_to(&creds)?;
    let state_file = base.path().join("app.state");

    say(&opts, &format!("hotsync demo: syncing {} → agent root {}", src.display(), pod.display()));
    let exe = std::env::current_exe().context("cannot find the hotsync binary")?;
    let mut app = tokio::process::Command::new(exe)
        .arg("example-app")
        .arg("--dir")
        .arg(&pod)
        .arg("--state-file")
        .arg(&state_file)
        .stdout(if opts.json { Stdio::null() } else { Stdio::inherit() })
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the example app")?;
    let app_pid = i32::try_from(app.id().context("the example app exited at once")?)?;
    wait_for(&state_file, Duration::from_secs(10), |s| s.0 == 0).await.context("the example app did not start")?;

    let agent = Agent::start(AgentConfig {
        root: pod.clone(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        listen_tcp: None,
        identity: Identity::load(&creds, Role::Agent)?,
        reload: ReloadAction::Signal {
            signal: rustix::process::Signal::HUP.as_raw(),
            target: SignalTarget::Pid(app_pid),
        },
    })?;
    let addr = agent.local_addr()?;
    let agent_endpoints = agent.endpoints();
    tokio::spawn(agent.run());
    say(&opts, &format!("agent listening on {addr} (QUIC, mutual TLS); app pid {app_pid} reloads on SIGHUP"));

    let (ui, mut events) = Ui::observed(opts.json);
    let snapshots = source::start(&src, &[], base.path().join("cache"), true, ui.clone())?;
    let cfg = SessionConfig {
        route: session::Route::Udp(addr),
        label: addr.to_string(),
        identity: Arc::new(Identity::load(&creds, Role::Host)?),
        once: false,
        source_root: src.canonicalize()?,
        memory: Arc::new(ChunkMemory::default()),
    };
    let session = tokio::spawn(session::run(cfg, snapshots, ui));
    loop {
        match events.recv().await {
            Some(Event::InSync { .. }) => break,
            Some(_) => {}
            None => bail!("the sync session stopped before the first sync"),
        }
    }
    wait_for(&state_file, Duration::from_secs(10), |s| s.0 >= 1)
        .await
        .context("the app was not signalled after the first sync")?;

    let mut latencies = Vec::new();
    for i in 1..=opts.edits {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let before = read_state(&state_file).map_or(0, |s| s.0);
        let text = format!("Hello from edit #{i}!");
        say(&opts, &format!("\nedit #{i}: writing {text:?} to message.txt"));
        let t0 = Instant::now();
        std::fs::write(src.join("message.txt"), &text)?;
        wait_for(&state_file, Duration::from_secs(10), |s| s.0 > before && s.1 == text)
            .await
            .context("the edit did not reach the app")?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        latencies.push(ms);
        say(&opts, &format!("edit #{i}: the app reloaded with the new text {ms:.1} ms after the save"));
    }
    if !latencies.is_empty() {
        latencies.sort_by(f64::total_cmp);
        say(
            &opts,
            &format!(
                "\nsave → app reloaded with the new content: median {:.1} ms over {} edits (debug.log stayed local: it is in .gitignore)",
                latencies[latencies.len() / 2],
                latencies.len()
            ),
        );
    }
    if opts.keep {
        say(&opts, &format!("\nEdit files in {} and watch the app reload; Ctrl-C to stop.", src.display()));
        let _ = tokio::signal::ctrl_c().await;
    }
    session.abort();
    // The session holds the last receiver of snapshots: once it is gone, the watcher stops
    // before the example tree is removed.
    let _ = session.await;
    for e in agent_endpoints {
        e.close(0u32.into(), b"demo over");
    }
    let _ = app.kill().await;
    Ok(())
}

fn say(opts: &DemoOptions, line: &str) {
    if !opts.json {
        println!("{line}");
    }
}

fn write_example(dir: &Path) -> anyhow::Result<()> {
    for (name, text) in EXAMPLE {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("example paths have a parent"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn wait_for(state_file: &Path, limit: Duration, done: impl Fn(&(u64, String)) -> bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if read_state(state_file).is_some_and(|s| done(&s)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    bail!("gave up after {} s", limit.as_secs())
}
