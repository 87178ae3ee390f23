//! The outbox: job status updates waiting to be sent, and those sent but not yet answered (in flight).
//!
//! Owns ordering. Statuses leave in the order they were accepted; on a disconnect the in-flight ones go back to
//! the front, in order, so per-job order holds across reconnects. Nothing is ever dropped here: the outbox only
//! says when it is full, and the machine turns that into backpressure.
//!
//! Each update knows whether it belongs to a job the client accepted (`received`, the handler's statuses, a
//! cancelled job's `horde_failed`) or is an answer to a job request it refused (`rejected`): a drain waits for the
//! first kind only, so a facilitator that keeps pushing jobs during a shutdown cannot hold it open.

use std::collections::VecDeque;

use crate::protocol::JobStatusUpdate;

/// A status update held by the outbox, with how many times it has been sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    /// The update itself.
    pub update: JobStatusUpdate,
    /// How many times it has been written to a socket (0 while it has never left).
    pub sends: u32,
    /// Whether it is a status of a job the client accepted (as opposed to the answer to a refused job request).
    pub of_accepted_job: bool,
}

/// A bounded, ordered queue of status updates plus the FIFO of those in flight.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    queued: VecDeque<Pending>,
    in_flight: VecDeque<Pending>,
    capacity: usize,
    /// Held updates (queued plus in flight) with `of_accepted_job` set.
    accepted_jobs_held: usize,
}

impl Outbox {
    /// An empty outbox that reports itself full at `capacity` held updates (queued plus in flight).
    pub(crate) fn new(capacity: usize) -> Self {
        Outbox {
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            capacity: capacity.max(1),
            accepted_jobs_held: 0,
        }
    }

    /// Appends a status of an accepted job. Never refuses: the bound is enforced by producers waiting on
    /// [`Outbox::has_room`].
    pub(crate) fn push(&mut self, update: JobStatusUpdate) {
        self.accepted_jobs_held += 1;
        self.queued.push_back(Pending {
            update,
            sends: 0,
            of_accepted_job: true,
        });
    }

    /// Appends the answer to a refused job request (`rejected`). The machine only does so while
    /// [`Outbox::has_room`].
    pub(crate) fn push_refusal(&mut self, update: JobStatusUpdate) {
        self.queued.push_back(Pending {
            update,
            sends: 0,
            of_accepted_job: false,
        });
    }

    /// Whether a producer may add another update without going over capacity.
    pub(crate) fn has_room(&self) -> bool {
        self.len() < self.capacity
    }

    /// Moves the next queued update into flight and returns it, unless `max_in_flight` are already out.
    pub(crate) fn send_next(&mut self, max_in_flight: usize) -> Option<&Pending> {
        if self.in_flight.len() >= max_in_flight {
            return None;
        }
        let mut next = self.queued.pop_front()?;
        next.sends += 1;
        self.in_flight.push_back(next);
        self.in_flight.back()
    }

    /// Takes the oldest in-flight update: the one a Response answers.
    pub(crate) fn acknowledge(&mut self) -> Option<Pending> {
        let pending = self.in_flight.pop_front()?;
        if pending.of_accepted_job {
            self.accepted_jobs_held -= 1;
        }
        Some(pending)
    }

    /// Puts every in-flight update back at the front of the queue, in order (the connection was lost).
    pub(crate) fn requeue_in_flight(&mut self) -> usize {
        let moved = self.in_flight.len();
        while let Some(pending) = self.in_flight.pop_back() {
            self.queued.push_front(pending);
        }
        moved
    }

    /// Updates held in all: queued plus in flight.
    pub(crate) fn len(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }

    /// Statuses of accepted jobs held (queued plus in flight): what a drain waits for.
    pub(crate) fn accepted_jobs_len(&self) -> usize {
        self.accepted_jobs_held
    }

    /// Updates waiting to be sent.
    pub(crate) fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// Updates sent and not yet answered.
    pub(crate) fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Every held update, in flight first, each in order: the order they would be delivered in.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.in_flight.iter().chain(self.queued.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::JobStatus;

    fn update(uuid: &str, status: JobStatus) -> JobStatusUpdate {
        JobStatusUpdate::new(uuid, status)
    }

    #[test]
    fn requeued_in_flight_updates_go_back_in_front_in_order() {
        let mut outbox = Outbox::new(10);
        outbox.push(update("a", JobStatus::Received));
        outbox.push(update("a", JobStatus::Accepted));
        outbox.push(update("a", JobStatus::Completed));
        assert!(outbox.send_next(10).is_some());
        assert!(outbox.send_next(10).is_some());
        assert_eq!(outbox.requeue_in_flight(), 2);
        let order: Vec<_> = outbox.iter().map(|p| (p.update.status, p.sends)).collect();
        assert_eq!(
            order,
            vec![
                (JobStatus::Received, 1),
                (JobStatus::Accepted, 1),
                (JobStatus::Completed, 0)
            ]
        );
    }

    #[test]
    fn in_flight_window_limits_sends() {
        let mut outbox = Outbox::new(10);
        for _ in 0..3 {
            outbox.push(update("a", JobStatus::Accepted));
        }
        assert!(outbox.send_next(2).is_some());
        assert!(outbox.send_next(2).is_some());
        assert!(outbox.send_next(2).is_none());
        assert!(outbox.acknowledge().is_some());
        assert!(outbox.send_next(2).is_some());
    }

    #[test]
    fn reports_full_at_capacity_but_never_refuses() {
        let mut outbox = Outbox::new(2);
        outbox.push(update("a", JobStatus::Accepted));
        assert!(outbox.has_room());
        outbox.push(update("a", JobStatus::Completed));
        assert!(!outbox.has_room());
        outbox.push(update("b", JobStatus::Received));
        assert_eq!(outbox.len(), 3);
    }

    #[test]
    fn counts_statuses_of_accepted_jobs_apart_from_refusals() {
        let mut outbox = Outbox::new(10);
        outbox.push(update("a", JobStatus::Received));
        outbox.push_refusal(update("b", JobStatus::Rejected));
        outbox.push(update("a", JobStatus::Completed));
        assert_eq!((outbox.len(), outbox.accepted_jobs_len()), (3, 2));
        assert!(outbox.send_next(10).is_some());
        assert!(outbox.send_next(10).is_some());
        assert_eq!(outbox.requeue_in_flight(), 2);
        assert_eq!(outbox.accepted_jobs_len(), 2);
        for _ in 0..3 {
            assert!(outbox.send_next(10).is_some());
        }
        assert!(outbox.acknowledge().is_some_and(|p| p.of_accepted_job));
        assert!(outbox.acknowledge().is_some_and(|p| !p.of_accepted_job));
        assert_eq!(outbox.accepted_jobs_len(), 1);
        assert!(outbox.acknowledge().is_some_and(|p| p.of_accepted_job));
        assert_eq!(outbox.accepted_jobs_len(), 0);
    }
}
