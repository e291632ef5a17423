//! Who is asking: the `X-USER-ID` header.

use http::HeaderMap;

use crate::error::CatalogError;

/// The header that names the customer, as in the seed.
pub const USER_ID_HEADER: &str = "x-user-id";

/// Reads the customer id from `X-USER-ID`.
///
/// `Ok(None)` when the header is absent or blank: the plain product list is
/// wanted. Otherwise the value must be what Go's `strconv.Atoi` accepts
/// (the seed's parser): an optional `+` or `-`, then decimal digits, within
/// a signed 64-bit integer, so `+1`, `01` and `-0` are fine and `1.0`,
/// `0x1`, `1e3` and `9223372036854775808` are not. Surrounding spaces and
/// tabs are not part of a header value (RFC 9110) and are ignored. When
/// several `X-USER-ID` headers are sent, the first one counts, as in Go.
///
/// # Errors
/// [`CatalogError::InvalidCustomerId`] for anything else, including values
/// that are not ASCII.
pub fn customer_id(headers: &HeaderMap) -> Result<Option<i64>, CatalogError> {
    let Some(value) = headers.get(USER_ID_HEADER) else {
        return Ok(None);
    };
    let text = value.as_bytes().trim_ascii();
    if text.is_empty() {
        return Ok(None);
    }
    // i64's parser accepts exactly Atoi's syntax: sign, then ASCII digits.
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| CatalogError::InvalidCustomerId {
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(raw: &[u8]) -> Result<Option<i64>, ()> {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(raw) {
            headers.insert(USER_ID_HEADER, value);
        }
        customer_id(&headers).map_err(|_| ())
    }

    #[test]
    fn accepts_what_go_atoi_accepts() {
        assert_eq!(parse(b"1"), Ok(Some(1)));
        assert_eq!(parse(b"+1"), Ok(Some(1)));
        assert_eq!(parse(b"01"), Ok(Some(1)));
        assert_eq!(parse(b" 1\t"), Ok(Some(1)));
        assert_eq!(parse(b"-0"), Ok(Some(0)));
        assert_eq!(parse(b"-42"), Ok(Some(-42)));
        assert_eq!(parse(b"9223372036854775807"), Ok(Some(i64::MAX)));
        assert_eq!(parse(b"-9223372036854775808"), Ok(Some(i64::MIN)));
    }

    #[test]
    fn rejects_what_go_atoi_rejects() {
        for raw in [
            &b"abc"[..],
            b"1.0",
            b"0x1",
            b"1e3",
            b"1_000",
            b"+",
            b"-",
            b"+-1",
            b"1 2",
            b"9223372036854775808",
            b"-9223372036854775809",
            "\u{0661}".as_bytes(), // ARABIC-INDIC DIGIT ONE
            b"\xff1",
        ] {
            assert_eq!(parse(raw), Err(()), "accepted {raw:?}");
        }
    }

    #[test]
    fn an_absent_or_blank_header_means_no_customer() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"  "), Ok(None));
        assert_eq!(customer_id(&HeaderMap::new()).ok(), Some(None));
    }

    #[test]
    fn the_first_of_repeated_headers_counts() {
        let mut headers = HeaderMap::new();
        headers.append(USER_ID_HEADER, HeaderValue::from_static("2"));
        headers.append(USER_ID_HEADER, HeaderValue::from_static("abc"));
        assert_eq!(customer_id(&headers).ok(), Some(Some(2)));
    }
}

/// Property tests: `customer_id` against an independent model of Go's
/// `strconv.Atoi`, on arbitrary input. `PROPTEST_CASES=100000 cargo test -p
/// catalog --lib customer` runs them longer.
#[cfg(test)]
mod properties {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    /// Go's Atoi for a 64-bit int, written from its specification: an
    /// optional sign, then one or more ASCII digits, in range.
    fn atoi_model(text: &str) -> Option<i64> {
        let (negative, digits) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut value: i128 = 0;
        for digit in digits.bytes() {
            value = value * 10 + i128::from(digit - b'0');
            if value > i128::from(i64::MAX) + 1 {
                return None;
            }
        }
        let value = if negative { -value } else { value };
        i64::try_from(value).ok()
    }

    fn parse(raw: &[u8]) -> Option<Result<Option<i64>, ()>> {
        let value = HeaderValue::from_bytes(raw).ok()?;
        let mut headers = HeaderMap::new();
        headers.insert(USER_ID_HEADER, value);
        Some(customer_id(&headers).map_err(|_| ()))
    }

    proptest! {
        #[test]
        fn agrees_with_go_atoi_on_number_like_text(text in "[ \t]{0,2}[+-]{0,2}[0-9]{0,25}[ \t]{0,2}") {
            let trimmed = text.trim_matches([' ', '\t']);
            let expected = if trimmed.is_empty() { Ok(None) } else { atoi_model(trimmed).map(Some).ok_or(()) };
            prop_assert_eq!(parse(text.as_bytes()), Some(expected));
        }

        #[test]
        fn every_i64_round_trips(n in any::<i64>()) {
            prop_assert_eq!(parse(n.to_string().as_bytes()), Some(Ok(Some(n))));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_only_digits_parse(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(Ok(Some(_))) = parse(&raw) {
                let text = String::from_utf8_lossy(&raw);
                let trimmed = text.trim_matches([' ', '\t']);
                prop_assert!(atoi_model(trimmed).is_some(), "accepted {:?}", raw);
            }
        }
    }
}
