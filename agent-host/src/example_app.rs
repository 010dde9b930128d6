//! A tiny app for the demo and the tests: it runs from a synced directory and, on every
//! SIGHUP, re-reads `message.txt`, says so, and records the reload in a state file that a test
//! or the demo can read (`COUNT\nMESSAGE`, written atomically).

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(dir: PathBuf, state_file: Option<PathBuf>) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    println!("app: started (pid {}), serving {}", std::process::id(), dir.display());
    if let Some(f) = &state_file {
        record(f, 0, "")?;
    }
    let mut reloads = 0u64;
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        reloads += 1;
        let message =
            std::fs::read_to_string(dir.join("message.txt")).unwrap_or_else(|_| "(no message.txt yet)".into());
        let message = message.trim();
        println!("app: reload #{reloads} (SIGHUP): message.txt says {message:?}");
        if let Some(f) = &state_file {
            record(f, reloads, message)?;
        }
    }
}

fn record(file: &Path, reloads: u64, message: &str) -> anyhow::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{reloads}\n{message}")).context("cannot write the app's state file")?;
    std::fs::rename(&tmp, file).context("cannot write the app's state file")?;
    Ok(())
}

/// Reads a state file: (reloads, message).
pub fn read_state(file: &Path) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(file).ok()?;
    let (count, message) = text.split_once('\n')?;
    Some((count.parse().ok()?, message.to_owned()))
}
