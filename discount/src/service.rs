//! The `ecommerce.Discount` gRPC service.

use ecommerce_proto::pb::discount_server::Discount;
use ecommerce_proto::pb::{DiscountRequest, DiscountResponse, Product};
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

        let discount = rule::discount_for(customer.id, product.price_in_cents);
        tracing::debug!(
            customer_id = customer.id,
            product_id = product.id,
            price_in_cents = product.price_in_cents,
            value_in_cents = discount.value_in_cents,
            peer = ?peer,
            "ApplyDiscount"
        );
        // Echo the product as sent, with the discount in place of whatever
        // discount_value the caller put there.
        let product = Product {
            discount_value: Some(discount),
            ..product
        };
        Ok(Response::new(DiscountResponse {
            product: Some(product),
        }))
    }
}
