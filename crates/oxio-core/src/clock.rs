//! The loop's clock: `CLOCK_MONOTONIC` in seconds, the same clock as Python's `time.monotonic()`.

/// Seconds on the monotonic clock, with nanosecond resolution.
///
/// asyncio's `loop.time()` is `time.monotonic()`, and user code mixes the two freely (deadlines
/// computed from one, compared against the other), so this reads the very same clock.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux, so
    // the call cannot fail or write out of bounds.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::monotonic;

    #[test]
    fn never_goes_backwards() {
        let mut last = monotonic();
        for _ in 0..10_000 {
            let now = monotonic();
            assert!(now >= last);
            last = now;
        }
    }
}
