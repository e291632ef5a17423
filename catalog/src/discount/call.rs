//! One call to one discount replica: the gRPC methods, the deadline sent
//! as `grpc-timeout` and enforced here too, the client span, the metrics,
//! and each answer checked before it is believed.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ecommerce_proto::pb::discount_client::DiscountClient as GrpcClient;
use ecommerce_proto::pb::{Customer, DiscountRequest, DiscountValue, DiscountsRequest, Product};
use futures_util::StreamExt;
use prost::Message;
use tonic::transport::Channel;
use tracing::Instrument;

use super::outcome::{CallError, check_answer};
use super::replica::Replica;
use super::{Answers, DiscountClient};

/// The most `ApplyDiscount` calls one listing keeps in flight to a replica
/// built from the seed's proto: a page of 1,000 products is not 1,000
/// streams at once (discount's default limit per connection is 256).
const EACH_IN_FLIGHT: usize = 32;

/// The largest answer decoded: a listing's is a few hundred bytes, and
/// tonic's default (4 MiB) let three hostile replicas pin 4 MiB per
/// listing in flight. The same as discount's limit on what it reads and
/// writes (`discount::server::MAX_MESSAGE_SIZE`).
const MAX_ANSWER_SIZE: usize = 64 * 1024;

/// The most bytes one `ApplyDiscounts` answer may take, with room for its
/// framing: a page of 1,000 products is about 120 KB, over discount's
/// limit, so a page is sent as several calls ([`batches`]).
const BATCH_BYTES: usize = MAX_ANSWER_SIZE - 64;

/// The most a product grows in the answer: its `discount_value` (a tag, a
/// length, a `float` and a non-negative `int32`: 13 bytes at most) and one
/// more byte of its own length.
const PRICED_GROWTH: usize = 14;

/// The most `ApplyDiscounts` calls of one listing in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// The size of the request for `products` when that is one product too
/// large to fit in a call even alone, so never to be sent.
fn too_large(customer: &Customer, products: &[Product]) -> Option<usize> {
    let [product] = products else {
        return None;
    };
    let field = |len: usize| 1 + prost::length_delimiter_len(len) + len;
    let bytes = field(customer.encoded_len()) + field(product.encoded_len()) + PRICED_GROWTH;
    (bytes > BATCH_BYTES).then_some(bytes)
}

