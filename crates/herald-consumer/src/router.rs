//! The router: handlers registered per event type, and the dispatch of one message to them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{BoxFuture, Envelope, Event, Inbox, Result, Uuid};
use tokio_util::sync::CancellationToken;

use crate::handler::{Endpoint, Plain};
use crate::inbox::{Deduplicated, Transactional};
use crate::layer::{Chain, DynLayer, Layer, Measure, Retry, Timeout, Tracing};
use crate::{
    ConsumerConfig, ConsumerMetrics, Context, Handler, Outcome, TxContext, UnhandledPolicy,
};

/// Typed handlers by event type, each under a name of its own, plus the layers around them.
///
/// ```no_run
/// # use herald_consumer::{Context, HandlerError, Layer, Next, HandlerResult, Router, TxContext};
/// # use herald_postgres::PgOutbox;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
/// # impl herald_core::Event for OrderCreated { const TYPE: &'static str = "ordering.order_created"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCancelled;
/// # impl herald_core::Event for OrderCancelled { const TYPE: &'static str = "ordering.order_cancelled"; }
/// # async fn reserve(_: OrderCreated, _: &mut TxContext<PgOutbox>) -> Result<(), HandlerError> { Ok(()) }
/// # async fn release(_: OrderCancelled, _: &mut TxContext<PgOutbox>) -> Result<(), HandlerError> { Ok(()) }
/// # async fn notify(_: OrderCreated, _: &mut Context) -> Result<(), HandlerError> { Ok(()) }
/// # async fn audit(_: OrderCreated, _: &mut Context) {}
/// # struct Metrics;
/// # impl Layer for Metrics {
/// #     async fn call(&self, ctx: &mut Context, next: Next<'_>) -> HandlerResult { next.run(ctx).await }
/// # }
/// # fn build(db: PgOutbox) -> Router {
/// let router = Router::new()
///     .transactional(&db, "inventory.reserve-stock", reserve)   // (OrderCreated, &mut TxContext<_>)
///     .transactional(&db, "inventory.release-stock", release)   // (OrderCancelled, &mut TxContext<_>)
///     .deduplicated(&db, "inventory.notify-warehouse", notify)  // (OrderCreated, &mut Context)
///     .handle("inventory.audit", audit)                         // (OrderCreated, &mut Context)
///     .layer(Metrics);
/// # router
/// # }
/// ```
///
/// The event type (and version) a handler takes is the type of its first argument. Several
/// handlers may take the same type; each runs, in registration order. A handler's name keys its
/// inbox records, so it must be unique and stable: rename a handler and it handles again the
/// messages still in flight. Registration problems (a duplicate or empty name) are reported by
/// [`Consumer::new`](crate::Consumer::new).
#[derive(Default)]
pub struct Router {
    registrations: Vec<Registration>,
    upcasters: Vec<Upcaster>,
    layers: Vec<Arc<dyn DynLayer>>,
    pruners: Vec<Arc<dyn Pruner>>,
    problems: Vec<String>,
}

struct Registration {
    name: Arc<str>,
    event_type: &'static str,
    version: u32,
    check: fn(&Envelope) -> Result<()>,
    endpoint: Arc<dyn Endpoint>,
}

/// Turns a message of one version of an event into the next version it was registered for.
struct Upcaster {
    event_type: &'static str,
    from: u32,
    to: u32,
    apply: fn(&Envelope, &(dyn std::any::Any + Send + Sync)) -> Result<Envelope>,
    /// The function the application registered (a `fn(Old) -> New`), given to `apply`.
    function: Arc<dyn std::any::Any + Send + Sync>,
}

