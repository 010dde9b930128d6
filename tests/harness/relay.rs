//! A UDP relay that impairs a link the way `netem` would (this kernel has none): every
//! datagram is delayed, some are dropped, some overtake others. Seeded, so a run is repeatable.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How the link misbehaves, each way.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub delay: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram gets extra delay (and so arrives after later ones).
    pub reorder: f64,
}

type Queue = Arc<(Mutex<BinaryHeap<Reverse<(Instant, u64, usize, Vec<u8>)>>>, Condvar)>;

/// A running relay: the host talks to `addr`, the relay to the agent.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(upstream: SocketAddr, imp: Impairment, seed: u64) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let back = Arc::new(UdpSocket::bind("0.0.0.0:0").unwrap());
        back.connect(upstream).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let queue: Queue = Arc::default();
        let rng = Arc::new(Mutex::new(seed | 1));
        let chance = {
            let rng = rng.clone();
            move |p: f64| {
                let mut x = rng.lock().unwrap();
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                (*x % 1_000_000) as f64 / 1_000_000.0 < p
            }
        };
        let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Direction 0: host → agent; 1: agent → host.
        for dir in 0..2 {
            let (from, queue, stop, client, chance, seq) = (
                if dir == 0 { front.clone() } else { back.clone() },
                queue.clone(),
                stop.clone(),
                client.clone(),
                chance.clone(),
                seq.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, src)) = from.recv_from(&mut buf) else { continue };
                    if dir == 0 {
                        *client.lock().unwrap() = Some(src);
                    }
                    if chance(imp.loss) {
                        continue;
                    }
                    let extra = if chance(imp.reorder) { imp.delay } else { Duration::ZERO };
                    let at = Instant::now() + imp.delay + extra;
                    let (lock, cv) = &*queue;
                    lock.lock().unwrap().push(Reverse((
                        at,
                        seq.fetch_add(1, Ordering::Relaxed),
                        dir,
                        buf[..n].to_vec(),
                    )));
                    cv.notify_one();
                }
            });
        }
        let (q, s) = (queue, stop.clone());
        std::thread::spawn(move || {
            let (lock, cv) = &*q;
            let mut heap = lock.lock().unwrap();
            while !s.load(Ordering::Relaxed) {
                let now = Instant::now();
                match heap.peek() {
                    Some(Reverse((at, ..))) if *at <= now => {
                        let Reverse((_, _, dir, bytes)) = heap.pop().unwrap();
                        if dir == 0 {
                            let _ = back.send(&bytes);
                        } else if let Some(c) = *client.lock().unwrap() {
                            let _ = front.send_to(&bytes, c);
                        }
                    }
                    Some(Reverse((at, ..))) => {
                        let wait = *at - now;
                        heap = cv.wait_timeout(heap, wait).unwrap().0;
                    }
                    None => heap = cv.wait_timeout(heap, Duration::from_millis(100)).unwrap().0,
                }
            }
        });
        Self { addr, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
