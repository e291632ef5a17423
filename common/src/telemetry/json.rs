//! One JSON object per log line, with the trace it belongs to.
//!
//! `tracing-subscriber`'s own JSON format knows nothing of OpenTelemetry,
//! so it cannot say which trace a line belongs to; this one adds the
//! `trace_id` and `span_id` of the innermost span, which is what joins the
//! catalog's and discount's logs for one request.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON lines format: `timestamp` (RFC 3339, UTC), `level`, `target`,
/// `message`, `fields` (the event's other fields), `spans` (each open span,
/// outermost first, with its fields as an object when the layer's field
/// formatter is `JsonFields`), and, inside a span,
/// `trace_id` and `span_id` (hex, as in `traceparent`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        line.insert(
            "message".into(),
            fields.message.take().unwrap_or_default().into(),
        );
        if !fields.other.is_empty() {
            line.insert("fields".into(), Value::Object(fields.other));
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut entry = Map::new();
                    entry.insert("name".into(), span.name().into());
                    let extensions = span.extensions();
                    if let Some(formatted) = extensions.get::<FormattedFields<N>>()
                        && !formatted.fields.is_empty()
                    {
                        // An object with `JsonFields` (as `init` sets), the
                        // text as it came with another field formatter.
                        let fields = serde_json::from_str(&formatted.fields)
                            .unwrap_or_else(|_| Value::String(formatted.fields.clone()));
                        entry.insert("fields".into(), fields);
                    }
                    Value::Object(entry)
                })
                .collect();
            line.insert("spans".into(), Value::Array(spans));
        }
        // No span's extensions may be held here: reading the OpenTelemetry
        // context takes them.
        if let Some(current) = ctx.lookup_current() {
            let id = current.id();
            let context = tracing::dispatcher::get_default(|dispatch| {
                tracing_opentelemetry::get_otel_context(&id, dispatch)
            });
            if let Some(context) = context {
                let span = context.span();
                let ids = span.span_context();
                if ids.is_valid() {
                    line.insert("trace_id".into(), ids.trace_id().to_string().into());
                    line.insert("span_id".into(), ids.span_id().to_string().into());
                }
            }
            // No spans exported: the ids the logs get instead.
            if !line.contains_key("trace_id")
                && let Some(ids) = current.extensions().get::<super::ids::TraceIds>().copied()
            {
                line.insert("trace_id".into(), ids.trace_id.to_string().into());
                line.insert("span_id".into(), ids.span_id.to_string().into());
            }
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// An event's fields as JSON values; `message` apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    other: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(text) => text,
                other => other.to_string(),
            });
        } else {
            self.other.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// What one `tracing` call writes in this format, with no
    /// OpenTelemetry layer.
    fn written(log: impl FnOnce()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .with_writer(move || Sink(Arc::clone(&sink))),
        );
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A value logged with `?`, as the catalog logs a request's version.
    fn http_version() -> impl std::fmt::Debug {
        struct Shown;
        impl std::fmt::Debug for Shown {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("HTTP/1.1")
            }
        }
        Shown
    }

    #[test]
    fn an_event_is_one_json_line_whatever_its_text() {
        let out = written(|| {
            let span = tracing::info_span!("request", method = "GET", otel.kind = "server", version = ?http_version());
            let _inside = span.enter();
            let text = "forged\n{\"level\":\"ERROR\"}";
            tracing::warn!(peer = "10.0.0.1:5", count = 3, "{text}");
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        let line: Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "forged\n{\"level\":\"ERROR\"}");
        assert_eq!(line["fields"]["peer"], "10.0.0.1:5");
        assert_eq!(line["fields"]["count"], 3);
        assert_eq!(line["spans"][0]["name"], "request");
        // Values, each a JSON string once: not `"\"server\""`, not one text.
        assert_eq!(line["spans"][0]["fields"]["method"], "GET", "{line}");
        assert_eq!(line["spans"][0]["fields"]["otel.kind"], "server", "{line}");
        assert_eq!(line["spans"][0]["fields"]["version"], "HTTP/1.1", "{line}");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        // No OpenTelemetry layer: no trace to name.
        assert!(line.get("trace_id").is_none(), "{line}");
    }
}
