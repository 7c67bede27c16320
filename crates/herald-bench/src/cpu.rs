//! The whole machine's CPU time, read from `/proc/stat`: what a variant costs in core-seconds
//! per event, the relay, PostgreSQL and the broker together (they share the machine's cores).

use anyhow::{Context as _, Result};

/// The machine's CPU counters at one moment (jiffies summed over all cores).
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    busy: u64,
    total: u64,
}

impl CpuTime {
    /// Reads the counters now.
    pub fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        // user nice system idle iowait irq softirq steal (guest time is counted in user).
        let fields = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
            .context("parse /proc/stat")?;
        let total = fields.iter().sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Ok(CpuTime {
            busy: total - idle,
            total,
        })
    }

    /// Core-seconds the machine spent busy between `self` and `later`, `wall` seconds apart.
    pub fn core_seconds_until(&self, later: &CpuTime, wall: f64) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let busy = later.busy.saturating_sub(self.busy) as f64;
        busy / total * cores * wall
    }
}
