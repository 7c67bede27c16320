//! Stores that wrap another to change a few of its calls, the way a test injects a fault (a
//! late claim, a lost answer, an outage): the wrapper implements [`WrapStore`], overriding only
//! the calls it changes, and the test runs [`Wrapped`] of it, an [`OutboxStore`] that forwards
//! every other call to the inner store.
//!
//! ```
//! use herald_core::{ClaimRequest, ClaimedEvent, OutboxStore, Result};
//! use herald_testkit::wrap::{WrapStore, Wrapped};
//!
//! /// Claims that come back a little late.
//! #[derive(Clone)]
//! struct Late<S>(S);
//!
//! impl<S: OutboxStore> WrapStore for Late<S> {
//!     type Inner = S;
//!
//!     fn inner(&self) -> &S {
//!         &self.0
//!     }
//!
//!     async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
//!         let claimed = self.0.claim(request).await;
//!         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//!         claimed
//!     }
//! }
//!
//! fn late<S: OutboxStore + Clone>(store: S) -> impl OutboxStore + Clone {
//!     Wrapped(Late(store))
//! }
//! ```

use std::future::Future;
use std::time::Duration;

use herald_core::{ClaimRequest, ClaimedEvent, Failure, OutboxStore, Result, Seq, Signal, Uuid};

/// A store around an inner one; every call it does not override goes to the inner store
/// unchanged. [`Wrapped`] makes it an [`OutboxStore`].
pub trait WrapStore: Send + Sync + 'static {
    /// The wrapped store.
    type Inner: OutboxStore;

    /// The wrapped store.
    fn inner(&self) -> &Self::Inner;

    /// [`OutboxStore::claim`].
    fn claim(
        &self,
        request: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<ClaimedEvent>>> + Send {
        self.inner().claim(request)
    }

    /// [`OutboxStore::complete`].
    fn complete(&self, relay_id: Uuid, seqs: &[Seq]) -> impl Future<Output = Result<u64>> + Send {
        self.inner().complete(relay_id, seqs)
    }

    /// [`OutboxStore::fail`].
    fn fail(
        &self,
        relay_id: Uuid,
        failures: &[Failure],
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner().fail(relay_id, failures)
    }

    /// [`OutboxStore::release`].
    fn release(&self, relay_id: Uuid, seqs: &[Seq]) -> impl Future<Output = Result<()>> + Send {
        self.inner().release(relay_id, seqs)
    }

    /// [`OutboxStore::prune`].
    fn prune(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.inner().prune(older_than, limit)
    }

    /// [`OutboxStore::signal`].
    fn signal(&self) -> Signal {
        self.inner().signal()
    }
}

/// The [`OutboxStore`] of a [`WrapStore`].
#[derive(Debug, Clone, Default)]
pub struct Wrapped<W>(pub W);

impl<W: WrapStore> OutboxStore for Wrapped<W> {
    fn claim(
        &self,
        request: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<ClaimedEvent>>> + Send {
        self.0.claim(request)
    }

    fn complete(&self, relay_id: Uuid, seqs: &[Seq]) -> impl Future<Output = Result<u64>> + Send {
        self.0.complete(relay_id, seqs)
    }

    fn fail(
        &self,
        relay_id: Uuid,
        failures: &[Failure],
    ) -> impl Future<Output = Result<()>> + Send {
        self.0.fail(relay_id, failures)
    }

    fn release(&self, relay_id: Uuid, seqs: &[Seq]) -> impl Future<Output = Result<()>> + Send {
        self.0.release(relay_id, seqs)
    }

    fn prune(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.0.prune(older_than, limit)
    }

    fn signal(&self) -> Signal {
        self.0.signal()
    }
}
