//! Parsers for command-line values that both binaries take.

use std::time::Duration;

/// The longest duration any flag accepts. Every timeout and delay of both
/// services is seconds or minutes in practice; a bound keeps an absurd value
/// (`1000years`) from reaching code that cannot represent it (tonic panics
/// on a `grpc-timeout` beyond 99,999,999 hours) and says so at start.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A duration written like `300ms`, `2s` or `1m`, at most [`MAX_DURATION`].
///
/// # Errors
/// The text is not a duration, or it is longer than a day; the message says
/// which and shows the expected form.
pub fn duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration like 300ms, 2s or 1m"))?;
    if parsed > MAX_DURATION {
        return Err(format!(
            "{text} is longer than the {} this flag accepts",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(parsed)
}

/// An address to listen on, written `HOST:PORT`: an IP address
/// (`127.0.0.1:9464`, `[::]:9464`) or a name resolved now
/// (`localhost:9464`), its first address taken.
///
/// # Errors
/// The text has no port, or the name does not resolve; the message shows
/// the expected form.
pub fn listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let form = "write HOST:PORT, like 127.0.0.1:9464, [::]:9464 or localhost:9464";
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?}: {e}; {form}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address; {form}"))
}

/// [`duration`], and not zero: for timeouts, intervals and limits, where
/// zero would not mean "off" but a service that refuses every request
/// (a header timeout of 0 resets every connection).
///
/// # Errors
/// As [`duration`], or the duration is zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let parsed = duration(text)?;
    if parsed.is_zero() {
        return Err(format!(
            "{text} is zero; this flag needs a duration above zero (zero does not turn it off), like 300ms or 2s"
        ));
    }
    Ok(parsed)
}

/// `--tls-watch-interval`: `0s` (off), or at least 100 ms. Below that the
/// polling itself costs a few percent of a core, and the files cannot
/// hold still long enough between looks to be called settled.
///
/// # Errors
/// As [`duration`], or above zero and under 100 ms.
pub fn watch_interval(text: &str) -> Result<Duration, String> {
    let parsed = duration(text)?;
    if !parsed.is_zero() && parsed < Duration::from_millis(100) {
        return Err(format!(
            "{text} is too short to poll files at; use 0s (off) or 100ms or more, like 5s"
        ));
    }
    Ok(parsed)
}

/// `--max-traces-per-second`: a whole number, 1 or more. Zero is refused
/// rather than read as "no cap" or "no traces": either reading surprises
/// someone, and `OTEL_TRACES_SAMPLER=always_off` already turns traces off.
///
/// # Errors
/// Not a whole number, or zero; the message shows the expected form.
pub fn traces_per_second(text: &str) -> Result<std::num::NonZeroU32, String> {
    let form = "write a whole number of traces a second, 1 or more, like 100";
    match text.trim().parse::<u32>() {
        Ok(0) => Err(format!(
            "0 would record no trace at all; {form} (OTEL_TRACES_SAMPLER=always_off turns traces off)"
        )),
        Ok(n) => std::num::NonZeroU32::new(n).ok_or_else(|| form.to_owned()),
        Err(e) => Err(format!("{text:?}: {e}; {form}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_up_to_a_day_are_accepted() {
        assert_eq!(duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert_eq!(duration("24h"), Ok(MAX_DURATION));
    }

    #[test]
    fn zero_is_refused_where_it_would_fail_every_request() {
        let zero = positive_duration("0s").unwrap_err();
        assert!(zero.contains("above zero"), "{zero}");
        assert_eq!(positive_duration("1ms"), Ok(Duration::from_millis(1)));
        assert!(positive_duration("500000000years").is_err());
    }

    #[test]
    fn traces_per_second_is_a_whole_number_above_zero() {
        assert_eq!(traces_per_second("100").map(|n| n.get()), Ok(100));
        assert!(traces_per_second("0").unwrap_err().contains("always_off"));
        assert!(traces_per_second("1.5").unwrap_err().contains("like 100"));
        assert!(traces_per_second("-1").unwrap_err().contains("like 100"));
    }

    #[test]
    fn absurd_or_malformed_durations_are_refused_with_the_form_expected() {
        let too_long = duration("500000000years").unwrap_err();
        assert!(too_long.contains("longer than the 1day"), "{too_long}");
        let malformed = duration("5 parsecs").unwrap_err();
        assert!(malformed.contains("like 300ms, 2s or 1m"), "{malformed}");
    }
}