/// Decodes `envelope` as `Old`, converts it with `function` (a `fn(Old) -> New`) and
/// re-encodes it as `New` in `New`'s own format (JSON or Protobuf, whatever `Old`'s was); id,
/// key, correlation and the rest stay.
fn upcast_with<Old: Event, New: Event>(
    envelope: &Envelope,
    function: &(dyn std::any::Any + Send + Sync),
) -> Result<Envelope> {
    let convert = function.downcast_ref::<fn(Old) -> New>().ok_or_else(|| {
        herald_core::Error::Config(format!(
            "upcaster of `{}` v{} holds another function",
            Old::TYPE,
            Old::VERSION
        ))
    })?;
    let old: Old = envelope.decode()?;
    envelope.reencode(&convert(old))
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "handlers",
                &self
                    .registrations
                    .iter()
                    .map(|r| format!("{} ({} v{})", r.name, r.event_type, r.version))
                    .collect::<Vec<_>>(),
            )
            .field(
                "upcasters",
                &self
                    .upcasters
                    .iter()
                    .map(|u| format!("{} v{} → v{}", u.event_type, u.from, u.to))
                    .collect::<Vec<_>>(),
            )
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl Router {
    /// A router without handlers.
    pub fn new() -> Self {
        Router::default()
    }

    /// Registers a plain handler: no inbox, so a message the broker delivers twice is handled
    /// twice. For idempotent effects, or effects you deduplicate yourself.
    pub fn handle<E, H>(self, name: &str, handler: H) -> Self
    where
        E: Event,
        H: Handler<E, Context>,
    {
        self.register::<E>(name, Plain::<E, H>::new(handler))
    }

    /// Registers a handler in transactional mode: each run opens a transaction on `store`,
    /// writes the `(message id, name)` inbox record, runs the handler on that transaction
    /// ([`TxContext::db`]) and commits both together. A message delivered again is acknowledged
    /// without running the handler: its effects in that database happen exactly once. Events
    /// recorded with [`TxContext::record`] commit with them, caused by the handled message.
    pub fn transactional<O, E, H>(mut self, store: &O, name: &str, handler: H) -> Self
    where
        O: Inbox,
        E: Event,
        H: Handler<E, TxContext<O>>,
    {
        self.pruners.push(Arc::new(store.clone()));
        self.register::<E>(name, Transactional::<O, E, H>::new(store.clone(), handler))
    }

    /// Registers a handler whose effects are not in `store`'s database (an e-mail, an HTTP
    /// call) with a non-transactional inbox: it is skipped if `store` recorded the message
    /// for `name`, and the record is written once it succeeded. A crash between the effect and
    /// the record runs the effect again: effects are **at least once**, while the duplicates a
    /// broker delivers are suppressed.
    pub fn deduplicated<O, E, H>(mut self, store: &O, name: &str, handler: H) -> Self
    where
        O: Inbox,
        E: Event,
        H: Handler<E, Context>,
    {
        self.pruners.push(Arc::new(store.clone()));
        self.register::<E>(name, Deduplicated::<O, E, H>::new(store.clone(), handler))
    }

    /// Registers an upcaster: a message of `Old`'s version is converted with `upcast` into
    /// `New` (same event type, a later version) before it is routed, so that handlers written
    /// for `New` receive it. Upcasters chain: with `v1 → v2` and `v2 → v3` registered, a v1
    /// message reaches the v3 handlers through both, and the handlers never know. A message
    /// keeps its id (its inbox records), key and metadata; its payload is re-encoded in `New`'s
    /// own format ([`herald_core::Payload`]), so a JSON v1 may become a Protobuf v2.
    /// A message of a version with neither handlers nor an upcaster (one newer than the
    /// consumer, say) follows [`ConsumerConfig::on_unknown_version`].
    ///
    /// ```
    /// # use herald_consumer::{Context, Router};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct OrderCreatedV1 { order: String, amount: u64 }
    /// impl herald_core::Event for OrderCreatedV1 {
    ///     const TYPE: &'static str = "ordering.order_created";
    /// }
    /// #[derive(Serialize, Deserialize)]
    /// struct OrderCreated { order: String, cents: u64, currency: String }
    /// impl herald_core::Event for OrderCreated {
    ///     const TYPE: &'static str = "ordering.order_created";
    ///     const VERSION: u32 = 2;
    /// }
    /// async fn reserve(_: OrderCreated, _: &mut Context) {}
    ///
    /// let router = Router::new()
    ///     .upcast(|v1: OrderCreatedV1| OrderCreated {
    ///         order: v1.order,
    ///         cents: v1.amount * 100,
    ///         currency: "EUR".into(),
    ///     })
    ///     .handle("inventory.reserve", reserve);
    /// ```
    pub fn upcast<Old: Event, New: Event>(mut self, upcast: fn(Old) -> New) -> Self {
        if Old::TYPE != New::TYPE {
            self.problems.push(format!(
                "an upcaster turns `{}` into another event type, `{}`",
                Old::TYPE,
                New::TYPE
            ));
        } else if Old::VERSION >= New::VERSION {
            self.problems.push(format!(
                "an upcaster of `{}` goes from v{} to v{}, not to a later version",
                Old::TYPE,
                Old::VERSION,
                New::VERSION
            ));
        } else if self
            .upcasters
            .iter()
            .any(|u| u.event_type == Old::TYPE && u.from == Old::VERSION)
        {
            self.problems.push(format!(
                "two upcasters of `{}` start from v{}",
                Old::TYPE,
                Old::VERSION
            ));
        }
        self.upcasters.push(Upcaster {
            event_type: Old::TYPE,
            from: Old::VERSION,
            to: New::VERSION,
            apply: upcast_with::<Old, New>,
            function: Arc::new(upcast),
        });
        self
    }

    /// Adds a layer around every handler, inside the retry layer (it sees every run) and
    /// outside the timeout and the inbox; layers added first are outermost.
    pub fn layer<L: Layer>(mut self, layer: L) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// The event types handlers are registered for (what the consumer subscribes to).
    pub fn event_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self
            .registrations
            .iter()
            .map(|r| r.event_type.to_owned())
            .collect();
        types.sort();
        types.dedup();
        types
    }

    fn register<E: Event>(mut self, name: &str, endpoint: Arc<dyn Endpoint>) -> Self {
        if name.trim().is_empty() {
            self.problems
                .push(format!("a handler of `{}` has an empty name", E::TYPE));
        } else if self.registrations.iter().any(|r| &*r.name == name) {
            self.problems.push(format!(
                "two handlers are named `{name}` (names key the inbox)"
            ));
        }
        self.registrations.push(Registration {
            name: name.into(),
            event_type: E::TYPE,
            version: E::VERSION,
            check: |envelope| envelope.decode::<E>().map(|_| ()),
            endpoint,
        });
        self
    }

    /// The handlers wrapped in their layers, ready to route; the inbox stores to prune.
    pub(crate) fn build(
        self,
        consumer: &str,
        system: &'static str,
        config: &ConsumerConfig,
        metrics: &ConsumerMetrics,
    ) -> Result<(Routes, Vec<Arc<dyn Pruner>>)> {
        if let Some(problem) = self.problems.first() {
            return Err(herald_core::Error::Config(problem.clone()));
        }
        if self.registrations.is_empty() {
            return Err(herald_core::Error::Config(
                "the router has no handlers".into(),
            ));
        }
        let mut layers: Vec<Arc<dyn DynLayer>> = vec![
            Arc::new(Measure::new(metrics.clone())),
            Arc::new(Tracing),
            Arc::new(Retry::new(config.retry.clone(), metrics.clone())),
        ];
        layers.extend(self.layers.iter().cloned());
        if let Some(limit) = config.handler_timeout {
            layers.push(Arc::new(Timeout::new(limit)));
        }

        let mut types: HashMap<String, Vec<VersionRoute>> = HashMap::new();
        for r in self.registrations {
            r.endpoint.configure(config);
            let versions = types.entry(r.event_type.to_owned()).or_default();
            let index = match versions.iter().position(|v| v.version == r.version) {
                Some(index) => index,
                None => {
                    versions.push(VersionRoute {
                        version: r.version,
                        check: r.check,
                        handlers: Vec::new(),
                    });
                    versions.len() - 1
                }
            };
            versions[index]
                .handlers
                .push((r.name, Chain::new(layers.clone(), r.endpoint)));
        }
        let mut upcasters: HashMap<(String, u32), Upcaster> = HashMap::new();
        for u in self.upcasters {
            upcasters.insert((u.event_type.to_owned(), u.from), u);
        }
        let routes = Routes {
            consumer: consumer.into(),
            system,
            types,
            upcasters,
            on_unknown_type: config.on_unknown_type,
            on_unknown_version: config.on_unknown_version,
            on_malformed: config.on_malformed,
        };
        Ok((routes, self.pruners))
    }
}

