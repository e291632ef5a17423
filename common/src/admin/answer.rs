//! What the admin listener answers: a request head read so far, parsed
//! with httparse once it is whole, and the answer as the bytes to write,
//! always with `Connection: close`.
//!
//! Every answer but `/metrics` is a few bytes built from the head alone,
//! so the listener can write it the moment the head is complete.

use std::time::SystemTime;

use http::{Method, StatusCode, Uri};
use prometheus::IntGauge;

/// The longest request head taken. The kubelet's probes and Prometheus'
/// scrapes send a few hundred bytes; past this the answer is 431.
pub(super) const MAX_HEAD: usize = 4 * 1024;

/// The most header lines taken (431 past it), as on the services' ports.
const MAX_HEADERS: usize = 64;

const TEXT: &str = "text/plain; charset=utf-8";

/// The content type of `/metrics`: Prometheus' text format 0.0.4.
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the bytes received so far on a connection ask for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// The head is not whole yet.
    Partial,
    /// The head is whole (or refused): this is the reply.
    Complete(Reply),
}

/// The reply to a whole head.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// The whole answer, to be written at once.
    Now(Vec<u8>),
    /// `/metrics`: rendered and written apart (`head_only` for HEAD).
    Scrape { head_only: bool },
}

/// What `head` asks for, `new` being where the bytes received last begin
/// (only those, and the three before, are searched for the end of the
/// head, so a head dripped a byte at a time costs no more than one sent
/// at once).
pub(super) fn read(head: &[u8], new: usize, ready: Option<&IntGauge>) -> Head {
    let recent = head.get(new.saturating_sub(3)..).unwrap_or_default();
    let ended = recent.windows(2).any(|pair| pair == b"\n\n")
        || recent.windows(3).any(|three| three == b"\n\r\n");
    if !ended {
        return if head.len() >= MAX_HEAD {
            Head::Complete(refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        } else {
            Head::Partial
        };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let reply = match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => match (request.method, request.path) {
            (Some(method), Some(target)) => answer(method, target, ready),
            _ => refusal(StatusCode::BAD_REQUEST),
        },
        // An empty line first (`\r\n\r\nGET ...`): wait for the rest.
        Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Err(_) => refusal(StatusCode::BAD_REQUEST),
    };
    Head::Complete(reply)
}

/// The answer to `method` on `target` (origin or absolute form).
fn answer(method: &str, target: &str, ready: Option<&IntGauge>) -> Reply {
    let Ok(uri) = target.parse::<Uri>() else {
        return refusal(StatusCode::BAD_REQUEST);
    };
    let path = uri.path();
    let known = match path {
        "/metrics" | "/healthz" => true,
        "/readyz" => ready.is_some(),
        _ => false,
    };
    let head_only = method == Method::HEAD.as_str();
    if !known {
        let paths = if ready.is_some() {
            "GET /metrics, /healthz and /readyz"
        } else {
            "GET /metrics and /healthz (this service's readiness is on its own port)"
        };
        let body = format!("not found: this listener serves {paths} only\n");
        return Reply::Now(Answer::text(StatusCode::NOT_FOUND, &body).bytes(head_only));
    }
    if method != Method::GET.as_str() && !head_only {
        let body = format!("{path} answers GET only\n");
        let mut refused = Answer::text(StatusCode::METHOD_NOT_ALLOWED, &body);
        refused.allow = true;
        return Reply::Now(refused.bytes(false));
    }
    let answer = match (path, ready) {
        ("/healthz", _) => Answer::text(StatusCode::OK, "ok\n"),
        ("/readyz", Some(serving)) if serving.get() == 1 => Answer::text(StatusCode::OK, "ready\n"),
        ("/readyz", Some(_)) => Answer::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not serving (starting, or shutting down)\n",
        ),
        // `/metrics`: every other path was answered above.
        _ => return Reply::Scrape { head_only },
    };
    Reply::Now(answer.bytes(head_only))
}

/// A head refused whole: `status` with its reason as the body.
fn refusal(status: StatusCode) -> Reply {
    let reason = status.canonical_reason().unwrap_or("refused");
    Reply::Now(Answer::text(status, &format!("{reason}\n")).bytes(false))
}

/// The answer to a scrape while `writers` answers are already being
/// written: the probes come first, and Prometheus scrapes again.
pub(super) fn busy(writers: usize) -> Vec<u8> {
    let body = format!("busy: {writers} answers are being written; scrape again\n");
    Answer::text(StatusCode::SERVICE_UNAVAILABLE, &body).bytes(false)
}

