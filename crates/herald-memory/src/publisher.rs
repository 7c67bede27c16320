//! Publishing: each envelope is copied to every queue bound to its event type, in batch order.

use std::future::Future;
use std::sync::{Arc, PoisonError};

use herald_core::{Envelope, Error, Publisher, Result};

use crate::MemoryTransport;
use crate::broker::Broker;

impl Publisher for MemoryTransport {
    /// Routes the batch at once: every queue receives its messages in batch order, and a
    /// queue's lock is taken once per batch, not once per message.
    fn publish(&self, batch: &[Envelope]) -> impl Future<Output = Vec<Result<()>>> + Send {
        std::future::ready(self.broker.publish(batch))
    }
}

impl Broker {
    pub(crate) fn publish(&self, batch: &[Envelope]) -> Vec<Result<()>> {
        if self.is_closed() {
            return batch
                .iter()
                .map(|_| Err(Error::transport("publish", false, "transport is closed")))
                .collect();
        }
        // Ask the fault hook before taking the routing lock: it is user code.
        let fault = self
            .fault
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let faults: Vec<Option<String>> = match &fault {
            Some(fault) => batch.iter().map(|envelope| fault(envelope)).collect(),
            None => Vec::new(),
        };

        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let mut per_queue: Vec<Vec<Arc<Envelope>>> = routes.iter().map(|_| Vec::new()).collect();
        let mut accepted = 0;
        let results = batch
            .iter()
            .enumerate()
            .map(|(i, envelope)| {
                if let Some(Some(text)) = faults.get(i) {
                    tracing::debug!(id = %envelope.id, fault = %text, "injected publish fault");
                    return Err(Error::transport("publish", true, text.clone()));
                }
                let mut shared: Option<Arc<Envelope>> = None;
                for (route, out) in routes.iter().zip(per_queue.iter_mut()) {
                    if route.binding.matches(&envelope.event_type) {
                        let copy = shared.get_or_insert_with(|| Arc::new(envelope.clone()));
                        out.push(Arc::clone(copy));
                    }
                }
                if shared.is_none() {
                    tracing::debug!(
                        id = %envelope.id,
                        event_type = %envelope.event_type,
                        mandatory = self.config.mandatory,
                        "no queue is bound to this event type"
                    );
                    if self.config.mandatory {
                        return Err(Error::transport(
                            "publish",
                            false,
                            format!(
                                "unroutable: no queue is bound to event type `{}`",
                                envelope.event_type
                            ),
                        ));
                    }
                }
                accepted += 1;
                Ok(())
            })
            .collect();
        for (route, envelopes) in routes.iter().zip(per_queue) {
            if !envelopes.is_empty() {
                route.queue.publish(envelopes);
            }
        }
        drop(routes);
        self.count_published(accepted);
        results
    }
}

#[cfg(test)]
mod tests {
    use herald_core::{DeliveryStream, Subscriber, SubscriptionSpec};
    use herald_testkit::envelope;

    use super::*;
    use crate::MemoryConfig;

    fn spec(name: &str) -> SubscriptionSpec {
        SubscriptionSpec::new(name, Vec::<String>::new())
    }

    #[tokio::test]
    async fn injected_faults_fail_only_matching_publishes_until_cleared() {
        let transport = MemoryTransport::new();
        transport.declare(&spec("q"));
        let batch = [envelope("a", 0), envelope("poison", 0), envelope("a", 1)];
        transport.fail_publishes_when(|env| {
            (env.partition_key.as_deref() == Some("poison")).then(|| "broker on fire".to_owned())
        });

        let results = transport.publish(&batch).await;
        assert!(results[0].is_ok());
        let err = results[1].as_ref().expect_err("poison publish fails");
        assert!(err.is_transient(), "an injected fault is transient");
        assert!(err.chain().contains("broker on fire"), "{}", err.chain());
        assert!(results[2].is_ok());
        assert_eq!(transport.depth("q"), 2);
        assert_eq!(transport.published_total(), 2);

        transport.clear_faults();
        assert!(transport.publish(&batch[1..2]).await[0].is_ok());
        assert_eq!(transport.depth("q"), 3);
        assert_eq!(transport.published_total(), 3);
    }

    #[tokio::test]
    async fn unroutable_messages_fail_only_when_mandatory() {
        let mandatory = MemoryTransport::new();
        let results = mandatory.publish(&[envelope("a", 0)]).await;
        let err = results[0].as_ref().expect_err("unroutable publish fails");
        assert!(!err.is_transient());
        assert!(err.chain().contains("unroutable"), "{}", err.chain());
        assert_eq!(mandatory.published_total(), 0);

        let lenient = MemoryTransport::with_config(MemoryConfig { mandatory: false });
        assert!(lenient.publish(&[envelope("a", 0)]).await[0].is_ok());
        assert_eq!(lenient.published_total(), 1);
    }

    #[tokio::test]
    async fn declared_queue_keeps_messages_for_its_first_subscriber() {
        let transport = MemoryTransport::new();
        transport.declare(&spec("early"));
        let env = envelope("a", 0);
        assert!(transport.publish(std::slice::from_ref(&env)).await[0].is_ok());
        let mut stream = transport
            .subscribe(&spec("early"))
            .await
            .expect("subscribe");
        let delivery = stream.next().await.expect("open").expect("delivery");
        assert_eq!(delivery.envelope, env);
    }

    #[tokio::test]
    async fn publishing_after_close_fails() {
        let transport = MemoryTransport::new();
        transport.declare(&spec("q"));
        transport.close();
        let results = transport.publish(&[envelope("a", 0)]).await;
        assert!(results[0].is_err());
        assert_eq!(transport.depth("q"), 0);
    }
}
