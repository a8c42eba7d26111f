//! Latency percentiles and the hub's CPU time.
//!
//! CPU time is per thread (Linux `CLOCK_THREAD_CPUTIME_ID` of each task in
//! `/proc/self/task`, nanosecond resolution): the compare clients run on
//! threads named `cmp-client*`, everything else in the process is the hub
//! (its runtime, the embedded MQTT broker's threads, the adapters).

use std::time::Duration;

/// Thread-name prefix of the client runtime, excluded from the hub's CPU.
pub const CLIENT_THREAD_PREFIX: &str = "cmp-client";

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Nearest-rank percentiles of `samples` (µs); zeros for none.
pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1].as_secs_f64() * 1e6
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
    }
}

/// CPU time used so far by every thread of this process that is not a
/// compare client thread (and not the main thread, which only drives them).
pub fn hub_cpu_time() -> Duration {
    hub_cpu_sample().0.values().sum()
}

/// CPU time so far of each hub thread (see [`hub_cpu_time`]), by thread id.
#[derive(Debug, Clone, Default)]
pub struct CpuSample(std::collections::HashMap<i32, Duration>);

impl CpuSample {
    /// CPU time the hub's threads used between `earlier` and this sample,
    /// thread by thread: a thread that ended in between (a blocking-pool
    /// worker, a connection thread) cannot make the difference negative,
    /// as a difference of two process-wide sums would.
    pub fn since(&self, earlier: &CpuSample) -> Duration {
        self.0
            .iter()
            .map(|(tid, now)| now.saturating_sub(earlier.0.get(tid).copied().unwrap_or_default()))
            .sum()
    }
}

/// Reads [`CpuSample`] now.
pub fn hub_cpu_sample() -> CpuSample {
    let pid = std::process::id();
    let mut sample = CpuSample::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return sample;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if tid as u32 == pid {
            continue;
        }
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with(CLIENT_THREAD_PREFIX) {
            continue;
        }
        sample.0.insert(tid, thread_cpu_time(tid));
    }
    sample
}

/// CPU time of thread `tid` of this process (Linux per-thread CPU clock:
/// `clockid = (!tid << 3) | CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD`).
fn thread_cpu_time(tid: i32) -> Duration {
    let clock = ((!tid) << 3) | 6;
    // SAFETY: clock_gettime only writes the timespec it is given.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    if unsafe { libc::clock_gettime(clock as libc::clockid_t, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let p = percentiles(&mut s);
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        assert_eq!(percentiles(&mut []), Percentiles::default());
    }

    #[test]
    fn busy_worker_thread_shows_cpu_time() {
        let before = hub_cpu_time();
        let h = std::thread::spawn(|| {
            let t = std::time::Instant::now();
            let mut x = 0u64;
            while t.elapsed() < Duration::from_millis(30) {
                x = x.wrapping_add(1);
            }
            std::hint::black_box(x);
            // Read while this thread still exists.
            hub_cpu_time()
        });
        let during = h.join().unwrap();
        assert!(during > before, "{during:?} !> {before:?}");
    }
}
