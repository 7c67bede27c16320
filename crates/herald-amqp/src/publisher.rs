//! Confirmed publishing: persistent, `mandatory` messages on a confirm-mode channel, pipelined
//! under a bounded window of unconfirmed messages, each message's fate read from its own
//! confirmation (ack, nack, or returned as unroutable).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use herald_core::{Envelope, Publisher, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::connection::Link;
use crate::error::{self, ResultExt, Secrets};
use crate::{AmqpConfig, AmqpTransport, mapping, topology};

impl Publisher for AmqpTransport {
    /// Publishes `batch` to the exchange in order: persistent, `mandatory`, confirmed. A message
    /// that no queue is bound to, or that the broker nacks, fails on its own (transiently: the
    /// relay retries it with backoff, then dead-letters it); a message that cannot be encoded
    /// fails permanently. A broker that cannot be reached, or a connection or channel lost
    /// mid-call, fails the messages it left unconfirmed with [`Error::Unreachable`] (not their
    /// fault: the relay gives them back without counting an attempt); the connection is
    /// re-established on the next publish.
    ///
    /// [`Error::Unreachable`]: herald_core::Error::Unreachable
    fn publish(&self, batch: &[Envelope]) -> impl Future<Output = Vec<Result<()>>> + Send {
        let config = &self.shared.config;
        let exchange = ShortString::try_new(config.exchange.as_str()).unwrap_or_default();
        let targets: Vec<Result<Target>> = batch
            .iter()
            .map(|envelope| {
                mapping::encode(envelope, config).map(|out| Target {
                    exchange: exchange.clone(),
                    routing_key: out.routing_key,
                    properties: out.properties,
                    payload: out.payload,
                })
            })
            .collect();
        self.shared.publishing.send(targets)
    }

    /// `rabbitmq`.
    fn messaging_system(&self) -> &'static str {
        crate::MESSAGING_SYSTEM
    }

    /// The exchange every event is published to.
    fn destination<'a>(&'a self, _envelope: &'a Envelope) -> &'a str {
        &self.shared.config.exchange
    }
}

/// Where and what to publish.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) payload: Bytes,
}

/// The publishing side of a transport: its connection, its confirm-mode channel (reopened
/// after a failure) and the window of unconfirmed messages.
pub(crate) struct Publishing {
    link: Link,
    config: Arc<AmqpConfig>,
    secrets: Secrets,
    channel: Mutex<Option<Channel>>,
    window: Arc<Semaphore>,
}

type Sending<'a> =
    Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + std::marker::Send + 'a>>;

/// A message on its way: its frames queued for writing, or written and awaiting confirmation.
enum Stage<'a> {
    Sending(Sending<'a>),
    Confirming(PublisherConfirm),
}

