//! What comes back from discount, judged: per-product answers checked for
//! sense, the listing's [`DiscountStatus`], and [`CallError`] with the whole
//! cause chain. Pure functions, tested here without a network.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::time::{Duration, Instant};

use ecommerce_proto::pb::{DiscountValue, Product};

use crate::discount_status::DiscountStatus;
use common::quiet::Quiet;
use common::telemetry::Untrusted;

/// Products priced for one customer, and how that went.
#[derive(Debug, Clone)]
pub struct Priced {
    /// Every product asked about, in order.
    pub products: Vec<Product>,
    /// Whether discount answered for all, some or none of them.
    pub status: DiscountStatus,
}

/// Why a call to discount gave no usable answer.
#[derive(Debug, Clone)]
pub enum CallError {
    /// No answer within the deadline.
    Deadline(Duration),
    /// The call failed: connection refused, TLS failure, or an error status
    /// from discount.
    Status(tonic::Status),
    /// Discount answered with something the catalog cannot use.
    Invalid(&'static str),
    /// No replica is in rotation: none known, or every one unreachable,
    /// ejected or not serving (`/readyz` lists them).
    NoReplica,
    /// Not sent: the request for this product alone (with its customer)
    /// would be this many bytes, over discount's message limit. Nothing
    /// any replica did, so held against none, and not sent again.
    TooLarge(usize),
}

impl CallError {
    /// The gRPC code the call ended with, for the metrics: the status's
    /// own, DEADLINE_EXCEEDED for the catalog's deadline, INTERNAL for an
    /// answer the catalog cannot use, UNAVAILABLE when no replica was
    /// there to call.
    pub(crate) fn code(&self) -> tonic::Code {
        match self {
            Self::Deadline(_) => tonic::Code::DeadlineExceeded,
            Self::Status(status) => status.code(),
            Self::Invalid(_) => tonic::Code::Internal,
            Self::NoReplica => tonic::Code::Unavailable,
            Self::TooLarge(_) => tonic::Code::ResourceExhausted,
        }
    }

    /// The error for a call that ended with `status`. tonic's channel
    /// enforces the call's `grpc-timeout` itself, racing the client's own
    /// timer: when it wins, the call fails with a transport error whose
    /// cause is [`tonic::TimeoutExpired`]. That is the deadline passing,
    /// not discount being unreachable, and must not start a backoff.
    pub(crate) fn from_status(status: tonic::Status, deadline: Duration) -> Self {
        if causes(&status).any(|cause| cause.is::<tonic::TimeoutExpired>()) {
            Self::Deadline(deadline)
        } else {
            Self::Status(status)
        }
    }

    /// Whether discount never started on the call that ended with
    /// `status`, so it may be sent again: the connection was retired
    /// ([`CallError::connection_retired`]) or discount refused the stream
    /// ([`CallError::stream_refused`]).
    pub(crate) fn never_processed(&self) -> bool {
        self.connection_retired() || self.stream_refused()
    }

    /// Whether the call was caught by the connection closing under it,
    /// which says nothing about the replica: the stream was above the last
    /// one a GOAWAY from discount let through (or opened after it, at its
    /// `--max-connection-age` or while it shuts down), or the connection
    /// closed while the call still waited in hyper's queue for it
    /// ("operation was canceled: connection closed").
    pub(crate) fn connection_retired(&self) -> bool {
        let Self::Status(status) = self else {
            return false;
        };
        causes(status).any(|cause| {
            if let Some(h2) = cause.downcast_ref::<h2::Error>() {
                h2.is_go_away() && h2.is_remote()
            } else {
                cause
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_canceled)
            }
        })
    }

    /// Whether discount refused the stream (`RST_STREAM` with
    /// REFUSED_STREAM, RFC 9113 §8.7): it did not process the call, so the
    /// call may be sent again, but a replica that does it again and again
    /// serves nobody, and counts as failing.
    pub(crate) fn stream_refused(&self) -> bool {
        let Self::Status(status) = self else {
            return false;
        };
        causes(status).any(|cause| {
            cause.downcast_ref::<h2::Error>().is_some_and(|h2| {
                h2.reason() == Some(h2::Reason::REFUSED_STREAM) && !h2.is_go_away()
            })
        })
    }

