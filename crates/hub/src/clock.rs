//! Time as the core sees it, injected so that leases, claims, retries and timers are unit-tested
//! by advancing a clock instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One reading: the monotonic instant (for timers) and the wall clock (for what is stored and shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

pub trait Clock: Send + 'static {
    fn now(&self) -> Now;
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now { mono: Instant::now(), wall_ms: wall_ms() }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn wall_ms() -> u64 {
    osutil::clock::epoch_ms()
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    start_wall_ms: u64,
    offset_ms: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new(start_wall_ms: u64) -> ManualClock {
        ManualClock { start: Instant::now(), start_wall_ms, offset_ms: Arc::new(AtomicU64::new(0)) }
    }

    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Now {
        let offset = self.offset_ms.load(Ordering::SeqCst);
        Now { mono: self.start + Duration::from_millis(offset), wall_ms: self.start_wall_ms + offset }
    }
}
