//! CPU time, read from `/proc`: what this process used and what the whole machine used, so
//! that a measurement can tell whether other processes were busy while it ran (a timing taken
//! on a busy machine says little about a quiet one), and resident memory, so that a model can
//! be charged what loading it really took.

use std::time::Instant;

/// A moment's CPU counters: this process's and the machine's busy time, in clock ticks.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    at: Instant,
    own_ticks: u64,
    machine_busy_ticks: u64,
}

/// Clock ticks per second of `/proc`'s counters (`USER_HZ`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

impl CpuSample {
    /// The counters now; `None` where `/proc` cannot be read (not Linux).
    pub fn now() -> Option<CpuSample> {
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces, so it is skipped by its
        // closing parenthesis): utime and stime are the 12th and 13th.
        let after_name = own.rsplit_once(')')?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let own_ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
        // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
        let counters: Vec<u64> = cpu.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| counters.get(i)).sum();
        Some(CpuSample { at: Instant::now(), own_ticks, machine_busy_ticks: busy })
    }

    /// The cores' worth of CPU that other processes kept busy from `self` to `later`, on
    /// average (0.5: half a core).
    pub fn others_busy_cores(&self, later: &CpuSample) -> f64 {
        let seconds = (later.at - self.at).as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        let machine = later.machine_busy_ticks.saturating_sub(self.machine_busy_ticks) as f64;
        let own = later.own_ticks.saturating_sub(self.own_ticks) as f64;
        ((machine - own).max(0.0) / ticks_per_second()) / seconds
    }
}

/// This process's resident memory now, in bytes (0 where it cannot be read).
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Hands memory the allocator keeps but no longer uses back to the system (after a model is
/// unloaded), so that resident memory shows what is really held.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_processs_own_time_is_counted_as_its_own() {
        let Some(before) = CpuSample::now() else { return };
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = CpuSample::now().unwrap();
        let own = (after.own_ticks - before.own_ticks) as f64 / ticks_per_second();
        assert!(own > 0.1, "this thread's own time was counted: {own} s");
    }

    #[test]
    fn resident_memory_grows_with_memory_touched() {
        let before = resident_bytes();
        let held = vec![1u8; 64 << 20];
        let after = resident_bytes();
        std::hint::black_box(&held);
        assert!(after >= before + (48 << 20), "{before} → {after}");
    }
}
