//! QUIC endpoints with pinned mutual TLS (TLS 1.3 only, ring crypto).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hotsync_core::proto::ALPN;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;

use crate::credentials::Identity;

/// Errors setting up an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

fn tls_err(e: impl std::fmt::Display) -> EndpointError {
    EndpointError::Tls(e.to_string())
}

/// Transport settings tuned for bulk transfer on fast links and quick failure detection.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // What a receiver lets a sender run ahead of it: enough to fill a fast link (4 MiB is
    // 40 ms at 100 MB/s), no more. The agent writes at disk speed: credit beyond that only
    // piles data up in its memory. Once packets stopped being dropped (see
    // `enlarge_receive_buffer`), 16 MiB per stream, 64 MiB in all and 256 streams at once let
    // the agent hold 52–62 MiB after a 20,000-file sync; with these, 19 MiB. Both changes
    // together, in interleaved runs on tmpfs: W1 686 → 601 ms, W2 644 → 541 ms.
    t.stream_receive_window(quinn::VarInt::from_u32(2 << 20));
    t.receive_window(quinn::VarInt::from_u32(4 << 20));
    t.send_window(64 << 20);
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(8));
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // Idle timeout bounds how long a dead link goes unnoticed.
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(8_000))));
    t
}

/// Path MTU discovery for the host, the side that sends the bulk, starting at `start` bytes.
///
/// Started at what the kernel's route allows (see [`route_payload`]), it has nothing to probe:
/// a short session sends no padded probes. A smaller link further on shows as lost packets:
/// quinn's black hole detection then falls back to 1,200 bytes and the search runs again from
/// there after a cooldown. When the route is unknown it searches from 1,200 bytes with a
/// minimum step of 126 bytes: two probes (1,326, then 1,452) instead of quinn's four.
fn host_mtu_discovery(start: Option<u16>) -> quinn::MtuDiscoveryConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.minimum_change(126).upper_bound(start.unwrap_or(MAX_PAYLOAD)).black_hole_cooldown(Duration::from_secs(10));
    mtu
}

/// The largest UDP payload the host sends: quinn's default ceiling, which leaves room for
/// IPv6 and tunnel headers on a 1,500-byte Ethernet path.
pub const MAX_PAYLOAD: u16 = 1452;

/// The UDP payload that fits the MTU of the kernel's route to `peer` (the first hop: loopback,
/// a bridge, an overlay network), at most [`MAX_PAYLOAD`]; `None` if the kernel cannot tell.
/// Starting there replaces the probes of path MTU discovery, whose padded packets were most of
/// what a short session cost. (Not more than [`MAX_PAYLOAD`] even on loopback: a port that
/// Docker publishes on 127.0.0.1 is forwarded onto a 1,500-byte bridge.)
pub fn route_payload(peer: SocketAddr) -> Option<u16> {
    let socket = std::net::UdpSocket::bind(any_port_for(peer)).ok()?;
    socket.connect(peer).ok()?;
    let (mtu, headers) = if peer.is_ipv6() {
        (rustix::net::sockopt::ipv6_mtu(&socket).ok()?, 48)
    } else {
        (rustix::net::sockopt::ip_mtu(&socket).ok()?, 28)
    };
    let payload = u16::try_from(mtu.saturating_sub(headers)).unwrap_or(u16::MAX).min(MAX_PAYLOAD);
    (payload >= 1200).then_some(payload)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(identity: &Identity) -> Result<RootCertStore, EndpointError> {
    let mut roots = RootCertStore::empty();
    roots.add(identity.ca.clone()).map_err(tls_err)?;
    Ok(roots)
}

/// A QUIC server on `addr` that accepts only clients whose certificate the CA signed.
pub fn server_endpoint(addr: SocketAddr, identity: &Identity) -> Result<quinn::Endpoint, EndpointError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| EndpointError::Bind { addr, source })?;
    enlarge_receive_buffer(&socket);
    quinn::Endpoint::new(endpoint_config(), Some(server_config(identity)?), socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| EndpointError::Bind { addr, source })
}

/// Both sides' endpoint settings: zero-length connection IDs (RFC 9000 §5.1).
///
/// Packets are told apart by address instead: a host runs one connection per endpoint, and an
/// agent has a handful of hosts, each from its own address and port. No ID is then issued in
/// advance (a NEW_CONNECTION_ID packet per connection) nor carried in each packet the host
/// sends: together about 110 bytes of a 4 KiB reconnect. The price: a host whose address
/// changes mid-session (NAT rebinding, a laptop changing networks) is not followed to its new
/// address; its session ends at the idle timeout (8 s) and it reconnects, which costs one
/// handshake and one hash comparison. Keep-alives every 2 s keep NAT mappings from expiring
/// meanwhile; the port-forward path is TCP, whose addresses cannot change.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(EmptyConnectionIds));
    config
}