impl Publishing {
    pub(crate) fn new(link: Link, config: Arc<AmqpConfig>, secrets: Secrets) -> Self {
        let window = Arc::new(Semaphore::new(config.confirm_window));
        Publishing {
            link,
            config,
            secrets,
            channel: Mutex::new(None),
            window,
        }
    }

    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// The confirm-mode channel, opened (and the exchange declared) if there is none usable.
    async fn channel(&self) -> Result<Channel> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        let (channel, generation) = self.link.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .amqp("enable publisher confirms", &self.secrets)?;
        topology::apply(&channel, &[topology::exchange(&self.config)], &self.secrets).await?;
        debug!(generation, "publishing channel open");
        *slot = Some(channel.clone());
        Ok(channel)
    }

    async fn forget(&self, channel: &Channel) {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_some_and(|c| c.id() == channel.id()) {
            *slot = None;
        }
    }

    /// Publishes every target in order, at most `confirm_window` unconfirmed at once (across
    /// all concurrent callers), and returns one result per target once each is confirmed.
    pub(crate) async fn send(&self, targets: Vec<Result<Target>>) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = (0..targets.len()).map(|_| None).collect();
        if targets.iter().all(Result::is_err) {
            return targets.into_iter().map(|t| t.map(|_| ())).collect();
        }
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(err) => {
                // Whatever keeps us from the broker is not the messages' fault: they are retried
                // without counting an attempt.
                let text = err.chain();
                return targets
                    .into_iter()
                    .map(|t| t.and_then(|_| Err(unreachable(text.clone()))))
                    .collect();
            }
        };
        let mut broken = None::<String>;
        let mut inflight: VecDeque<(usize, Stage<'_>, OwnedSemaphorePermit)> = VecDeque::new();
        for (i, target) in targets.iter().enumerate() {
            let target = match target {
                Ok(target) => target,
                Err(err) => {
                    results[i] = Some(Err(clone_error(err)));
                    continue;
                }
            };
            if let Some(text) = &broken {
                results[i] = Some(Err(unreachable(text.clone())));
                continue;
            }
            let permit = loop {
                if let Ok(permit) = Arc::clone(&self.window).try_acquire_owned() {
                    break Some(permit);
                }
                match inflight.pop_front() {
                    Some((j, stage, permit)) => {
                        results[j] = Some(self.resolve(stage, &target_of(&targets, j)).await);
                        drop(permit);
                    }
                    None => break Arc::clone(&self.window).acquire_owned().await.ok(),
                }
            };
            let Some(permit) = permit else {
                results[i] = Some(Err(error::permanent("publish", "transport is closed")));
                continue;
            };
            let mut send: Sending<'_> = Box::pin(channel.basic_publish(
                target.exchange.clone(),
                target.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &target.payload,
                target.properties.clone(),
            ));
            // The first poll queues the message's frames, in call order; later polls only wait
            // for the socket. So the next message can be queued without waiting for this one.
            let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
            match first {
                Poll::Pending => inflight.push_back((i, Stage::Sending(send), permit)),
                Poll::Ready(Ok(confirm)) => {
                    inflight.push_back((i, Stage::Confirming(confirm), permit));
                }
                Poll::Ready(Err(err)) => {
                    let err = error::transport("publish", &err, &self.secrets);
                    broken = Some(err.chain());
                    results[i] = Some(Err(unreachable(err.chain())));
                }
            }
        }
        while let Some((j, stage, permit)) = inflight.pop_front() {
            results[j] = Some(self.resolve(stage, &target_of(&targets, j)).await);
            drop(permit);
        }
        if broken.is_some() || !channel.status().connected() {
            self.forget(&channel).await;
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(unreachable("not attempted".into()))))
            .collect()
    }

    /// Waits for one message's confirmation and says what it means.
    async fn resolve(&self, stage: Stage<'_>, target: &Option<&Target>) -> Result<()> {
        let confirm = match stage {
            Stage::Sending(send) => match send.await {
                Ok(confirm) => confirm,
                Err(err) => return Err(transient(&err, &self.secrets)),
            },
            Stage::Confirming(confirm) => confirm,
        };
        let key = target.map_or("", |t| t.routing_key.as_str());
        match confirm.await {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => {
                debug!(routing_key = key, reply = %returned.reply_text, "message returned as unroutable");
                Err(error::transient(
                    "publish",
                    format!(
                        "unroutable: no queue is bound to routing key `{key}` on exchange `{}` ({})",
                        target.map_or("", |t| t.exchange.as_str()),
                        returned.reply_text
                    ),
                ))
            }
            Ok(Confirmation::Nack(None)) => {
                debug!(routing_key = key, "message nacked by the broker");
                Err(error::transient(
                    "publish",
                    "the broker refused the message (nack): a queue may be full or the broker out of resources",
                ))
            }
            Ok(Confirmation::NotRequested) => Err(error::transient(
                "publish",
                "the channel was not in confirm mode; the message may not have been stored",
            )),
            Err(err) => {
                warn!(error = %self.secrets.scrub(&err.to_string()), "publish unconfirmed: channel or connection lost");
                Err(transient(&err, &self.secrets))
            }
        }
    }
}

/// A lost confirmation is always worth retrying, whatever the channel died of, and never the
/// message's fault.
fn transient(err: &lapin::Error, secrets: &Secrets) -> herald_core::Error {
    unreachable(error::transport("publish", err, secrets).chain())
}

/// The broker cannot be reached or the connection was lost: not the message's fault.
fn unreachable(text: String) -> herald_core::Error {
    herald_core::Error::unreachable("publish", herald_core::error::Message(text))
}

fn target_of(targets: &[Result<Target>], i: usize) -> Option<&Target> {
    targets.get(i).and_then(|t| t.as_ref().ok())
}

/// Copies an encoding error (the core error is not `Clone`), keeping its kind where it matters.
fn clone_error(err: &herald_core::Error) -> herald_core::Error {
    match err {
        herald_core::Error::TooLarge { what, size, limit } => herald_core::Error::TooLarge {
            what,
            size: *size,
            limit: *limit,
        },
        herald_core::Error::InvalidEnvelope { field, reason } => {
            herald_core::Error::InvalidEnvelope {
                field: field.clone(),
                reason: reason.clone(),
            }
        }
        other => error::permanent("publish", other.chain()),
    }
}
