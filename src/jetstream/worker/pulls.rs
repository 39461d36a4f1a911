//! The worker's pull requests in flight and the handler slots they reserved.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::jetstream::shared::{ConsumerShared, Failure as PullFailure};

/// A pull request in flight.
pub(super) struct OpenPull {
    pub(super) id: u64,
    pub(super) start: SystemTime,
    /// When to give up on an end status (`expires` plus a margin).
    pub(super) deadline: tokio::time::Instant,
    pub(super) requested: usize,
    pub(super) received: usize,
    pub(super) producers: Vec<opentelemetry::trace::SpanContext>,
}

/// The worker's open pulls, oldest first, and the handler slots they reserved.
pub(super) struct Pulls {
    pub(super) open: VecDeque<OpenPull>,
    /// Messages asked for and not yet arrived.
    pub(super) reserved: usize,
    pub(super) next_id: u64,
    pub(super) consumer: Arc<ConsumerShared>,
}

impl Pulls {
    pub(super) fn opened(&mut self, start: SystemTime, requested: usize, expires: Duration) {
        self.open.push_back(OpenPull {
            id: self.next_id,
            start,
            deadline: tokio::time::Instant::now() + expires + Duration::from_secs(5),
            requested,
            received: 0,
            producers: Vec::new(),
        });
        self.next_id += 1;
        self.reserved += requested;
    }

    /// A message arrived: the server fills pull requests in order, so it belongs
    /// to the oldest open one, which ends once it has all it asked for.
    pub(super) fn received(&mut self, producer: opentelemetry::trace::SpanContext) {
        self.reserved = self.reserved.saturating_sub(1);
        let Some(pull) = self.open.iter_mut().find(|p| p.received < p.requested) else {
            return;
        };
        pull.received += 1;
        pull.producers.push(producer);
        if pull.received == pull.requested {
            let id = pull.id;
            self.end(id, None);
        }
    }

    /// Ends pull `id`: gives back the slots of messages that never came and
    /// records its `receive` span.
    pub(super) fn end(&mut self, id: u64, failure: Option<PullFailure>) {
        let Some(index) = self.open.iter().position(|p| p.id == id) else {
            return;
        };
        let Some(pull) = self.open.remove(index) else {
            return;
        };
        let unfilled = pull.requested.saturating_sub(pull.received);
        self.reserved = self.reserved.saturating_sub(unfilled);
        self.consumer
            .record_receive_of(pull.start, pull.producers, failure, None);
    }

    pub(super) fn expire(&mut self, now: tokio::time::Instant) {
        let expired: Vec<u64> = self
            .open
            .iter()
            .filter(|p| p.deadline <= now)
            .map(|p| p.id)
            .collect();
        for id in expired {
            self.end(
                id,
                Some(PullFailure::other(
                    "pull request lost (no end status)".to_owned(),
                )),
            );
        }
    }
}
