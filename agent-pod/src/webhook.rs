//! `hotsync-agent webhook`: the mutating admission webhook, served over HTTPS.
//!
//! `POST /inject` injects pods that carry `hotsync.dev/inject: "true"`; `POST /inject-all`
//! injects every pod (for namespaces labelled to opt in). The decision itself is the pure
//! [`hotsync_inject::admission::review`], on the same injection function as `hotsync attach`
//! and `hotsync inject`. `GET /healthz` and `/readyz` answer `ok`. The certificate files are
//! re-read when they change, so a rotated certificate is served without a restart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use bytes::Bytes;
use hotsync_inject::Options;
use hotsync_inject::admission::{Scope, review};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// The API server sends whole pods; 4 MiB is far above any real one.
const MAX_BODY: usize = 4 << 20;

/// How the webhook is set up.
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Options before each pod's annotations.
    pub defaults: Options,
}

/// A bound webhook server.
pub struct Webhook {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    defaults: Arc<Options>,
}

impl Webhook {
    /// Loads the certificate and binds.
    pub async fn bind(cfg: WebhookConfig) -> anyhow::Result<Self> {
        let resolver = Arc::new(ReloadingCert::new(cfg.tls_cert, cfg.tls_key)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        Ok(Self {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            defaults: Arc::new(cfg.defaults),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn run(self) -> anyhow::Result<()> {
        loop {
            let (stream, peer) = self.listener.accept().await?;
            let (acceptor, defaults) = (self.acceptor.clone(), self.defaults.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                };
                let service = service_fn(move |req| handle(req, defaults.clone()));
                if let Err(e) =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await
                {
                    warn!(%peer, "connection error: {e}");
                }
            });
        }
    }
}

async fn handle(req: Request<Incoming>, defaults: Arc<Options>) -> Result<Response<Full<Bytes>>, Infallible> {
    let scope = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz" | "/readyz") => return Ok(text(StatusCode::OK, "ok")),
        (&Method::POST, "/inject") => Scope::AnnotatedPods,
        (&Method::POST, "/inject-all") => Scope::AllPods,
        _ => return Ok(text(StatusCode::NOT_FOUND, "hotsync webhook: POST /inject or /inject-all; GET /healthz")),
    };
    let json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Ok(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "hotsync webhook: expected Content-Type: application/json",
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, &format!("hotsync webhook: cannot read the request: {e}")));
        }
    };
    match review(&body, &defaults, scope, env!("CARGO_PKG_VERSION")) {
        Ok(answer) => {
            let bytes = serde_json::to_vec(&answer).unwrap_or_default();
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .expect("a static response builds"))
        }
        Err(e) => {
            info!("bad admission request: {e}");
            Ok(text(StatusCode::BAD_REQUEST, &format!("hotsync webhook: {e}")))
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a static response builds")
}

/// Serves the certificate in two files, re-reading them when their modification time changes.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    fn new(cert: PathBuf, key: PathBuf) -> anyhow::Result<Self> {
        let loaded = load(&cert, &key)?;
        let stamp = modified(&cert);
        Ok(Self { cert, key, current: Mutex::new((stamp, loaded)) })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().ok()?;
        let stamp = modified(&self.cert);
        if stamp != current.0 {
            match load(&self.cert, &self.key) {
                Ok(fresh) => {
                    info!(cert = %self.cert.display(), "serving a renewed certificate");
                    *current = (stamp, fresh);
                }
                // Mid-rotation (one file written, not the other): keep serving the old pair.
                Err(e) => warn!("cannot load the renewed certificate yet: {e:#}"),
            }
        }
        Some(current.1.clone())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("--tls-cert {} is not PEM certificates", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "--tls-cert {} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("cannot read --tls-key {}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).context("unsupported private key type")?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}