    /// What a caller outside may be told: the kind of failure without the
    /// addresses, certificate details and library messages of the full
    /// text, which goes to the log.
    pub fn reason(&self) -> String {
        match self {
            Self::Deadline(_) => "no answer from discount in time".to_owned(),
            Self::NoReplica => "discount is unreachable".to_owned(),
            Self::Status(_) if self.is_unreachable() => "discount is unreachable".to_owned(),
            Self::Status(_) => "discount answered with an error".to_owned(),
            Self::Invalid(_) => "discount sent an unusable answer".to_owned(),
            Self::TooLarge(_) => "a product too large to send to discount".to_owned(),
        }
    }

    /// Whether the product's answer is as good as it will get: priced, or
    /// too large for any replica to price.
    pub(crate) fn settled(answer: &Result<Option<DiscountValue>, Self>) -> bool {
        matches!(answer, Ok(_) | Err(Self::TooLarge(_)))
    }

    /// Whether the call failed before discount's handler had it, so it may
    /// be sent again, to another replica: discount never processed it, or
    /// could not be reached, or said UNAVAILABLE.
    pub(crate) fn retryable(&self) -> bool {
        self.never_processed() || self.is_unreachable() || self.is_refused()
    }

    /// Whether discount refused the catalog itself (PERMISSION_DENIED: its
    /// identity is not on that replica's allow-list; UNAUTHENTICATED): the
    /// handler never ran, and another replica may think otherwise.
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self, Self::Status(status)
            if matches!(status.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated))
    }

    /// Whether the TLS handshake failed: a certificate refused by either
    /// side (the CA, the name, discount's identity).
    pub(crate) fn is_tls_failure(&self) -> bool {
        let Self::Status(status) = self else {
            return false;
        };
        causes(status).any(|cause| {
            cause.is::<rustls::Error>()
                || cause
                    .downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::get_ref)
                    .is_some_and(|inner| inner.is::<rustls::Error>())
        })
    }

    /// Whether discount could not be reached (connection refused, TLS
    /// handshake refused, connection lost) or says UNAVAILABLE: what the
    /// client backs off from. A failure of the connection carries tonic's
    /// transport error as its cause, whatever the code (a refused client
    /// certificate arrives as UNKNOWN); an answer from discount never does.
    /// A slow or failing answer is not a reason to stop asking.
    pub(crate) fn is_unreachable(&self) -> bool {
        let Self::Status(status) = self else {
            return false;
        };
        causes(status).any(|cause| cause.is::<tonic::transport::Error>())
            || status.code() == tonic::Code::Unavailable
    }
}

/// The causes of `status`, outermost first.
fn causes(status: &tonic::Status) -> impl Iterator<Item = &(dyn Error + 'static)> {
    std::iter::successors(status.source(), |&cause| cause.source())
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deadline(deadline) => write!(f, "no answer from discount within {deadline:?}"),
            Self::Status(status) => {
                // The useful part (refused, certificate unknown, ...) is
                // often only in the sources; tonic and hyper repeat some of
                // them in each other's messages, so each is said once.
                let mut text = status.message().to_owned();
                let mut source = status.source();
                while let Some(cause) = source {
                    let cause_text = cause.to_string();
                    if !text.contains(&cause_text) {
                        text.push_str(": ");
                        text.push_str(&cause_text);
                    }
                    source = cause.source();
                }
                write!(f, "discount call failed with {:?}: {text}", status.code())
            }
            Self::Invalid(what) => write!(f, "discount sent an unusable response: {what}"),
            Self::NoReplica => f.write_str(
                "no discount replica in rotation (unreachable, ejected or not serving; see /readyz)",
            ),
            Self::TooLarge(bytes) => write!(
                f,
                "not sent to discount: the request for this product would be {bytes} bytes, over discount's 64 KiB message limit (its description, or the customer's names, are too long)"
            ),
        }
    }
}

