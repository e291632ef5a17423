//! The standard `process_*` series (CPU, memory, file descriptors,
//! threads, start time), read from `/proc` at each scrape; Linux only.

use prometheus::IntGauge;

use super::Metrics;

/// The standard `process_*` metrics, read from `/proc` at each scrape.
pub(super) struct Process {
    cpu: prometheus::Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: prometheus::Gauge,
}

impl Process {
    pub(super) fn register(metrics: &Metrics) -> Self {
        Self {
            cpu: metrics.add(
                prometheus::Counter::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                ),
                "process_cpu_seconds_total",
            ),
            resident: metrics.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_memory: metrics.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: metrics.gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: metrics.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit).",
            ),
            threads: metrics.gauge("process_threads", "Number of OS threads in the process."),
            start_time: metrics.add(
                prometheus::Gauge::new(
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch in seconds.",
                ),
                "process_start_time_seconds",
            ),
        }
    }

    /// Reads `/proc/self`; what cannot be read keeps its last value.
    pub(super) fn read(&self) {
        let Ok(me) = procfs::process::Process::myself() else {
            return;
        };
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Ok(stat) = me.stat() {
            // Fractions of a second count: rate() over a minute of a
            // lightly loaded service is a few hundredths.
            #[allow(clippy::cast_precision_loss)] // clock ticks, far below 2^53
            let total = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
            let delta = total - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            self.resident
                .set(count(stat.rss.saturating_mul(procfs::page_size())));
            self.virtual_memory.set(count(stat.vsize));
            self.threads.set(stat.num_threads);
            if let Ok(boot) = procfs::boot_time_secs() {
                #[allow(clippy::cast_precision_loss)]
                let started =
                    boot as f64 + stat.starttime as f64 / procfs::ticks_per_second() as f64;
                self.start_time.set(started);
            }
        }
        if let Ok(open) = me.fd_count() {
            self.open_fds.set(count(open as u64));
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            self.max_fds.set(count(max));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn process_cpu_time_keeps_its_fractions_of_a_second() {
        let metrics = Metrics::new("demo", "0");
        let ticks = |stat: &str| -> f64 {
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            // utime and stime: fields 14 and 15 of /proc/PID/stat.
            fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()
        };
        // Spin until the CPU time is mid-way between whole seconds, so that
        // whole seconds would be off by at least 0.3.
        let spun = std::time::Instant::now();
        while spun.elapsed() < Duration::from_secs(3) {
            let now = ticks(&std::fs::read_to_string("/proc/self/stat").unwrap()) / 100.0;
            if (0.3..0.7).contains(&now.fract()) {
                break;
            }
        }
        let text = metrics.render();
        let after = ticks(&std::fs::read_to_string("/proc/self/stat").unwrap()) / 100.0;
        let reported: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("process_cpu_seconds_total "))
            .unwrap()
            .parse()
            .unwrap();
        // USER_HZ is 100 on Linux; the read after the scrape may be a
        // tick or two later, never a whole second.
        assert!(
            reported <= after && after - reported < 0.05,
            "{reported} against {after}"
        );
    }
}
