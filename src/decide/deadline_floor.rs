//! Keeps a timer due before any new Cerbos call's deadline while calls are being made, so
//! that arming a call's deadline does not wake the runtime's I/O driver.
//!
//! tokio wakes its I/O driver (a write to an eventfd, and a spurious return of the thread
//! parked in `epoll_wait`, another thread's wake-up when several workers run) whenever a timer
//! is armed earlier than every timer the driver knew of when it last parked. A call's deadline
//! (`cerbos.timeout`) is usually the earliest: the previous call's was disarmed when it was
//! answered. A timer re-armed every half timeout while calls keep coming is always earlier, so
//! the deadlines fall behind it. After half a timeout without a call it stops (the first call
//! after the pause starts it again and pays the one wake-up).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// No task: the first call starts it (the engine is built before the runtime serves), and the
/// first call after a quiet period starts it again.
const IDLE: u8 = 0;
/// A call started in the current period.
const USED: u8 = 1;
/// No call yet in the current period.
const UNUSED: u8 = 2;

pub struct DeadlineFloor {
    state: AtomicU8,
    period: Duration,
}

impl DeadlineFloor {
    /// For calls whose deadline is `timeout` after they start.
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: AtomicU8::new(IDLE),
            period: timeout / 2,
        })
    }

    /// Before a call arms its deadline.
    pub fn call_starts(self: &Arc<Self>) {
        if self.state.swap(USED, Ordering::AcqRel) == IDLE {
            tokio::spawn(Arc::clone(self).tick());
        }
    }

    /// Ends after a period without calls, so that no task outlives the engine (a reloaded
    /// configuration builds a new one): the next call spawns a new one.
    async fn tick(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.period).await;
            if self.state.swap(UNUSED, Ordering::AcqRel) == USED {
                continue;
            }
            // A whole period without a call.
            if self
                .state
                .compare_exchange(UNUSED, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    #[cfg(test)]
    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the clock paused, tokio advances it to the next timer whenever every task waits.
    #[tokio::test(start_paused = true)]
    async fn ticks_while_calls_come_and_stops_after_a_quiet_period() {
        let floor = DeadlineFloor::new(Duration::from_millis(500));
        assert_eq!(floor.state(), IDLE);
        assert_eq!(Arc::strong_count(&floor), 1);
        floor.call_starts();
        tokio::task::yield_now().await;
        // Calls in each period keep it ticking.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            floor.call_starts();
            assert_eq!(floor.state(), USED);
        }
        // Two quiet periods: the first marks it unused, the second stops it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(floor.state(), IDLE);
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&floor), 1, "the task ended");
        // The next call starts it again.
        floor.call_starts();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(floor.state(), UNUSED);
    }
}
