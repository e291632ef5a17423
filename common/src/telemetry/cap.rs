//! `--max-traces-per-second`: a cap on the traces a service records,
//! whatever its callers ask.
//!
//! The configured sampler (`OTEL_TRACES_SAMPLER`, parent-based by default)
//! still decides first, so a caller's `traceparent` is still followed. But
//! a caller that marks every request sampled made the catalog export every
//! span (issue 25: 114,690 spans for 58,642 listings with a 1% sampler), at
//! about 40% of its throughput. So each trace that *enters* the process,
//! its first span here (a root, or the child of a caller's remote span),
//! takes a token from a bucket refilled at the cap; without one the trace
//! is not recorded. Spans whose parent is in this process follow the
//! parent, so a trace is kept or dropped whole, never cut into fragments.
//!
//! The cap counts traces, not spans: spans a second are at most the cap
//! times the spans of one trace (two in the catalog for one listing, one
//! in discount for one call; more when a listing is retried on another
//! replica). A cap on spans would have to drop spans of traces already
//! started, which a collector shows as broken traces.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};

/// Traces refused by a cap in this process since it started: what
/// `<service>_traces_dropped_total` reports. One count for the process,
/// like its tracer provider and its subscriber.
static TRACES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many traces a cap in this process has refused so far.
pub fn traces_dropped() -> u64 {
    TRACES_DROPPED.load(Ordering::Relaxed)
}

/// A sampler that asks `inner` and then caps, per second, the traces that
/// enter this process (see the module's documentation).
#[derive(Debug, Clone)]
pub(crate) struct Capped {
    inner: Box<dyn ShouldSample>,
    /// Shared by clones: one budget for the process.
    bucket: Arc<Mutex<Bucket>>,
    dropped: &'static AtomicU64,
}

impl Capped {
    /// `inner`, with at most `per_second` traces a second entering this
    /// process recorded (and a burst of as many).
    pub(crate) fn new(inner: Box<dyn ShouldSample>, per_second: u32) -> Self {
        Self::counting_into(inner, per_second, &TRACES_DROPPED, Instant::now())
    }

    fn counting_into(
        inner: Box<dyn ShouldSample>,
        per_second: u32,
        dropped: &'static AtomicU64,
        now: Instant,
    ) -> Self {
        Self {
            inner,
            bucket: Arc::new(Mutex::new(Bucket::full(per_second, now))),
            dropped,
        }
    }

    /// The decision for a span starting at `now`; the rest as in
    /// [`ShouldSample::should_sample`].
    #[allow(clippy::too_many_arguments)]
    fn sample_at(
        &self,
        now: Instant,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let result =
            self.inner
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        if result.decision != SamplingDecision::RecordAndSample {
            return result;
        }
        // A parent in this process already took this trace's token.
        let local_parent = parent_context.is_some_and(|cx| {
            let span = cx.span();
            let parent = span.span_context();
            parent.is_valid() && !parent.is_remote()
        });
        let admitted = local_parent
            || self
                .bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(now);
        if admitted {
            return result;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        SamplingResult {
            decision: SamplingDecision::Drop,
            attributes: Vec::new(),
            trace_state: result.trace_state,
        }
    }
}

impl ShouldSample for Capped {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        self.sample_at(
            Instant::now(),
            parent_context,
            trace_id,
            name,
            span_kind,
            attributes,
            links,
        )
    }
}

/// A token bucket: `per_second` tokens a second, holding at most one
/// second's worth, full at the start. Over any stretch of `t` seconds it
/// gives at most `per_second * (t + 1)` tokens.
#[derive(Debug)]
struct Bucket {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            last: now,
        }
    }

    /// Takes a token at `now` if there is one.
    fn take(&mut self, now: Instant) -> bool {
        // Calls may come out of order across threads; time never runs back.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::Sampler;
    use std::time::Duration;

    #[test]
    fn the_bucket_gives_a_burst_of_one_second_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::full(10, start);
        let burst = (0..100).filter(|_| bucket.take(start)).count();
        assert_eq!(burst, 10);
        // Each tenth of a second one more, never two.
        for tenth in 1..=50 {
            let now = start + Duration::from_millis(100 * tenth);
            assert!(bucket.take(now), "tenth {tenth}");
            assert!(!bucket.take(now), "tenth {tenth}");
        }
        // Idle for a minute: one second's worth, not sixty.
        let later = start + Duration::from_secs(65);
        assert_eq!((0..100).filter(|_| bucket.take(later)).count(), 10);
        // A call stamped before the last one takes nothing back in time.
        assert!(!bucket.take(start));
    }

    fn parent(remote: bool, sampled: bool) -> Context {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let span = SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            flags,
            remote,
            TraceState::default(),
        );
        Context::new().with_remote_span_context(span)
    }

    fn decide(sampler: &Capped, now: Instant, parent: &Context) -> SamplingDecision {
        sampler
            .sample_at(
                now,
                Some(parent),
                TraceId::from(7),
                "GET /products",
                &SpanKind::Server,
                &[],
                &[],
            )
            .decision
    }

    #[test]
    fn traces_entering_take_a_token_and_spans_inside_them_follow_their_parent() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let now = Instant::now();
        let sampler = Capped::counting_into(
            Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
            2,
            &DROPPED,
            now,
        );
        let decide = |parent: &Context| decide(&sampler, now, parent);
        let caller = parent(true, true);
        let sampled = SamplingDecision::RecordAndSample;
        // A caller's sampled trace: two admitted (the burst), the third not.
        assert_eq!(decide(&caller), sampled);
        assert_eq!(decide(&Context::new()), sampled, "a root");
        assert_eq!(decide(&caller), SamplingDecision::Drop);
        assert_eq!(DROPPED.load(Ordering::Relaxed), 1);
        // A child of a span of this process, sampled: kept, no token asked.
        for _ in 0..5 {
            assert_eq!(decide(&parent(false, true)), sampled);
        }
        // Not sampled upstream: dropped by the parent-based sampler, not by
        // the cap, so not counted as the cap's.
        assert_eq!(decide(&parent(true, false)), SamplingDecision::Drop);
        assert_eq!(decide(&parent(false, false)), SamplingDecision::Drop);
        assert_eq!(DROPPED.load(Ordering::Relaxed), 1);
    }
}
