//! A message over the size limit is answered RESOURCE_EXHAUSTED, as the
//! gRPC specification says, not tonic's OUT_OF_RANGE.

use http_body::Frame;
use http_body_util::BodyExt;
use tonic::codegen::http;

/// tonic answers a message over the size limit with OUT_OF_RANGE; the gRPC
/// status code specification, grpc-go and grpcio say RESOURCE_EXHAUSTED, and
/// clients retry or alert on that code. The status travels in the trailers
/// (or, for a trailers-only answer, in the headers); both are rewritten.
///
/// The rewrite goes by the code alone, not tonic's wording, so a tonic
/// release that rewords its message cannot silently undo it. That is sound
/// because no service on this server answers OUT_OF_RANGE itself: the
/// discount handlers answer INVALID_ARGUMENT ([`crate::DiscountError`]), and
/// health and reflection never use it. A handler that one day needs
/// OUT_OF_RANGE must narrow this. `a_message_over_the_size_limit_is_resource_exhausted`
/// in `tests/it/hostile.rs` checks the result over the wire.
pub(super) fn oversized_is_resource_exhausted(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    rewrite_out_of_range(&mut parts.headers);
    let body = body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            rewrite_out_of_range(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

fn rewrite_out_of_range(headers: &mut http::HeaderMap) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == OUT_OF_RANGE.as_bytes());
    if out_of_range {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
}

/// `grpc-status` of OUT_OF_RANGE, as it appears on the wire.
const OUT_OF_RANGE: &str = "11";

#[cfg(test)]
mod tests {
    use super::*;

    fn status_after_rewrite(code: tonic::Code) -> Option<tonic::Code> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from(code as i32));
        headers.insert("grpc-message", http::HeaderValue::from_static("whatever"));
        rewrite_out_of_range(&mut headers);
        tonic::Status::from_header_map(&headers).map(|status| status.code())
    }

    #[test]
    fn out_of_range_becomes_resource_exhausted_whatever_the_message() {
        assert_eq!(tonic::Code::OutOfRange as i32, 11);
        assert_eq!(
            status_after_rewrite(tonic::Code::OutOfRange),
            Some(tonic::Code::ResourceExhausted)
        );
    }

    #[test]
    fn every_other_status_is_left_alone() {
        for code in [
            tonic::Code::Ok,
            tonic::Code::InvalidArgument,
            tonic::Code::Internal,
            tonic::Code::Unavailable,
        ] {
            assert_eq!(status_after_rewrite(code), Some(code));
        }
        let mut none = http::HeaderMap::new();
        rewrite_out_of_range(&mut none);
        assert!(none.is_empty());
    }
}