/// What the router decided about one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Routed {
    /// Handlers ran; their combined outcome.
    Handled(Outcome),
    /// No handler could take it; what the policy says.
    Unhandled {
        reason: String,
        policy: UnhandledPolicy,
    },
    /// A transactional inbox found its key held for another message, away for a delayed
    /// retry and due back in `due_in`: not handled, it must wait behind that one.
    Held { by: Uuid, due_in: Duration },
}

/// The router, built: handler chains by event type and version.
pub(crate) struct Routes {
    /// The consumer's subscription: the scope of its key holds.
    consumer: Arc<str>,
    /// The transport's `messaging.system`, for the process spans.
    system: &'static str,
    types: HashMap<String, Vec<VersionRoute>>,
    /// By event type and the version they start from.
    upcasters: HashMap<(String, u32), Upcaster>,
    on_unknown_type: UnhandledPolicy,
    on_unknown_version: UnhandledPolicy,
    on_malformed: UnhandledPolicy,
}

struct VersionRoute {
    version: u32,
    check: fn(&Envelope) -> Result<()>,
    handlers: Vec<(Arc<str>, Chain)>,
}

impl Routes {
    /// The span of one delivery's handling, after OpenTelemetry's messaging conventions for
    /// a process span: named `process <subscription>`, of kind consumer, with
    /// `messaging.system`, `messaging.destination.name` (the subscription), the message's id,
    /// type, correlation id (`messaging.message.conversation_id` too) and causation id, and
    /// the delivery's attempt; every log line of the handling carries them. With the feature
    /// `otel`, its parent is the context the message carries, so that the handling, and the
    /// events its handlers record, continue the message's trace.
    pub(crate) fn process_span(&self, envelope: &Envelope, attempt: u32) -> tracing::Span {
        let span = tracing::info_span!(
            "process",
            otel.name = format!("process {}", self.consumer),
            otel.kind = "consumer",
            messaging.system = self.system,
            messaging.operation.type = "process",
            messaging.destination.name = &*self.consumer,
            messaging.message.id = %envelope.id,
            messaging.message.conversation_id = %envelope.correlation_id,
            event_type = %envelope.event_type,
            correlation_id = %envelope.correlation_id,
            causation_id = envelope.causation_id.as_ref().map(tracing::field::display),
            attempt,
        );
        herald_core::trace::set_parent(&span, &envelope.trace);
        span
    }

