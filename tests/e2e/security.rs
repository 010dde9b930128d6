//! Nobody without the credentials gets served, and a peer that holds them still cannot
//! write, delete or read anything outside the agent's root, whatever it sends.

use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;

use hotsync_core::proto::{AGENT_SERVER_NAME, AgentMsg, MAGIC, PROTOCOL_VERSION};
use hotsync_core::{FileMeta, Hash};
use hotsync_e2e::{Env, listing, wait_same_tree, write};
use hotsync_transport::{Identity, Role};
use serde::Serialize;

/// Mirrors of the protocol types with plain strings where the real ones validate paths, so
/// the tests can send what a well-behaved host never could. Same variant order, so the same
/// encoding.
#[derive(Serialize)]
enum EvilHostMsg {
    Hello {
        version: u32,
        client: String,
    },
    #[allow(dead_code)]
    GetIndex,
    Commit {
        id: u64,
        data_streams: u32,
        ops: Vec<EvilOp>,
        reload: bool,
    },
}

#[derive(Serialize)]
#[allow(dead_code)]
enum EvilOp {
    Delete { path: String },
    Mkdir { path: String },
    Symlink { path: String, target: String },
    Write { path: String, meta: FileMeta },
    SetExecutable { path: String, executable: bool },
}

#[derive(Serialize)]
struct EvilRecord {
    path: String,
    size: u64,
    hash: Hash,
    pieces: Vec<EvilPiece>,
}

#[derive(Serialize)]
#[allow(dead_code)]
enum EvilPiece {
    Copy { from: Option<String>, offset: u64, len: u64 },
    Data { len: u64 },
}

fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_allocvec(msg).unwrap();
    [(body.len() as u32).to_le_bytes().to_vec(), body].concat()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn connect(addr: SocketAddr, creds: &std::path::Path) -> quinn::Connection {
    let identity = Identity::load(creds, Role::Host).unwrap();
    let endpoint = hotsync_transport::client_endpoint(&identity, addr).unwrap();
    endpoint.connect(addr, AGENT_SERVER_NAME).unwrap().await.expect("valid credentials connect")
}

/// Takes the control stream the agent opens and its Welcome, then says a valid Hello.
async fn hello(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let mut magic = [0u8; MAGIC.len()];
    recv.read_exact(&mut magic).await.unwrap();
    assert_eq!(magic, MAGIC);
    let welcome: Option<AgentMsg> = hotsync_transport::read_frame(&mut recv).await.unwrap();
    assert!(matches!(welcome, Some(AgentMsg::Welcome { .. })));
    send.write_all(&frame(&EvilHostMsg::Hello { version: PROTOCOL_VERSION, client: "evil".into() })).await.unwrap();
    (send, recv)
}

/// Sends `bytes` on the control stream after Hello and expects the agent to end the session.
async fn expect_session_closed(addr: SocketAddr, creds: &std::path::Path, bytes: Vec<u8>) {
    let conn = connect(addr, creds).await;
    let (mut send, mut recv) = hello(&conn).await;
    let _ = send.write_all(&bytes).await;
    let reply: Result<Option<AgentMsg>, _> = hotsync_transport::read_frame(&mut recv).await;
    assert!(!matches!(reply, Ok(Some(AgentMsg::Applied { .. }))), "the agent must not apply that: {reply:?}");
    let reason = tokio::time::timeout(std::time::Duration::from_secs(10), conn.closed()).await;
    assert!(reason.is_ok(), "the agent should close a session that sends garbage");
}

