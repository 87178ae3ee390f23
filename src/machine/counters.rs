//! The machine's counters: everything the metrics snapshot needs that the machine decides.

/// Counters kept by the machine: everything the metrics snapshot needs that the machine decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connection attempts started (`Open` issued).
    pub connects: u64,
    /// Successful authentications.
    pub authentications: u64,
    /// Successful authentications after the first.
    pub reconnects: u64,
    /// Attempts that ended without authentication (auth error, timeout, socket failure, garbage reply).
    pub auth_failures: u64,
    /// Authenticated connections that were lost (socket failed or closed, peer silent).
    pub disconnects: u64,
    /// Status updates accepted into the outbox.
    pub statuses_accepted: u64,
    /// Status updates written to a socket, counting re-sends.
    pub statuses_sent: u64,
    /// Sends of a status that had been sent before.
    pub statuses_resent: u64,
    /// Status updates stored by the facilitator.
    pub statuses_delivered: u64,
    /// Status updates refused by the facilitator (`job.not_found`, other errors); not retried.
    pub statuses_refused: u64,
    /// Status updates a job handler sent after its job had ended (its terminal status reported, or cancelled):
    /// dropped, never sent.
    pub statuses_dropped_late: u64,
    /// Job requests accepted and dispatched.
    pub jobs_accepted: u64,
    /// Job requests rejected: bad, missing or untrusted signature.
    pub jobs_rejected_signature: u64,
    /// Job requests rejected because the client is draining.
    pub jobs_rejected_busy: u64,
    /// Job requests rejected (`busy`) because `max_running_jobs` jobs were running.
    pub jobs_rejected_full: u64,
    /// Trusted job requests rejected (`busy`) because the handler's pipeline (the validator's Celery workers over
    /// Redis) was unavailable.
    pub jobs_rejected_unavailable: u64,
    /// Times the handler's pipeline became unavailable.
    pub pipeline_outages: u64,
    /// Job requests not answered at all because the outbox was full (the facilitator's own timeout fails them).
    pub jobs_unanswered: u64,
    /// Job requests rejected because they failed validation.
    pub jobs_rejected_invalid: u64,
    /// Job requests for a job already running (ignored).
    pub jobs_duplicate: u64,
    /// Jobs cancelled at the drain deadline or on a stop.
    pub jobs_cancelled: u64,
    /// Frames that could not be decoded (including binary frames).
    pub decode_errors: u64,
    /// Binary frames (ignored).
    pub binary_frames: u64,
    /// Responses with nothing in flight (ignored).
    pub unexpected_responses: u64,
    /// Cheat reports received.
    pub cheat_reports: u64,
    /// Cheat reports from a trusted signer handed to the driver for the job handler (`Action::ForwardCheatReport`).
    pub cheat_reports_trusted: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Spool batches emitted (`Action::Persist`).
    pub spool_batches: u64,
    /// Spool commits reported failed.
    pub spool_errors: u64,
    /// Statuses of accepted jobs sent (or free to be sent) before they were on disk: their commit failed, or the
    /// spool was stale. A crash before the next successful snapshot could lose them.
    pub statuses_unspooled: u64,
    /// Unacknowledged statuses read back from the spool at start.
    pub statuses_recovered: u64,
    /// Jobs read back from the spool at start.
    pub jobs_recovered: u64,
    /// Recovered jobs kept running, to be re-attached to their handler (Celery tasks).
    pub jobs_resumed: u64,
    /// Recovered jobs reported `horde_failed` because the client restarted while they ran.
    pub jobs_interrupted: u64,
    /// Jobs left running and spooled at a stop (their work outlives the client: Celery tasks).
    pub jobs_left_running: u64,
}
