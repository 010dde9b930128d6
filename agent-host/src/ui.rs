//! What the user sees: one line per changeset, progress on long work, or JSON events for
//! scripts (`--json`, one object per line on stdout).

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

/// Everything the engine reports.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Scanned {
        files: u64,
        dirs: u64,
        bytes: u64,
        hashed: u64,
        millis: u64,
    },
    Skipped {
        path: String,
        reason: String,
    },
    Connecting {
        target: String,
    },
    Connected {
        target: String,
        agent: String,
        same_tree: bool,
    },
    Progress {
        target: String,
        files_done: u64,
        files_total: u64,
        bytes_done: u64,
        bytes_total: u64,
    },
    Synced {
        target: String,
        changeset: u64,
        written: u64,
        deleted: u64,
        other: u64,
        /// Size of the files written.
        bytes: u64,
        /// File bytes that crossed the wire (deltas and renames send less than `bytes`).
        sent_bytes: u64,
        /// UDP payload bytes the connection sent meanwhile (headers, frames, retransmits).
        udp_bytes: u64,
        /// From the first file event (or the start of the sync) to the agent's answer.
        latency_ms: f64,
        reload: Option<String>,
        failed: Vec<String>,
        root: String,
    },
    /// The agent's tree equals the source. `udp_tx_bytes`/`udp_rx_bytes`: everything this
    /// connection has sent and received so far (handshake included); `lost_packets`: how many
    /// of the packets it sent were lost and sent again (each one also slowed the sending down).
    InSync {
        target: String,
        root: String,
        entries: u64,
        udp_tx_bytes: u64,
        udp_rx_bytes: u64,
        lost_packets: u64,
    },
    Disconnected {
        target: String,
        error: String,
        retry_in_ms: u64,
    },
    Warning {
        message: String,
    },
    /// A step of `hotsync attach` (credentials, injection, rollout, transport).
    Step {
        message: String,
    },
    /// A ready pod with the sidecar joined the sync.
    PodJoined {
        pod: String,
        transport: String,
    },
    /// A pod left the sync (deleted, replaced, not ready).
    PodLeft {
        pod: String,
        reason: String,
    },
}

/// Where events go: printed at once (text or JSON), then handed to an optional observer.
#[derive(Clone)]
pub struct Ui {
    json: bool,
    observer: Option<mpsc::UnboundedSender<Event>>,
}

impl Ui {
    /// A UI printing to stdout as text or JSON.
    pub fn new(json: bool) -> Self {
        Self { json, observer: None }
    }

    /// Like [`Ui::new`], also returning a receiver that sees every event after it is printed,
    /// for callers that react to them (the demo).
    pub fn observed(json: bool) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { json, observer: Some(tx) }, rx)
    }

    /// Reports an event.
    pub fn emit(&self, event: Event) {
        print(&event, self.json);
        if let Some(tx) = &self.observer {
            let _ = tx.send(event);
        }
    }
}

fn print(event: &Event, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        // Serializing our own enum to JSON cannot fail.
        let _ = writeln!(out, "{}", serde_json::to_string(event).expect("events serialize"));
        return;
    }
    let line = match event {
        Event::Scanned { files, dirs, bytes, hashed, millis } => format!(
            "scanned {} files in {} directories ({}), hashed {hashed}, in {millis} ms",
            count(*files),
            count(*dirs),
            human_bytes(*bytes)
        ),
        Event::Skipped { path, reason } => {
            let _ = writeln!(
                std::io::stderr(),
                "warning: skipping {path}: {reason} (it is left as it is on the agent; fix its permissions to sync it)"
            );
            return;
        }
        Event::Warning { message } => {
            let _ = writeln!(std::io::stderr(), "warning: {message}");
            return;
        }
        Event::Step { message } => format!("• {message}"),
        Event::PodJoined { pod, transport } => format!("+ pod/{pod} joined ({transport})"),
        Event::PodLeft { pod, reason } => format!("- pod/{pod} left ({reason})"),
        Event::Connecting { target } => format!("→ {target}: connecting"),
        Event::Connected { target, agent, same_tree } => format!(
            "→ {target}: connected to {agent}{}",
            if *same_tree { ", its tree is known: sending only what changed" } else { "" }
        ),
        Event::Progress { target, files_done, files_total, bytes_done, bytes_total } => format!(
            "… {target}: {}/{} files, {} of {}",
            count(*files_done),
            count(*files_total),
            human_bytes(*bytes_done),
            human_bytes(*bytes_total)
        ),
        Event::Synced { target, written, deleted, other, bytes, sent_bytes, latency_ms, reload, failed, .. } => {
            let mut parts = Vec::new();
            if *written > 0 {
                parts.push(format!("{written} written ({})", human_bytes(*bytes)));
            }
            if *deleted > 0 {
                parts.push(format!("{deleted} deleted"));
            }
            if *other > 0 {
                parts.push(format!("{other} other"));
            }
            let mut line =
                format!("✓ {target}: {}, {} sent, in {latency_ms:.1} ms", parts.join(", "), human_bytes(*sent_bytes));
            if let Some(r) = reload {
                let _ = write!(line, " · {r}");
            }
            if !failed.is_empty() {
                let _ = write!(line, " · {} failed, retrying: {}", failed.len(), failed.join("; "));
            }
            line
        }
        Event::InSync { target, root, entries, .. } => {
            format!("= {target}: in sync ({} entries, tree {})", count(*entries), &root[..12.min(root.len())])
        }
        Event::Disconnected { target, error, retry_in_ms } => {
            format!("✗ {target}: {error}; retrying in {:.1} s", Duration::from_millis(*retry_in_ms).as_secs_f64())
        }
    };
    let _ = writeln!(out, "{line}");
}

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units.
#[allow(clippy::cast_precision_loss)] // display only
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(200 << 20), "200.0 MiB");
    }
}
