//! The product list: the seed's three products.

use ecommerce_proto::pb::Product;

/// The products the catalog sells, in the order they are listed.
pub fn all() -> Vec<Product> {
    [
        (1, "iphone-x", "64GB, black and iOS 12", 99999),
        (
            2,
            "notebook-avell-g1511",
            "Notebook Gamer Intel Core i7",
            150000,
        ),
        (3, "playstation-4-slim", "1TB Console", 32999),
    ]
    .into_iter()
    .map(|(id, slug, description, price_in_cents)| Product {
        id,
        slug: slug.to_owned(),
        description: description.to_owned(),
        price_in_cents,
        discount_value: None,
    })
    .collect()
}
