//! Port-forward over a WebSocket, as the API server and kubelet serve it: subprotocol
//! `v4.channel.k8s.io` chosen from the client's offer, two channels per port (data 2i,
//! error 2i+1), each opened with the port as two little-endian bytes, bytes piped to a TCP
//! connection to POD_IP:PORT, a dial failure reported on the error channel.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::Shared;
use super::errors::ApiError;
use super::resources::by_plural;
use super::server::{Body, Query, full};

/// Subprotocols the kubelet's port-forward accepts, binary ones only (base64 is not served).
const PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "portforward.k8s.io"];

pub(crate) fn handle(shared: &Shared, req: Request<Incoming>, ns: &str, name: &str, query: &Query) -> Response<Body> {
    match prepare(shared, &req, ns, name, query) {
        Err(e) => e.response(),
        Ok((ip, ports, protocol, accept)) => {
            let pod = name.to_owned();
            tokio::spawn(async move {
                let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                forward(ws, ip, &ports, &pod).await;
            });
            Response::builder()
                .status(101)
                .header(header::UPGRADE, "websocket")
                .header(header::CONNECTION, "Upgrade")
                .header(header::SEC_WEBSOCKET_ACCEPT, accept)
                .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
                .body(full(Bytes::new()))
                .expect("a valid response")
        }
    }
}

type Prepared = (std::net::Ipv4Addr, Vec<u16>, String, String);

fn prepare(
    shared: &Shared,
    req: &Request<Incoming>,
    ns: &str,
    name: &str,
    query: &Query,
) -> Result<Prepared, ApiError> {
    let pods = by_plural("", "pods");
    let pod = shared.store().get(pods, ns, name).cloned().ok_or_else(|| ApiError::not_found(pods, name))?;
    let mut ports = Vec::new();
    for p in query.all("ports").chain(query.all("port")).flat_map(|v| v.split(',')) {
        let port = p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            ApiError::bad_request(&format!("invalid port {p:?}: must be a number between 1 and 65535"))
        })?;
        ports.push(port);
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request("at least one port must be specified"));
    }
    if pod["spec"]["nodeName"].as_str().unwrap_or_default().is_empty() {
        return Err(ApiError::bad_request(&format!("pod {name} does not have a host assigned")));
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if phase != "Running" {
        return Err(ApiError::bad_request(&format!(
            "unable to upgrade connection: pod {name} is not running (phase {phase:?})"
        )));
    }
    let ip = shared.kubelet.ip(ns, name).ok_or_else(|| ApiError::bad_request(&format!("pod {name} has no IP yet")))?;
    let h = req.headers();
    let is_ws =
        h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = h.get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok());
    let (true, Some(key)) = (is_ws, key) else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let offered: Vec<&str> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(protocol) = offered.iter().find(|p| PROTOCOLS.contains(p)) else {
        return Err(ApiError::bad_request(&format!(
            "requested protocol(s) are not supported: {offered:?}; supports {PROTOCOLS:?}"
        )));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok((ip, ports, (*protocol).to_owned(), accept))
}

async fn forward<S>(ws: WebSocketStream<S>, ip: std::net::Ipv4Addr, ports: &[u16], pod: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = m.is_close();
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let frame = |ch: u8, data: &[u8]| {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(ch);
        v.extend_from_slice(data);
        Message::binary(v)
    };
    let mut to_pod: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    let mut readers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let ch = (2 * i) as u8;
        let _ = out_tx.send(frame(ch, &port.to_le_bytes())).await;
        let _ = out_tx.send(frame(ch + 1, &port.to_le_bytes())).await;
        match tokio::net::TcpStream::connect((ip, *port)).await {
            Ok(tcp) => {
                let (mut r, w) = tcp.into_split();
                to_pod.push(Some(w));
                let out = out_tx.clone();
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if out.send(frame(ch, &buf[..n])).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }));
            }
            Err(e) => {
                to_pod.push(None);
                let msg = format!(
                    "error forwarding port {port} to pod {pod}, uid : failed to execute portforward in network namespace \"/var/run/netns/cni-{pod}\": failed to connect to localhost:{port} inside namespace \"{pod}\", IPv4: dial tcp4 {ip}:{port}: connect: {e} IPv6 dial tcp6 [::1]:{port}: connect: connection refused "
                );
                let _ = out_tx.send(frame(ch + 1, msg.as_bytes())).await;
            }
        }
    }
    // Client → pod, until the client closes; pod → client, until every port's pod side ends.
    let all_read = futures_util::future::join_all(readers);
    tokio::pin!(all_read);
    loop {
        tokio::select! {
            _ = &mut all_read => break,
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    let i = usize::from(b[0] / 2);
                    if b[0] % 2 == 0 && let Some(Some(w)) = to_pod.get_mut(i) && w.write_all(&b[1..]).await.is_err() {
                        to_pod[i] = None;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    for w in to_pod.iter_mut().flatten() {
                        let _ = w.shutdown().await;
                    }
                    break;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = out_tx.send(Message::Close(None)).await;
    drop(out_tx);
    let _ = writer.await;
}
