//! Consuming: a stream per consumer of a subscription's queue, which declares the topology,
//! consumes with a prefetch, decodes each delivery, and recovers by itself from a lost
//! connection, a closed channel or a consumer the broker cancelled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use herald_core::{Delivery, DeliveryStream, Result, Subscriber, SubscriptionSpec, Uuid};
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::acks::AckHandle;
use crate::config::QueueNames;
use crate::error::ResultExt;
use crate::settle::{self, AmqpAcknowledger, Inflight, reason};
use crate::topology::{self, Declaration};
use crate::{AmqpTransport, Shared, mapping};

/// Retried messages arriving this much or less before they are due are delivered anyway.
const EARLY_TOLERANCE: Duration = Duration::from_millis(10);

impl Subscriber for AmqpTransport {
    type Stream = AmqpStream;

    /// `rabbitmq`.
    fn messaging_system(&self) -> &'static str {
        crate::MESSAGING_SYSTEM
    }

    /// Declares the subscription's topology (queue, bindings, dead-letter exchange and queue,
    /// delay queues) and starts consuming its queue. Fails if the topology cannot be declared
    /// (a connection error, or an existing object with other settings).
    fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> impl Future<Output = Result<AmqpStream>> + Send {
        let shared = Arc::clone(&self.shared);
        let spec = spec.clone();
        async move {
            let names = QueueNames::of(&spec.name)?;
            let declarations = topology::plan(&shared.config, &spec)?;
            // 0 asks for no bound, as AMQP's `basic.qos` does; more than AMQP can say is the
            // most it can.
            let prefetch = u16::try_from(spec.prefetch).unwrap_or(u16::MAX);
            let mut stream = AmqpStream {
                shared,
                names: Arc::new(names),
                declarations,
                prefetch,
                max_attempts: spec.max_attempts,
                session: None,
                failures: 0,
                retry_at: None,
            };
            let session = stream.open().await?;
            stream.session = Some(Box::new(session));
            info!(queue = %stream.names.queue, prefetch, "consuming");
            Ok(stream)
        }
    }
}

/// The deliveries of one consumer of a subscription's queue.
///
/// Streams of the same subscription compete for its messages. The stream survives broker
/// restarts, lost connections, closed channels and cancelled consumers (a deleted queue is
/// declared again): it reconnects with backoff and goes on; a failure that will not go away by
/// itself (access refused, a conflicting declaration) is returned as an error item, after
/// which the stream keeps trying. It ends only when the transport is closed.
pub struct AmqpStream {
    shared: Arc<Shared>,
    names: Arc<QueueNames>,
    declarations: Vec<Declaration>,
    prefetch: u16,
    /// The subscription's cap on attempts ([`SubscriptionSpec::max_attempts`]).
    max_attempts: u32,
    /// Boxed: a lapin consumer is large, and streams are moved around.
    session: Option<Box<Session>>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for AmqpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpStream")
            .field("queue", &self.names.queue)
            .field("prefetch", &self.prefetch)
            .field("max_attempts", &self.max_attempts)
            .field("connected", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

struct Session {
    /// Kept so that the channel lives as long as the stream.
    _channel: Channel,
    consumer: Consumer,
    acks: AckHandle,
}

impl DeliveryStream for AmqpStream {
    /// The next delivery. Cancel-safe: a delivery is taken from the consumer only in the poll
    /// that returns it, and anything interrupted mid-way goes back to the queue.
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.shared.is_closed() {
                return None;
            }
            if self.session.is_none() {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                }
                match self.open().await {
                    Ok(session) => {
                        if self.failures > 0 {
                            info!(queue = %self.names.queue, attempts = self.failures + 1, "consuming again");
                        }
                        self.failures = 0;
                        self.retry_at = None;
                        self.session = Some(Box::new(session));
                    }
                    Err(err) => {
                        if self.shared.is_closed() {
                            return None;
                        }
                        self.failures = self.failures.saturating_add(1);
                        let delay = self.shared.config.reconnect.delay(self.failures);
                        self.retry_at = Some(Instant::now() + delay);
                        warn!(queue = %self.names.queue, attempt = self.failures, retry_in = ?delay, error = %err.chain(), "cannot consume");
                        if !err.is_transient() {
                            return Some(Err(err));
                        }
                        continue;
                    }
                }
            }
            let Some(session) = self.session.as_mut() else {
                continue;
            };
            let item =
                std::future::poll_fn(|cx| Pin::new(&mut session.consumer).poll_next(cx)).await;
            match item {
                Some(Ok(delivery)) => {
                    let acks = session.acks.clone();
                    if let Some(delivery) = self.accept(delivery, acks).await {
                        return Some(Ok(delivery));
                    }
                }
                Some(Err(err)) => {
                    if !self.shared.is_closed() {
                        warn!(queue = %self.names.queue, error = %self.shared.secrets.scrub(&err.to_string()), "consumer failed; recovering");
                    }
                    self.session = None;
                }
                None => {
                    if !self.shared.is_closed() {
                        warn!(queue = %self.names.queue, "consumer cancelled by the broker (queue deleted?); declaring it again");
                    }
                    self.session = None;
                }
            }
        }
    }
}

