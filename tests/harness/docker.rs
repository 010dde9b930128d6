//! A pod emulated with Docker: the app container and the hotsync-agent sidecar sharing the
//! network namespace, the PID namespace and a volume, on a network of the test's own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The version tag images/build.sh gives the images.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs `docker ARGS`, returning trimmed stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("run docker");
    assert!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// True when a Docker Engine answers. Tests skip loudly otherwise.
pub fn available() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: no Docker Engine answers; the container tests did not run");
    }
    ok
}

/// Panics with the command to run when the images are missing.
pub fn require_images() {
    for image in [format!("hotsync-agent:{VERSION}"), format!("hotsync-test-app:{VERSION}")] {
        let found =
            Command::new("docker").args(["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
        assert!(found, "image {image} is missing: build it with images/build.sh (tests/run does)");
    }
}

/// The pod; everything it made is removed on drop.
pub struct Pod {
    pub name: String,
    pub app_ip: String,
    pub state_dir: PathBuf,
    pub volume_dir: PathBuf,
}

impl Pod {
    /// Starts the app, then the sidecar in the app's network and PID namespaces.
    pub fn start(name: &str, creds: &Path, work: &Path) -> Self {
        let state_dir = work.join("app-state");
        let creds_copy = work.join("pod-creds");
        std::fs::create_dir_all(&state_dir).unwrap();
        std::fs::create_dir_all(&creds_copy).unwrap();
        for f in ["ca.pem", "agent.pem", "agent.key"] {
            std::fs::copy(creds.join(f), creds_copy.join(f)).unwrap();
        }
        // The containers run as 65532: let them read the credentials and write the app's state.
        docker_chown(&state_dir);
        docker_chown(&creds_copy);
        docker(&["network", "create", name]);
        docker(&["volume", "create", name]);
        let volume = format!("{name}:/srv/app");
        let state = format!("{}:/state", state_dir.display());
        docker(&[
            "run",
            "-d",
            "--name",
            &format!("{name}-app"),
            "--network",
            name,
            "-v",
            &volume,
            "-v",
            &state,
            &format!("hotsync-test-app:{VERSION}"),
        ]);
        let pod = Self {
            name: name.to_owned(),
            app_ip: docker(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &format!("{name}-app"),
            ]),
            state_dir,
            volume_dir: PathBuf::from(docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", name])),
        };
        let creds_mount = format!("{}:/etc/hotsync:ro", creds_copy.display());
        let ns = format!("container:{name}-app");
        docker(&[
            "run",
            "-d",
            "--name",
            &format!("{name}-agent"),
            "--network",
            &ns,
            "--pid",
            &ns,
            "-v",
            &volume,
            "-v",
            &creds_mount,
            &format!("hotsync-agent:{VERSION}"),
            "serve",
            "--root",
            "/srv/app",
            "--listen",
            "0.0.0.0:7470",
            "--credentials",
            "/etc/hotsync",
            "--on-change-signal",
            "HUP",
            "--signal-process",
            "webapp",
        ]);
        pod
    }

    /// Where the host reaches the sidecar.
    pub fn agent_addr(&self) -> SocketAddr {
        format!("{}:7470", self.app_ip).parse().unwrap()
    }

    /// How many reload signals the app has counted.
    pub fn app_reloads(&self) -> u64 {
        std::fs::read_to_string(self.state_dir.join("app.state"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.parse().ok()))
            .unwrap_or(0)
    }

    /// The app container's main process, for entering its network namespace.
    pub fn app_pid(&self) -> String {
        docker(&["inspect", "-f", "{{.State.Pid}}", &format!("{}-app", self.name)])
    }

    pub fn logs(&self) -> String {
        let out = Command::new("docker").args(["logs", &format!("{}-agent", self.name)]).output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &format!("{}-agent", self.name), &format!("{}-app", self.name)])
            .output();
        let _ = Command::new("docker").args(["volume", "rm", "-f", &self.name]).output();
        let _ = Command::new("docker").args(["network", "rm", &self.name]).output();
    }
}

fn docker_chown(dir: &Path) {
    let status = Command::new("chown").args(["-R", "65532:65532"]).arg(dir).status().unwrap();
    assert!(status.success());
}

/// Drops every packet in and out of the namespace of `pid` until the guard is dropped
/// (nftables inside the pod's network namespace: the link is cut, the pod keeps its address).
pub struct LinkCut {
    pid: String,
}

impl LinkCut {
    pub fn cut(pid: &str) -> Self {
        let rules = "table inet hotsync_cut { chain in { type filter hook input priority 0; policy drop; }; chain out { type filter hook output priority 0; policy drop; }; }";
        let ok = Command::new("nsenter").args(["-t", pid, "-n", "nft", rules]).status().unwrap().success();
        assert!(ok, "cannot cut the link with nftables in the pod's namespace");
        Self { pid: pid.to_owned() }
    }
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        let _ = Command::new("nsenter").args(["-t", &self.pid, "-n", "nft", "delete table inet hotsync_cut"]).status();
    }
}
