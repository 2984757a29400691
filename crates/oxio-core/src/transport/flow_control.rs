//! asyncio's write flow control (`transports._FlowControlMixin`): when a transport's buffer
//! crosses the high-water mark the protocol is paused, and resumed once it drains to the low one.

/// asyncio's default high-water mark; the low one defaults to a quarter of the high one.
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;

pub struct FlowControl {
    /// The high-water mark that `set_limits(None, None)` restores: asyncio's default for
    /// socket and pipe transports, larger for TLS's application buffer.
    default_high: usize,
    high: usize,
    low: usize,
    /// `pause_writing()` was called and `resume_writing()` not yet.
    paused: bool,
    /// Pause once the buffer reaches the high-water mark, not only once it passes it:
    /// asyncio's TLS layer compares with `>=` where its other transports use `>`.
    pause_at_mark: bool,
}

impl Default for FlowControl {
    fn default() -> Self {
        Self::new(DEFAULT_HIGH_WATER)
    }
}

impl FlowControl {
    /// Limits of `default_high` and a quarter of it, not paused.
    pub fn new(default_high: usize) -> Self {
        Self {
            default_high,
            high: default_high,
            low: default_high / 4,
            paused: false,
            pause_at_mark: false,
        }
    }

    /// The same limits, pausing as soon as the buffer reaches the high-water mark.
    pub fn pausing_at_the_mark(self) -> Self {
        Self {
            pause_at_mark: true,
            ..self
        }
    }

    /// `set_write_buffer_limits(high, low)` with asyncio's defaulting and its error message.
    pub fn set_limits(&mut self, high: Option<i64>, low: Option<i64>) -> Result<(), String> {
        let default_high = self.default_high as i64;
        let high = high.unwrap_or_else(|| low.map_or(default_high, |l| l.saturating_mul(4)));
        let low = low.unwrap_or(high / 4);
        if !(high >= low && low >= 0) {
            return Err(format!("high ({high}) must be >= low ({low}) must be >= 0"));
        }
        self.high = high as usize;
        self.low = low as usize;
        Ok(())
    }

    /// Whether the protocol was paused and not yet resumed (asyncio's `_protocol_paused`).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// `(low, high)`, the order of `get_write_buffer_limits()`.
    pub fn limits(&self) -> (usize, usize) {
        (self.low, self.high)
    }

    /// Whether the protocol must be paused now that `buffered` bytes are waiting.
    pub fn should_pause(&mut self, buffered: usize) -> bool {
        let below = if self.pause_at_mark {
            buffered < self.high
        } else {
            buffered <= self.high
        };
        if self.paused || below {
            return false;
        }
        self.paused = true;
        true
    }

    /// Whether the protocol must be resumed now that only `buffered` bytes are waiting.
    pub fn should_resume(&mut self, buffered: usize) -> bool {
        if !self.paused || buffered > self.low {
            return false;
        }
        self.paused = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_above_high_and_resumes_at_low() {
        let mut flow = FlowControl::default();
        flow.set_limits(Some(100), None).unwrap();
        assert_eq!(flow.limits(), (25, 100));
        assert!(!flow.should_pause(100));
        assert!(flow.should_pause(101));
        assert!(!flow.should_pause(500), "paused once");
        assert!(!flow.should_resume(26));
        assert!(flow.should_resume(25));
        assert!(!flow.should_resume(0), "resumed once");
    }

    #[test]
    fn limits_default_and_validate_as_asyncio() {
        let mut flow = FlowControl::default();
        flow.set_limits(None, Some(10)).unwrap();
        assert_eq!(flow.limits(), (10, 40));
        assert_eq!(
            flow.set_limits(Some(1), Some(2)).unwrap_err(),
            "high (1) must be >= low (2) must be >= 0"
        );
        assert!(flow.set_limits(Some(-1), None).is_err());
    }

    #[test]
    fn tls_pauses_at_the_mark_itself() {
        let mut flow = FlowControl::new(100).pausing_at_the_mark();
        assert!(!flow.should_pause(99));
        assert!(flow.should_pause(100));
        let mut zero = FlowControl::new(100).pausing_at_the_mark();
        zero.set_limits(Some(0), None).unwrap();
        assert!(
            zero.should_pause(0),
            "a zero high-water mark pauses at once, as asyncio's TLS"
        );
    }

    #[test]
    fn a_larger_default_is_what_none_restores() {
        let mut flow = FlowControl::new(512 * 1024);
        assert_eq!(flow.limits(), (128 * 1024, 512 * 1024));
        flow.set_limits(Some(10), None).unwrap();
        flow.set_limits(None, None).unwrap();
        assert_eq!(flow.limits(), (128 * 1024, 512 * 1024));
    }
}
