//! Batched acknowledgements for one consuming channel.
//!
//! Settling a delivery records it; a flusher task sends the records: one `basic.ack` with
//! `multiple` for every acknowledged delivery below the oldest one still being handled, single
//! acks for those that waited a round above it, and at once a `basic.nack` with `requeue` for
//! deliveries dropped unsettled. A delivery still being handled is never covered by a
//! `multiple` ack, whatever order handlers finish in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Acker, Channel};
use tokio::sync::Notify;
use tracing::debug;

/// A handle on a channel's acknowledgement batcher; the flusher sends what is left and stops
/// once every handle is gone.
pub(crate) struct AckHandle {
    acks: Arc<Acks>,
}

struct Acks {
    state: Mutex<State>,
    wake: Notify,
    handles: AtomicUsize,
    batch: usize,
    interval: Duration,
}

#[derive(Default)]
struct State {
    /// Handed out, not settled.
    pending: BTreeSet<u64>,
    /// Acknowledged, not yet sent, with whether a flush already passed them over.
    ready: BTreeMap<u64, (Acker, bool)>,
    /// Dropped unsettled: to give back to the queue.
    requeue: Vec<(u64, Acker)>,
}

/// What one flush sends.
#[derive(Default)]
struct Flush {
    requeue: Vec<(u64, Acker)>,
    multiple: Option<(u64, Acker)>,
    single: Vec<(u64, Acker)>,
}

impl AckHandle {
    /// Starts the batcher of `channel` (kept open until the batcher stops): up to `batch` acks per `multiple` ack, none waiting
    /// longer than `interval`.
    pub(crate) fn start(channel: Channel, batch: usize, interval: Duration) -> Self {
        let acks = Arc::new(Acks {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            handles: AtomicUsize::new(1),
            batch: batch.max(1),
            interval,
        });
        tokio::spawn(flusher(Arc::clone(&acks), channel));
        AckHandle { acks }
    }

    /// Delivery `tag` was handed out.
    pub(crate) fn handed_out(&self, tag: u64) {
        self.acks.state().pending.insert(tag);
    }

    /// Delivery `tag` is done.
    pub(crate) fn ack(&self, tag: u64, acker: Acker) {
        let mut state = self.acks.state();
        state.pending.remove(&tag);
        state.ready.insert(tag, (acker, false));
        drop(state);
        self.acks.wake.notify_one();
    }

    /// Delivery `tag` goes back to the queue, at once.
    pub(crate) fn requeue(&self, tag: u64, acker: Acker) {
        let mut state = self.acks.state();
        state.pending.remove(&tag);
        state.requeue.push((tag, acker));
        drop(state);
        self.acks.wake.notify_one();
    }

    /// Delivery `tag` was settled by other means (a broker-side reject). Call it only once
    /// that settlement was sent: until then the tag must hold back `multiple` acks.
    pub(crate) fn forget(&self, tag: u64) {
        self.acks.state().pending.remove(&tag);
        self.acks.wake.notify_one();
    }
}

impl Clone for AckHandle {
    fn clone(&self) -> Self {
        self.acks.handles.fetch_add(1, Ordering::AcqRel);
        AckHandle {
            acks: Arc::clone(&self.acks),
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if self.acks.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.acks.wake.notify_one();
        }
    }
}

impl Acks {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed(&self) -> bool {
        self.handles.load(Ordering::Acquire) == 0
    }

    /// Takes what can be sent now.
    fn take(&self, last: bool) -> Flush {
        let mut state = self.state();
        let mut flush = Flush {
            requeue: std::mem::take(&mut state.requeue),
            ..Flush::default()
        };
        let bound = if last {
            u64::MAX
        } else {
            state.pending.first().copied().unwrap_or(u64::MAX)
        };
        let above = state.ready.split_off(&bound);
        let below = std::mem::replace(&mut state.ready, above);
        flush.multiple = below
            .into_iter()
            .next_back()
            .map(|(tag, (acker, _))| (tag, acker));
        // Acks held back by an older delivery still being handled go out one by one after
        // waiting one round, so a slow handler never holds back the prefetch of the others.
        let waited: Vec<u64> = state
            .ready
            .iter()
            .filter(|(_, (_, passed))| *passed)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in waited {
            if let Some((acker, _)) = state.ready.remove(&tag) {
                flush.single.push((tag, acker));
            }
        }
        for (_, passed) in state.ready.values_mut() {
            *passed = true;
        }
        flush
    }

