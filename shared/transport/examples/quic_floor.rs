//! The QUIC floor: how fast this machine moves bytes through hotsync's QUIC setup alone (the
//! same endpoints, TLS and transport settings, one stream on loopback) with no file read,
//! hashed or written on either side. `bench/run` reports it beside W2's initial sync: what
//! hotsync cannot beat whatever it does with files.
//!
//!     cargo run --release -p hotsync-transport --example quic_floor -- [BYTES]   (200 MiB)
//!
//! Prints one line of JSON: bytes, seconds, and the CPU seconds the process used.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use hotsync_core::proto::AGENT_SERVER_NAME;
use hotsync_transport::credentials::{GeneratedCredentials, Identity, Role};
use hotsync_transport::endpoint;

/// The host's write size, as `hotsync` sends a large file.
const PIECE: usize = 1 << 20;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: u64 = std::env::args().nth(1).map_or(Ok(200 << 20), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    GeneratedCredentials::generate()?.write_to(dir.path())?;
    let (agent, host) = (Identity::load(dir.path(), Role::Agent)?, Identity::load(dir.path(), Role::Host)?);

    let server = endpoint::server_endpoint(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &agent)?;
    let addr = server.local_addr()?;
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.expect("a connection").await?;
        let mut stream = conn.accept_uni().await?;
        let mut got = 0u64;
        while let Some(chunk) = stream.read_chunk(PIECE, true).await? {
            got += chunk.bytes.len() as u64;
        }
        conn.close(0u32.into(), b"done");
        Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(got)
    });

    let client = endpoint::client_endpoint(&host, addr)?;
    let conn = client.connect(addr, AGENT_SERVER_NAME)?.await?;
    let piece = Bytes::from(vec![0x5a; PIECE]);
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut stream = conn.open_uni().await?;
    let mut sent = 0u64;
    while sent < total {
        let n = PIECE.min(usize::try_from(total - sent)?);
        stream.write_chunk(piece.slice(..n)).await?;
        sent += n as u64;
    }
    stream.finish()?;
    let received = receiver.await?.map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    assert_eq!(received, total, "the receiver got every byte");
    println!("{{\"bytes\": {total}, \"seconds\": {seconds:.4}, \"cpu_seconds\": {cpu:.4}}}");
    Ok(())
}

/// User + system CPU time of this process so far (`/proc/self/stat`, in clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    f64::from(u32::try_from(ticks).unwrap_or(u32::MAX)) / 100.0
}