#[test]
fn a_malicious_host_cannot_escape_the_root() {
    let env = Env::new();
    let outside = env.path("outside");
    write(&outside.join("victim.txt"), "must survive");
    write(&outside.join("secret.txt"), "must not be read");
    let before = listing(&outside);
    let agent = env.agent(&[]);
    let addr = agent.addr;
    let outside_str = outside.display().to_string();

    runtime().block_on(async {
        // Paths with `..` or absolute: refused as they are decoded, session closed.
        for path in ["../outside/victim.txt", "a/../../outside/victim.txt", outside_str.as_str()] {
            let msg = EvilHostMsg::Commit {
                id: 1,
                data_streams: 0,
                ops: vec![EvilOp::Delete { path: path.into() }],
                reload: false,
            };
            expect_session_closed(addr, &env.creds, frame(&msg)).await;
        }
        // A frame header announcing 4 GiB: refused before anything is allocated.
        expect_session_closed(addr, &env.creds, u32::MAX.to_le_bytes().to_vec()).await;
        // Garbage that is no message at all.
        expect_session_closed(addr, &env.creds, vec![0xff; 64]).await;

        // Through a symlink: the link is stored, but nothing is written or read through it.
        let conn = connect(addr, &env.creds).await;
        let (mut send, mut recv) = hello(&conn).await;
        let content = b"pwned".to_vec();
        let meta = FileMeta { size: content.len() as u64, executable: false, hash: Hash::of(&content) };
        let secret_len = fs::metadata(outside.join("secret.txt")).unwrap().len();
        let mut data = conn.open_uni().await.unwrap();
        data.write_all(&frame(&hotsync_core::proto::DataHeader { changeset: 1 })).await.unwrap();
        let rec = EvilRecord {
            path: "evil/pwned".into(),
            size: meta.size,
            hash: meta.hash,
            pieces: vec![EvilPiece::Data { len: meta.size }],
        };
        data.write_all(&frame(&rec)).await.unwrap();
        data.write_all(&content).await.unwrap();
        let steal = EvilRecord {
            path: "stolen".into(),
            size: secret_len,
            hash: Hash::of(b"must not be read"),
            pieces: vec![EvilPiece::Copy { from: Some("evil/secret.txt".into()), offset: 0, len: secret_len }],
        };
        data.write_all(&frame(&steal)).await.unwrap();
        data.finish().unwrap();
        let stolen_meta = FileMeta { size: secret_len, executable: false, hash: Hash::of(b"must not be read") };
        let ops = vec![
            EvilOp::Symlink { path: "evil".into(), target: outside_str.clone() },
            EvilOp::Write { path: "evil/pwned".into(), meta },
            EvilOp::Write { path: "stolen".into(), meta: stolen_meta },
            EvilOp::Delete { path: "evil/victim.txt".into() },
            EvilOp::SetExecutable { path: "evil/victim.txt".into(), executable: true },
        ];
        send.write_all(&frame(&EvilHostMsg::Commit { id: 1, data_streams: 1, ops, reload: false })).await.unwrap();
        let reply: Option<AgentMsg> = hotsync_transport::read_frame(&mut recv).await.unwrap();
        let Some(AgentMsg::Applied { failed, .. }) = reply else { panic!("expected Applied, got {reply:?}") };
        let failed: Vec<String> = failed.iter().map(|f| f.path.to_string()).collect();
        for path in ["evil/pwned", "stolen", "evil/victim.txt"] {
            assert!(failed.iter().any(|f| f == path), "{path} must fail, failures: {failed:?}");
        }
        conn.close(0u32.into(), b"");
    });

    assert_eq!(listing(&outside), before, "nothing outside the root changed");
    assert!(!env.dst.join("stolen").exists(), "nothing was read through the link");

    // The agent survived all of it and still serves an honest host.
    write(&env.src.join("ok.txt"), "fine");
    let out = env.sync_once(addr, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_same_tree(&env.src, &env.dst);
}

#[test]
fn a_host_with_other_credentials_is_refused_and_told_why() {
    let env = Env::new();
    let agent = env.agent(&[]);
    let other = Env::new();
    write(&other.src.join("x.txt"), "x");
    let out = other.sync_once(agent.addr, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("same credentials directory"), "{stderr}");
    assert!(listing(&env.dst).is_empty(), "nothing was written");
}

#[test]
fn an_agent_of_another_protocol_version_is_explained() {
    // An agent that trusts the same credentials but speaks protocol 1 (ALPN `hotsync/1`), as
    // a sidecar image from an older release would: the handshake fails on the application
    // protocol, and the host says so instead of blaming the credentials.
    let env = Env::new();
    write(&env.src.join("x.txt"), "x");
    let identity = Identity::load(&env.creds, Role::Agent).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let addr = rt.block_on(async {
        // This version's server TLS, with the ALPN of protocol 1.
        let mut tls = hotsync_transport::endpoint::server_tls(&identity).unwrap();
        tls.alpn_protocols = vec![b"hotsync/1".to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let _ = incoming.await;
            }
        });
        addr
    });
    let out = env.sync_once(addr, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("speaks another version of the hotsync protocol"), "{stderr}");
    assert!(stderr.contains("run the same hotsync version on both sides"), "{stderr}");
    assert!(!stderr.contains("same credentials directory"), "not a credentials problem: {stderr}");
}

