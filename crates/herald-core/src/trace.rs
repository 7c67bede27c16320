//! Trace context across the outbox: what ties the recording of an event, its publication and
//! its handling into one distributed trace.
//!
//! Herald's spans exist with or without OpenTelemetry: the relay's `send <destination>` span
//! around each publish call and the consumer's `process <destination>` span around each
//! handled message carry the fields of OpenTelemetry's messaging conventions
//! (`messaging.system`, `messaging.destination.name`, `messaging.message.id`, …), and every
//! log line inside them carries those fields too.
//!
//! With the feature `otel`, and a `tracing-opentelemetry` layer installed by the application,
//! the [`TraceContext`] of an envelope is where the trace crosses the outbox and the broker:
//!
//! - recording an event without an explicit trace context stores the current span's context
//!   ([`TraceContext::current`]);
//! - the relay's send span gets a *link* to each message's recorded context ([`add_link`]);
//! - the consumer's process span gets the message's context as its *parent* ([`set_parent`]),
//!   so that events recorded by the handler continue the same trace.
//!
//! Without the feature these functions do nothing and [`TraceContext::current`] is empty: the
//! spans stay plain `tracing` spans and cost what `tracing` spans cost.

use crate::TraceContext;

impl TraceContext {
    /// The current `tracing` span's OpenTelemetry context as W3C trace context: what recording
    /// an event stores when the caller passes none. Empty without the feature `otel`, outside
    /// any span, or when no `tracing-opentelemetry` layer is installed.
    pub fn current() -> TraceContext {
        #[cfg(feature = "otel")]
        {
            use opentelemetry::trace::TraceContextExt;
            use tracing_opentelemetry::OpenTelemetrySpanExt;

            let span = tracing::Span::current();
            if span.is_none() {
                return TraceContext::default();
            }
            let context = span.context();
            TraceContext::from_span_context(context.span().span_context())
        }
        #[cfg(not(feature = "otel"))]
        {
            TraceContext::default()
        }
    }

    /// Whether there is no `traceparent` (a `tracestate` alone means nothing).
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none()
    }
}

/// Makes the OpenTelemetry parent of `span` the context that `trace` carries (a remote
/// parent): for a span that handles a message, so that it continues the message's trace.
/// Call it before the span is first entered. Does nothing without the feature `otel`, without
/// a valid `traceparent`, or when no `tracing-opentelemetry` layer is installed.
pub fn set_parent(span: &tracing::Span, trace: &TraceContext) {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        if span.is_disabled() {
            return;
        }
        if let Some(parent) = trace.span_context() {
            // Fails only without an OpenTelemetry layer, or once the span has started: the
            // span then keeps the parent it has.
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
        }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (span, trace);
    }
}

/// Adds to `span` an OpenTelemetry link to the context that `trace` carries: for a span that
/// works on a message without being part of its trace (the relay's send span links to the
/// context each message was recorded in). Does nothing without the feature `otel`, without a
/// valid `traceparent`, or when no `tracing-opentelemetry` layer is installed.
pub fn add_link(span: &tracing::Span, trace: &TraceContext) {
    #[cfg(feature = "otel")]
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        if span.is_disabled() {
            return;
        }
        if let Some(linked) = trace.span_context() {
            span.add_link(linked);
        }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (span, trace);
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use crate::TraceContext;

    impl TraceContext {
        /// The W3C form of an OpenTelemetry span context (`traceparent` version `00`, and its
        /// `tracestate`); empty for an invalid one.
        pub fn from_span_context(context: &SpanContext) -> TraceContext {
            if !context.is_valid() {
                return TraceContext::default();
            }
            let state = context.trace_state().header();
            TraceContext {
                traceparent: Some(format!(
                    "00-{:032x}-{:016x}-{:02x}",
                    context.trace_id(),
                    context.span_id(),
                    context.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8(),
                )),
                tracestate: (!state.is_empty()).then_some(state),
            }
        }

        /// The OpenTelemetry span context this trace context carries, as a remote one; `None`
        /// without a `traceparent`, or for one that is malformed, of version `ff`, or with an
        /// all-zero trace or span id (which the W3C spec makes invalid). A malformed
        /// `tracestate` is dropped, the `traceparent` kept.
        pub fn span_context(&self) -> Option<SpanContext> {
            let traceparent = self.traceparent.as_deref()?;
            self.validate().ok()?;
            let mut parts = traceparent.split('-');
            let version = parts.next()?;
            let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
            // Version 00 has exactly four parts; later versions may append more.
            if version == "ff" || (version == "00" && parts.next().is_some()) {
                return None;
            }
            let trace_id = TraceId::from_hex(trace_id).ok()?;
            let span_id = SpanId::from_hex(span_id).ok()?;
            let flags = u8::from_str_radix(flags, 16).ok()?;
            let state = self
                .tracestate
                .as_deref()
                .and_then(|state| state.parse::<TraceState>().ok())
                .unwrap_or_default();
            let context = SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::new(flags) & TraceFlags::SAMPLED,
                true,
                state,
            );
            context.is_valid().then_some(context)
        }
    }
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use crate::TraceContext;

    fn trace(traceparent: &str, tracestate: Option<&str>) -> TraceContext {
        TraceContext {
            traceparent: Some(traceparent.to_owned()),
            tracestate: tracestate.map(str::to_owned),
        }
    }

    #[test]
    fn a_span_context_round_trips_through_the_w3c_form() {
        let context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            "vendor=abc".parse::<TraceState>().unwrap(),
        );
        let w3c = TraceContext::from_span_context(&context);
        assert_eq!(
            w3c.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(w3c.tracestate.as_deref(), Some("vendor=abc"));
        w3c.validate().unwrap();
        let back = w3c.span_context().unwrap();
        assert_eq!(back.trace_id(), context.trace_id());
        assert_eq!(back.span_id(), context.span_id());
        assert!(back.is_sampled() && back.is_remote());
        assert_eq!(back.trace_state().header(), "vendor=abc");
    }

    #[test]
    fn invalid_contexts_carry_nothing() {
        assert_eq!(
            TraceContext::from_span_context(&SpanContext::empty_context()),
            TraceContext::default()
        );
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(trace(bad, None).span_context().is_none(), "{bad}");
        }
        assert!(TraceContext::default().span_context().is_none());
        // A newer version may carry more parts; an unsampled one stays unsampled.
        let newer = trace(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x",
            None,
        );
        assert!(!newer.span_context().unwrap().is_sampled());
    }

    #[test]
    fn outside_any_span_the_current_context_is_empty() {
        assert!(TraceContext::current().is_empty());
    }
}
