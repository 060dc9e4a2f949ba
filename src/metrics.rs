//! Process metrics read from the kernel (status line, periodic statistics, benchmarks).

/// Resident set size of this process in bytes (0 if /proc is unavailable).
pub fn rss_bytes() -> u64 {
    // Safety: sysconf has no preconditions; it returns -1 on error.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as u64 } else { 4096 };
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> std::time::Duration {
    // Safety: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is always valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: see above; `usage` outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return std::time::Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU use between two readings, in percent of one core (200 = two cores busy).
#[derive(Debug)]
pub struct CpuMeter {
    last_cpu: std::time::Duration,
    last_at: std::time::Instant,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter {
            last_cpu: cpu_time(),
            last_at: std::time::Instant::now(),
        }
    }
}

impl CpuMeter {
    /// Percent of one core used since the last call (or since the meter was made).
    pub fn percent(&mut self) -> f64 {
        let (cpu, at) = (cpu_time(), std::time::Instant::now());
        let wall = at.duration_since(self.last_at).as_secs_f64();
        let used = cpu.saturating_sub(self.last_cpu).as_secs_f64();
        self.last_cpu = cpu;
        self.last_at = at;
        if wall > 0.0 {
            used / wall * 100.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_meter_sees_a_busy_loop() {
        let mut meter = CpuMeter::default();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let p = meter.percent();
        // A busy thread on a shared machine: well above idle, at most all cores.
        assert!(p > 20.0 && p < 100.0 * 64.0, "{p}");
    }
}
