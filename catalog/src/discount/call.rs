//! One call to one discount replica: the gRPC methods, the deadline sent
//! as `grpc-timeout` and enforced here too, the client span, the metrics,
//! and each answer checked before it is believed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ecommerce_proto::pb::discount_client::DiscountClient as GrpcClient;
use ecommerce_proto::pb::{Customer, DiscountRequest, DiscountValue, DiscountsRequest, Product};
use futures_util::StreamExt;
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
/// listing in flight.
const MAX_ANSWER_SIZE: usize = 64 * 1024;
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

    /// One `ApplyDiscounts` call, or one `ApplyDiscount` per product for a
    /// replica built from the seed's proto. Such a replica answers
    /// UNIMPLEMENTED to the batch; from then on (until its health check
    /// finds it serving again after a restart) it is sent one call per
    /// product.
    pub(super) async fn ask(
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
                replica.batch.store(false, Ordering::Relaxed);
                tracing::info!(replica = %replica.addr,
                    "discount replica has no ApplyDiscounts (a peer built from the seed's proto); calling ApplyDiscount per product from now on"
                );
                self.call_each(replica, deadline, customer, products).await
            }
            answer => answer,
        }
    }
}
