//! The `echo` job handler: reports `accepted`, then `completed`, at once, for demos and benchmarks.
//!
//! Owns: the shape of its two statuses (`completed` always carries `metadata.miner_response`, as the reference
//! validator's does, because the facilitator needs a metadata object there). Must never: run anything, wait on
//! anything but the status channel's backpressure, or send `received` (the client sends that itself).

use std::sync::Arc;

use crate::protocol::{JobRequest, JobResultDetails, JobStatus, JobStatusUpdate};

use super::{BoxFuture, JobHandler, StatusSender};

/// Answers every job with `accepted` and then `completed` (empty stdout and stderr, no artifacts, no uploads).
///
/// ```
/// use facilitator_client::handler::{EchoHandler, JobHandler};
/// assert_eq!(EchoHandler::new().name(), "echo");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoHandler;

impl EchoHandler {
    /// The echo handler.
    pub const fn new() -> Self {
        EchoHandler
    }

    /// The `completed` update it sends: `miner_response` with empty stdout and stderr and null artifacts and
    /// upload results.
    pub fn completed(uuid: impl Into<String>) -> JobStatusUpdate {
        let mut update = JobStatusUpdate::new(uuid, JobStatus::Completed);
        update.metadata.miner_response = Some(JobResultDetails::default());
        update
    }
}

impl JobHandler for EchoHandler {
    fn run(&self, job: Arc<JobRequest>, statuses: StatusSender) -> BoxFuture {
        Box::pin(async move {
            log::debug!("job {}: echo handler: accepted, completed", job.uuid());
            // A stopped client takes no more statuses; there is nothing to clean up.
            if statuses.status(JobStatus::Accepted).await.is_err() {
                return;
            }
            let _ = statuses.send(EchoHandler::completed(job.uuid())).await;
        })
    }

    fn name(&self) -> String {
        "echo".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::handler::HandlerEvent;
    use crate::protocol::testing;

    const UUID: &str = "00000000-0000-4000-8000-0000000000e1";

    fn job() -> Arc<JobRequest> {
        let text = testing::signed_job_text(&testing::test_signer(), UUID);
        Arc::new(JobRequest::parse(&text).expect("the test job parses"))
    }

    #[tokio::test]
    async fn sends_accepted_then_completed_with_a_miner_response() {
        let (tx, mut rx) = mpsc::channel(4);
        EchoHandler::new()
            .run(job(), StatusSender::new(UUID, tx))
            .await;
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        assert_eq!(
            events,
            vec![
                HandlerEvent::Status(JobStatusUpdate::new(UUID, JobStatus::Accepted)),
                HandlerEvent::Status(EchoHandler::completed(UUID)),
            ]
        );
        let HandlerEvent::Status(completed) = &events[1] else {
            unreachable!("checked above")
        };
        let response = completed.metadata.miner_response.as_ref();
        assert_eq!(response.map(|r| r.docker_process_stdout.as_str()), Some(""));
    }

    #[tokio::test]
    async fn stops_quietly_when_the_client_has_stopped() {
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        EchoHandler::new()
            .run(job(), StatusSender::new(UUID, tx))
            .await;
    }
}
