//! The admission webhook over real TLS, checked the way the API server checks it: trusting
//! only the `caBundle` that `hotsync webhook manifests` put in the configuration.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use hotsync_e2e::{Env, bin};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICE: &str = "hotsync-webhook.hotsync-system.svc";

struct Webhook {
    child: Child,
    addr: SocketAddr,
    ca_pem: String,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs the webhook "by hand": its TLS material from the manifests, the server as a process.
fn start(env: &Env) -> Webhook {
    let out = Command::new(bin("hotsync")).args(["webhook", "manifests"]).output().unwrap();
    assert!(out.status.success());
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let b64 = |v: &Value| {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
    };
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    let config = docs.iter().find(|d| d["kind"] == "MutatingWebhookConfiguration").unwrap();
    let ca_pem = b64(&config["webhooks"][0]["clientConfig"]["caBundle"]);
    std::fs::write(env.path("tls.crt"), b64(&secret["data"]["tls.crt"])).unwrap();
    std::fs::write(env.path("tls.key"), b64(&secret["data"]["tls.key"])).unwrap();

    let mut child = Command::new(bin("hotsync-agent"))
        .args(["webhook", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(env.path("tls.crt"))
        .arg("--tls-key")
        .arg(env.path("tls.key"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading the log to its end: a closed pipe would fail the webhook's next log line.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("hotsync webhook listening") {
                let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).map(str::to_owned);
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx.recv_timeout(hotsync_e2e::PATIENCE).ok().flatten().expect("the webhook started");
    Webhook { child, addr: addr.parse().unwrap(), ca_pem }
}

/// One HTTPS request with a client that trusts `ca_pem` only; returns (status, body).
async fn request(
    addr: SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut stream = connector.connect(ServerName::try_from(SERVICE).unwrap(), tcp).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {SERVICE}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    // The response is framed by Content-Length; a server may close without TLS close_notify.
    match stream.read_to_end(&mut raw).await {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        other => {
            other?;
        }
    }
    let response = String::from_utf8_lossy(&raw).into_owned();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../shared/inject/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_webhook_answers_reviews_over_tls_that_the_ca_bundle_verifies() {
    let env = Env::new();
    let hook = start(&env);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (status, body) = request(hook.addr, &hook.ca_pem, "GET", "/healthz", b"").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));

        let (status, body) =
            request(hook.addr, &hook.ca_pem, "POST", "/inject", &fixture("deployment-pod.json")).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let review: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(review["response"]["allowed"], true);
        assert_eq!(review["response"]["patchType"], "JSONPatch");

        let (status, body) = request(hook.addr, &hook.ca_pem, "POST", "/inject", b"{not json").await.unwrap();
        assert_eq!(status, 400, "a malformed review gets an error response: {body}");

        // A client that trusts another CA refuses the webhook's certificate.
        let other = hotsync_transport::credentials::ServerTls::generate(&[SERVICE.to_owned()]).unwrap();
        assert!(request(hook.addr, &other.ca_pem, "GET", "/healthz", b"").await.is_err());
    });
}