#[test]
fn a_client_without_a_certificate_is_served_nothing() {
    let env = Env::new();
    let agent = env.agent(&[]);
    let ca = Identity::load(&env.creds, Role::Host).unwrap().ca;
    runtime().block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![hotsync_core::proto::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        // TLS 1.3 lets the client finish first; the agent then rejects the missing
        // certificate. Either way, nothing may be served.
        if let Ok(conn) = endpoint.connect(agent.addr, AGENT_SERVER_NAME).unwrap().await {
            let served = async {
                let (_send, mut recv) = conn.accept_bi().await?;
                anyhow::Ok(recv.read_to_end(1 << 20).await?)
            }
            .await;
            assert!(served.is_err(), "the agent served a client without a certificate: {served:?}");
        }
    });
    assert!(listing(&env.dst).is_empty());
}

#[test]
fn a_new_directory_lands_without_content_that_lies_or_was_never_named() {
    let env = Env::new();
    let agent = env.agent(&[]);
    runtime().block_on(async {
        let conn = connect(agent.addr, &env.creds).await;
        let (mut send, mut recv) = hello(&conn).await;
        let good = b"export default 1;\n".to_vec();
        let meta_of = |c: &[u8]| FileMeta { size: c.len() as u64, executable: false, hash: Hash::of(c) };
        let promised = meta_of(b"what the record promises");
        let mut data = conn.open_uni().await.unwrap();
        data.write_all(&frame(&hotsync_core::proto::DataHeader { changeset: 1 })).await.unwrap();
        // The honest file, one whose bytes do not match its hash, and one the commit never names.
        let records: [(&str, FileMeta, &[u8]); 3] = [
            ("pkg/lib/good.js", meta_of(&good), &good),
            ("pkg/liar.js", promised, b"what the record promised"),
            ("pkg/lib/extra.js", meta_of(b"unnamed"), b"unnamed"),
        ];
        for (path, meta, bytes) in records {
            let pieces = vec![EvilPiece::Data { len: bytes.len() as u64 }];
            data.write_all(&frame(&EvilRecord { path: path.into(), size: meta.size, hash: meta.hash, pieces }))
                .await
                .unwrap();
            data.write_all(bytes).await.unwrap();
        }
        data.finish().unwrap();
        let ops = vec![
            EvilOp::Mkdir { path: "pkg".into() },
            EvilOp::Mkdir { path: "pkg/lib".into() },
            EvilOp::Write { path: "pkg/lib/good.js".into(), meta: meta_of(&good) },
            EvilOp::Write { path: "pkg/liar.js".into(), meta: promised },
        ];
        send.write_all(&frame(&EvilHostMsg::Commit { id: 1, data_streams: 1, ops, reload: false })).await.unwrap();
        let reply: Option<AgentMsg> = hotsync_transport::read_frame(&mut recv).await.unwrap();
        let Some(AgentMsg::Applied { failed, .. }) = reply else { panic!("expected Applied, got {reply:?}") };
        let failed: Vec<String> = failed.iter().map(|f| f.path.to_string()).collect();
        assert_eq!(failed, ["pkg/liar.js"], "only the lying file fails");
        conn.close(0u32.into(), b"");
    });

    assert_eq!(fs::read(env.dst.join("pkg/lib/good.js")).unwrap(), b"export default 1;\n");
    assert!(!env.dst.join("pkg/liar.js").exists(), "content that does not match its hash never lands");
    assert!(!env.dst.join("pkg/lib/extra.js").exists(), "content the commit did not name never lands");
    let staging_area = env.dst.join(".hotsync/tmp");
    hotsync_e2e::wait_until("the staging area is back to its numbered directories", || {
        let extra = fs::read_dir(&staging_area)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_str().unwrap().parse::<u32>().is_err());
        !extra && hotsync_e2e::staging_files(&env.dst).is_empty()
    });

    // The agent's view matches its disk: an honest host brings it to the source's tree.
    write(&env.src.join("pkg/other.js"), "2");
    let out = env.sync_once(agent.addr, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_same_tree(&env.src, &env.dst);
}
