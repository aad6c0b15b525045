//! A faulty network for tests and simulations: a UDP relay on 127.0.0.1 between one
//! agent and the aggregator that drops, delays, duplicates and reorders datagrams at set
//! rates, and can cut and heal the link.
//!
//! Point an agent at [`Link::addr`] instead of the aggregator; everything it sends goes
//! through the relay to the aggregator and back. Faults apply in both directions, each
//! datagram on its own (seeded, so a run is repeatable up to timing).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the link does to each datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Delay added to every datagram.
    pub delay: Duration,
    /// Up to this much more delay, uniformly drawn per datagram.
    pub jitter: Duration,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability a datagram is held back (by twice the delay, at least 1 ms) so later
    /// ones overtake it.
    pub reorder: f64,
}

/// What the link did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams delivered (duplicates counted once more each).
    pub delivered: u64,
    /// Datagrams dropped by loss or a cut.
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

struct Shared {
    faults: Mutex<Faults>,
    cut: AtomicBool,
    counters: Counters,
    rng: Mutex<StdRng>,
}

/// One agent's link to the aggregator through the relay. Dropping it closes the link.
pub struct Link {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Link {
    /// Starts a relay to `target` (the aggregator) with `faults`, seeded by `seed`.
    ///
    /// # Errors
    /// When a socket on 127.0.0.1 cannot be bound.
    pub async fn start(target: SocketAddr, faults: Faults, seed: u64) -> std::io::Result<Link> {
        let front = Arc::new(UdpSocket::bind(("127.0.0.1", 0)).await?);
        let back = Arc::new(UdpSocket::bind(("127.0.0.1", 0)).await?);
        back.connect(target).await?;
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            cut: AtomicBool::new(false),
            counters: Counters::default(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        });
        let task = tokio::spawn(relay(front, back, shared.clone()));
        Ok(Link { addr, shared, task })
    }

    /// Where the agent should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram, both ways, until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Lets datagrams through again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap_or_else(PoisonError::into_inner) = faults;
    }

    /// What the link did so far.
    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        LinkStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a datagram goes.
#[derive(Clone, Copy)]
enum Hop {
    /// To the aggregator, on the connected back socket.
    Aggregator,
    /// To the agent at this address, on the front socket.
    Agent(SocketAddr),
}

async fn relay(front: Arc<UdpSocket>, back: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut up = vec![0u8; 65_536];
    let mut down = vec![0u8; 65_536];
    let mut agent: Option<SocketAddr> = None;
    loop {
        tokio::select! {
            received = front.recv_from(&mut up) => {
                let Ok((n, from)) = received else { continue };
                agent = Some(from);
                deliver(&front, &back, &shared, Hop::Aggregator, &up[..n]);
            }
            received = back.recv(&mut down) => {
                let Ok(n) = received else { continue };
                if let Some(to) = agent {
                    deliver(&front, &back, &shared, Hop::Agent(to), &down[..n]);
                }
            }
        }
    }
}

/// Applies the faults to one datagram and sends what survives, now or after its delay.
fn deliver(front: &Arc<UdpSocket>, back: &Arc<UdpSocket>, shared: &Shared, hop: Hop, datagram: &[u8]) {
    let faults = *shared.faults.lock().unwrap_or_else(PoisonError::into_inner);
    let counters = &shared.counters;
    let mut rng = shared.rng.lock().unwrap_or_else(PoisonError::into_inner);
    if shared.cut.load(Ordering::SeqCst) || rng.random::<f64>() < faults.loss {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let copies = if rng.random::<f64>() < faults.duplicate { 2 } else { 1 };
    if copies == 2 {
        counters.duplicated.fetch_add(1, Ordering::Relaxed);
    }
    for _ in 0..copies {
        let mut delay = faults.delay + faults.jitter.mul_f64(rng.random::<f64>());
        if rng.random::<f64>() < faults.reorder {
            delay += (faults.delay * 2).max(Duration::from_millis(1));
        }
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        let socket = match hop {
            Hop::Aggregator => back.clone(),
            Hop::Agent(_) => front.clone(),
        };
        if delay.is_zero() {
            send(&socket, hop, datagram);
        } else {
            let datagram = datagram.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                send(&socket, hop, &datagram);
            });
        }
    }
}

/// Sends without waiting: a full socket buffer drops the datagram, as a real network would.
fn send(socket: &UdpSocket, hop: Hop, datagram: &[u8]) {
    let _ = match hop {
        Hop::Aggregator => socket.try_send(datagram),
        Hop::Agent(to) => socket.try_send_to(datagram, to),
    };
}
