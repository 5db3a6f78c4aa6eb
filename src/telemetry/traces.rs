//! Traces (OpenTelemetry), off unless `traces.otlp_endpoint` is set: one trace per callback,
//! from accept through the store to each delivery attempt, exported as OTLP over HTTP.
//!
//! A callback's root span (`callback`) is made where it is accepted; its context, as a W3C
//! `traceparent`, is stored with the callback, so an attempt made later, by this process after
//! a restart or by another instance on the same Redis, starts its span (`attempt`) under that
//! parent and joins the same trace. A target that opts in (`traceparent = true`) gets the
//! attempt's own `traceparent` header, so its spans join too.
//!
//! Spans go to a batch processor that runs on tokio and exports through hyper: a slow or
//! absent collector costs a queue of bounded size (spans beyond it are dropped), never a wait
//! on the way of a callback. Imports nothing of the crate: callers pass plain values.

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracer, SdkTracerProvider};

/// How long an export may take before it is given up (the spans of that batch are dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Spans waiting for export at most; beyond it new spans are dropped.
const MAX_QUEUE: usize = 8192;

/// The traces of one process: its tracer and the exporter behind it, or nothing when off
/// (every span asked of it is then [`Traced::none`], at no cost).
#[derive(Debug, Clone, Default)]
pub struct Traces(Option<On>);

#[derive(Debug, Clone)]
struct On {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

/// What [`Traces::start`] could not do.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP exporter: {0}")]
pub struct StartError(String);

impl Traces {
    /// Exports to `endpoint` (`…/v1/traces` is appended to a base URL) every `delay`, naming
    /// the process `wechat-fanout` and `instance`. Needs a tokio runtime.
    pub fn start(endpoint: &str, delay: Duration, instance: &str) -> Result<Traces, StartError> {
        let endpoint = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(
                opentelemetry_http::hyper::HyperClient::with_default_connector(
                    EXPORT_TIMEOUT,
                    None,
                ),
            )
            .build()
            .map_err(|e| StartError(e.to_string()))?;
        let batches = BatchConfigBuilder::default()
            .with_scheduled_delay(delay)
            .with_max_queue_size(MAX_QUEUE)
            .build();
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(batches)
            .build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("wechat-fanout")
            .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        Ok(Traces(Some(On {
            tracer: provider.tracer("wechat-fanout"),
            provider,
        })))
    }

    /// No traces.
    pub fn off() -> Traces {
        Traces(None)
    }

    /// A callback's root span, started now.
    pub fn callback(&self, account: &str) -> Traced {
        let Some(On { tracer, .. }) = &self.0 else {
            return Traced::none();
        };
        let span = tracer
            .span_builder("callback")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("wechat.account", account.to_owned())])
            .start_with_context(tracer, &Context::new());
        Traced(Some(Context::new().with_span(span)))
    }

    /// A child of `parent` named `name` (the store's write, within a callback).
    pub fn child(&self, parent: &Traced, name: &'static str) -> Traced {
        let (Some(On { tracer, .. }), Some(parent)) = (&self.0, &parent.0) else {
            return Traced::none();
        };
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .start_with_context(tracer, parent);
        Traced(Some(parent.with_span(span)))
    }

    /// An attempt's span, under the callback's stored `traceparent` (a root of its own when
    /// there is none or it does not parse: a callback stored without traces).
    pub fn attempt(
        &self,
        traceparent: Option<&str>,
        account: &str,
        target: &str,
        attempt: u32,
    ) -> Traced {
        let Some(On { tracer, .. }) = &self.0 else {
            return Traced::none();
        };
        let parent = traceparent
            .and_then(parse_traceparent)
            .map_or_else(Context::new, |remote| {
                Context::new().with_remote_span_context(remote)
            });
        let span = tracer
            .span_builder("attempt")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("wechat.account", account.to_owned()),
                KeyValue::new("wechat_fanout.target", target.to_owned()),
                KeyValue::new("wechat_fanout.attempt", i64::from(attempt)),
            ])
            .start_with_context(tracer, &parent);
        Traced(Some(parent.with_span(span)))
    }

    /// Exports what is queued and stops; blocking, so called off the async threads.
    pub fn shutdown(&self) {
        if let Some(On { provider, .. }) = &self.0
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "traces: the last spans could not be exported");
        }
    }
}

/// A span in progress, or nothing when traces are off. Ends when dropped.
#[derive(Debug, Default)]
pub struct Traced(Option<Context>);

impl Traced {
    /// No span: traces are off.
    pub fn none() -> Traced {
        Traced(None)
    }

    /// The span's context as a W3C `traceparent` header value.
    pub fn traceparent(&self) -> Option<String> {
        let context = self.0.as_ref()?;
        let span = context.span();
        let c = span.span_context();
        c.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                c.trace_id(),
                c.span_id(),
                c.trace_flags().to_u8()
            )
        })
    }

    /// Adds an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(context) = &self.0 {
            context.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with why.
    pub fn fail(&self, why: impl Into<Cow<'static, str>>) {
        if let Some(context) = &self.0 {
            context.span().set_status(Status::error(why));
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(context) = &self.0 {
            context.span().end();
        }
    }
}

/// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`) as a remote parent.
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_only_when_well_formed() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(good).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context.is_remote() && context.is_sampled());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        assert_eq!(Traced::none().traceparent(), None);
    }
}
