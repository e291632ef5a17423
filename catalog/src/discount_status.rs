//! The `X-Discount-Status` of a listing: whether discount priced all, some
//! or none of its products. The client decides it, the routes send it, the
//! metrics count it; it lives apart so that none of them imports another.

/// How a listing went, for the `X-Discount-Status` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountStatus {
    /// Every product has discount's answer.
    Applied,
    /// Some products have it; the others are listed without a discount.
    Partial,
    /// No product has it: discount is down, untrusted, too slow or failing.
    Unavailable,
}

impl DiscountStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Partial => "partial",
            Self::Unavailable => "unavailable",
        }
    }

    /// The status of a listing of `total` products, `failed` of which have
    /// no answer from discount.
    pub fn of(failed: usize, total: usize) -> Self {
        match failed {
            0 => Self::Applied,
            n if n == total => Self::Unavailable,
            _ => Self::Partial,
        }
    }
}