impl Error for CallError {}

/// The most product ids one log line of [`merge`] names; `failed` says
/// how many there were.
const LOGGED_IDS: usize = 20;

/// Puts each answer on its product, in order (a product whose call failed
/// is listed as it was), says how the listing went, and logs each distinct
/// cause once with the products it hit (and a cause that keeps coming at
/// most once per interval, see [`Quiet`]). Replicas that could not be
/// reached are logged where they are ejected, once per ejection.
pub(crate) fn merge(
    customer_id: i32,
    products: Vec<Product>,
    answers: Vec<Result<Option<DiscountValue>, CallError>>,
    quiet: &Quiet,
) -> Priced {
    let total = products.len();
    let mut answered = 0;
    let mut failures: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let products: Vec<Product> = products
        .into_iter()
        .zip(answers)
        .map(|(product, answer)| match answer {
            Ok(discount_value) => {
                answered += 1;
                Product {
                    discount_value,
                    ..product
                }
            }
            Err(error) => {
                failures
                    .entry(error.to_string())
                    .or_default()
                    .push(product.id);
                product
            }
        })
        .collect();
    for (cause, product_ids) in &failures {
        let failed = product_ids.len();
        if let Some(unlogged) = quiet.should_log(cause, Instant::now()) {
            // The first few: a page of 1,000 named them all in 5 KB lines.
            let product_ids = &product_ids[..failed.min(LOGGED_IDS)];
            tracing::warn!(
                customer_id,
                ?product_ids,
                failed,
                of = total,
                cause = %Untrusted(cause),
                unlogged,
                "discount failed; listing these products without a discount"
            );
        }
    }
    Priced {
        products,
        status: DiscountStatus::of(total - answered, total),
    }
}

/// Checks discount's answer for `sent` before anything of it is listed: it
/// must be there, be for the same product at the same price, and carry a
/// discount that is one: a finite `pct` between 0 and 1 (Go, and our JSON,
/// cannot print NaN), and a price after it between 0 and the price. The
/// empty discount (both zero: not this customer's) is always one. A
/// replica holding discount's certificate is still only trusted to price,
/// not to list any number it likes: a negative or inflated price would go
/// straight to the shop's customers.
pub(crate) fn check_answer(
    sent: &Product,
    priced: Option<Product>,
) -> Result<Option<DiscountValue>, CallError> {
    let priced = priced.ok_or(CallError::Invalid("the response has no product"))?;
    if priced.id != sent.id {
        return Err(CallError::Invalid("the response is for another product"));
    }
    if priced.price_in_cents != sent.price_in_cents {
        return Err(CallError::Invalid(
            "the response has another price_in_cents than the one sent",
        ));
    }
    let value = priced
        .discount_value
        .ok_or(CallError::Invalid("the response has no discount_value"))?;
    if value == DiscountValue::default() {
        return Ok(Some(value));
    }
    if !value.pct.is_finite() {
        return Err(CallError::Invalid("pct is not a finite number"));
    }
    if !(0.0..=1.0).contains(&value.pct) {
        return Err(CallError::Invalid("pct is outside 0..=1"));
    }
    if value.value_in_cents < 0 || value.value_in_cents > sent.price_in_cents {
        return Err(CallError::Invalid(
            "value_in_cents is outside 0..=price_in_cents",
        ));
    }
    if !agrees(sent.price_in_cents, value) {
        return Err(CallError::Invalid(
            "value_in_cents is not price_in_cents less pct",
        ));
    }
    Ok(Some(value))
}

