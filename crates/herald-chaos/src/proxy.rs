//! A TCP proxy on a loopback port between the relays and PostgreSQL that delays the traffic:
//! slow claims and slow write-backs without touching the database. Each chunk read from either
//! side is forwarded after a delay drawn from the current [`Latency`]; chunks of one direction
//! keep their order (a chunk never overtakes the one before it), so the protocol stays intact
//! while statements on different connections of one relay finish in a different order than
//! they were sent. The latency can be changed while connections are open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The delay each chunk gets: a base plus a uniformly drawn extra, in milliseconds.
#[derive(Debug, Default)]
pub struct Latency {
    base_ms: AtomicU64,
    spread_ms: AtomicU64,
}

impl Latency {
    /// Sets the delay to `base` plus up to `spread`, for every chunk from now on.
    pub fn set(&self, base: Duration, spread: Duration) {
        self.base_ms.store(
            base.as_millis().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.spread_ms.store(
            spread.as_millis().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn draw(&self) -> Duration {
        let base = self.base_ms.load(Ordering::Relaxed);
        let spread = self.spread_ms.load(Ordering::Relaxed);
        let extra = if spread == 0 {
            0
        } else {
            fastrand::u64(0..=spread)
        };
        Duration::from_millis(base.saturating_add(extra))
    }
}

/// A running proxy; stops (and drops every connection) when dropped.
pub struct DelayProxy {
    /// The local address the relays connect to.
    pub addr: SocketAddr,
    /// The delay, adjustable while the proxy runs.
    pub latency: Arc<Latency>,
    stop: CancellationToken,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the delay proxy")?;
        let addr = listener.local_addr()?;
        let latency = Arc::new(Latency::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, latency.clone(), stop.clone()));
        Ok(Self {
            addr,
            latency,
            stop,
        })
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    latency: Arc<Latency>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(err) => {
                    tracing::warn!(error = %err, "delay proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let latency = latency.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let server = match TcpStream::connect(upstream).await {
                Ok(server) => server,
                // The database is down (restarted): the client sees its connection closed.
                Err(_) => return,
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let conn = stop.child_token();
            let up = pipe(client_read, server_write, latency.clone(), conn.clone());
            let down = pipe(server_read, client_write, latency, conn.clone());
            // Either side closing (or the proxy stopping) ends the connection.
            tokio::select! {
                () = up => {}
                () = down => {}
                () = conn.cancelled() => {}
            }
            conn.cancel();
        });
    }
}

/// Forwards one direction: a reader stamps each chunk with its due time, a writer sends it
/// then, never before the chunk ahead of it.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    latency: Arc<Latency>,
    stop: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = (Instant::now() + latency.draw()).max(last_due);
                    last_due = due;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::select! {
        () = stop.cancelled() => {}
        () = async { tokio::join!(reader, writer); } => {}
    }
}
