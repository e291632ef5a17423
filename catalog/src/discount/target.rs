//! Where discount is: the targets of `--discount-host` /
//! `DISCOUNT_SERVICE_HOST`, each `host:port` parsed the way grpc-go reads
//! a target, several separated by commas.
//!
//! A target is a name or an IP address. Names are resolved again and again
//! (see [`super::resolve`]), and every address a name resolves to is a
//! replica; an IP address is one replica.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::uri::Authority;

/// One `host:port` to dial, as `DISCOUNT_SERVICE_HOST` gives it. The port
/// may be left out; [`Targets::port_or`] fills it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscountAddr {
    host: String,
    port: Option<u16>,
}

/// The port grpc-go assumes when a target has none.
pub const DEFAULT_PORT: u16 = 443;

const HINT: &str = "expected host:port, such as localhost:11443, 10.0.0.5:11443 or [::1]:11443, or several separated by commas";

impl DiscountAddr {
    /// The host name or IP address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when the target named one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The address itself when the host is an IP address: nothing to
    /// resolve. `None` for a name.
    pub fn ip(&self) -> Option<SocketAddr> {
        let ip = self.host.parse::<IpAddr>().ok()?;
        Some(SocketAddr::new(ip, self.port.unwrap_or(DEFAULT_PORT)))
    }
}

impl fmt::Display for DiscountAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl FromStr for DiscountAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.contains("://") {
            return Err(format!(
                "{text:?} has a scheme; {HINT} (TLS is always used)"
            ));
        }
        // Authority checks the syntax (brackets, allowed characters); the
        // port is parsed below because Authority quietly drops one that does
        // not fit 16 bits.
        let authority = Authority::from_str(text)
            .map_err(|e| format!("{text:?} is not an address ({e}); {HINT}"))?;
        if text.contains('@') {
            return Err(format!("{text:?} has user information; {HINT}"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?} has no host; {HINT}"));
        }
        // The text after the last colon, unless that colon is inside the
        // brackets of an IPv6 address.
        let port_text = text
            .rsplit_once(':')
            .map(|(_, port)| port)
            .filter(|port| !port.contains(']'));
        let port = match port_text {
            Some("") => return Err(format!("{text:?} has an empty port; {HINT}")),
            Some(port) => Some(port.parse::<u16>().map_err(|_| {
                format!("{text:?} has a port that is not a number in 1-65535; {HINT}")
            })?),
            None => None,
        };
        if port == Some(0) {
            return Err(format!("{text:?} has port 0; {HINT}"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// Every target of `--discount-host`, in the order given, duplicates
/// removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(Vec<DiscountAddr>);

impl Targets {
    /// The targets.
    pub fn iter(&self) -> impl Iterator<Item = &DiscountAddr> {
        self.0.iter()
    }

    /// The first target: its host is the default TLS server name.
    pub fn first(&self) -> &DiscountAddr {
        // `from_str` refuses an empty list, the only way to build one.
        &self.0[0]
    }

    /// The targets, each without a port given `port`.
    #[must_use]
    pub fn port_or(mut self, port: u16) -> Self {
        for target in &mut self.0 {
            target.port.get_or_insert(port);
        }
        self
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, target) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{target}")?;
        }
        Ok(())
    }
}

impl FromStr for Targets {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut targets: Vec<DiscountAddr> = Vec::new();
        for part in text.split(',') {
            if part.trim().is_empty() {
                return Err(format!("{text:?} has an empty entry; {HINT}"));
            }
            let target = part.parse::<DiscountAddr>()?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        Ok(Self(targets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Result<(String, u16), String> {
        let targets = Targets::from_str(text)?.port_or(DEFAULT_PORT);
        let target = targets.first();
        Ok((target.host().to_owned(), target.port().unwrap_or(0)))
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
    fn a_list_keeps_its_order_drops_repeats_and_fills_in_missing_ports() {
        let targets =
            Targets::from_str("b:1, a ,b:1,[::1]:3").map(|t| t.port_or(11443).to_string());
        assert_eq!(targets.as_deref(), Ok("b:1,a:11443,[::1]:3"));
        for bad in ["a:1,", ",a:1", "a:1,,b:2", "a:1,https://b:2"] {
            let error = Targets::from_str(bad).err().unwrap_or_default();
            assert!(
                error.contains("expected host:port"),
                "{bad:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn only_an_ip_address_needs_no_resolving() {
        let ip = |text: &str| DiscountAddr::from_str(text).ok().and_then(|a| a.ip());
        assert_eq!(ip("10.0.0.5:1"), "10.0.0.5:1".parse().ok());
        assert_eq!(ip("[::1]:2"), "[::1]:2".parse().ok());
        assert_eq!(ip("localhost:1"), None);
    }

    #[test]
    fn an_ipv6_address_is_bracketed_when_written_out() {
        let parsed = DiscountAddr::from_str("[::1]:11443").map(|a| a.to_string());
        assert_eq!(parsed.ok().as_deref(), Some("[::1]:11443"));
    }
}