    /// Routes one delivery: decodes by type and version, runs every handler of the type in
    /// registration order, and combines their outcomes (any reject rejects; else any retry
    /// retries, after the longest delay asked for; else done). Returns the handler runs the
    /// inbox skipped too. `holding`: this consumer wrote (or may have written) a key hold for
    /// the message while it waited (see [`Context::own_hold`]).
    pub(crate) async fn route(
        &self,
        envelope: Arc<Envelope>,
        attempt: u32,
        redelivered: bool,
        holding: bool,
        cancellation: &CancellationToken,
    ) -> (Routed, u32) {
        let Some(versions) = self.types.get(&envelope.event_type) else {
            let reason = format!("no handler for event type `{}`", envelope.event_type);
            return (self.unhandled(reason, self.on_unknown_type), 0);
        };
        let Some(route) = self.version_route(versions, &envelope) else {
            let known: Vec<String> = versions.iter().map(|v| format!("v{}", v.version)).collect();
            let reason = format!(
                "no handler for `{}` v{} (handlers take {}); no upcaster starts from v{}",
                envelope.event_type,
                envelope.version,
                known.join(", "),
                envelope.version
            );
            return (self.unhandled(reason, self.on_unknown_version), 0);
        };
        let envelope = match self.upcast(envelope, route.version) {
            Ok(envelope) => envelope,
            Err(reason) => return (self.unhandled(reason, self.on_malformed), 0),
        };
        if let Err(error) = (route.check)(&envelope) {
            let reason = format!("undecodable message: {}", error.chain());
            return (self.unhandled(reason, self.on_malformed), 0);
        }

        let mut duplicates = 0;
        let mut rejects = Vec::new();
        let mut retries = Vec::new();
        let mut longest = std::time::Duration::ZERO;
        for (name, chain) in &route.handlers {
            let mut ctx = Context::new(
                envelope.clone(),
                name.clone(),
                attempt,
                redelivered,
                cancellation.clone(),
            );
            ctx.set_consumer(self.consumer.clone());
            ctx.set_holding(holding);
            let outcome = match chain.run(&mut ctx).await {
                Ok(outcome) => outcome,
                // The retry layer turns every error into an outcome; should one get through,
                // dead-letter rather than redeliver without bound.
                Err(error) => Outcome::reject(format!("unclassified error: {}", error.chain())),
            };
            if ctx.is_duplicate() {
                duplicates += 1;
            }
            if let Some((by, due_in)) = ctx.held() {
                // The handlers before this one committed (or were duplicates): they find their
                // records when the message comes back.
                return (Routed::Held { by, due_in }, duplicates);
            }
            match outcome {
                Outcome::Done => {}
                Outcome::Retry { after, reason } => {
                    longest = longest.max(after);
                    retries.push(format!("{name}: {reason}"));
                }
                Outcome::Reject { reason } => rejects.push(format!("{name}: {reason}")),
            }
        }
        let outcome = if !rejects.is_empty() {
            Outcome::reject(rejects.join("; "))
        } else if !retries.is_empty() {
            Outcome::retry(longest, retries.join("; "))
        } else {
            Outcome::Done
        };
        (Routed::Handled(outcome), duplicates)
    }

