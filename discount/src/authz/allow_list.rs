//! One entry of `--allow-client`: parsing it, and which identities it
//! admits.

use common::identity::{PeerIdentity, parse_prefix, parse_uri};

/// One entry of `--allow-client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// `any`: every client the TLS layer let in, with a certificate or,
    /// under `--client-auth optional`, without.
    Any,
    /// This identity exactly.
    Exactly(String),
    /// Every identity under this prefix, which ends with `/`: the entry
    /// `spiffe://ecommerce.local/*`, the whole trust domain.
    Under(String),
}

impl Allowed {
    /// Parses one entry: `any`, an identity URI, or a URI prefix ending
    /// in `/*`.
    ///
    /// # Errors
    /// What is wrong with `text`, with the forms that work.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("any") {
            return Ok(Self::Any);
        }
        let forms = "an entry is an identity (spiffe://ecommerce.local/catalog), every identity under a prefix (spiffe://ecommerce.local/*), or any";
        if let Some(prefix) = text.strip_suffix('*') {
            if !prefix.ends_with('/') || prefix.contains('*') {
                return Err(format!(
                    "{text:?}: a * may only stand for everything after the last /; {forms}"
                ));
            }
            let prefix = parse_prefix(prefix).map_err(|e| format!("{e}; {forms}"))?;
            return Ok(Self::Under(prefix));
        }
        if text.contains('*') {
            return Err(format!("{text:?}: a * may only end the entry; {forms}"));
        }
        parse_uri(text)
            .map(Self::Exactly)
            .map_err(|e| format!("{e}; {forms}"))
    }

    /// Whether some identity starting with `prefix` would be admitted.
    pub(super) fn reaches_into(&self, prefix: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exactly(uri) => uri.starts_with(prefix),
            Self::Under(under) => under.starts_with(prefix) || prefix.starts_with(under.as_str()),
        }
    }

    pub(super) fn admits(&self, identity: &PeerIdentity) -> bool {
        match (self, identity.uri()) {
            (Self::Any, _) => true,
            (Self::Exactly(allowed), Some(uri)) => uri == allowed,
            (Self::Under(prefix), Some(uri)) => {
                uri.len() > prefix.len() && uri.starts_with(prefix.as_str())
            }
            (_, None) => false,
        }
    }
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => write!(f, "any"),
            Self::Exactly(uri) => write!(f, "{uri}"),
            Self::Under(prefix) => write!(f, "{prefix}*"),
        }
    }
}
