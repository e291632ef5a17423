//! Products as JSON, byte for byte what the seed's Go catalog writes.
//!
//! The seed encoded the protoc-gen-go structs with `json.NewEncoder(w)`:
//! a compact array, keys in field order, every field `omitempty`, floats in
//! Go's shortest form, HTML-sensitive characters escaped, and a newline at
//! the end. Clients written against the seed parse exact bytes more often
//! than one would hope, so we reproduce them.

use std::io;

use ecommerce_proto::pb::{DiscountValue, Product};
use serde::Serialize;
use serde_json::value::RawValue;

/// `products` as the seed's JSON array, with its trailing newline.
pub fn products(products: &[Product]) -> Vec<u8> {
    let view: Vec<ProductJson<'_>> = products.iter().map(ProductJson::from).collect();
    encode(&view, 128 * products.len() + 3, b"[]")
}

/// One product as an object in the shape of a list element, with the
/// trailing newline Go's encoder writes.
pub fn product(product: &Product) -> Vec<u8> {
    encode(&ProductJson::from(product), 160, b"{}")
}

fn encode(value: &impl Serialize, capacity: usize, empty: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(capacity);
    let mut serializer = serde_json::Serializer::with_formatter(&mut body, GoFormatter);
    // Serializing plain structs of numbers and strings into a Vec cannot
    // fail; if it ever did, an empty array or object is still valid JSON.
    if value.serialize(&mut serializer).is_err() {
        body.clear();
        body.extend_from_slice(empty);
    }
    body.push(b'\n');
    body
}

#[derive(Serialize)]
struct ProductJson<'a> {
    #[serde(skip_serializing_if = "is_zero")]
    id: i32,
    #[serde(skip_serializing_if = "str::is_empty")]
    slug: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    price_in_cents: i32,
    // Go omits a nil pointer but writes `{}` for a present, all-zero message.
    #[serde(skip_serializing_if = "Option::is_none")]
    discount_value: Option<DiscountJson>,
}

#[derive(Serialize)]
struct DiscountJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pct: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "is_zero")]
    value_in_cents: i32,
}

impl<'a> From<&'a Product> for ProductJson<'a> {
    fn from(product: &'a Product) -> Self {
        Self {
            id: product.id,
            slug: &product.slug,
            description: &product.description,
            price_in_cents: product.price_in_cents,
            discount_value: product.discount_value.as_ref().map(DiscountJson::from),
        }
    }
}

impl From<&DiscountValue> for DiscountJson {
    fn from(discount: &DiscountValue) -> Self {
        Self {
            pct: (discount.pct != 0.0)
                .then(|| go_float32(discount.pct))
                .and_then(|text| RawValue::from_string(text).ok()),
            value_in_cents: discount.value_in_cents,
        }
    }
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Formats a finite `f32` as Go's `encoding/json` does: the shortest
/// decimal that reads back as the same `float32` (so `0.1`, not the
/// `0.10000000149011612` of a widening to f64), in plain notation, except
/// below 1e-6 and from 1e21 up, where Go switches to `1e-7` / `1e+21`.
///
/// Callers must pass a finite value: Go refuses NaN and infinities, and so
/// does the catalog, before it gets here.
pub fn go_float32(value: f32) -> String {
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
        let text = format!("{value:e}");
        // Rust writes `1e21`, Go `1e+21`; negative exponents agree.
        match text.split_once('e') {
            Some((mantissa, exponent)) if !exponent.starts_with('-') => {
                format!("{mantissa}e+{exponent}")
            }
            _ => text,
        }
    } else {
        format!("{value}")
    }
}

/// serde_json's compact output plus Go's HTML-safe string escaping: Go
/// writes `<`, `>`, `&`, U+2028 and U+2029 as `\u003c`-style escapes so the
/// JSON can be embedded in HTML. Control characters are already escaped the
/// same way by both.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut rest = fragment;
        while let Some(at) = rest.find(['<', '>', '&', '\u{2028}', '\u{2029}']) {
            writer.write_all(&rest.as_bytes()[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(discount_value: Option<DiscountValue>) -> Product {
        Product {
            id: 1,
            slug: "iphone-x".into(),
            description: "64GB, black and iOS 12".into(),
            price_in_cents: 99999,
            discount_value,
        }
    }

    fn text(products: &[Product]) -> String {
        String::from_utf8_lossy(&super::products(products)).into_owned()
    }

    #[test]
    fn a_product_without_discount_has_no_discount_value_key() {
        assert_eq!(
            text(&[product(None)]),
            "[{\"id\":1,\"slug\":\"iphone-x\",\"description\":\"64GB, black and iOS 12\",\"price_in_cents\":99999}]\n"
        );
    }

    #[test]
    fn a_present_but_empty_discount_value_is_an_empty_object() {
        assert!(
            text(&[product(Some(DiscountValue::default()))])
                .ends_with(",\"discount_value\":{}}]\n")
        );
    }

    #[test]
    fn a_discount_prints_pct_as_go_prints_a_float32() {
        let discounted = product(Some(DiscountValue {
            pct: 0.1,
            value_in_cents: 89999,
        }));
        assert!(
            text(&[discounted])
                .ends_with(",\"discount_value\":{\"pct\":0.1,\"value_in_cents\":89999}}]\n")
        );
    }

    #[test]
    fn zero_fields_are_omitted_like_go_omitempty() {
        let empty = Product::default();
        assert_eq!(text(&[empty]), "[{}]\n");
        assert_eq!(text(&[]), "[]\n");
    }

    #[test]
    fn float32_formatting_matches_go() {
        // Expected strings are what Go 1.22's json.Marshal(float32(x)) prints.
        for (value, go) in [
            (0.1_f32, "0.1"),
            (0.25, "0.25"),
            (1.0, "1"),
            (-0.5, "-0.5"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-10, "1.5e-10"),
            (123_456_789.0, "123456790"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (f32::MAX, "3.4028235e+38"),
        ] {
            assert_eq!(go_float32(value), go, "{value:e}");
        }
    }

    #[test]
    fn html_sensitive_characters_are_escaped_like_go() {
        let tricky = Product {
            slug: "a<b>&c\u{2028}\u{2029}\"\n".into(),
            ..Product::default()
        };
        assert_eq!(
            text(&[tricky]),
            "[{\"slug\":\"a\\u003cb\\u003e\\u0026c\\u2028\\u2029\\\"\\n\"}]\n"
        );
    }
}