/// `products` cut, in order, into runs whose `ApplyDiscounts` answers for
/// `customer` fit in [`BATCH_BYTES`] (the answer is the request with a
/// discount on each product, so the request fits too). A product too big
/// to fit even alone is a run of its own: discount refuses it, and only
/// that product is listed without a discount.
fn batches(customer: &Customer, products: &[Product]) -> Vec<Range<usize>> {
    let field = |len: usize| 1 + prost::length_delimiter_len(len) + len;
    let room = BATCH_BYTES.saturating_sub(field(customer.encoded_len()));
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, product) in products.iter().enumerate() {
        let size = field(product.encoded_len()) + PRICED_GROWTH;
        if i > start && bytes + size > room {
            runs.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < products.len() {
        runs.push(start..products.len());
    }
    runs
}

impl DiscountClient {
    /// Sends `message` through `call` (the gRPC method `method`) to
    /// `replica`, with what is left until `deadline`. The deadline travels
    /// to discount as `grpc-timeout`, and is enforced here as well, so a
    /// replica that accepts the connection and then says nothing costs at
    /// most the deadline. Counted and timed in the metrics.
    pub(super) async fn within_deadline<M, T, F>(
        &self,
        method: &'static str,
        replica: &Arc<Replica>,
        deadline: Instant,
        message: M,
        call: impl FnOnce(GrpcClient<Channel>, tonic::Request<M>) -> F,
    ) -> Result<T, CallError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(message);
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let client = GrpcClient::new(replica.channel()).max_decoding_message_size(MAX_ANSWER_SIZE);
        // The call's client span; discount's server span becomes its child
        // through the trace context sent in the metadata.
        let span = tracing::info_span!(
            "discount call",
            otel.name = %format_args!("ecommerce.Discount/{method}"),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = "ecommerce.Discount",
            rpc.method = method,
            server.address = %replica.addr,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let call = tokio::time::timeout_at(deadline.into(), async move {
            // Without traces (no OTLP endpoint) the span is disabled:
            // nothing to send or to enter.
            if span.is_disabled() {
                call(client, request).await
            } else {
                common::telemetry::propagate(&span, request.metadata_mut());
                let answer = call(client, request).instrument(span.clone()).await;
                let code = answer
                    .as_ref()
                    .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
                span.record("rpc.grpc.status_code", code as i32);
                answer
            }
        });
        let answer = call
            .await
            .map_err(|_| CallError::Deadline(self.deadline))
            .and_then(|answer| {
                answer.map_err(|status| CallError::from_status(status, self.deadline))
            })
            .map(tonic::Response::into_inner);
        let code = match &answer {
            Ok(_) => tonic::Code::Ok,
            Err(error) => error.code(),
        };
        self.metrics
            .call(&replica.series, method, code, started.elapsed());
        answer
    }

    /// [`check_answer`], with each refused answer counted.
    pub(super) fn checked(
        &self,
        sent: &Product,
        priced: Option<Product>,
    ) -> Result<Option<DiscountValue>, CallError> {
        let answer = check_answer(sent, priced);
        if answer.is_err() {
            self.metrics.refused_answer();
        }
        answer
    }

    /// One `ApplyDiscount` call to `replica` for `customer`'s discount on
    /// `product`.
    pub(super) async fn call(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        product: &Product,
    ) -> Result<Option<DiscountValue>, CallError> {
        // Nothing built for a call that could not be sent in time.
        if Instant::now() >= deadline {
            return Err(CallError::Deadline(self.deadline));
        }
        let message = DiscountRequest {
            customer: Some(customer.clone()),
            product: Some(product.clone()),
        };
        let response = self
            .within_deadline(
                "ApplyDiscount",
                replica,
                deadline,
                message,
                |mut grpc, request| async move { grpc.apply_discount(request).await },
            )
            .await?;
        self.checked(product, response.product)
    }

    /// Asks `replica` for `customer`'s discounts on all of `products` in
    /// one `ApplyDiscounts` call. Each product gets its own answer, checked
    /// as [`DiscountClient::call`] checks one.
    pub(super) async fn call_batch(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Result<Answers, CallError> {
        // Nothing built for a call that could not be sent in time: a page
        // of many runs waits its turn, and each message clones the customer.
        if Instant::now() >= deadline {
            return Err(CallError::Deadline(self.deadline));
        }
        let message = DiscountsRequest {
            customer: Some(customer.clone()),
            products: products.to_vec(),
        };
        let priced = self
            .within_deadline(
                "ApplyDiscounts",
                replica,
                deadline,
                message,
                |mut grpc, request| async move { grpc.apply_discounts(request).await },
            )
            .await?
            .products;
        if priced.len() != products.len() {
            return Err(CallError::Invalid(
                "the response has a different number of products",
            ));
        }
        Ok(products
            .iter()
            .zip(priced)
            .map(|(sent, priced)| self.checked(sent, Some(priced)))
            .collect())
    }

    /// One `ApplyDiscount` per product to `replica`, [`EACH_IN_FLIGHT`] at
    /// a time: for peers without `ApplyDiscounts`. When every call failed the same way
    /// before reaching discount, that is the whole listing's error, so
    /// that it can be sent elsewhere.
    pub(super) async fn call_each(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Result<Answers, CallError> {
        // The calls made first, then polled: a closure inside the stream
        // would leave the handler's future not provably `Send`.
        let calls: Vec<_> = products
            .iter()
            .map(|product| self.call(replica, deadline, customer, product))
            .collect();
        let answers: Vec<_> = futures_util::stream::iter(calls)
            .buffered(EACH_IN_FLIGHT)
            .collect()
            .await;
        match answers.first() {
            Some(Err(error)) if error.retryable() && answers.iter().all(Result::is_err) => {
                Err(error.clone())
            }
            _ => Ok(answers),
        }
    }

    /// `products` priced by `replica`: one `ApplyDiscounts` call per run
    /// of [`batches`] (one run for any page of the seed's size), at most
    /// [`BATCHES_IN_FLIGHT`] at a time. A run that failed is each of its
    /// products' error, so that only those are sent again.
    pub(super) async fn ask(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Result<Answers, CallError> {
        let runs = batches(customer, products);
        if let [_] = runs.as_slice() {
            if let Some(bytes) = too_large(customer, products) {
                return Ok(vec![Err(CallError::TooLarge(bytes))]);
            }
            return self.ask_run(replica, deadline, customer, products).await;
        }
        // Boxed: inline, its stream of calls made every request's future
        // 8 KB larger, copied on every listing, the plain ones too.
        Box::pin(self.ask_runs(replica, deadline, customer, products, runs)).await
    }

    /// [`DiscountClient::ask`] for a listing cut into several `runs`.
    async fn ask_runs(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
        runs: Vec<Range<usize>>,
    ) -> Result<Answers, CallError> {
        let calls: Vec<_> = runs
            .iter()
            .map(|run| {
                let products = &products[run.clone()];
                let too_large = too_large(customer, products);
                async move {
                    match too_large {
                        Some(bytes) => Ok(vec![Err(CallError::TooLarge(bytes))]),
                        None => self.ask_run(replica, deadline, customer, products).await,
                    }
                }
            })
            .collect();
        let answers: Vec<_> = futures_util::stream::iter(calls)
            .buffered(BATCHES_IN_FLIGHT)
            .collect()
            .await;
        let mut all = Vec::with_capacity(products.len());
        for (run, answer) in runs.into_iter().zip(answers) {
            match answer {
                Ok(answers) => all.extend(answers),
                Err(error) => all.extend(run.map(|_| Err(error.clone()))),
            }
        }
        Ok(all)
    }

    /// One `ApplyDiscounts` call, or one `ApplyDiscount` per product for a
    /// replica built from the seed's proto. Such a replica answers
    /// UNIMPLEMENTED to the batch; from then on (until its health check
    /// finds it serving again after a restart) it is sent one call per
    /// product.
    async fn ask_run(
        &self,
        replica: &Arc<Replica>,
        deadline: Instant,
        customer: &Customer,
        products: &[Product],
    ) -> Result<Answers, CallError> {
        if !replica.batch.load(Ordering::Relaxed) {
            return self.call_each(replica, deadline, customer, products).await;
        }
        match self.call_batch(replica, deadline, customer, products).await {
            Err(CallError::Status(status)) if status.code() == tonic::Code::Unimplemented => {
                // Logged once, by the first of a listing's runs to find out.
                if replica.batch.swap(false, Ordering::Relaxed) {
                    tracing::info!(replica = %replica.addr,
                        "discount replica has no ApplyDiscounts (a peer built from the seed's proto); calling ApplyDiscount per product from now on"
                    );
                }
                self.call_each(replica, deadline, customer, products).await
            }
            answer => answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: i32, description_bytes: usize) -> Product {
        Product {
            id,
            slug: format!("product-{id}"),
            description: "d".repeat(description_bytes),
            price_in_cents: 99_999,
            discount_value: None,
        }
    }

    /// The `ApplyDiscounts` answer for `products`: each with the largest
    /// discount a replica can send.
    fn answer_len(customer: &Customer, products: &[Product]) -> usize {
        let priced = products
            .iter()
            .map(|product| Product {
                discount_value: Some(DiscountValue {
                    pct: 0.1,
                    value_in_cents: i32::MAX,
                }),
                ..product.clone()
            })
            .collect();
        let request = DiscountsRequest {
            customer: Some(customer.clone()),
            products: priced,
        };
        request.encoded_len()
    }

    #[test]
    fn a_page_is_cut_in_order_into_calls_whose_answers_fit_discounts_limit() {
        let customer = Customer {
            id: i32::MIN,
            first_name: "f".repeat(200),
            last_name: "l".repeat(200),
        };
        // The seed's size of page: one call, as before.
        let small: Vec<_> = (1..=3).map(|id| product(id, 20)).collect();
        assert_eq!(batches(&customer, &small), vec![Range { start: 0, end: 3 }]);
        assert_eq!(batches(&customer, &[]), Vec::<Range<usize>>::new());
        // A page of 1,000 with long descriptions: several calls, each
        // answer under the limit, every product once and in order.
        let big: Vec<_> = (1..=1000)
            .map(|id| product(id, 150 + id as usize % 7))
            .collect();
        let runs = batches(&customer, &big);
        assert!(runs.len() > 2, "{runs:?}");
        assert_eq!(runs.first().map(|r| r.start), Some(0));
        assert_eq!(runs.last().map(|r| r.end), Some(1000));
        for pair in runs.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for run in &runs {
            let len = answer_len(&customer, &big[run.clone()]);
            assert!(len <= MAX_ANSWER_SIZE, "{run:?}: {len}");
            // Not cut much smaller than needed.
            assert!(
                len > BATCH_BYTES * 9 / 10 || run.end == 1000,
                "{run:?}: {len}"
            );
        }
        // A product too big for any call is alone, its neighbours priced.
        let mut odd = small.clone();
        odd.insert(1, product(9, MAX_ANSWER_SIZE));
        assert_eq!(batches(&customer, &odd), [0..1, 1..2, 2..4]);
    }
}
