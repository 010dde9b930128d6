//! `hotsync status`: what every running `hotsync attach` on this machine is doing. Each attach
//! keeps a small JSON file up to date (replaced atomically) in the state directory; status
//! reads them and forgets the ones whose process is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::source::Snapshot;
use crate::ui::Event;

/// One running attach, as its state file has it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub pid: u32,
    pub workload: String,
    pub namespace: String,
    pub context: String,
    pub source: String,
    pub pods: BTreeMap<String, PodStatus>,
}

/// One pod of an attach.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodStatus {
    pub transport: String,
    /// connecting, syncing, in sync, disconnected
    pub state: String,
    /// Unix time of the pod's last confirmed changeset, in ms.
    pub last_sync_ms: Option<u64>,
    /// Save → applied in the pod, for its last changeset.
    pub last_latency_ms: Option<f64>,
    pub changesets: u64,
    /// Unix time since which the pod has been behind the source, in ms (none: in sync).
    pub behind_since_ms: Option<u64>,
    pub error: Option<String>,
}

/// `$XDG_STATE_HOME/hotsync/sessions`, or `~/.local/state/hotsync/sessions`.
pub fn sessions_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("hotsync")
        .join("sessions")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Keeps this process's state file current from the UI's events and the source's snapshots,
/// until the events end; then removes it.
pub fn keep_file(
    mut status: SessionStatus,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
) -> tokio::task::JoinHandle<()> {
    let path = sessions_dir().join(format!("{}.json", status.pid));
    tokio::spawn(async move {
        let mut written_at: Option<Instant> = None;
        let mut dirty = true;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(e) => dirty |= record(&mut status, &e),
                    None => break,
                },
                changed = snapshots.changed() => {
                    if changed.is_err() { break; }
                    let at = now_ms();
                    for pod in status.pods.values_mut() {
                        pod.behind_since_ms.get_or_insert(at);
                        pod.state = "syncing".into();
                    }
                    dirty = true;
                }
                () = tokio::time::sleep(Duration::from_millis(200)), if dirty => {}
            }
            if dirty && written_at.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
                if let Err(e) = write_atomic(&path, &status) {
                    tracing::debug!("cannot write {}: {e}", path.display());
                }
                written_at = Some(Instant::now());
                dirty = false;
            }
        }
        let _ = std::fs::remove_file(&path);
    })
}

/// Applies an event to the status; true when something changed.
pub fn record(status: &mut SessionStatus, event: &Event) -> bool {
    match event {
        Event::PodJoined { pod: name, transport } => {
            status.pods.insert(
                name.clone(),
                PodStatus { transport: transport.clone(), state: "connecting".into(), ..PodStatus::default() },
            );
        }
        Event::PodLeft { pod: name, .. } => {
            status.pods.remove(name);
        }
        Event::Synced { target, latency_ms, failed, .. } => {
            let Some(p) = pod_of(status, target) else { return false };
            p.last_sync_ms = Some(now_ms());
            p.last_latency_ms = Some(*latency_ms);
            p.changesets += 1;
            p.error = (!failed.is_empty()).then(|| failed.join("; "));
        }
        Event::InSync { target, .. } => {
            let Some(p) = pod_of(status, target) else { return false };
            p.state = "in sync".into();
            p.behind_since_ms = None;
            p.last_sync_ms.get_or_insert_with(now_ms);
        }
        Event::Disconnected { target, error, .. } => {
            let Some(p) = pod_of(status, target) else { return false };
            p.state = "disconnected".into();
            p.error = Some(error.clone());
        }
        _ => return false,
    }
    true
}

/// The pod a session's target label (`pod/NAME`) names.
fn pod_of<'a>(status: &'a mut SessionStatus, target: &str) -> Option<&'a mut PodStatus> {
    status.pods.get_mut(target.strip_prefix("pod/").unwrap_or(target))
}

fn write_atomic(path: &Path, status: &SessionStatus) -> std::io::Result<()> {
    let dir = path.parent().expect("the sessions directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", status.pid));
    std::fs::write(&tmp, serde_json::to_vec_pretty(status).expect("status serializes"))?;
    std::fs::rename(&tmp, path)
}

/// The state of every attach still running; files of processes that are gone are removed.
pub fn running() -> Vec<SessionStatus> {
    let dir = sessions_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(status) = std::fs::read(&path)
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<SessionStatus>(&b).map_err(|_| ()))
        else {
            continue;
        };
        if alive(status.pid) {
            out.push(status);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)));
    out
}

fn alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
    rustix::process::test_kill_process(pid).is_ok() && !is_zombie(pid)
}

fn is_zombie(pid: rustix::process::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Asks a running attach to stop (as Ctrl-C would).
pub fn stop(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
}

/// The text `hotsync status` prints.
pub fn render(sessions: &[SessionStatus]) -> String {
    use std::fmt::Write as _;
    if sessions.is_empty() {
        return "no hotsync attach is running on this machine (start one with `hotsync attach deployment/NAME`)\n"
            .into();
    }
    let now = now_ms();
    let ago =
        |ms: Option<u64>| ms.map_or_else(|| "never".into(), |t| format!("{} s ago", now.saturating_sub(t) / 1000));
    let mut out = String::new();
    for s in sessions {
        let _ = writeln!(
            out,
            "{}  namespace {}, context {}, from {} (pid {})",
            s.workload, s.namespace, s.context, s.source, s.pid
        );
        if s.pods.is_empty() {
            let _ = writeln!(out, "  no ready pod yet");
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<32} {:<13} {:<13} {:<10} {:>9} {:>8}",
            "POD", "TRANSPORT", "STATE", "LAST SYNC", "LATENCY", "LAG"
        );
        for (name, p) in &s.pods {
            let latency = p.last_latency_ms.map_or_else(|| "-".into(), |l| format!("{l:.1} ms"));
            let lag = p.behind_since_ms.map_or_else(|| "0 ms".into(), |t| format!("{} ms", now.saturating_sub(t)));
            let _ = writeln!(
                out,
                "  {name:<32} {:<13} {:<13} {:<10} {latency:>9} {lag:>8}",
                p.transport,
                p.state,
                ago(p.last_sync_ms)
            );
            if let Some(e) = &p.error {
                let _ = writeln!(out, "    {e}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_move_a_pod_through_its_states() {
        let mut s = SessionStatus::default();
        record(&mut s, &Event::PodJoined { pod: "web-1".into(), transport: "port-forward".into() });
        assert_eq!(s.pods["web-1"].state, "connecting");
        let in_sync = Event::InSync {
            target: "pod/web-1".into(),
            root: String::new(),
            entries: 1,
            udp_tx_bytes: 0,
            udp_rx_bytes: 0,
            lost_packets: 0,
        };
        record(&mut s, &in_sync);
        assert_eq!(s.pods["web-1"].state, "in sync");
        record(&mut s, &Event::Disconnected { target: "pod/web-1".into(), error: "gone".into(), retry_in_ms: 100 });
        assert_eq!(s.pods["web-1"].state, "disconnected");
        assert!(render(&[SessionStatus { pid: 1, ..s.clone() }]).contains("web-1"));
        record(&mut s, &Event::PodLeft { pod: "web-1".into(), reason: "deleted".into() });
        assert!(s.pods.is_empty());
    }
}
