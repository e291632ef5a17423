//! How long a call may run: the client's `grpc-timeout`, at most
//! `--max-call-duration`. tonic's server did this with a layer of its own
//! that it keeps private, so serving tonic's `Routes` through hyper needs it
//! here; past the time the call ends with tonic's own `TimeoutExpired`,
//! which its `RecoverError` answers CANCELLED "Timeout expired", as before.

use std::time::Duration;

use tonic::codegen::http;

/// Each call's time limit: the shorter of its `grpc-timeout` and
/// `ceiling`, as a layer for the router.
pub(super) fn call_deadline<S, B>(
    ceiling: Duration,
) -> impl tower::Layer<
    S,
    Service = impl tower::Service<
        http::Request<B>,
        Response = S::Response,
        Error = tower::BoxError,
        Future: Send + 'static,
    > + Clone,
> + Clone
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: Send + 'static,
{
    tower::layer::layer_fn(move |inner: S| {
        tower::service_fn(move |request: http::Request<B>| {
            let limit = requested(request.headers()).map_or(ceiling, |asked| asked.min(ceiling));
            let call = tower::ServiceExt::oneshot(inner.clone(), request);
            async move {
                match tokio::time::timeout(limit, call).await {
                    Ok(answer) => answer.map_err(Into::into),
                    Err(_) => Err(Box::new(tonic::TimeoutExpired(())) as tower::BoxError),
                }
            }
        })
    })
}

/// The time a call's `grpc-timeout` asks for: at most 8 digits and a unit
/// (gRPC over HTTP/2, "Requests"); anything else asks for nothing, as
/// tonic's server took it.
fn requested(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match value.as_bytes().last()? {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_str(value).unwrap());
        requested(&headers)
    }

    #[test]
    fn every_unit_of_the_specification_is_read() {
        assert_eq!(asked("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(asked("3M"), Some(Duration::from_secs(180)));
        assert_eq!(asked("4S"), Some(Duration::from_secs(4)));
        assert_eq!(asked("250m"), Some(Duration::from_millis(250)));
        assert_eq!(asked("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(asked("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn a_malformed_timeout_asks_for_nothing() {
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", "S1"] {
            assert_eq!(asked(bad), None, "{bad:?}");
        }
        assert_eq!(requested(&http::HeaderMap::new()), None);
    }
}
