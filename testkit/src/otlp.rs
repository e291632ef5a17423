//! An OTLP trace receiver in-process: the collector's gRPC trace service,
//! keeping every span it is sent, for tests of what the services export.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{HANG, SetupResult};

/// One span as received, with the ids in hex as `traceparent` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource it came with.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// OTLP's span kind: 2 server, 3 client.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Its string and integer attributes, as text.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The receiver, listening on `127.0.0.1` until dropped.
#[derive(Debug)]
pub struct TraceReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TraceReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps the spans it is sent (`None`: only counts them).
#[derive(Debug, Clone)]
struct Collector {
    spans: Option<Arc<Mutex<Vec<ReceivedSpan>>>>,
    count: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len() as u64)
            .sum();
        self.count.fetch_add(spans, Ordering::Relaxed);
        let Some(kept) = &self.spans else {
            return Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }));
        };
        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| text(attribute.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                kept.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|a| {
                            Some((a.key.clone(), text(a.value.as_ref()?.value.as_ref()?)?))
                        })
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(number) => Some(number.to_string()),
        Value::BoolValue(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl TraceReceiver {
    /// Starts the receiver on `127.0.0.1:0`, keeping every span.
    ///
    /// # Errors
    /// The port could not be bound.
    pub async fn start() -> SetupResult<Self> {
        Self::start_keeping(true).await
    }

    /// Starts a receiver that only counts the spans (for load: it keeps
    /// nothing).
    ///
    /// # Errors
    /// The port could not be bound.
    pub async fn start_counting() -> SetupResult<Self> {
        Self::start_keeping(false).await
    }

    async fn start_keeping(keep: bool) -> SetupResult<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let service = TraceServiceServer::new(Collector {
            spans: keep.then(|| Arc::clone(&spans)),
            count: Arc::clone(&count),
        })
        // A batch of 512 spans is far below this; OTLP allows large ones.
        .max_decoding_message_size(16 * 1024 * 1024);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self {
            addr,
            spans,
            count,
            task,
        })
    }

    /// How many spans were received, kept or not.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The endpoint to export to: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits, within [`HANG`], until the spans received satisfy `done`;
    /// returns them.
    ///
    /// # Errors
    /// They did not, in time; the message lists what arrived.
    pub async fn wait_for(
        &self,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> SetupResult<Vec<ReceivedSpan>> {
        let deadline = tokio::time::Instant::now() + HANG;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("the spans expected did not arrive; got {spans:#?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
