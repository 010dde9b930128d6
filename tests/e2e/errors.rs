//! Bad input gets a clear error that says what to do, and changes nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use hotsync_e2e::{Env, bin, write};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unreachable_agent_is_reported_with_advice() {
    let env = Env::new();
    write(&env.src.join("a"), "a");
    // A UDP port that nothing listens on: bind one, then let it go.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = env.sync_once(format!("127.0.0.1:{port}").parse().unwrap(), &[]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("hotsync-agent serve") && err.contains(&port.to_string()), "{err}");
}

#[test]
fn missing_credentials_say_how_to_make_them() {
    let env = Env::new();
    let out = Command::new(bin("hotsync"))
        .args(["sync"])
        .arg(&env.src)
        .args(["--to", "127.0.0.1:7470", "--credentials", "/nonexistent/creds", "--once"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("hotsync credentials --out /nonexistent/creds"), "{}", stderr_of(&out));

    let out = Command::new(bin("hotsync-agent"))
        .args(["serve", "--root"])
        .arg(&env.dst)
        .args(["--credentials", "/nonexistent/creds"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("hotsync credentials --out"), "{}", stderr_of(&out));
}

fn serve(env: &Env, root: &std::path::Path) -> std::process::Output {
    Command::new(bin("hotsync-agent"))
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(root)
        .arg("--credentials")
        .arg(&env.creds)
        .output()
        .unwrap()
}

#[test]
fn a_bad_agent_root_is_refused_clearly() {
    let env = Env::new();
    let out = serve(&env, &env.path("missing"));
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("does not exist"), "{}", stderr_of(&out));
    assert!(!env.path("missing").exists(), "the agent does not create a root it was not given");

    let file = env.path("a-file");
    write(&file, "x");
    let out = serve(&env, &file);
    assert!(stderr_of(&out).contains("not a directory"), "{}", stderr_of(&out));

    // Not writable: a read-only directory (root ignores modes, so use a read-only mount
    // where one is at hand: /proc/1 refuses new entries to everyone).
    let ro = env.path("read-only");
    fs::create_dir_all(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let target = if rustix::process::geteuid().is_root() { std::path::PathBuf::from("/proc/1") } else { ro };
    let out = serve(&env, &target);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("needs a writable directory"), "{}", stderr_of(&out));
}

#[test]
fn bad_flags_are_explained() {
    let out = Command::new(bin("hotsync-agent"))
        .args(["serve", "--root", "/tmp", "--credentials", "/tmp", "--on-change-signal", "HUP"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("--signal-process"), "{}", stderr_of(&out));

    let env = Env::new();
    let out = Command::new(bin("hotsync-agent"))
        .args(["serve", "--listen", "127.0.0.1:0", "--on-change-signal", "NOPE", "--signal-pid", "1", "--root"])
        .arg(&env.dst)
        .arg("--credentials")
        .arg(&env.creds)
        .output()
        .unwrap();
    assert!(stderr_of(&out).contains("unknown signal"), "{}", stderr_of(&out));

    let out = Command::new(bin("hotsync"))
        .args(["sync", "/tmp", "--to", "nonsense", "--credentials"])
        .arg(&env.creds)
        .output()
        .unwrap();
    assert!(stderr_of(&out).contains("HOST:PORT"), "{}", stderr_of(&out));
}

#[test]
fn an_unreadable_file_is_skipped_reported_and_left_alone() {
    let env = Env::new();
    write(&env.src.join("ok.txt"), "readable");
    write(&env.src.join("secret.txt"), "unreadable");
    fs::set_permissions(env.src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    write(&env.dst.join("secret.txt"), "the agent's old copy");
    let agent = env.agent(&[]);

    let mut cmd = env.sync_command(agent.addr, &["--once"]);
    if rustix::process::geteuid().is_root() {
        // Root reads anything: run the host as nobody, who can read all but secret.txt.
        use std::os::unix::process::CommandExt;
        for p in [env.dir.path(), &env.src, &env.creds] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for f in ["ca.pem", "host.pem", "host.key"] {
            fs::set_permissions(env.creds.join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::create_dir_all(&env.cache).unwrap();
        fs::set_permissions(&env.cache, fs::Permissions::from_mode(0o777)).unwrap();
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "the rest still syncs: {}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let skipped = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "skipped")
        .unwrap_or_else(|| panic!("no skipped event: {stdout}"));
    assert_eq!(skipped["path"], "secret.txt");
    assert_eq!(skipped["reason"], "permission denied");
    assert_eq!(fs::read_to_string(env.dst.join("ok.txt")).unwrap(), "readable");
    assert_eq!(
        fs::read_to_string(env.dst.join("secret.txt")).unwrap(),
        "the agent's old copy",
        "left alone, not deleted"
    );
}
