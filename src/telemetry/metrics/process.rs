//! The process metrics Prometheus client libraries export by default (SPEC §7), read from
//! `/proc/self` on each scrape, with client_golang's names, types and help texts:
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`.
//!
//! Linux only: elsewhere (and for any file that cannot be read or parsed) the metric is simply
//! left out, never written as 0. CPU time and start time are in clock ticks, which the kernel
//! reports in `USER_HZ` = 100 on every architecture we build for (client_golang's procfs makes
//! the same assumption; `sysconf` would need `unsafe`). Memory comes from `/proc/self/status`
//! in kB, so the page size does not matter.

use std::fmt;
use std::sync::OnceLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// `USER_HZ`: clock ticks per second in `/proc` files.
const TICKS_PER_SECOND: f64 = 100.0;

/// The registry's collector for `process_*`.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector {
    /// The start time never changes; `/proc/stat` is read once.
    start_time: OnceLock<Option<f64>>,
}

/// One reading; `None` where the value could not be had.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct ProcessStats {
    pub(super) cpu_seconds: Option<f64>,
    pub(super) resident_bytes: Option<u64>,
    pub(super) virtual_bytes: Option<u64>,
    pub(super) open_fds: Option<u64>,
    pub(super) max_fds: Option<u64>,
    pub(super) start_time_seconds: Option<f64>,
}

impl ProcessCollector {
    pub(super) fn read(&self) -> ProcessStats {
        let stat = read_proc("/proc/self/stat").and_then(|text| parse_stat(&text));
        let status = read_proc("/proc/self/status");
        let start_time_seconds = *self.start_time.get_or_init(|| {
            let ticks = stat.as_ref()?.start_ticks;
            let boot = read_proc("/proc/stat").and_then(|text| parse_boot_time(&text))?;
            Some(boot as f64 + ticks as f64 / TICKS_PER_SECOND)
        });
        ProcessStats {
            cpu_seconds: stat
                .as_ref()
                .map(|s| (s.user_ticks + s.system_ticks) as f64 / TICKS_PER_SECOND),
            resident_bytes: status.as_deref().and_then(|s| status_bytes(s, "VmRSS:")),
            virtual_bytes: status.as_deref().and_then(|s| status_bytes(s, "VmSize:")),
            open_fds: count_open_fds(),
            max_fds: read_proc("/proc/self/limits").and_then(|text| parse_max_open_files(&text)),
            start_time_seconds,
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.read();
        if let Some(v) = stats.cpu_seconds {
            // A counter named without `_total`: the encoder appends it.
            let mut m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            m.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let e = &mut encoder;
        gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            stats.open_fds,
        )?;
        gauge(
            e,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            stats.max_fds,
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            stats.virtual_bytes,
        )?;
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            stats.resident_bytes,
        )?;
        gauge(
            e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            stats.start_time_seconds,
        )?;
        Ok(())
    }
}

/// A gauge family of one sample, left out when the value is unknown.
fn gauge<V: EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    value: Option<V>,
) -> Result<(), fmt::Error> {
    match value {
        Some(v) => e
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&v),
        None => Ok(()),
    }
}

#[cfg(target_os = "linux")]
fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(not(target_os = "linux"))]
fn read_proc(_path: &str) -> Option<String> {
    None
}

#[cfg(target_os = "linux")]
fn count_open_fds() -> Option<u64> {
    // The directory handle of this scan is one of them, as in client_golang.
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.filter(Result::is_ok).count() as u64)
}

#[cfg(not(target_os = "linux"))]
fn count_open_fds() -> Option<u64> {
    None
}

/// The fields of `/proc/self/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    pub(super) user_ticks: u64,
    pub(super) system_ticks: u64,
    pub(super) start_ticks: u64,
}

/// `/proc/[pid]/stat` (proc(5)): `pid (comm) state ...`; `comm` may hold spaces and `)`, so the
/// fields are counted from the last `)`. utime is field 14, stime 15, starttime 22.
pub(super) fn parse_stat(text: &str) -> Option<Stat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the command name.
    let fields: Vec<&str> = after_comm.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        user_ticks: field(14)?,
        system_ticks: field(15)?,
        start_ticks: field(22)?,
    })
}

/// A `Key:   1234 kB` line of `/proc/self/status`, in bytes.
pub(super) fn status_bytes(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    let mut words = line.split_ascii_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next()? == "kB").then(|| kib.saturating_mul(1024))
}

/// `btime` of `/proc/stat`: boot time in seconds since the Unix epoch.
pub(super) fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when `unlimited`.
pub(super) fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}
