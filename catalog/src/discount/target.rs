//! Where discount is: the `host:port` of `--discount-host` /
//! `DISCOUNT_SERVICE_HOST`, parsed the way grpc-go reads a target.

use std::fmt;
use std::str::FromStr;

use http::uri::Authority;

/// A `host:port` to dial, as `DISCOUNT_SERVICE_HOST` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscountAddr {
    host: String,
    port: u16,
}

/// The port grpc-go assumes when the address has none.
const DEFAULT_PORT: u16 = 443;

impl DiscountAddr {
    /// The host name or IP address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Display for DiscountAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for DiscountAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hint = "expected host:port, such as localhost:11443, 10.0.0.5:11443 or [::1]:11443";
        let text = text.trim();
        if text.contains("://") {
            return Err(format!(
                "{text:?} has a scheme; {hint} (TLS is always used)"
            ));
        }
        // Authority checks the syntax (brackets, allowed characters); the
        // port is parsed below because Authority quietly drops one that does
        // not fit 16 bits.
        let authority = Authority::from_str(text)
            .map_err(|e| format!("{text:?} is not an address ({e}); {hint}"))?;
        if text.contains('@') {
            return Err(format!("{text:?} has user information; {hint}"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?} has no host; {hint}"));
        }
        // The text after the last colon, unless that colon is inside the
        // brackets of an IPv6 address.
        let port_text = text
            .rsplit_once(':')
            .map(|(_, port)| port)
            .filter(|port| !port.contains(']'));
        let port = match port_text {
            Some("") => return Err(format!("{text:?} has an empty port; {hint}")),
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("{text:?} has a port outside 1-65535; {hint}"))?,
            None => DEFAULT_PORT,
        };
        if port == 0 {
            return Err(format!("{text:?} has port 0; {hint}"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Result<(String, u16), String> {
        DiscountAddr::from_str(text).map(|a| (a.host().to_owned(), a.port))
    }

    #[test]
    fn discount_addresses_parse_like_grpc_targets() {
        assert_eq!(addr("localhost:11443"), Ok(("localhost".into(), 11443)));
        assert_eq!(addr("10.1.2.3:50051"), Ok(("10.1.2.3".into(), 50051)));
        assert_eq!(addr("[::1]:11443"), Ok(("::1".into(), 11443)));
        assert_eq!(
            addr("discount.internal"),
            Ok(("discount.internal".into(), 443))
        );
    }

    #[test]
    fn bad_discount_addresses_say_what_is_expected() {
        for bad in [
            "https://localhost:11443",
            "localhost:",
            "user@host:1",
            "host:99999",
            "host:0",
            ":11443",
            "",
        ] {
            let error = addr(bad).err().unwrap_or_default();
            assert!(
                error.contains("expected host:port"),
                "{bad:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn an_ipv6_address_is_bracketed_when_written_out() {
        let parsed = DiscountAddr::from_str("[::1]:11443").map(|a| a.to_string());
        assert_eq!(parsed.ok().as_deref(), Some("[::1]:11443"));
    }
}
