//! The discount rule, exactly as the seed's Python server computes it.
//!
//! Customer 1 gets 10% off any product with a positive price. The discounted
//! price is `trunc((price - price * 10%) * 100)` cents, computed in decimal
//! arithmetic (the seed used Python's `decimal`; we use `rust_decimal`), so
//! no binary floating point ever touches money. Everyone else, and every
//! product priced at zero or less, gets an empty [`DiscountValue`].

use ecommerce_proto::pb::DiscountValue;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// The only customer who gets a discount, as in the seed.
pub const DISCOUNTED_CUSTOMER_ID: i32 = 1;

/// The discount rate: 10 / 100, exactly.
pub const RATE: Decimal = Decimal::from_parts(10, 0, 0, false, 2);

/// The discount `customer_id` gets on a product priced `price_in_cents`.
///
/// Returns the default (all-zero) [`DiscountValue`] when no discount applies;
/// the seed always sets the field, so callers can tell "no discount" from
/// "discount service not asked".
pub fn discount_for(customer_id: i32, price_in_cents: i32) -> DiscountValue {
    if customer_id != DISCOUNTED_CUSTOMER_ID || price_in_cents <= 0 {
        return DiscountValue::default();
    }
    DiscountValue {
        // 0.1 is exact in decimal; on the wire it is the f32 closest to it,
        // which is what the seed sent too.
        pct: RATE.to_f32().unwrap_or_default(),
        value_in_cents: discounted_price(price_in_cents),
    }
}

/// `trunc((price - price * RATE) * 100)` with `price = cents / 100`.
///
/// Truncation (toward zero) is what the seed's `int(new_price * 100)` does.
/// The result lies between 0 and `price_in_cents`, so it always fits an
/// `i32`; the fallback to the undiscounted price is unreachable and only
/// there so that no input can make this panic.
fn discounted_price(price_in_cents: i32) -> i32 {
    let price = Decimal::new(i64::from(price_in_cents), 2);
    let new_price = price - price * RATE;
    (new_price * Decimal::ONE_HUNDRED)
        .trunc()
        .to_i32()
        .unwrap_or(price_in_cents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discounted(customer_id: i32, price_in_cents: i32) -> (f32, i32) {
        let value = discount_for(customer_id, price_in_cents);
        (value.pct, value.value_in_cents)
    }

    #[test]
    fn the_seed_products_get_the_seed_prices_for_customer_1() {
        assert_eq!(discounted(1, 99999), (0.1, 89999));
        assert_eq!(discounted(1, 150000), (0.1, 135000));
        assert_eq!(discounted(1, 32999), (0.1, 29699));
    }

    #[test]
    fn fractions_of_a_cent_are_truncated_not_rounded() {
        // 0.9 * 19 = 17.1 and 0.9 * 9 = 8.1: both truncate down.
        assert_eq!(discounted(1, 19), (0.1, 17));
        assert_eq!(discounted(1, 9), (0.1, 8));
        // 0.9 * 99 = 89.1; 0.9 * 11 = 9.9 would round to 10, truncates to 9.
        assert_eq!(discounted(1, 99), (0.1, 89));
        assert_eq!(discounted(1, 11), (0.1, 9));
        // A multiple of ten has no fraction to lose.
        assert_eq!(discounted(1, 10), (0.1, 9));
    }

    #[test]
    fn one_cent_is_discounted_to_zero_cents() {
        assert_eq!(discounted(1, 1), (0.1, 0));
    }

    #[test]
    fn the_largest_price_does_not_overflow() {
        // 2147483647 * 0.9 = 1932735282.3
        assert_eq!(discounted(1, i32::MAX), (0.1, 1_932_735_282));
    }

    #[test]
    fn zero_and_negative_prices_get_no_discount() {
        assert_eq!(discount_for(1, 0), DiscountValue::default());
        assert_eq!(discount_for(1, -1), DiscountValue::default());
        assert_eq!(discount_for(1, i32::MIN), DiscountValue::default());
    }

    #[test]
    fn only_customer_1_gets_a_discount() {
        for customer_id in [0, 2, -1, i32::MAX, i32::MIN] {
            assert_eq!(
                discount_for(customer_id, 99999),
                DiscountValue::default(),
                "customer {customer_id}"
            );
        }
    }

    #[test]
    fn the_rate_on_the_wire_is_the_f32_nearest_to_one_tenth() {
        assert_eq!(RATE.to_string(), "0.10");
        assert_eq!(discount_for(1, 100).pct, 0.1_f32);
    }
}

/// Property tests: the decimal computation against integer arithmetic,
/// which cannot round: for a positive price, 90% truncated is `price * 9 / 10`.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_integer_arithmetic_for_every_customer_and_price(customer in any::<i32>(), price in any::<i32>()) {
            let expected = if customer == 1 && price > 0 {
                DiscountValue { pct: 0.1, value_in_cents: i32::try_from(i64::from(price) * 9 / 10).unwrap_or(-1) }
            } else {
                DiscountValue::default()
            };
            prop_assert_eq!(discount_for(customer, price), expected);
        }
    }
}