/// The scrape's answer: `text` is the rendered metrics.
pub(super) fn metrics(text: &str, head_only: bool) -> Vec<u8> {
    Answer {
        status: StatusCode::OK,
        content_type: METRICS,
        body: text,
        allow: false,
    }
    .bytes(head_only)
}

/// An answer before it is written.
struct Answer<'a> {
    status: StatusCode,
    content_type: &'static str,
    body: &'a str,
    /// Says which methods the path takes (`Allow`), for a 405.
    allow: bool,
}

impl<'a> Answer<'a> {
    fn text(status: StatusCode, body: &'a str) -> Self {
        Self {
            status,
            content_type: TEXT,
            body,
            allow: false,
        }
    }

    /// The status line, headers and, unless `head_only`, body. `Date` as
    /// RFC 9110 asks of a server with a clock; `Connection: close` because
    /// the listener serves one request a connection.
    fn bytes(&self, head_only: bool) -> Vec<u8> {
        let reason = self.status.canonical_reason().unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\ndate: {}\r\nconnection: close\r\n",
            self.status.as_u16(),
            self.content_type,
            self.body.len(),
            httpdate::fmt_http_date(SystemTime::now()),
        );
        if self.allow {
            out.push_str("allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(self.body);
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer to the whole `head`, as text.
    fn reply(head: &str, ready: Option<&IntGauge>) -> String {
        match read(head.as_bytes(), 0, ready) {
            Head::Complete(Reply::Now(bytes)) => String::from_utf8(bytes).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn serving(value: i64) -> IntGauge {
        let gauge = IntGauge::new("serving", "test").unwrap();
        gauge.set(value);
        gauge
    }

    #[test]
    fn a_probe_is_answered_from_its_head_alone_and_the_connection_closes() {
        let ready = serving(1);
        let answer = reply(
            "GET /healthz HTTP/1.1\r\nHost: 10.0.0.7:12443\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            Some(&ready),
        );
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(answer.contains("\r\ncontent-length: 3\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        let ready_answer = reply("GET /readyz?verbose HTTP/1.0\n\n", Some(&ready));
        assert!(ready_answer.ends_with("\r\n\r\nready\n"), "{ready_answer}");
        ready.set(0);
        let not_ready = reply("GET http://admin/readyz HTTP/1.1\r\n\r\n", Some(&ready));
        assert!(not_ready.starts_with("HTTP/1.1 503 "), "{not_ready}");
    }

    #[test]
    fn head_gets_the_headers_only() {
        let answer = reply("HEAD /healthz HTTP/1.1\r\n\r\n", None);
        assert!(answer.contains("content-length: 3\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n"), "{answer}");
        assert_eq!(
            read(b"HEAD /metrics HTTP/1.1\r\n\r\n", 0, None),
            Head::Complete(Reply::Scrape { head_only: true })
        );
    }

    #[test]
    fn other_paths_and_methods_are_refused_naming_what_is_served() {
        let missing = reply("GET /livez HTTP/1.1\r\n\r\n", Some(&serving(1)));
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        assert!(
            missing.contains("/metrics, /healthz and /readyz"),
            "{missing}"
        );
        let catalog = reply("GET /readyz HTTP/1.1\r\n\r\n", None);
        assert!(catalog.starts_with("HTTP/1.1 404 "), "{catalog}");
        assert!(catalog.contains("on its own port"), "{catalog}");
        let posted = reply(
            "POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            Some(&serving(1)),
        );
        assert!(posted.starts_with("HTTP/1.1 405 "), "{posted}");
        assert!(posted.contains("\r\nallow: GET, HEAD\r\n"), "{posted}");
    }

    #[test]
    fn a_head_is_partial_until_its_empty_line_then_parsed_once() {
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        for end in 1..head.len() {
            assert_eq!(read(&head[..end], end - 1, None), Head::Partial, "{end}");
        }
        // The last byte alone completes it: the search looks back across
        // the previous read.
        assert!(matches!(
            read(head, head.len() - 1, None),
            Head::Complete(Reply::Now(_))
        ));
    }

    #[test]
    fn garbage_and_oversized_heads_are_refused() {
        assert!(reply("\x16\x03\x01 hello\r\n\r\n", None).starts_with("HTTP/1.1 400 "));
        let long = format!("GET /healthz HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        match read(long.as_bytes(), 0, None) {
            Head::Complete(Reply::Now(bytes)) => {
                assert!(bytes.starts_with(b"HTTP/1.1 431 "));
            }
            other => panic!("{other:?}"),
        }
        let many = format!(
            "GET /healthz HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(reply(&many, None).starts_with("HTTP/1.1 431 "));
    }
}