impl AmqpStream {
    /// A channel with the topology declared, the prefetch set and a consumer on the queue.
    async fn open(&self) -> Result<Session> {
        let secrets = &self.shared.secrets;
        let (channel, _) = self.shared.consuming.channel().await?;
        topology::apply(&channel, &self.declarations, secrets).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await
            .amqp("set the prefetch", secrets)?;
        let tag = format!(
            "{}-{}",
            self.shared.config.connection_name,
            Uuid::now_v7().simple()
        );
        let consumer = channel
            .basic_consume(
                mapping::short("queue", &self.names.queue)?,
                ShortString::try_new(tag.as_str()).unwrap_or_default(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .amqp("consume", secrets)?;
        // A prefetch of 0 (no bound) leaves the batch as configured.
        let batch = match usize::from(self.prefetch) {
            0 => self.shared.config.ack_batch,
            prefetch => self.shared.config.ack_batch.min(prefetch.div_ceil(2)),
        };
        let acks = AckHandle::start(channel.clone(), batch, self.shared.config.ack_interval);
        Ok(Session {
            _channel: channel,
            consumer,
            acks,
        })
    }

    /// Turns a broker delivery into a Herald one; a malformed message is dead-lettered and a
    /// retry that came back early parked again (both `None`).
    async fn accept(
        &self,
        delivery: lapin::message::Delivery,
        acks: AckHandle,
    ) -> Option<Delivery> {
        acks.handed_out(delivery.delivery_tag);
        let redelivered = delivery.redelivered;
        let mut inflight = Inflight {
            tag: delivery.delivery_tag,
            acker: delivery.acker.clone(),
            acks,
            shared: Arc::clone(&self.shared),
            names: Arc::clone(&self.names),
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            properties: delivery.properties,
            payload: delivery.data.into(),
            attempt: 1,
            max_attempts: self.max_attempts,
            settled: false,
        };
        let decoded = mapping::attempt(&inflight.properties).and_then(|attempt| {
            let envelope =
                mapping::decode(&inflight.properties, &inflight.payload, &self.shared.config)?;
            Ok((attempt, envelope))
        });
        let (attempt, envelope) = match decoded {
            Ok(decoded) => decoded,
            Err(err) => {
                let text = err.chain();
                warn!(queue = %self.names.queue, error = %text, "malformed message; dead-lettered");
                if let Err(e) = inflight.dead_letter(reason::MALFORMED, &text).await {
                    warn!(queue = %self.names.queue, error = %e.chain(), "malformed message not dead-lettered; it will be redelivered");
                }
                return None;
            }
        };
        inflight.attempt = attempt;
        // What is left to wait: relative, as the sender computed it; by the wall clock only
        // for messages of earlier versions, which carry nothing else.
        let remaining = match mapping::delay_remaining(&inflight.properties) {
            Some(ms) => Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            None => mapping::not_before(&inflight.properties).map(settle::until),
        };
        if let Some(remaining) = remaining
            && remaining > EARLY_TOLERANCE
        {
            if let Err(e) = inflight.park(remaining).await {
                warn!(queue = %self.names.queue, error = %e.chain(), "cannot park an early retry; it will be redelivered");
            }
            return None;
        }
        let acknowledger = AmqpAcknowledger(Some(inflight));
        // Back from a delay queue (a retry or a deferral) is a redelivery too: such a message
        // may hold its key in a consumer's inbox.
        Some(Delivery::new(
            envelope,
            attempt,
            redelivered || attempt > 1 || remaining.is_some(),
            Box::new(acknowledger),
        ))
    }
}
