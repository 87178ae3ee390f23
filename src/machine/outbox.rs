//! The outbox: job status updates waiting to be sent, and those sent but not yet answered (in flight).
//!
//! Owns ordering. Statuses leave in the order they were accepted; on a disconnect the in-flight ones go back to
//! the front, in order, so per-job order holds across reconnects. Nothing is ever dropped here: the outbox only
//! says when it is full, and the machine turns that into backpressure.
//!
//! Each update knows whether it belongs to a job the client accepted (`received`, the handler's statuses, a
//! cancelled job's `horde_failed`) or is an answer to a job request it refused (`rejected`): a drain waits for the
//! first kind only, so a facilitator that keeps pushing jobs during a shutdown cannot hold it open.
//!
//! With the spool, a status of an accepted job carries its spool id and, until the batch that puts it is durable,
//! the id of that batch: it is *held*. Only the queue's prefix up to the first held update may be sent, so order is
//! never broken by durability (a refusal queued behind a held status waits with it).

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
    /// Its id in the spool (statuses of accepted jobs, with the spool on).
    pub spool_id: Option<u64>,
    /// The spool batch that must be durable before it may be sent; `None` once it may go.
    pub held_by: Option<u64>,
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
            spool_id: None,
            held_by: None,
        });
    }

    /// Appends a status of an accepted job that has an id in the spool; `held_by` is the batch that must be
    /// durable before it is sent (`None`: it may go at once).
    pub(crate) fn push_spooled(&mut self, update: JobStatusUpdate, id: u64, held_by: Option<u64>) {
        self.accepted_jobs_held += 1;
        self.queued.push_back(Pending {
            update,
            sends: 0,
            of_accepted_job: true,
            spool_id: Some(id),
            held_by,
        });
    }

    /// Appends a status read back from the spool at start: already durable, and counted as sent once, since the
    /// previous process may have sent it (so a `job.integrity_error` answer means it was stored).
    pub(crate) fn push_recovered(&mut self, update: JobStatusUpdate, id: u64) {
        self.accepted_jobs_held += 1;
        self.queued.push_back(Pending {
            update,
            sends: 1,
            of_accepted_job: true,
            spool_id: Some(id),
            held_by: None,
        });
    }

    /// Appends the answer to a refused job request (`rejected`). The machine only does so while
    /// [`Outbox::has_room`].
    pub(crate) fn push_refusal(&mut self, update: JobStatusUpdate) {
        self.queued.push_back(Pending {
            update,
            sends: 0,
            of_accepted_job: false,
            spool_id: None,
            held_by: None,
        });
    }

    /// Whether a producer may add another update without going over capacity.
    pub(crate) fn has_room(&self) -> bool {
        self.len() < self.capacity
    }

    /// Moves the next queued update into flight and returns it, unless `max_in_flight` are already out or it is
    /// held by a spool batch above `released_up_to` (not yet durable).
    pub(crate) fn send_next(
        &mut self,
        max_in_flight: usize,
        released_up_to: u64,
    ) -> Option<&Pending> {
        if self.in_flight.len() >= max_in_flight {
            return None;
        }
        if self
            .queued
            .front()?
            .held_by
            .is_some_and(|batch| batch > released_up_to)
        {
            return None;
        }
        let mut next = self.queued.pop_front()?;
        next.held_by = None;
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

    /// How many queued updates wait for a spool batch in `(after, up_to]`: released by a failed commit, they go out
    /// without being on disk.
    pub(crate) fn held_by_batches(&self, after: u64, up_to: u64) -> usize {
        self.queued
            .iter()
            .filter(|p| p.held_by.is_some_and(|b| b > after && b <= up_to))
            .count()
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
        assert!(outbox.send_next(10, 0).is_some());
        assert!(outbox.send_next(10, 0).is_some());
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
        assert!(outbox.send_next(2, 0).is_some());
        assert!(outbox.send_next(2, 0).is_some());
        assert!(outbox.send_next(2, 0).is_none());
        assert!(outbox.acknowledge().is_some());
        assert!(outbox.send_next(2, 0).is_some());
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
        assert!(outbox.send_next(10, 0).is_some());
        assert!(outbox.send_next(10, 0).is_some());
        assert_eq!(outbox.requeue_in_flight(), 2);
        assert_eq!(outbox.accepted_jobs_len(), 2);
        for _ in 0..3 {
            assert!(outbox.send_next(10, 0).is_some());
        }
        assert!(outbox.acknowledge().is_some_and(|p| p.of_accepted_job));
        assert!(outbox.acknowledge().is_some_and(|p| !p.of_accepted_job));
        assert_eq!(outbox.accepted_jobs_len(), 1);
        assert!(outbox.acknowledge().is_some_and(|p| p.of_accepted_job));
        assert_eq!(outbox.accepted_jobs_len(), 0);
    }

    #[test]
    fn a_held_status_stops_the_sendable_prefix_until_its_batch_is_released() {
        let mut outbox = Outbox::new(10);
        outbox.push_spooled(update("a", JobStatus::Received), 1, Some(3));
        outbox.push_refusal(update("b", JobStatus::Rejected));
        assert!(
            outbox.send_next(10, 2).is_none(),
            "batch 3 is not durable yet"
        );
        assert_eq!(outbox.held_by_batches(2, 3), 1);
        assert!(outbox.send_next(10, 3).is_some_and(|p| p.held_by.is_none()));
        assert!(
            outbox.send_next(10, 3).is_some(),
            "the refusal behind it goes too"
        );
    }

    #[test]
    fn a_recovered_status_counts_as_sent_once() {
        let mut outbox = Outbox::new(10);
        outbox.push_recovered(update("a", JobStatus::Completed), 7);
        let sent = outbox.send_next(10, 0).cloned();
        assert_eq!(sent.map(|p| (p.sends, p.spool_id)), Some((2, Some(7))));
    }
}