    fn idle(&self) -> bool {
        let state = self.state();
        state.ready.is_empty() && state.requeue.is_empty()
    }

    fn urgent(&self) -> bool {
        let state = self.state();
        !state.requeue.is_empty() || state.ready.len() >= self.batch
    }
}

/// Sends batches until every handle is gone; holds the channel open until then.
async fn flusher(acks: Arc<Acks>, channel: Channel) {
    loop {
        if acks.closed() && acks.idle() {
            break;
        }
        if acks.idle() {
            acks.wake.notified().await;
            continue;
        }
        if !acks.urgent() && !acks.closed() {
            // Gather a batch: until it is full, or the interval is over.
            let _ = tokio::time::timeout(acks.interval, async {
                while !acks.urgent() && !acks.closed() {
                    acks.wake.notified().await;
                }
            })
            .await;
        }
        let flush = acks.take(acks.closed());
        send(flush).await;
    }
    drop(channel);
}

async fn send(flush: Flush) {
    for (tag, acker) in flush.requeue {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        if let Err(err) = acker.nack(options).await {
            debug!(tag, error = %err, "requeue not sent; the broker requeues when the channel closes");
        }
    }
    if let Some((tag, acker)) = flush.multiple
        && let Err(err) = acker.ack(BasicAckOptions { multiple: true }).await
    {
        debug!(tag, error = %err, "ack not sent; those deliveries will be redelivered");
    }
    for (tag, acker) in flush.single {
        if let Err(err) = acker.ack(BasicAckOptions { multiple: false }).await {
            debug!(tag, error = %err, "ack not sent; the delivery will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acker(tag: u64) -> Acker {
        lapin::message::Delivery::mock(tag, "".into(), "".into(), false, Vec::new()).acker
    }

    fn acks() -> Acks {
        Acks {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            handles: AtomicUsize::new(1),
            batch: 64,
            interval: Duration::from_millis(10),
        }
    }

    fn handle(acks: Acks) -> AckHandle {
        AckHandle {
            acks: Arc::new(acks),
        }
    }

    fn tags(flush: &Flush) -> (Option<u64>, Vec<u64>, Vec<u64>) {
        (
            flush.multiple.as_ref().map(|(t, _)| *t),
            flush.single.iter().map(|(t, _)| *t).collect(),
            flush.requeue.iter().map(|(t, _)| *t).collect(),
        )
    }

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_still_being_handled() {
        let handle = handle(acks());
        for tag in 1..=5 {
            handle.handed_out(tag);
        }
        handle.ack(1, acker(1));
        handle.ack(2, acker(2));
        handle.ack(4, acker(4));
        assert_eq!(tags(&handle.acks.take(false)), (Some(2), vec![], vec![]));
        // 4 waits behind 3 for one round, then goes out on its own.
        assert_eq!(tags(&handle.acks.take(false)), (None, vec![4], vec![]));
        handle.ack(3, acker(3));
        handle.requeue(5, acker(5));
        assert_eq!(tags(&handle.acks.take(false)), (Some(3), vec![], vec![5]));
        assert!(handle.acks.idle());
    }

    #[test]
    fn acks_gathered_in_order_go_out_as_one() {
        let handle = handle(acks());
        for tag in 1..=100 {
            handle.handed_out(tag);
            handle.ack(tag, acker(tag));
        }
        assert!(handle.acks.urgent(), "a full batch is sent at once");
        assert_eq!(tags(&handle.acks.take(false)), (Some(100), vec![], vec![]));
    }

    #[test]
    fn a_delivery_settled_by_the_broker_no_longer_holds_acks_back() {
        let handle = handle(acks());
        handle.handed_out(1);
        handle.handed_out(2);
        handle.ack(2, acker(2));
        handle.forget(1);
        assert_eq!(tags(&handle.acks.take(false)), (Some(2), vec![], vec![]));
    }
}
