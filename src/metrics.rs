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
