//! `GET /products?page_size=N&page_token=T`: which page is asked for, and
//! the `Link` to the next one (RFC 8288).
//!
//! The token is opaque to clients: the id of the last product listed (the
//! pages are a keyset on id, so products added meanwhile never shift
//! them) and a check over it, in hex. The check only tells a token this
//! catalog gave from an edited or made-up one, to answer 400 rather than
//! a page nobody asked for; it is not a secret, and needs none: any token
//! only says where a list that anyone may read resumes.

/// Products in a page when the client does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// The most products a page may hold.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Why a page cannot be served: a `400` that says what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// `page_size` was not a whole number within the bounds.
    #[error(
        "page_size must be a whole number from 1 to {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})."
    )]
    Size {
        /// The value as sent, for the log only.
        value: String,
    },
    /// `page_token` was not one this catalog gave.
    #[error(
        "page_token is not one this catalog gave: follow the Link header of the previous page, or start again without page_token."
    )]
    Token,
}

/// Which page a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Products in the page.
    pub size: usize,
    /// List products with ids above this one (`None`: from the first).
    pub after: Option<i32>,
}

impl PageRequest {
    /// Reads `page_size` and `page_token` from a query's pairs; other
    /// parameters are ignored, as the seed ignored every one. The first of
    /// a repeated parameter counts.
    ///
    /// # Errors
    /// [`PageError`]: what is accepted.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, PageError> {
        let first = |name: &str| pairs.iter().find(|(key, _)| key == name).map(|(_, v)| v);
        let size = match first("page_size") {
            None => DEFAULT_PAGE_SIZE,
            Some(value) => value
                .parse::<usize>()
                .ok()
                .filter(|size| (1..=MAX_PAGE_SIZE).contains(size))
                .ok_or_else(|| PageError::Size {
                    value: value.clone(),
                })?,
        };
        let after = match first("page_token") {
            None => None,
            Some(token) => Some(decode(token).ok_or(PageError::Token)?),
        };
        Ok(Self { size, after })
    }

    /// The `Link` header value of the page after this one, which starts
    /// after product `last`.
    pub fn next_link(&self, last: i32) -> String {
        format!(
            "</products?page_size={}&page_token={}>; rel=\"next\"",
            self.size,
            encode(last)
        )
    }
}

/// FNV-1a over a label and the id: a stable check (the same in every
/// build and replica, so a token outlives a rolling update).
fn check(id: i32) -> u32 {
    b"catalog page token v1"
        .iter()
        .chain(&id.to_be_bytes())
        .fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
        })
}

/// The token for "after product `id`": 16 lowercase hex digits.
fn encode(id: i32) -> String {
    format!("{:08x}{:08x}", id.cast_unsigned(), check(id))
}

fn decode(token: &str) -> Option<i32> {
    if token.len() != 16 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u32::from_str_radix(token.get(..8)?, 16).ok()?.cast_signed();
    let sum = u32::from_str_radix(token.get(8..)?, 16).ok()?;
    (sum == check(id) && encode(id) == token).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &[(&str, &str)]) -> Result<PageRequest, String> {
        let pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        PageRequest::from_query(&pairs).map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_from_one_to_the_maximum_are_taken_and_others_refused() {
        assert_eq!(request(&[]).map(|r| r.size), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(request(&[("page_size", "1")]).map(|r| r.size), Ok(1));
        assert_eq!(request(&[("page_size", "1000")]).map(|r| r.size), Ok(1000));
        for bad in [
            "0",
            "1001",
            "-1",
            "ten",
            "",
            "1e2",
            "99999999999999999999999",
        ] {
            let error = request(&[("page_size", bad)]).unwrap_err();
            assert!(error.contains("from 1 to 1000"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_token_is_the_same_in_every_build_so_it_outlives_a_rolling_update() {
        // The example in docs/data.md.
        assert_eq!(encode(100), "000000646b9797f3");
    }

    #[test]
    fn a_token_given_comes_back_as_its_id_and_an_edited_one_is_refused() {
        for id in [1, 3, 99, i32::MAX] {
            let link = PageRequest {
                size: 5,
                after: None,
            }
            .next_link(id);
            let token = link
                .split("page_token=")
                .nth(1)
                .and_then(|rest| rest.split('>').next())
                .unwrap();
            assert_eq!(
                request(&[("page_token", token)]).map(|r| r.after),
                Ok(Some(id))
            );
            let mut edited = token.as_bytes().to_vec();
            edited[7] = if edited[7] == b'0' { b'1' } else { b'0' };
            let edited = String::from_utf8(edited).unwrap();
            assert!(request(&[("page_token", &edited)]).is_err(), "{edited}");
            assert!(request(&[("page_token", &token.to_uppercase())]).is_err());
        }
        for forged in [
            "",
            "abc",
            "0000000100000000",
            "zzzzzzzzzzzzzzzz",
            "00000001",
        ] {
            let error = request(&[("page_token", forged)]).unwrap_err();
            assert!(error.contains("page_token"), "{forged}: {error}");
        }
    }
}
