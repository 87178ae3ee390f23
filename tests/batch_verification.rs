//! Batch verification of job signatures: `signature::verify_batch` only ever saves work. A batch that verifies
//! marks its jobs so `TrustedSigners::check` skips the cryptographic step (trust is still checked); a batch with a
//! bad signature marks nothing, and each job is then checked on its own with the outcome it always had. Over
//! loopback: a burst of jobs with one forged signature in the middle gets exactly that one rejected.

use std::sync::Arc;

use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{
    JobRequest, JobRequestFields, JobSignatureError, ServerMessage, TrustedSigners,
    decode_server_frame, signature, testing,
};

fn uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// A minimal job signed by the test signer (each with its own timestamp, so each signature differs).
fn signed_fields(i: usize) -> JobRequestFields {
    let mut fields = testing::minimal_job(&uuid(i));
    fields.sign(
        &testing::test_signer(),
        testing::TEST_TIMESTAMP_NS + i as u64,
    );
    fields
}

/// Signed, then changed: the signature no longer covers the fields.
fn forged_fields(i: usize) -> JobRequestFields {
    let mut fields = signed_fields(i);
    fields.docker_image = "attacker/miner:latest".to_owned();
    fields
}

fn decode(fields: &JobRequestFields) -> Arc<JobRequest> {
    match decode_server_frame(&fields.to_wire_text(), 1 << 20) {
        Ok(ServerMessage::JobRequest(job)) => job,
        other => panic!("the job decodes: {other:?}"),
    }
}

fn trusting_the_test_signer() -> TrustedSigners {
    TrustedSigners::new([0; 32], [testing::TEST_SIGNER_SS58]).expect("a valid SS58 address")
}

#[test]
fn a_verified_batch_lets_every_job_pass_the_check() {
    let jobs: Vec<_> = (0..16).map(|i| decode(&signed_fields(i))).collect();
    assert!(signature::verify_batch(&jobs));
    let signers = trusting_the_test_signer();
    for job in &jobs {
        assert_eq!(signers.check(job), Ok(()), "job {}", job.uuid());
    }
    // A second batch over the same (already verified) jobs has nothing left to do, and still says yes.
    assert!(signature::verify_batch(&jobs));
}

#[test]
fn a_batch_with_one_forged_signature_fails_and_each_job_keeps_its_own_verdict() {
    let mut jobs: Vec<_> = (0..8).map(|i| decode(&signed_fields(i))).collect();
    jobs.insert(4, decode(&forged_fields(100)));
    assert!(!signature::verify_batch(&jobs));
    let signers = trusting_the_test_signer();
    for (i, job) in jobs.iter().enumerate() {
        let expected = if i == 4 {
            Err(JobSignatureError::Invalid)
        } else {
            Ok(())
        };
        assert_eq!(signers.check(job), expected, "job {}", job.uuid());
    }
}

#[test]
fn a_batch_with_an_unsigned_job_fails() {
    let mut unsigned = signed_fields(1);
    unsigned.signature = None;
    let jobs = vec![decode(&signed_fields(0)), decode(&unsigned)];
    assert!(!signature::verify_batch(&jobs));
    let signers = trusting_the_test_signer();
    assert_eq!(signers.check(&jobs[0]), Ok(()));
    assert_eq!(signers.check(&jobs[1]), Err(JobSignatureError::Missing));
}

#[test]
fn a_verified_job_from_an_untrusted_signer_is_still_rejected() {
    let jobs: Vec<_> = (0..4).map(|i| decode(&signed_fields(i))).collect();
    assert!(signature::verify_batch(&jobs));
    let own_only = TrustedSigners::new(Hotkey::from_seed(&[7; 32]).public_key(), [] as [&str; 0])
        .expect("no other signer");
    assert_eq!(
        own_only.check(&jobs[0]),
        Err(JobSignatureError::UntrustedSignatory(
            testing::TEST_SIGNER_SS58.to_owned()
        ))
    );
}

#[test]
fn verification_is_not_part_of_a_jobs_value() {
    let jobs = vec![decode(&signed_fields(0)), decode(&signed_fields(1))];
    let same_text = JobRequest::parse(jobs[0].text()).expect("the text parses again");
    assert!(signature::verify_batch(&jobs));
    assert_eq!(*jobs[0], same_text, "equal whether verified or not");
}

#[cfg(feature = "runtime")]
mod over_loopback {
    use std::time::Duration;

    use facilitator_client::facilitator::{FacilitatorConfig, ReferenceFacilitator};
    use facilitator_client::handler::EchoHandler;
    use facilitator_client::machine::StopReason;
    use facilitator_client::protocol::JobStatus;
    use facilitator_client::runtime::{Client, ClientConfig};

    use super::*;

    const GUARD: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn a_burst_with_one_forged_job_gets_only_that_one_rejected() {
        let facilitator = ReferenceFacilitator::start(FacilitatorConfig::default())
            .await
            .expect("the reference facilitator starts");
        let mut config = ClientConfig::new(facilitator.url());
        config.trusted_signers = vec![facilitator.signer_ss58()];
        let client = Client::new(
            config,
            Hotkey::from_seed(&[7; 32]),
            Arc::new(EchoHandler::new()),
        )
        .expect("a valid configuration");
        let shutdown = client.shutdown_handle();
        let run = tokio::spawn(client.run());
        facilitator
            .wait_for(|r| r.authenticated_connections() == 1, GUARD)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Pushed back to back, so the client reads them in batches; the forged one sits in the middle.
        const JOBS: usize = 40;
        const FORGED: usize = 17;
        for i in 0..JOBS {
            let fields = if i == FORGED {
                forged_fields(i)
            } else {
                signed_fields(i)
            };
            facilitator.push_job_request(&fields);
        }
        let records = facilitator
            .wait_for(
                |r| {
                    (0..JOBS).all(|i| {
                        r.statuses_of(&uuid(i)).last().is_some_and(|s| {
                            *s == JobStatus::Completed || *s == JobStatus::Rejected
                        })
                    })
                },
                GUARD,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..JOBS {
            let expected: &[JobStatus] = if i == FORGED {
                &[JobStatus::Rejected]
            } else {
                &[
                    JobStatus::Received,
                    JobStatus::Accepted,
                    JobStatus::Completed,
                ]
            };
            assert_eq!(records.statuses_of(&uuid(i)), expected, "job {i}");
        }
        shutdown.shutdown();
        let outcome = tokio::time::timeout(GUARD, run)
            .await
            .expect("the client stops in time")
            .expect("the client task ends")
            .expect("the client runs");
        assert_eq!(outcome.reason, StopReason::Graceful);
        assert_eq!(outcome.metrics.counters.jobs_rejected_signature, 1);
        assert_eq!(outcome.metrics.counters.jobs_accepted, JOBS as u64 - 1);
    }
}