    /// Holds the key of `envelope` in the inbox of each transactional handler of its type
    /// ([`Inbox::hold_key`]): it is away for a delayed retry, due back in `back_in`. Does
    /// nothing for a message without a key or without such handlers.
    pub(crate) async fn hold(&self, envelope: &Envelope, back_in: Duration) -> Result<()> {
        let Some(key) = envelope.partition_key.as_deref() else {
            return Ok(());
        };
        for (_, chain) in self.handlers(envelope) {
            if let Some(hold) = chain
                .endpoint()
                .hold(&self.consumer, key, envelope.id, back_in)
            {
                hold.await?;
            }
        }
        Ok(())
    }

    /// Removes those holds (the message was dead-lettered).
    pub(crate) async fn release(&self, envelope: &Envelope) -> Result<()> {
        let Some(key) = envelope.partition_key.as_deref() else {
            return Ok(());
        };
        for (_, chain) in self.handlers(envelope) {
            if let Some(release) = chain.endpoint().release(&self.consumer, key, envelope.id) {
                release.await?;
            }
        }
        Ok(())
    }

    /// The handlers of `envelope`'s type and version (through its upcasters).
    fn handlers(&self, envelope: &Envelope) -> &[(Arc<str>, Chain)] {
        self.types
            .get(&envelope.event_type)
            .and_then(|versions| self.version_route(versions, envelope))
            .map_or(&[], |route| route.handlers.as_slice())
    }

    /// The handlers that take `envelope`: those of its version, or, following the upcasters
    /// from its version, those of the first version that has handlers.
    fn version_route<'a>(
        &self,
        versions: &'a [VersionRoute],
        envelope: &Envelope,
    ) -> Option<&'a VersionRoute> {
        let mut version = envelope.version;
        // Each step goes to a later version, so the walk ends.
        loop {
            if let Some(route) = versions.iter().find(|v| v.version == version) {
                return Some(route);
            }
            version = self
                .upcasters
                .get(&(envelope.event_type.clone(), version))?
                .to;
        }
    }

    /// `envelope` upcast, step by step, to version `target`; a failure is the reason to
    /// give for dead-lettering it (a payload that does not decode as its version).
    fn upcast(
        &self,
        envelope: Arc<Envelope>,
        target: u32,
    ) -> std::result::Result<Arc<Envelope>, String> {
        let mut current = envelope;
        while current.version != target {
            let Some(upcaster) = self
                .upcasters
                .get(&(current.event_type.clone(), current.version))
            else {
                return Err(format!(
                    "no upcaster of `{}` from v{}",
                    current.event_type, current.version
                ));
            };
            let next = (upcaster.apply)(&current, upcaster.function.as_ref()).map_err(|error| {
                format!(
                    "upcasting `{}` v{} to v{} failed: {}",
                    current.event_type,
                    upcaster.from,
                    upcaster.to,
                    error.chain()
                )
            })?;
            current = Arc::new(next);
        }
        Ok(current)
    }

    fn unhandled(&self, reason: String, policy: UnhandledPolicy) -> Routed {
        Routed::Unhandled { reason, policy }
    }
}

/// An inbox whose old records retention removes.
pub(crate) trait Pruner: Send + Sync + 'static {
    fn prune(&self, older_than: std::time::Duration, limit: usize) -> BoxFuture<'_, Result<u64>>;
}

impl<O: Inbox> Pruner for O {
    fn prune(&self, older_than: std::time::Duration, limit: usize) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.prune_inbox(older_than, limit))
    }
}
