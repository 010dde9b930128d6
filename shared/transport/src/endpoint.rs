//! QUIC endpoints with pinned mutual TLS (TLS 1.3 only, ring crypto).

use std::net::SocketAddr;
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
    // Large windows: a 200 MiB file should not wait on flow-control credit at LAN speeds.
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(256));
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // Idle timeout bounds how long a dead link goes unnoticed.
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(8_000))));
    // Ask the peer to acknowledge within 2 ms instead of QUIC's default 25 ms. The peer's
    // max_ack_delay is part of every probe timeout, and a closed connection lingers for three
    // of them: a `--once` run waited ~80 ms at exit for nothing. Bulk transfers are not
    // affected (they are acknowledged every other packet anyway).
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.max_ack_delay(Some(ACK_DELAY));
    t.ack_frequency_config(Some(ack));
    t
}

/// The acknowledgement delay each side asks of the other.
const ACK_DELAY: Duration = Duration::from_millis(2);

/// Path MTU discovery for the host, the side that sends the bulk. Quinn's default binary search
/// from 1,200 to 1,452 bytes sends four padded probes (about 5.6 KB) on every connection, which
/// is most of what a reconnect with nothing to send costs. With a minimum step of 126 bytes it
/// probes 1,326 then 1,452 (Ethernet, loopback): two probes; a path between the two (an
/// overlay network) keeps 1,326.
fn host_mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.minimum_change(126);
    mtu
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
    quinn::Endpoint::server(server_config(identity)?, addr).map_err(|source| EndpointError::Bind { addr, source })
}

/// The server side's QUIC configuration.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, EndpointError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(identity)?), provider()).build().map_err(tls_err)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport_config();
    // The agent sends little (acknowledgements, answers, an index now and then): probing for
    // larger packets would cost more bytes than it saves.
    transport.mtu_discovery_config(None);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The client side's QUIC configuration: trusts only the CA, presents the host certificate.
pub fn client_config(identity: &Identity) -> Result<quinn::ClientConfig, EndpointError> {
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
    transport.mtu_discovery_config(Some(host_mtu_discovery()));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint on an ephemeral port of the address family of `peer`.
pub fn client_endpoint(identity: &Identity, peer: SocketAddr) -> Result<quinn::Endpoint, EndpointError> {
    let bind: SocketAddr =
        if peer.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("a literal socket address");
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|source| EndpointError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config(identity)?);
    Ok(endpoint)
}
