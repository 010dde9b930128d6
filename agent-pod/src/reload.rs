//! The reload action that runs once after each applied changeset: a signal to the app's
//! process (found by name, or by pid), or a command.

use std::path::Path;
use std::process::Command;

use rustix::process::{Pid, Signal};

/// Which process gets the signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalTarget {
    /// Every process whose name (`/proc/PID/comm`, or the base name of its `argv[0]`) is this.
    Name(String),
    Pid(i32),
}

/// What to do after a changeset lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadAction {
    None,
    Signal {
        signal: i32,
        target: SignalTarget,
    },
    /// Run this program with these arguments (no shell: the sidecar image has none), in the root.
    Exec {
        argv: Vec<String>,
    },
}

/// Parses a signal given as `HUP`, `SIGHUP` or a number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig = match name {
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "TERM" => Signal::TERM,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "KILL" => Signal::KILL,
        "WINCH" => Signal::WINCH,
        other => {
            let n: i32 = other
                .parse()
                .map_err(|_| format!("unknown signal {s:?}; use a name such as HUP, USR1, TERM or a number"))?;
            return Signal::from_named_raw(n).map(|_| n).ok_or_else(|| format!("{n} is not a signal number"));
        }
    };
    Ok(sig.as_raw())
}

impl ReloadAction {
    /// Runs the action; returns what happened, for the host to show.
    pub fn run(&self, root: &Path) -> Result<String, String> {
        match self {
            ReloadAction::None => Ok("no reload action".into()),
            ReloadAction::Signal { signal, target } => {
                let sig = Signal::from_named_raw(*signal).ok_or("invalid signal")?;
                let pids = match target {
                    SignalTarget::Pid(pid) => vec![*pid],
                    SignalTarget::Name(name) => find_processes(name),
                };
                if pids.is_empty() {
                    return Err(format!("no process named {target:?} to signal"));
                }
                let mut sent = 0;
                let mut errors = Vec::new();
                for pid in &pids {
                    match Pid::from_raw(*pid).map(|p| rustix::process::kill_process(p, sig)) {
                        Some(Ok(())) => sent += 1,
                        Some(Err(e)) => errors.push(format!("pid {pid}: {e}")),
                        None => errors.push(format!("pid {pid}: invalid")),
                    }
                }
                if sent == 0 {
                    return Err(format!("could not signal: {}", errors.join(", ")));
                }
                Ok(format!("sent signal {signal} to {sent} process(es)"))
            }
            ReloadAction::Exec { argv } => {
                let (program, args) = argv.split_first().ok_or("empty command")?;
                let mut child = Command::new(program)
                    .args(args)
                    .current_dir(root)
                    .spawn()
                    .map_err(|e| format!("cannot run {program}: {e}"))?;
                let pid = child.id();
                // Reap it in the background so it never lingers as a zombie.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                Ok(format!("started {program} (pid {pid})"))
            }
        }
    }
}

/// Pids of the processes named `name`, other than this one.
fn find_processes(name: &str) -> Vec<i32> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // The kernel keeps at most 15 bytes of a process name in `comm`.
    let comm_name: String = name.chars().take(15).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<i32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end() == comm_name {
                return true;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
            base == name.as_bytes()
        })
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_names_and_numbers() {
        assert_eq!(parse_signal("HUP"), Ok(1));
        assert_eq!(parse_signal("sigusr1"), parse_signal("USR1"));
        assert_eq!(parse_signal("15"), Ok(15));
        assert!(parse_signal("NOPE").unwrap_err().contains("HUP"));
        assert!(parse_signal("0").is_err());
    }
}
