//! QUIC over a byte stream: a quinn socket whose datagrams travel on TCP connections, each
//! framed with a `u16` length.
//!
//! This is how hotsync reaches an agent that UDP cannot reach: the Kubernetes API server's
//! port-forward carries TCP only. QUIC still runs end to end over it (streams, mutual TLS,
//! loss recovery), so the host and agent code paths stay the same whatever the transport.
//!
//! One socket can carry many TCP connections (the agent side): each is a distinct peer,
//! addressed by the TCP connection's remote address.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Datagrams waiting to be read by quinn, most fit in a few hundred.
const INBOX_LIMIT: usize = 4096;

/// A quinn socket over byte streams.
pub struct StreamSocket {
    local: SocketAddr,
    inbox: Mutex<Inbox>,
    peers: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Bytes>>>,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<(SocketAddr, Bytes)>,
    waker: Option<Waker>,
}

impl fmt::Debug for StreamSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSocket").field("local", &self.local).finish_non_exhaustive()
    }
}

impl StreamSocket {
    /// A socket that reports `local` as its address.
    pub fn new(local: SocketAddr) -> Arc<Self> {
        Arc::new(Self { local, inbox: Mutex::new(Inbox::default()), peers: Mutex::new(HashMap::new()) })
    }

    /// Carries datagrams to and from `peer` over `stream` until it closes.
    pub fn attach<S>(self: &Arc<Self>, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut reader, writer) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        self.peers.lock().expect("peers lock").insert(peer, tx);

        let this = self.clone();
        tokio::spawn(async move {
            let mut len = [0u8; 2];
            loop {
                if reader.read_exact(&mut len).await.is_err() {
                    break;
                }
                let mut datagram = vec![0u8; usize::from(u16::from_le_bytes(len))];
                if reader.read_exact(&mut datagram).await.is_err() {
                    break;
                }
                this.deliver(peer, Bytes::from(datagram));
            }
            this.peers.lock().expect("peers lock").remove(&peer);
        });
        tokio::spawn(async move {
            let mut writer = BufWriter::new(writer);
            while let Some(datagram) = rx.recv().await {
                let mut ok = write_datagram(&mut writer, &datagram).await.is_ok();
                // Batch whatever is already queued into one flush.
                while ok {
                    match rx.try_recv() {
                        Ok(more) => ok = write_datagram(&mut writer, &more).await.is_ok(),
                        Err(_) => break,
                    }
                }
                if !ok || writer.flush().await.is_err() {
                    break;
                }
            }
        });
    }

    fn deliver(&self, from: SocketAddr, datagram: Bytes) {
        let mut inbox = self.inbox.lock().expect("inbox lock");
        if inbox.queue.len() < INBOX_LIMIT {
            inbox.queue.push_back((from, datagram));
        }
        // Like a full UDP receive buffer: drop, QUIC recovers.
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
    }
}

async fn write_datagram<W: AsyncWrite + Unpin>(w: &mut W, datagram: &[u8]) -> io::Result<()> {
    let len = u16::try_from(datagram.len()).map_err(|_| io::Error::other("datagram over 64 KiB"))?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(datagram).await
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for StreamSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let peers = self.peers.lock().expect("peers lock");
        // A peer whose stream is gone is like an unreachable UDP address: the datagram is lost.
        let Some(tx) = peers.get(&transmit.destination) else { return Ok(()) };
        let size = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        for datagram in transmit.contents.chunks(size) {
            let _ = tx.send(Bytes::copy_from_slice(datagram));
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = self.inbox.lock().expect("inbox lock");
        if inbox.queue.is_empty() {
            inbox.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((from, datagram)) = inbox.queue.pop_front() else { break };
            let len = datagram.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&datagram[..len]);
            meta[n] = RecvMeta { addr: from, len, stride: len, ..RecvMeta::default() };
            n += 1;
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        // A byte stream never fragments: let QUIC find the largest packets it may send.
        false
    }
}

/// A QUIC endpoint whose packets travel over `socket`.
pub fn endpoint_over(socket: Arc<StreamSocket>, server: Option<quinn::ServerConfig>) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new_with_abstract_socket(
        crate::endpoint::endpoint_config(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Serves QUIC over every TCP connection `listener` accepts, on one endpoint.
pub fn serve_tcp(listener: tokio::net::TcpListener, server: quinn::ServerConfig) -> io::Result<quinn::Endpoint> {
    let socket = StreamSocket::new(listener.local_addr()?);
    let endpoint = endpoint_over(socket.clone(), Some(server))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    socket.attach(stream, peer);
                }
                Err(e) => tracing::warn!("TCP accept failed: {e}"),
            }
        }
    });
    Ok(endpoint)
}

/// A client endpoint whose one peer is at the other end of `stream`; connect to the
/// returned address.
pub fn client_over<S>(stream: S, client: quinn::ClientConfig) -> io::Result<(quinn::Endpoint, SocketAddr)>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Addresses only name the ends of this one stream.
    let local = SocketAddr::from(([127, 0, 0, 1], 1));
    let peer = SocketAddr::from(([127, 0, 0, 1], 2));
    let socket = StreamSocket::new(local);
    socket.attach(stream, peer);
    let mut endpoint = endpoint_over(socket, None)?;
    endpoint.set_default_client_config(client);
    Ok((endpoint, peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::GeneratedCredentials;
    use crate::endpoint::{client_config, server_config};
    use crate::{Identity, Role};

    #[tokio::test]
    async fn quic_with_mutual_tls_runs_over_tcp() {
        let dir = tempfile::tempdir().unwrap();
        GeneratedCredentials::generate().unwrap().write_to(dir.path()).unwrap();
        let agent = Identity::load(dir.path(), Role::Agent).unwrap();
        let host = Identity::load(dir.path(), Role::Host).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_tcp(listener, server_config(&agent).unwrap()).unwrap();
        let echo = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let data = recv.read_to_end(8 << 20).await.unwrap();
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
        });

        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, peer) = client_over(stream, client_config(&host, None).unwrap()).unwrap();
        let conn = client.connect(peer, hotsync_core::proto::AGENT_SERVER_NAME).unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let payload: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
        send.write_all(&payload).await.unwrap();
        send.finish().unwrap();
        let back = recv.read_to_end(8 << 20).await.unwrap();
        assert_eq!(back, payload, "2 MiB round trip over QUIC over TCP");
        conn.close(0u32.into(), b"done");
        echo.await.unwrap();
    }
}
