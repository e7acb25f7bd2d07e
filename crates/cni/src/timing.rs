//! Where an invocation spends its time, step by step (`PODNET_CNI_TIMING=1`).
//!
//! Each mark is one line on stderr: the microseconds since the first mark, the step,
//! and the step's `CLOCK_MONOTONIC` time in nanoseconds — the clock `podnet bench cni`
//! reads around the spawn, so it can place the steps between the spawn and the exit
//! (where ten ADDs at once wait: the program load, the IPAM lock, netlink).
//!
//! The lines are kept until [`flush`] writes them in one `write`: a write per mark
//! wakes the reader on the pipe's other end, which then preempts the plugin — in a
//! 300-pod `bench cni` run, 13 000 of podnet-cni's context switches were those
//! writes, a cost the uninstrumented reference plugins do not pay.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The first mark's time, or `None` when timing is off.
static START: OnceLock<Option<Instant>> = OnceLock::new();

/// The lines marked and not yet written.
static LINES: Mutex<String> = Mutex::new(String::new());

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The prefix of a timing line, for readers of stderr.
pub const PREFIX: &str = "podnet-cni timing:";

/// Marks the end of `step` when `PODNET_CNI_TIMING` is set.
pub fn mark(step: &str) {
    let start = START.get_or_init(|| std::env::var_os("PODNET_CNI_TIMING").map(|_| Instant::now()));
    if let Some(t0) = start {
        let line = format!(
            "{PREFIX} {:>6} µs  {step}  @{}\n",
            t0.elapsed().as_micros(),
            monotonic_ns()
        );
        if let Ok(mut l) = LINES.lock() {
            l.push_str(&line);
        }
    }
}

/// Writes the marked lines to stderr, in one write.
pub fn flush() {
    let text = match LINES.lock() {
        Ok(mut l) => std::mem::take(&mut *l),
        Err(_) => return,
    };
    if !text.is_empty() {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// A timing line's step and monotonic time.
pub fn parse_line(line: &str) -> Option<(&str, u64)> {
    let rest = line.strip_prefix(PREFIX)?.trim_start();
    let (_, rest) = rest.split_once(" µs  ")?;
    let (step, at) = rest.rsplit_once("  @")?;
    Some((step, at.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_back() {
        assert_eq!(
            parse_line("podnet-cni timing:    123 µs  address assigned  @987654321"),
            Some(("address assigned", 987654321))
        );
        assert_eq!(parse_line("podnet-cni: something else"), None);
        assert_eq!(parse_line("podnet-cni timing: 12 µs  step  @x"), None);
    }
}