/// The server side's TLS: TLS 1.3 only, clients must present a certificate the CA signed,
/// and hotsync's protocol version as ALPN.
pub fn server_tls(identity: &Identity) -> Result<rustls::ServerConfig, EndpointError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(identity)?), provider()).build().map_err(tls_err)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No session tickets: a new host process cannot resume (rustls keeps sessions in memory
    // only) and a resumed handshake saves no bytes (QUIC pads the first flights anyway).
    tls.send_tls13_tickets = 0;
    Ok(tls)
}

/// The server side's QUIC configuration.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, EndpointError> {
    let tls = server_tls(identity)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // No address-validation tokens for later connections either: the agent never asks for a
    // retry.
    config.validation_token.sent(0);
    let mut transport = transport_config();
    // The agent sends little (acknowledgements, answers, an index now and then): probing for
    // larger packets would cost more bytes than it saves.
    transport.mtu_discovery_config(None);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The client side's QUIC configuration: trusts only the CA, presents the host certificate.
/// `payload` is the packet size the path is known to carry ([`route_payload`]); without it the
/// host discovers it.
pub fn client_config(identity: &Identity, payload: Option<u16>) -> Result<quinn::ClientConfig, EndpointError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots(identity)?)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config();
    if let Some(payload) = payload {
        transport.initial_mtu(payload);
    }
    transport.mtu_discovery_config(Some(host_mtu_discovery(payload)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint on an ephemeral port of the address family of `peer`.
pub fn client_endpoint(identity: &Identity, peer: SocketAddr) -> Result<quinn::Endpoint, EndpointError> {
    let bind = any_port_for(peer);
    let socket = std::net::UdpSocket::bind(bind).map_err(|source| EndpointError::Bind { addr: bind, source })?;
    enlarge_receive_buffer(&socket);
    let mut endpoint = quinn::Endpoint::new(endpoint_config(), None, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| EndpointError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config(identity, route_payload(peer))?);
    Ok(endpoint)
}

/// The receive buffer each side asks for: about 350 full packets.
const RECEIVE_BUFFER: usize = 512 << 10;

/// Asks for a receive buffer that absorbs a burst while the process is busy elsewhere.
///
/// The kernel's default (208 KiB) fills whenever the agent stalls on a write for a moment;
/// every packet past it is dropped, and each drop cuts the host's congestion window: a
/// 200 MiB transfer on loopback lost 3,745 packets in 103 congestion events (on ext4, where
/// writes stall longest; 750–2,000 with this buffer). A larger one drops fewer still (none
/// with 8 MiB) but the more packets wait, the more of quinn's receive buffers the agent keeps
/// touched: its memory after a 20,000-file sync was 18.7 MiB with the default, 19.0 with
/// 512 KiB, 19.6 with 8 MiB, and the runs were no faster. A process with `CAP_NET_ADMIN` gets
/// it whole; others get at most `net.core.rmem_max` (208 KiB on many systems): a smaller
/// buffer is slower, not wrong, so a refusal is ignored.
fn enlarge_receive_buffer(socket: &std::net::UdpSocket) {
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(socket, RECEIVE_BUFFER).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(socket, RECEIVE_BUFFER);
    }
}

/// An ephemeral port on every address of `peer`'s family.
fn any_port_for(peer: SocketAddr) -> SocketAddr {
    let any = if peer.is_ipv6() { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    SocketAddr::new(any, 0)
}

/// Zero-length connection IDs (RFC 9000 §5.1), for an endpoint with a single connection.
struct EmptyConnectionIds;

impl quinn::ConnectionIdGenerator for EmptyConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&[])
    }

    fn cid_len(&self) -> usize {
        0
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_starts_at_full_size_packets() {
        // Loopback's MTU is 65,536: the host starts at the largest payload it sends.
        assert_eq!(route_payload("127.0.0.1:9".parse().unwrap()), Some(MAX_PAYLOAD));
    }

    #[test]
    fn sockets_get_the_largest_receive_buffer_the_kernel_grants() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = rustix::net::sockopt::socket_recv_buffer_size(&socket).unwrap();
        let ceiling: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
        enlarge_receive_buffer(&socket);
        // Linux reports twice the size granted (its bookkeeping overhead); without
        // CAP_NET_ADMIN it grants at most rmem_max.
        let granted = rustix::net::sockopt::socket_recv_buffer_size(&socket).unwrap();
        assert!(granted >= 2 * RECEIVE_BUFFER.min(ceiling), "{granted} bytes (ceiling {ceiling})");
        // (Where rmem_max is the default, only CAP_NET_ADMIN can make it grow.)
        assert!(ceiling <= default / 2 || granted > default, "the buffer grew from {default} to {granted}");
    }
}
