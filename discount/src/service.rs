//! The `ecommerce.Discount` gRPC service.

use ecommerce_proto::pb::discount_server::Discount;
use std::net::SocketAddr;

use ecommerce_proto::pb::{
    Customer, DiscountRequest, DiscountResponse, DiscountsRequest, DiscountsResponse, Product,
};
use tonic::{Request, Response, Status};

use crate::error::DiscountError;
use crate::rule;

/// Applies [`rule::discount_for`] to each request.
///
/// Stateless: every call is independent, so one value serves all
/// connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscountService;

#[tonic::async_trait]
impl Discount for DiscountService {
    async fn apply_discount(
        &self,
        request: Request<DiscountRequest>,
    ) -> Result<Response<DiscountResponse>, Status> {
        let peer = request.remote_addr();
        let DiscountRequest { customer, product } = request.into_inner();
        let customer = customer.ok_or(DiscountError::MissingCustomer)?;
        let product = product.ok_or(DiscountError::MissingProduct)?;
        let product = price(&customer, product, peer);
        Ok(Response::new(DiscountResponse {
            product: Some(product),
        }))
    }

    async fn apply_discounts(
        &self,
        request: Request<DiscountsRequest>,
    ) -> Result<Response<DiscountsResponse>, Status> {
        let peer = request.remote_addr();
        let DiscountsRequest { customer, products } = request.into_inner();
        let customer = customer.ok_or(DiscountError::MissingCustomer)?;
        let products = products
            .into_iter()
            .map(|product| price(&customer, product, peer))
            .collect();
        Ok(Response::new(DiscountsResponse { products }))
    }
}

/// `product` as sent, with the discount `customer` gets on it in place of
/// whatever `discount_value` the caller put there.
fn price(customer: &Customer, product: Product, peer: Option<SocketAddr>) -> Product {
    let discount = rule::discount_for(customer.id, product.price_in_cents);
    tracing::debug!(
        customer_id = customer.id,
        product_id = product.id,
        price_in_cents = product.price_in_cents,
        value_in_cents = discount.value_in_cents,
        peer = %peer.map_or_else(|| "unknown".to_owned(), |peer| peer.to_string()),
        "priced"
    );
    Product {
        discount_value: Some(discount),
        ..product
    }
}

/// Property tests: any bytes, decoded as a request and handed to the
/// service, give a well-formed answer or a clear status, never a panic.
#[cfg(test)]
mod properties {
    use super::*;
    use ecommerce_proto::pb::DiscountValue;
    use proptest::prelude::*;
    use prost::Message;

    fn answer(request: DiscountRequest) -> Result<DiscountResponse, Status> {
        let runtime = tokio::runtime::Builder::new_current_thread().build();
        let Ok(runtime) = runtime else {
            return Err(Status::internal("no runtime"));
        };
        runtime
            .block_on(DiscountService.apply_discount(Request::new(request)))
            .map(Response::into_inner)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_decode_to_an_answer_or_a_clear_refusal(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let Ok(request) = DiscountRequest::decode(raw.as_slice()) else {
                return Ok(()); // tonic answers INTERNAL before the service sees it
            };
            let sent = request.product.clone();
            let complete = request.customer.is_some() && sent.is_some();
            match answer(request) {
                Ok(response) => {
                    prop_assert!(complete);
                    let product = response.product.unwrap_or_default();
                    let sent = sent.unwrap_or_default();
                    prop_assert_eq!((&product.slug, &product.description, product.id, product.price_in_cents),
                        (&sent.slug, &sent.description, sent.id, sent.price_in_cents));
                    let value = product.discount_value.unwrap_or(DiscountValue { pct: -1.0, value_in_cents: -1 });
                    prop_assert!(value.value_in_cents >= 0 && value.value_in_cents <= sent.price_in_cents.max(0));
                }
                Err(status) => {
                    prop_assert!(!complete);
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                }
            }
        }
    }
}
