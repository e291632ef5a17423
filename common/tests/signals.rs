//! The signal handlers are installed when `shutdown_signal` and `on_sighup`
//! are called, not when their futures are first polled: a service announces
//! itself between the two, and a signal sent on that announcement must not
//! meet the default action (which ends the process). Read from the kernel's
//! own record of caught signals, in a test binary of its own so that no
//! other test has installed them first.

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Whether this process catches signal `number` (`SigCgt` in /proc).
fn catches(number: u32) -> Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .ok_or("no SigCgt line in /proc/self/status")?;
    let mask = u64::from_str_radix(hex.trim(), 16)?;
    Ok(mask & (1 << (number - 1)) != 0)
}

const SIGHUP: u32 = 1;
const SIGTERM: u32 = 15;

#[tokio::test]
async fn handlers_are_installed_by_the_call_not_by_the_first_poll() -> Result<()> {
    assert!(!catches(SIGTERM)?, "SIGTERM caught before the call");
    assert!(!catches(SIGHUP)?, "SIGHUP caught before the call");

    let shutdown = common::shutdown_signal();
    assert!(catches(SIGTERM)?, "SIGTERM not caught after the call");
    let reload = common::reload::on_sighup_or_change(Vec::new(), std::time::Duration::ZERO, || {});
    assert!(catches(SIGHUP)?, "SIGHUP not caught after the call");

    // Neither was ever polled.
    drop((shutdown, reload));
    Ok(())
}
