//! Wake-ups: how a writer tells relays that work was committed.

use std::sync::Arc;

use tokio::sync::watch;

/// A cheap, cloneable doorbell. Writers [`ring`](Signal::ring) it after committing; each relay
/// holds a [`Wakeups`] receiver. A ring is never lost: a relay that was busy when it rang sees
/// it the next time it waits.
#[derive(Debug, Clone)]
pub struct Signal {
    inner: Arc<watch::Sender<u64>>,
}

impl Default for Signal {
    fn default() -> Self {
        Self::new()
    }
}

impl Signal {
    /// A new doorbell that nobody listens to yet.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(0);
        Signal {
            inner: Arc::new(tx),
        }
    }

    /// Wakes every listener.
    pub fn ring(&self) {
        self.inner.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A listener that sees every ring from now on.
    pub fn subscribe(&self) -> Wakeups {
        let mut rx = self.inner.subscribe();
        rx.mark_unchanged();
        Wakeups { rx }
    }
}

/// The receiving side of a [`Signal`].
#[derive(Debug)]
pub struct Wakeups {
    rx: watch::Receiver<u64>,
}

impl Wakeups {
    /// Marks every ring so far as seen (call before looking for work).
    pub fn mark_seen(&mut self) {
        self.rx.mark_unchanged();
    }

    /// Waits for a ring that was not yet seen. Returns at once if one is pending.
    pub async fn rung(&mut self) {
        if self.rx.changed().await.is_err() {
            // Every sender is gone: no ring can come any more.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_ring_while_busy_is_not_lost() {
        let signal = Signal::new();
        let mut wakeups = signal.subscribe();
        wakeups.mark_seen();
        signal.ring();
        tokio::time::timeout(Duration::from_millis(100), wakeups.rung())
            .await
            .expect("pending ring seen at once");
        wakeups.mark_seen();
        assert!(
            tokio::time::timeout(Duration::from_millis(20), wakeups.rung())
                .await
                .is_err()
        );
    }
}
