//! Batch verification of job signatures: `TrustedSigners::check_all` only ever saves work. It gives every job the
//! verdict `TrustedSigners::check` gives it alone, whatever else is in the batch; a batch with a bad signature
//! falls back to checking each job on its own. Over loopback: a burst of jobs with one forged signature in the
//! middle (read in batches by the runtime, checked in batches by the machine) gets exactly that one rejected.

use std::sync::Arc;

use facilitator_client::protocol::keys::{self, Hotkey};
use facilitator_client::protocol::{
    JobRequest, JobRequestFields, JobSignatureError, ServerMessage, TrustedSigners,
    decode_server_frame, testing,
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

/// `check_all`'s verdicts, and each job's own `check`, side by side.
fn verdicts(
    signers: &TrustedSigners,
    jobs: &[Arc<JobRequest>],
) -> Vec<Result<(), JobSignatureError>> {
    let batch = signers.check_all(jobs.iter().map(|job| &**job));
    let one_by_one: Vec<_> = jobs.iter().map(|job| signers.check(job)).collect();
    assert_eq!(
        batch, one_by_one,
        "the batch and one-by-one verdicts differ"
    );
    batch
}

#[test]
fn a_batch_of_good_signatures_passes() {
    let jobs: Vec<_> = (0..16).map(|i| decode(&signed_fields(i))).collect();
    assert!(
        verdicts(&trusting_the_test_signer(), &jobs)
            .iter()
            .all(Result::is_ok)
    );
}

#[test]
fn a_batch_with_one_forged_signature_rejects_exactly_that_one() {
    let mut jobs: Vec<_> = (0..8).map(|i| decode(&signed_fields(i))).collect();
    jobs.insert(4, decode(&forged_fields(100)));
    for (i, verdict) in verdicts(&trusting_the_test_signer(), &jobs)
        .into_iter()
        .enumerate()
    {
        let expected = if i == 4 {
            Err(JobSignatureError::Invalid)
        } else {
            Ok(())
        };
        assert_eq!(verdict, expected, "job {i}");
    }
}

#[test]
fn a_batch_with_an_unsigned_job_gives_it_its_own_verdict() {
    let mut unsigned = signed_fields(1);
    unsigned.signature = None;
    let jobs = vec![
        decode(&signed_fields(0)),
        decode(&unsigned),
        decode(&signed_fields(2)),
    ];
    assert_eq!(
        verdicts(&trusting_the_test_signer(), &jobs),
        vec![Ok(()), Err(JobSignatureError::Missing), Ok(())]
    );
}

#[test]
fn good_signatures_from_an_untrusted_signer_are_rejected() {
    let jobs: Vec<_> = (0..4).map(|i| decode(&signed_fields(i))).collect();
    let own_only = TrustedSigners::new(Hotkey::from_seed(&[7; 32]).public_key(), [] as [&str; 0])
        .expect("no other signer");
    let untrusted = Err(JobSignatureError::UntrustedSignatory(
        testing::TEST_SIGNER_SS58.to_owned(),
    ));
    assert_eq!(verdicts(&own_only, &jobs), vec![untrusted; 4]);
}

#[test]
fn a_forged_job_is_rejected_whether_checked_alone_or_in_any_batch() {
    let forged = decode(&forged_fields(9));
    let signers = trusting_the_test_signer();
    for size in 1..6 {
        let mut jobs: Vec<_> = (0..size).map(|i| decode(&signed_fields(i))).collect();
        jobs.push(forged.clone());
        let verdicts = verdicts(&signers, &jobs);
        assert_eq!(verdicts.last(), Some(&Err(JobSignatureError::Invalid)));
        assert!(verdicts[..size].iter().all(Result::is_ok));
    }
}

#[test]
fn jobs_of_the_own_hotkey_and_of_a_configured_signer_verify_together() {
    let own = Hotkey::from_seed(&[7; 32]);
    let signers = TrustedSigners::new(own.public_key(), [testing::TEST_SIGNER_SS58])
        .expect("a valid SS58 address");
    let jobs: Vec<_> = (0..6)
        .map(|i| {
            let mut fields = testing::minimal_job(&uuid(i));
            let signer = if i % 2 == 0 {
                &own
            } else {
                &testing::test_signer()
            };
            fields.sign(signer, testing::TEST_TIMESTAMP_NS + i as u64);
            decode(&fields)
        })
        .collect();
    assert_eq!(verdicts(&signers, &jobs), vec![Ok(()); 6]);
}

#[test]
fn a_trusted_address_whose_key_is_no_curve_point_gets_bad_signature_for_every_job() {
    // A well-formed SS58 address of 32 bytes that do not decompress to a Ristretto point: it is accepted as a
    // trusted signer (as before the keys were kept decompressed), and no job signed in its name verifies.
    let no_point = keys::ss58_encode(&[0xff; 32]);
    assert_eq!(keys::VerifyingKey::from_bytes(&[0xff; 32]), None);
    let signers = TrustedSigners::new([0; 32], [testing::TEST_SIGNER_SS58, no_point.as_str()])
        .expect("valid SS58 addresses");
    let mut claimed = signed_fields(1);
    if let Some(signature) = claimed.signature.as_mut() {
        signature.signatory = no_point.clone();
    }
    let mut malformed = signed_fields(3);
    if let Some(signature) = malformed.signature.as_mut() {
        signature.signature = "not base64".to_owned();
    }
    let jobs = vec![
        decode(&signed_fields(0)),
        decode(&claimed),
        decode(&signed_fields(2)),
        decode(&malformed),
    ];
    assert_eq!(
        verdicts(&signers, &jobs),
        vec![
            Ok(()),
            Err(JobSignatureError::Invalid),
            Ok(()),
            Err(JobSignatureError::Invalid)
        ]
    );
}

#[cfg(feature = "runtime")]
mod over_loopback {
    use std::time::Duration;

    use facilitator_client::handler::EchoHandler;
    use facilitator_client::machine::StopReason;
    use facilitator_client::protocol::JobStatus;
    use facilitator_client::reference::{FacilitatorConfig, ReferenceFacilitator};
    use facilitator_client::{Client, ClientConfig};

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
