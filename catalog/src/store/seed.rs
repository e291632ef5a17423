//! The seed's three products and two customers: what a new embedded
//! (SQLite) database starts with, so the seed's two-terminal flow needs no
//! set-up.

use ecommerce_proto::pb::{Customer, Product};

/// The seed's products, by id.
pub fn products() -> Vec<Product> {
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

/// The seed's two customers.
pub fn customers() -> Vec<Customer> {
    [(1, "John", "Snow"), (2, "Daenerys", "Targaryen")]
        .into_iter()
        .map(|(id, first_name, last_name)| Customer {
            id,
            first_name: first_name.to_owned(),
            last_name: last_name.to_owned(),
        })
        .collect()
}
