//! The pure machine alone (`cargo bench --bench machine`): steps per second without sockets, tokio or a clock,
//! and the cost of the one expensive thing a step can do, the job-signature check. Builds without the `runtime`
//! feature. docs/BENCHMARKS.md has the figures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use facilitator_client::machine::{Config, Input, Machine};
use facilitator_client::protocol::keys::Hotkey;
use facilitator_client::protocol::{
    JobRequest, JobStatus, JobStatusUpdate, Response, ServerMessage, TrustedSigners,
    decode_server_frame, testing,
};

fn job(i: usize) -> Arc<JobRequest> {
    let text = testing::signed_job_text(
        &testing::test_signer(),
        &format!("00000000-0000-4000-8000-{i:012x}"),
    );
    match decode_server_frame(&text, 1 << 20) {
        Ok(ServerMessage::JobRequest(job)) => job,
        other => unreachable!("the test job decodes: {other:?}"),
    }
}

fn signers() -> TrustedSigners {
    TrustedSigners::new([0; 32], [testing::TEST_SIGNER_SS58]).expect("a valid SS58 address")
}

/// A machine in Running, with `now` the time it got there.
fn running() -> (Machine, Instant) {
    let now = Instant::now();
    let auth = Hotkey::from_seed(&[7; 32]).auth_request();
    let mut machine = Machine::new(Config::default(), auth, signers(), now);
    let _ = machine.step(Input::Tick, now);
    let _ = machine.step(Input::SocketOpened, now);
    let _ = machine.step(
        Input::Frame(ServerMessage::Response(Response::success())),
        now,
    );
    assert!(machine.state().is_authenticated());
    (machine, now)
}

fn response() -> Input {
    Input::Frame(ServerMessage::Response(Response::success()))
}

fn machine(c: &mut Criterion) {
    let jobs: Vec<Arc<JobRequest>> = (0..64).map(job).collect();
    let mut group = c.benchmark_group("machine");

    // A handler's status in, its Response in: what every status costs the machine.
    let (mut m, now) = running();
    let uuid = jobs[0].uuid().to_owned();
    group.throughput(Throughput::Elements(2));
    group.bench_function("status_and_response_steps", |b| {
        b.iter_batched(
            || Input::Status(JobStatusUpdate::new(uuid.clone(), JobStatus::Accepted)),
            |status| {
                let a = m.step(status, now);
                let r = m.step(response(), now);
                black_box((a, r))
            },
            BatchSize::SmallInput,
        )
    });

    // An idle wake-up: a Tick with no deadline passed.
    group.throughput(Throughput::Elements(1));
    group.bench_function("tick_step", |b| {
        b.iter(|| black_box(m.step(Input::Tick, now)))
    });

    // A whole job: request (signature check included), received, accepted, completed, three Responses, finished.
    let (mut m, now) = running();
    let mut i = 0;
    group.throughput(Throughput::Elements(7));
    group.bench_function("job_cycle_7_steps", |b| {
        b.iter(|| {
            let job = &jobs[i % jobs.len()];
            i += 1;
            let uuid = job.uuid().to_owned();
            let mut out = m.step(
                Input::Frame(ServerMessage::JobRequest(Arc::clone(job))),
                now,
            );
            for status in [JobStatus::Accepted, JobStatus::Completed] {
                out.extend(m.step(
                    Input::Status(JobStatusUpdate::new(uuid.clone(), status)),
                    now,
                ));
            }
            for _ in 0..3 {
                out.extend(m.step(response(), now));
            }
            out.extend(m.step(Input::JobFinished(uuid), now));
            black_box(out)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("signature");
    let signers = signers();
    group.throughput(Throughput::Elements(1));
    group.bench_function("check_one_job", |b| {
        b.iter(|| {
            let job = &jobs[i % jobs.len()];
            i += 1;
            black_box(signers.check(job))
        })
    });
    group.finish();
}

criterion_group!(benches, machine);
criterion_main!(benches);