/// Whether `value.value_in_cents` is the price less `value.pct` of it: to
/// the cent (the rule rounds), plus what `pct` being a `float32` can be off
/// by (half a unit in its last place, 2^-25 of the price at most). A
/// replica that answers 1 cent for a 1,500-dollar product at 10% off is
/// not rounding.
fn agrees(price_in_cents: i32, value: DiscountValue) -> bool {
    let price = f64::from(price_in_cents);
    let expected = price * (1.0 - f64::from(value.pct));
    let slack = 1.0 + price * f64::from(f32::EPSILON);
    (f64::from(value.value_in_cents) - expected).abs() <= slack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: i32, discount_value: Option<DiscountValue>) -> Product {
        Product {
            id,
            price_in_cents: 1000,
            discount_value,
            ..Product::default()
        }
    }

    fn ten_percent() -> DiscountValue {
        DiscountValue {
            pct: 0.1,
            value_in_cents: 900,
        }
    }

    #[test]
    fn the_status_says_whether_all_some_or_none_were_priced() {
        assert_eq!(DiscountStatus::of(0, 3), DiscountStatus::Applied);
        assert_eq!(DiscountStatus::of(1, 3), DiscountStatus::Partial);
        assert_eq!(DiscountStatus::of(2, 3), DiscountStatus::Partial);
        assert_eq!(DiscountStatus::of(3, 3), DiscountStatus::Unavailable);
        // An empty listing asked nothing that could fail.
        assert_eq!(DiscountStatus::of(0, 0), DiscountStatus::Applied);
        let values = [
            DiscountStatus::Applied,
            DiscountStatus::Partial,
            DiscountStatus::Unavailable,
        ]
        .map(DiscountStatus::as_str);
        assert_eq!(values, ["applied", "partial", "unavailable"]);
    }

    #[test]
    fn an_answer_for_the_product_sent_is_taken_with_its_discount() {
        let sent = product(7, None);
        let answer = check_answer(&sent, Some(product(7, Some(ten_percent()))));
        assert_eq!(answer.ok(), Some(Some(ten_percent())));
        // An empty discount (someone else's customer) is an answer too.
        let empty = check_answer(&sent, Some(product(7, Some(DiscountValue::default()))));
        assert_eq!(empty.ok(), Some(Some(DiscountValue::default())));
        // The edges of what a discount may be: all of it off, none of it.
        // Rounded either way, as the rule may.
        for (pct, value_in_cents) in [(1.0, 0), (0.0, 1000), (0.5, 500), (0.1, 899), (0.1, 901)] {
            let value = DiscountValue {
                pct,
                value_in_cents,
            };
            let answer = check_answer(&sent, Some(product(7, Some(value))));
            assert_eq!(answer.ok(), Some(Some(value)), "{value:?}");
        }
        // discount's own 10% (truncated, pct the f32 nearest 0.1), at any
        // price: the float32 slack grows with it.
        for price_in_cents in [1, 11, 99_999, 150_000, 1 << 24, i32::MAX] {
            let sent = Product {
                price_in_cents,
                ..product(7, None)
            };
            let value = DiscountValue {
                pct: 0.1,
                value_in_cents: i32::try_from(i64::from(price_in_cents) * 9 / 10).unwrap_or(0),
            };
            let priced = Product {
                discount_value: Some(value),
                ..sent.clone()
            };
            let answer = check_answer(&sent, Some(priced));
            assert_eq!(answer.ok(), Some(Some(value)), "{price_in_cents}");
        }
    }

    #[test]
    fn missing_foreign_or_impossible_answers_are_refused_with_the_reason() {
        let sent = product(7, None);
        let reason = |answer: Option<Product>| match check_answer(&sent, answer) {
            Err(CallError::Invalid(why)) => why,
            other => panic!("accepted: {other:?}"),
        };
        let priced = |pct: f32, value_in_cents: i32| {
            Some(product(
                7,
                Some(DiscountValue {
                    pct,
                    value_in_cents,
                }),
            ))
        };
        assert_eq!(reason(None), "the response has no product");
        assert_eq!(
            reason(Some(product(8, Some(ten_percent())))),
            "the response is for another product"
        );
        assert_eq!(
            reason(Some(product(7, None))),
            "the response has no discount_value"
        );
        let repriced = Product {
            price_in_cents: 1,
            ..product(7, Some(ten_percent()))
        };
        assert_eq!(
            reason(Some(repriced)),
            "the response has another price_in_cents than the one sent"
        );
        for pct in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(reason(priced(pct, 1)), "pct is not a finite number");
        }
        // What a hostile replica holding discount's certificate answered.
        for pct in [-5.0, -0.01, 1.01, 100.0] {
            assert_eq!(reason(priced(pct, 900)), "pct is outside 0..=1");
        }
        for value_in_cents in [i32::MIN, -1, 1001, i32::MAX] {
            assert_eq!(
                reason(priced(0.1, value_in_cents)),
                "value_in_cents is outside 0..=price_in_cents"
            );
        }
        // Within the price, but not what 10% off it is.
        for value_in_cents in [0, 1, 898, 902, 1000] {
            assert_eq!(
                reason(priced(0.1, value_in_cents)),
                "value_in_cents is not price_in_cents less pct"
            );
        }
    }

    /// An error with a message and an optional source, like hyper's.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn a_cause_repeated_down_the_chain_is_said_once() {
        let chain = Layer(
            "transport error",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer("Connection refused", None))),
            ))),
        );
        let status = tonic::Status::from_error(Box::new(chain));
        let text = CallError::Status(status).to_string();
        assert_eq!(text.matches("tcp connect error").count(), 1, "{text}");
        assert_eq!(text.matches("transport error").count(), 1, "{text}");
        assert!(text.ends_with("Connection refused"), "{text}");
    }

    #[test]
    fn tonics_own_timeout_is_the_deadline_not_an_unreachable_discount() {
        let expired = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        let error = CallError::from_status(expired, Duration::from_millis(300));
        assert!(matches!(error, CallError::Deadline(_)), "{error:?}");
        assert!(!error.is_unreachable());
        let internal = CallError::from_status(tonic::Status::internal("no"), Duration::ZERO);
        assert!(matches!(internal, CallError::Status(_)), "{internal:?}");
    }

    #[test]
    fn only_calls_that_never_reached_discount_are_sent_again() {
        let error = |error: Box<dyn Error + Send + Sync>| {
            CallError::Status(tonic::Status::from_error(error))
        };
        let h2 = |reason: h2::Reason| error(Box::new(h2::Error::from(reason)));
        assert!(h2(h2::Reason::REFUSED_STREAM).never_processed());
        // Refused by the replica (held against it when it repeats), not
        // the connection retiring under the call (never held against it).
        assert!(h2(h2::Reason::REFUSED_STREAM).stream_refused());
        assert!(!h2(h2::Reason::REFUSED_STREAM).connection_retired());
        for reason in [h2::Reason::CANCEL, h2::Reason::INTERNAL_ERROR] {
            assert!(!h2(reason).never_processed());
            assert!(!h2(reason).retryable());
        }
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        assert!(!error(Box::new(refused)).never_processed());
        // Refused, or UNAVAILABLE: it did not get to the handler.
        let unavailable = CallError::Status(tonic::Status::unavailable("down"));
        assert!(unavailable.retryable());
        // What the handler said, or the deadline: not sent again.
        for answered in [
            CallError::Status(tonic::Status::resource_exhausted("busy")),
            CallError::Status(tonic::Status::invalid_argument("no")),
            CallError::Deadline(Duration::from_millis(300)),
            CallError::NoReplica,
        ] {
            assert!(!answered.retryable(), "{answered:?}");
        }
    }

    #[test]
    fn a_failed_call_reads_with_its_whole_cause_chain() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let status = tonic::Status::from_error(Box::new(refused));
        let text = CallError::Status(status).to_string();
        assert!(text.starts_with("discount call failed with "), "{text}");
        assert!(text.contains("Connection refused"), "{text}");

        let deadline = CallError::Deadline(Duration::from_millis(300)).to_string();
        assert_eq!(deadline, "no answer from discount within 300ms");
    }
}
