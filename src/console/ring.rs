//! The console's memory: the last `console.retain` decision records, newest last, each with a
//! sequence number that cursors and the live stream use.
//!
//! Fed by the decision log's writer thread, never by a check: a check hands its record to the
//! log's queue and returns. Pushing takes one short lock and drops the oldest record when full
//! (counted in `agent_authz_console_records_dropped_total`); readers copy the list of shared
//! records under the same lock and filter outside it, so a slow viewer holds nothing. The live
//! stream is a broadcast channel: a viewer that falls behind skips records rather than making
//! anyone wait.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::broadcast;

use crate::audit::DecisionRecord;
use crate::metrics::Metrics;

/// Live events buffered per viewer before a slow one starts skipping.
const LIVE_BUFFER: usize = 1024;

/// One retained record.
#[derive(Debug)]
pub struct Entry {
    /// Increases by one per record pushed, from 1; never reused.
    pub seq: u64,
    /// The record's time in Unix milliseconds, read once for the time filters.
    pub at_ms: u64,
    pub record: DecisionRecord,
}

pub struct Ring {
    capacity: usize,
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Entry>>,
    dropped: Counter,
    skipped: Counter,
}

struct Inner {
    entries: VecDeque<Arc<Entry>>,
    next_seq: u64,
}

impl Ring {
    /// `capacity` records at most (at least one), counted in `metrics`.
    pub fn new(capacity: usize, metrics: &Metrics) -> Ring {
        let capacity = capacity.max(1);
        Ring {
            capacity,
            inner: Mutex::new(Inner {
                entries: VecDeque::with_capacity(capacity.min(1024)),
                next_seq: 1,
            }),
            live: broadcast::channel(LIVE_BUFFER).0,
            dropped: metrics.console_dropped.clone(),
            skipped: metrics.console_stream_skipped.clone(),
        }
    }

    pub fn push(&self, record: DecisionRecord) {
        let at_ms = unix_millis(&record.time);
        let entry = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let entry = Arc::new(Entry {
                seq: inner.next_seq,
                at_ms,
                record,
            });
            inner.next_seq += 1;
            if inner.entries.len() == self.capacity {
                inner.entries.pop_front();
                self.dropped.inc();
            }
            inner.entries.push_back(Arc::clone(&entry));
            entry
        };
        // No receiver is not an error: nobody is watching.
        let _ = self.live.send(entry);
    }

    /// Every retained record, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Entry>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.entries.iter().cloned().collect()
    }

    /// Records pushed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.live.subscribe()
    }

    /// Counts live records a slow viewer skipped.
    pub fn skipped(&self, n: u64) {
        self.skipped.inc_by(n);
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 time; 0 when it does not parse.
pub fn unix_millis(time: &str) -> u64 {
    humantime::parse_rfc3339_weak(time)
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .as_ref()
        .map_or(0, Duration::as_millis) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::record;

    fn ids(entries: &[Arc<Entry>]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.record.decision_id.clone())
            .collect()
    }

    #[test]
    fn keeps_the_newest_records_and_counts_the_dropped_ones() {
        let metrics = Metrics::new();
        let ring = Ring::new(3, &metrics);
        for n in 0..5 {
            ring.push(record(n));
        }
        let kept = ring.snapshot();
        assert_eq!(ids(&kept), ["d-2", "d-3", "d-4"]);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(metrics.console_dropped.get(), 2);
    }

    #[test]
    fn a_viewer_that_falls_behind_skips_records_and_never_blocks_a_push() {
        let ring = Ring::new(10, &Metrics::new());
        let mut slow = ring.subscribe();
        for n in 0..LIVE_BUFFER + 5 {
            ring.push(record(n));
        }
        assert!(matches!(
            slow.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(5))
        ));
        assert_eq!(slow.try_recv().unwrap().record.decision_id, "d-5");
        assert_eq!(ring.snapshot().len(), 10);
    }

    #[test]
    fn record_times_are_read_as_unix_milliseconds() {
        assert_eq!(unix_millis("1970-01-01T00:00:01.500Z"), 1500);
        assert_eq!(unix_millis("not a time"), 0);
    }
}
