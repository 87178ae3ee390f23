//! Benchmarks of the facilitator client (issue 7), in one run, side by side:
//!
//! - end-to-end job throughput and job latency (push -> `completed` stored) of the real client binary (echo handler)
//!   against a lean load server written here, and against the reference facilitator;
//! - the same work done by a minimal "ceiling" client (raw tokio-tungstenite on a current_thread runtime, no JSON
//!   parsing, no signature check: it finds the uuid by byte search and writes the three status texts);
//! - SIGINT-to-exit of the real binary, idle and with 1,000 jobs in flight;
//! - idle cost (wake-ups and CPU per second with a 1 s heartbeat) of the client and of the ceiling client;
//! - peak RSS of the client process, idle and along 20,000 jobs;
//! - one sr25519 job-signature check, batch verification, the pure machine's steps per second;
//! - client CPU per job (scheduler time from /proc) and, with valgrind, instructions per job and per verification.
//!
//! Run: `cargo build --release && cargo run --release --example bench` (`-- --help` for options). BENCHMARKS.md
//! explains every figure and what limits it. The client runs as a subprocess (`facilitator-client run`, found next
//! to this program's directory) so that its CPU, context switches and memory are its own.

#[cfg(not(feature = "runtime"))]
fn main() {
    eprintln!("the bench needs the `runtime` feature (the default)");
}

#[cfg(feature = "runtime")]
fn main() {
    bench::main();
}

#[cfg(feature = "runtime")]
mod bench {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use facilitator_client::machine::{self, Input, Machine};
    use facilitator_client::protocol::keys::{Hotkey, SEED_ENV_VAR};
    use facilitator_client::protocol::{
        ClientMessage, JobRequest, JobStatus, JobStatusUpdate, Response, ServerMessage,
        TrustedSigners, decode_server_frame, testing,
    };
    use facilitator_client::reference::{FacilitatorConfig, JobPlan, ReferenceFacilitator};
    use futures_util::{FutureExt, SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, oneshot};
    use tokio_tungstenite::tungstenite::Message;

    /// The client's hotkey seed (any key works: the load server accepts every auth request).
    const CLIENT_SEED: [u8; 32] = [7; 32];

    /// Options from the command line.
    struct Options {
        jobs: usize,
        max_open: Vec<usize>,
        sigint_runs: usize,
        idle_secs: u64,
        callgrind: bool,
        reference: bool,
        /// Sections to run (all when empty).
        only: Vec<String>,
        /// Keep callgrind's output files here.
        keep: Option<PathBuf>,
    }

    impl Options {
        fn wants(&self, section: &str) -> bool {
            self.only.is_empty() || self.only.iter().any(|s| s == section)
        }
    }

    fn usage() -> ! {
        eprintln!(
            "usage: bench [--jobs N] [--max-open N[,N...]] [--sigint-runs N] [--idle-secs S] [--no-callgrind] \
             [--no-reference] [--only SECTION[,SECTION...]] [--keep-callgrind DIR]\n\
             sections: verify, machine, throughput, reference, memory, sigint, idle, callgrind\n\
             defaults: --jobs 20000 --max-open 1,16,256 --sigint-runs 7 --idle-secs 10"
        );
        std::process::exit(2)
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match args.first().map(String::as_str) {
            Some("ceiling-client") => return ceiling::main(&args[1..]),
            Some("verify-loop") => return verify_loop(&args[1..]),
            _ => {}
        }
        let mut options = Options {
            jobs: 20_000,
            max_open: vec![1, 16, 256],
            sigint_runs: 7,
            idle_secs: 10,
            callgrind: true,
            reference: true,
            only: Vec::new(),
            keep: None,
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| usage());
            match arg.as_str() {
                "--jobs" => options.jobs = value().parse().unwrap_or_else(|_| usage()),
                "--max-open" => {
                    options.max_open = value()
                        .split(',')
                        .map(|n| n.parse().unwrap_or_else(|_| usage()))
                        .collect()
                }
                "--sigint-runs" => {
                    options.sigint_runs = value().parse().unwrap_or_else(|_| usage())
                }
                "--idle-secs" => options.idle_secs = value().parse().unwrap_or_else(|_| usage()),
                "--no-callgrind" => options.callgrind = false,
                "--no-reference" => options.reference = false,
                "--only" => options.only = value().split(',').map(str::to_owned).collect(),
                "--keep-callgrind" => options.keep = Some(PathBuf::from(value())),
                _ => usage(),
            }
        }
        run(&options);
    }

    // ---- the report ------------------------------------------------------------------------------------------

    struct Report {
        rows: Vec<(String, String, String)>,
    }

    impl Report {
        fn add(
            &mut self,
            what: impl Into<String>,
            value: impl Into<String>,
            note: impl Into<String>,
        ) {
            let (what, value, note) = (what.into(), value.into(), note.into());
            println!("  {what}: {value}   {note}");
            self.rows.push((what, value, note));
        }

        fn print(&self) {
            println!("\n| figure | value | note |\n|---|---|---|");
            for (what, value, note) in &self.rows {
                println!("| {what} | {value} | {note} |");
            }
        }
    }

    fn run(options: &Options) {
        let binary = client_binary();
        let mut report = Report { rows: Vec::new() };
        println!("machine: {}", machine_description());
        println!("load at start: {}", load());
        println!("client binary: {}", binary.display());

        let verify = if options.wants("verify") {
            section("signature verification (in this process)");
            Some(bench_verification(&mut report))
        } else {
            None
        };

        if options.wants("machine") {
            section("pure machine (in this process)");
            bench_machine(&mut report);
        }

        println!(
            "\nsigning {} distinct jobs for the load server ...",
            options.jobs
        );
        let jobs = Arc::new(make_jobs(options.jobs.max(1000)));
        let server = LoadServer::start(Arc::clone(&jobs));

        let mut client_cpu_per_job = None;
        if options.wants("throughput") {
            section("throughput: client binary and ceiling client against the lean load server");
            for &max_open in &options.max_open {
                let client = throughput_run(
                    &binary,
                    &server,
                    Runner::Client,
                    options.jobs,
                    max_open,
                    &mut report,
                );
                let ceiling = throughput_run(
                    &binary,
                    &server,
                    Runner::Ceiling,
                    options.jobs,
                    max_open,
                    &mut report,
                );
                report.add(
                    format!("client / ceiling throughput, max_open {max_open}"),
                    format!("{:.2}", client.jobs_per_sec / ceiling.jobs_per_sec),
                    "",
                );
                if max_open == *options.max_open.iter().max().unwrap_or(&max_open) {
                    client_cpu_per_job = Some((max_open, client.client_cpu_per_job_ns));
                }
            }
        }

        if options.reference && options.wants("reference") {
            section("throughput: the reference facilitator as the server");
            for runner in [Runner::Client, Runner::Ceiling] {
                reference_run(&binary, runner, options.jobs, 256, &mut report);
            }
        }

        if options.wants("memory") {
            section("client peak RSS over consecutive runs (one process)");
            memory_run(&binary, &server, options.jobs, 256, &mut report);
        }

        if options.wants("sigint") {
            section("SIGINT to exit of the client binary");
            sigint_runs(&binary, &server, options.sigint_runs, &mut report);
        }

        if options.wants("idle") {
            section("idle cost, 1 s heartbeat");
            let client = idle_run(
                &binary,
                &server,
                Runner::Client,
                options.idle_secs,
                &mut report,
            );
            let ceiling = idle_run(
                &binary,
                &server,
                Runner::Ceiling,
                options.idle_secs,
                &mut report,
            );
            report.add(
                "target: idle wake-ups <= ceiling + 0.5/s",
                format!("{client:.2}/s vs {ceiling:.2}/s + 0.5"),
                if client <= ceiling + 0.5 {
                    "met"
                } else {
                    "MISSED"
                },
            );
        }

        let mut instructions = None;
        if options.callgrind && options.wants("callgrind") {
            section("instructions (valgrind --tool=callgrind)");
            instructions = callgrind_runs(&binary, &server, options.keep.as_deref(), &mut report);
        }

        if let (Some(verify), Some((max_open, cpu))) = (verify, client_cpu_per_job) {
            let target = verify + 5_000.0;
            report.add(
                format!(
                    "target: client CPU/job <= 1 check + 5 us (scheduler time, max_open {max_open})"
                ),
                format!("{:.1} us vs {:.1} + 5 us", cpu / 1e3, verify / 1e3),
                if cpu <= target { "met" } else { "MISSED" },
            );
        }
        if let (Some(verify), Some((per_job, per_check))) = (verify, instructions) {
            // Instructions turned into time at the rate the check itself runs (instructions per ns of a check).
            let per_job_ns = per_job / (per_check / verify);
            report.add(
                "target: client CPU/job <= 1 check + 5 us (instructions)",
                format!(
                    "{:.2} checks = {:.1} us vs {:.1} + 5 us",
                    per_job / per_check,
                    per_job_ns / 1e3,
                    verify / 1e3
                ),
                if per_job_ns <= verify + 5_000.0 {
                    "met"
                } else {
                    "MISSED"
                },
            );
        }

        println!("\nload at end: {}", load());
        report.print();
    }

    fn section(name: &str) {
        println!("\n== {name}");
    }

    fn machine_description() -> String {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']))
            })
            .unwrap_or("unknown")
            .to_owned();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        format!("{cores} cores, {model}")
    }

    fn load() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// `target/<profile>/facilitator-client`, next to `target/<profile>/examples/bench`.
    fn client_binary() -> PathBuf {
        let exe = std::env::current_exe().expect("the bench knows its own path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the bench runs from target/<profile>/examples");
        let binary = dir.join("facilitator-client");
        if !binary.exists() {
            eprintln!(
                "{} not found: build it first (cargo build --release)",
                binary.display()
            );
            std::process::exit(2);
        }
        binary
    }

    // ---- statistics ------------------------------------------------------------------------------------------

    fn median(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        if values.is_empty() {
            return f64::NAN;
        }
        values[values.len() / 2]
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }

    fn us(d: Duration) -> String {
        format!("{:.0} us", d.as_secs_f64() * 1e6)
    }

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }

    // ---- signature verification and the machine ---------------------------------------------------------------

    fn test_job(i: usize) -> Arc<JobRequest> {
        let text = job_text(i);
        let Ok(ServerMessage::JobRequest(job)) = decode_server_frame(&text, 1 << 20) else {
            unreachable!("the test job decodes")
        };
        job
    }

    fn signers() -> TrustedSigners {
        TrustedSigners::new(
            Hotkey::from_seed(&CLIENT_SEED).public_key(),
            [testing::TEST_SIGNER_SS58],
        )
        .expect("the test signer is an SS58 address")
    }

    /// Median over 7 rounds of `rounds` calls of `f`, in nanoseconds per call.
    fn time_per_call(rounds: usize, mut f: impl FnMut()) -> f64 {
        let mut samples: Vec<f64> = (0..7)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..rounds {
                    f();
                }
                start.elapsed().as_nanos() as f64 / rounds as f64
            })
            .collect();
        median(&mut samples)
    }

    /// Returns the cost of one job-signature check in nanoseconds.
    fn bench_verification(report: &mut Report) -> f64 {
        let jobs: Vec<Arc<JobRequest>> = (0..64).map(test_job).collect();
        let signers = signers();
        let mut i = 0;
        let check = time_per_call(500, || {
            let job = &jobs[i % jobs.len()];
            i += 1;
            assert!(signers.check(job).is_ok());
        });
        report.add(
            "one job-signature check (TrustedSigners::check)",
            format!("{:.1} us", check / 1e3),
            "payload + BLAKE2b + sr25519 verify, median of 7 x 500",
        );
        let payload = time_per_call(2000, || {
            let job = &jobs[i % jobs.len()];
            i += 1;
            std::hint::black_box(job.fields().signed_payload());
        });
        report.add(
            "  of which building the signed payload",
            format!("{:.2} us", payload / 1e3),
            "",
        );
        let signers = self::signers();
        for batch in [4, 16, 64] {
            let reps = 2048 / batch;
            let mut samples: Vec<f64> = (0..5)
                .map(|_| {
                    let batches: Vec<Vec<Arc<JobRequest>>> = (0..reps)
                        .map(|_| (0..batch).map(test_job).collect())
                        .collect();
                    let start = Instant::now();
                    for jobs in &batches {
                        let verdicts = signers.check_all(jobs.iter().map(|job| &**job));
                        assert!(verdicts.iter().all(Result::is_ok));
                    }
                    start.elapsed().as_nanos() as f64 / (reps * batch) as f64
                })
                .collect();
            report.add(
                format!("batch verification of {batch} jobs, per job"),
                format!("{:.1} us", median(&mut samples) / 1e3),
                "TrustedSigners::check_all (payloads, BLAKE2b, schnorrkel verify_batch), median of 5",
            );
        }
        check
    }

    fn running_machine() -> (Machine, Instant) {
        let now = Instant::now();
        let hotkey = Hotkey::from_seed(&CLIENT_SEED);
        let mut m = Machine::new(
            machine::Config::default(),
            hotkey.auth_request(),
            signers(),
            now,
        );
        let _ = m.step(Input::Tick, now);
        let _ = m.step(Input::SocketOpened, now);
        let _ = m.step(
            Input::Frame(ServerMessage::Response(Response::success())),
            now,
        );
        assert!(m.state().is_authenticated());
        (m, now)
    }

    fn bench_machine(report: &mut Report) {
        let (mut m, now) = running_machine();
        let jobs: Vec<Arc<JobRequest>> = (0..64).map(test_job).collect();
        let response = || Input::Frame(ServerMessage::Response(Response::success()));
        // Status in, Response in: the steps every job's statuses take, without the signature check.
        let uuid = jobs[0].uuid().to_owned();
        let status_pair = time_per_call(50_000, || {
            let a = m.step(
                Input::Status(JobStatusUpdate::new(uuid.clone(), JobStatus::Accepted)),
                now,
            );
            let b = m.step(response(), now);
            std::hint::black_box((a, b));
        }) / 2.0;
        report.add(
            "machine steps/s (Status and Response steps)",
            format!("{:.2} M/s", 1e3 / status_pair),
            format!("{:.0} ns per step", status_pair),
        );
        let mut i = 0;
        let cycle = time_per_call(500, || {
            let job = &jobs[i % jobs.len()];
            i += 1;
            let uuid = job.uuid().to_owned();
            let mut out = m.step(
                Input::Frame(ServerMessage::JobRequest(Arc::clone(job))),
                now,
            );
            out.extend(m.step(
                Input::Status(JobStatusUpdate::new(uuid.clone(), JobStatus::Accepted)),
                now,
            ));
            out.extend(m.step(
                Input::Status(JobStatusUpdate::new(uuid.clone(), JobStatus::Completed)),
                now,
            ));
            for _ in 0..3 {
                out.extend(m.step(response(), now));
            }
            out.extend(m.step(Input::JobFinished(uuid), now));
            std::hint::black_box(out);
        });
        report.add(
            "machine: one job's 7 steps (incl. its signature check)",
            format!("{:.1} us", cycle / 1e3),
            "",
        );
    }

    /// `bench verify-loop N B`: decodes N distinct signed jobs, then checks them one by one (B = 1), in batches of
    /// B (B > 1), or not at all (B = 0). For callgrind: instructions per check by difference with B = 0.
    fn verify_loop(args: &[String]) {
        let n: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(0);
        let batch: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
        let jobs: Vec<Arc<JobRequest>> = (0..n).map(test_job).collect();
        let signers = signers();
        if batch > 1 {
            for chunk in jobs.chunks(batch) {
                let verdicts =
                    signers.check_all(chunk.iter().map(|job| std::hint::black_box(&**job)));
                assert!(verdicts.iter().all(Result::is_ok));
            }
        } else if batch > 0 {
            for job in &jobs {
                assert!(signers.check(std::hint::black_box(job)).is_ok());
            }
        }
    }

    // ---- jobs ------------------------------------------------------------------------------------------------

    fn uuid_of(i: usize) -> String {
        format!("00000000-0000-4000-8000-{i:012x}")
    }

    /// A minimal job, signed by the test signer, with its own UUID and timestamp (so every signature differs).
    fn job_text(i: usize) -> String {
        let mut fields = testing::minimal_job(&uuid_of(i));
        fields.sign(
            &testing::test_signer(),
            testing::TEST_TIMESTAMP_NS + i as u64,
        );
        fields.to_wire_text()
    }

    fn make_jobs(n: usize) -> Vec<String> {
        // Two threads: signing 20,000 jobs takes a moment.
        let half = n / 2;
        let upper = std::thread::spawn(move || (half..n).map(job_text).collect::<Vec<_>>());
        let mut jobs: Vec<String> = (0..half).map(job_text).collect();
        jobs.extend(upper.join().expect("signing thread"));
        jobs
    }

    /// Finds `needle` in `haystack`.
    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// The job index from a status update's text: `"uuid":"00000000-0000-4000-8000-<12 hex>"`.
    fn status_of(text: &str) -> Option<(usize, &str)> {
        let bytes = text.as_bytes();
        let at = find(bytes, b"\"uuid\":\"")? + 8;
        let uuid = text.get(at..at + 36)?;
        let index = usize::from_str_radix(uuid.get(24..)?, 16).ok()?;
        let s = find(bytes, b"\"status\":\"")? + 10;
        let end = s + text.get(s..)?.find('"')?;
        Some((index, &text[s..end]))
    }

    // ---- the lean load server --------------------------------------------------------------------------------

    /// What one measured run asks of the server.
    struct Plan {
        jobs: usize,
        max_open: usize,
        /// Keep Responses to status updates until [`Control::Release`].
        hold: bool,
        /// Sample this process's VmHWM when these many jobs have completed.
        sample_pid: Option<u32>,
    }

    enum Control {
        Start(Plan, oneshot::Sender<RunStats>),
        Release,
    }

    /// What the server measured in one run.
    struct RunStats {
        elapsed: Duration,
        latencies: Vec<Duration>,
        out_of_order: u64,
        server_cpu_ns: u64,
        hwm_samples: Vec<(usize, u64)>,
    }

    /// Counters the bench polls.
    #[derive(Default)]
    struct Progress {
        heartbeats: AtomicU64,
        statuses: AtomicU64,
        connections_ended: AtomicU64,
    }

    /// A WebSocket server on loopback that accepts any auth request, pipelines pre-signed job requests (at most
    /// `max_open` without a `completed`), answers every status update with a success Response, and times each job
    /// from its push to its `completed`. No JSON parsing (byte search), no records: it should never be the limit.
    struct LoadServer {
        url: String,
        control: mpsc::UnboundedSender<Control>,
        progress: Arc<Progress>,
    }

    const SUCCESS: &str = r#"{"status":"success","errors":[]}"#;

    impl LoadServer {
        fn start(jobs: Arc<Vec<String>>) -> LoadServer {
            let (control, control_rx) = mpsc::unbounded_channel();
            let progress = Arc::new(Progress::default());
            let (addr_tx, addr_rx) = std::sync::mpsc::channel();
            let shared = Arc::clone(&progress);
            std::thread::Builder::new()
                .name("load-server".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async move {
                        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                        let _ = addr_tx.send(listener.local_addr().expect("address"));
                        let mut control_rx = control_rx;
                        while let Ok((tcp, _)) = listener.accept().await {
                            let _ = tcp.set_nodelay(true);
                            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                                serve(ws, &mut control_rx, &jobs, &shared).await;
                            }
                            shared.connections_ended.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                })
                .expect("server thread");
            let addr = addr_rx.recv().expect("the server binds");
            LoadServer {
                url: format!("ws://{addr}/ws/v0/"),
                control,
                progress,
            }
        }

        fn run(&self, plan: Plan) -> oneshot::Receiver<RunStats> {
            let (tx, rx) = oneshot::channel();
            let _ = self.control.send(Control::Start(plan, tx));
            rx
        }

        fn release(&self) {
            let _ = self.control.send(Control::Release);
        }

        fn heartbeats(&self) -> u64 {
            self.progress.heartbeats.load(Ordering::SeqCst)
        }
    }

    struct ActiveRun {
        plan: Plan,
        done: Option<oneshot::Sender<RunStats>>,
        pushed_at: Vec<Instant>,
        progress: Vec<u8>,
        latencies: Vec<Duration>,
        pushed: usize,
        completed: usize,
        out_of_order: u64,
        started: Instant,
        cpu_at_start: u64,
        hwm_samples: Vec<(usize, u64)>,
    }

    async fn serve(
        mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        jobs: &Arc<Vec<String>>,
        progress: &Progress,
    ) {
        let mut authenticated = false;
        let mut run: Option<ActiveRun> = None;
        let mut held: Vec<Message> = Vec::new();
        let mut out: Vec<Message> = Vec::new();
        loop {
            tokio::select! {
                biased;
                command = control.recv() => match command {
                    Some(Control::Start(plan, done)) => {
                        let total = plan.jobs;
                        let mut r = ActiveRun {
                            plan,
                            done: Some(done),
                            pushed_at: Vec::with_capacity(total),
                            progress: vec![0; total],
                            latencies: Vec::with_capacity(total),
                            pushed: 0,
                            completed: 0,
                            out_of_order: 0,
                            started: Instant::now(),
                            cpu_at_start: thread_cpu_ns(),
                            hwm_samples: Vec::new(),
                        };
                        while r.pushed < r.plan.jobs.min(r.plan.max_open) {
                            push_job(&mut r, jobs, &mut out);
                        }
                        run = Some(r);
                    }
                    Some(Control::Release) => {
                        out.append(&mut held);
                        if let Some(r) = &mut run {
                            r.plan.hold = false;
                        }
                    }
                    None => return,
                },
                frame = ws.next() => {
                    let mut frame = frame;
                    loop {
                        match frame {
                            Some(Ok(Message::Text(text))) => {
                                let text = text.as_str();
                                if !authenticated {
                                    authenticated = true;
                                    out.push(Message::text(SUCCESS));
                                } else if text.contains("V0JobStatusUpdate") {
                                    progress.statuses.fetch_add(1, Ordering::Relaxed);
                                    on_status(text, run.as_mut(), jobs, &mut out, &mut held);
                                } else if text.contains("V0Heartbeat") {
                                    progress.heartbeats.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return,
                        }
                        // Take every frame already read before writing: one flush per batch.
                        match ws.next().now_or_never() {
                            Some(next) => frame = next,
                            None => break,
                        }
                    }
                }
            }
            for message in out.drain(..) {
                if ws.feed(message).await.is_err() {
                    return;
                }
            }
            if ws.flush().await.is_err() {
                return;
            }
            if run.as_ref().is_some_and(|r| r.done.is_none()) {
                run = None;
            }
        }
    }

    fn push_job(r: &mut ActiveRun, jobs: &[String], out: &mut Vec<Message>) {
        out.push(Message::text(jobs[r.pushed].clone()));
        r.pushed_at.push(Instant::now());
        r.pushed += 1;
    }

    fn on_status(
        text: &str,
        run: Option<&mut ActiveRun>,
        jobs: &[String],
        out: &mut Vec<Message>,
        held: &mut Vec<Message>,
    ) {
        let reply = Message::text(SUCCESS);
        let Some(r) = run else {
            out.push(reply);
            return;
        };
        if r.plan.hold {
            held.push(reply);
        } else {
            out.push(reply);
        }
        let Some((index, status)) = status_of(text) else {
            r.out_of_order += 1;
            return;
        };
        let Some(seen) = r.progress.get_mut(index) else {
            r.out_of_order += 1;
            return;
        };
        let expected = ["received", "accepted", "completed"];
        if expected.get(usize::from(*seen)) != Some(&status) {
            r.out_of_order += 1;
        }
        *seen += 1;
        if status == "completed" {
            r.latencies.push(r.pushed_at[index].elapsed());
            r.completed += 1;
            if let Some(pid) = r.plan.sample_pid
                && [1000, 5000, 10_000, 20_000].contains(&r.completed)
            {
                r.hwm_samples.push((r.completed, vm_kib(pid, "VmHWM")));
            }
            if r.pushed < r.plan.jobs {
                push_job(r, jobs, out);
            }
            if r.completed == r.plan.jobs {
                // Reported at once: the client may close right after its last status.
                if let Some(done) = r.done.take() {
                    let _ = done.send(RunStats {
                        elapsed: r.started.elapsed(),
                        latencies: std::mem::take(&mut r.latencies),
                        out_of_order: r.out_of_order,
                        server_cpu_ns: thread_cpu_ns() - r.cpu_at_start,
                        hwm_samples: std::mem::take(&mut r.hwm_samples),
                    });
                }
            }
        }
    }

    // ---- /proc -----------------------------------------------------------------------------------------------

    fn read(path: impl AsRef<Path>) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// CPU time of this thread, in nanoseconds (from the scheduler's accounting).
    fn thread_cpu_ns() -> u64 {
        read("/proc/thread-self/schedstat")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn tasks(pid: u32) -> Vec<PathBuf> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    /// CPU time of every thread of `pid`, in nanoseconds.
    fn cpu_ns(pid: u32) -> u64 {
        tasks(pid)
            .iter()
            .filter_map(|task| {
                read(task.join("schedstat"))
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    }

    /// utime + stime of `pid` in clock ticks (/proc/PID/stat, all threads).
    fn stat_ticks(pid: u32) -> u64 {
        let stat = read(format!("/proc/{pid}/stat"));
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 and 15 of stat; `after_name` starts at field 3.
        let get = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        get(14) + get(15)
    }

    /// Voluntary + involuntary context switches of every thread of `pid`.
    fn context_switches(pid: u32) -> u64 {
        tasks(pid)
            .iter()
            .map(|task| {
                read(task.join("status"))
                    .lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum()
    }

    fn thread_count(pid: u32) -> usize {
        tasks(pid).len()
    }

    fn vm_kib(pid: u32, key: &str) -> u64 {
        read(format!("/proc/{pid}/status"))
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim_start_matches(':')
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    fn mib(kib: u64) -> String {
        format!("{:.2} MiB", kib as f64 / 1024.0)
    }

    // ---- the processes ---------------------------------------------------------------------------------------

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Runner {
        Client,
        Ceiling,
    }

    impl Runner {
        fn name(self) -> &'static str {
            match self {
                Runner::Client => "client",
                Runner::Ceiling => "ceiling",
            }
        }
    }

    fn client_command(binary: &Path, url: &str, heartbeat: &str) -> Command {
        let mut command = Command::new(binary);
        command
            .args([
                "run",
                "--url",
                url,
                "--trusted-signer",
                testing::TEST_SIGNER_SS58,
            ])
            .args(["--heartbeat-interval", heartbeat])
            .env(SEED_ENV_VAR, format!("0x{}", hex(&CLIENT_SEED)));
        command
    }

    fn ceiling_command(url: &str, heartbeat: &str) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        command.args(["ceiling-client", url, heartbeat]);
        command
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn spawn(runner: Runner, binary: &Path, url: &str, heartbeat: &str) -> Child {
        let mut command = match runner {
            Runner::Client => client_command(binary, url, heartbeat),
            Runner::Ceiling => ceiling_command(url, heartbeat),
        };
        // BENCH_CLIENT_PREFIX="valgrind --tool=massif ..." runs the client under a profiler (the /proc figures are
        // then the profiler's).
        if let (Runner::Client, Ok(prefix)) = (runner, std::env::var("BENCH_CLIENT_PREFIX")) {
            let mut words = prefix.split_whitespace();
            if let Some(program) = words.next() {
                let mut wrapped = Command::new(program);
                wrapped
                    .args(words)
                    .arg(command.get_program())
                    .args(command.get_args());
                for (key, value) in command.get_envs() {
                    if let Some(value) = value {
                        wrapped.env(key, value);
                    }
                }
                command = wrapped;
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the client starts")
    }

    /// Waits until the server has seen one more heartbeat than `before` (the client sends one right after its auth
    /// Response, so it is Running).
    fn wait_running(server: &LoadServer, before: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.heartbeats() <= before {
            assert!(Instant::now() < deadline, "the client did not authenticate");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_connection_ended(server: &LoadServer, before: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.progress.connections_ended.load(Ordering::SeqCst) <= before {
            assert!(Instant::now() < deadline, "the connection did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends `signal` and waits for the process to exit: the time from kill() to waitpid's return.
    fn signal_and_wait(child: &mut Child, signal: i32) -> (Duration, Option<i32>) {
        let pid = child.id() as i32;
        let start = Instant::now();
        // SAFETY: kill() has no memory-safety preconditions; `pid` is our own child, not yet reaped.
        unsafe {
            libc::kill(pid, signal);
        }
        let status = child.wait().expect("waitpid");
        (start.elapsed(), status.code())
    }

    fn stop(mut child: Child, runner: Runner) {
        let signal = match runner {
            Runner::Client => libc::SIGINT,
            Runner::Ceiling => libc::SIGKILL,
        };
        signal_and_wait(&mut child, signal);
    }

    // ---- the runs --------------------------------------------------------------------------------------------

    struct Throughput {
        jobs_per_sec: f64,
        client_cpu_per_job_ns: f64,
    }

    fn throughput_run(
        binary: &Path,
        server: &LoadServer,
        runner: Runner,
        jobs: usize,
        max_open: usize,
        report: &mut Report,
    ) -> Throughput {
        let ended = server.progress.connections_ended.load(Ordering::SeqCst);
        let before = server.heartbeats();
        let child = spawn(runner, binary, &server.url, "20");
        let pid = child.id();
        wait_running(server, before);
        std::thread::sleep(Duration::from_millis(100));
        let hwm_idle = vm_kib(pid, "VmHWM");
        let cpu_before = cpu_ns(pid);
        let stats = server
            .run(Plan {
                jobs,
                max_open,
                hold: false,
                sample_pid: Some(pid),
            })
            .blocking_recv()
            .expect("the run ends");
        let cpu = cpu_ns(pid) - cpu_before;
        let hwm = vm_kib(pid, "VmHWM");
        let rss = vm_kib(pid, "VmRSS");
        stop(child, runner);
        wait_connection_ended(server, ended);
        let mut latencies = stats.latencies;
        latencies.sort();
        let secs = stats.elapsed.as_secs_f64();
        let result = Throughput {
            jobs_per_sec: jobs as f64 / secs,
            client_cpu_per_job_ns: cpu as f64 / jobs as f64,
        };
        let name = runner.name();
        report.add(
            format!("{name}, lean server, max_open {max_open}: jobs/s"),
            format!("{:.0}", result.jobs_per_sec),
            format!(
                "p50 {} p99 {}; {jobs} jobs in {secs:.2} s; {} out of order",
                us(percentile(&latencies, 0.5)),
                us(percentile(&latencies, 0.99)),
                stats.out_of_order
            ),
        );
        report.add(
            format!("{name}, lean server, max_open {max_open}: CPU per job"),
            format!("{:.1} us", result.client_cpu_per_job_ns / 1e3),
            format!(
                "{name} busy {:.0}% of the run; server thread {:.1} us/job ({:.0}% busy)",
                cpu as f64 / 1e9 / secs * 100.0,
                stats.server_cpu_ns as f64 / jobs as f64 / 1e3,
                stats.server_cpu_ns as f64 / 1e9 / secs * 100.0
            ),
        );
        if runner == Runner::Client {
            let samples: Vec<String> = stats
                .hwm_samples
                .iter()
                .map(|(n, kib)| format!("{n}: {}", mib(*kib)))
                .collect();
            report.add(
                format!("client peak RSS, max_open {max_open}"),
                format!("{} before jobs, {} after {jobs}", mib(hwm_idle), mib(hwm)),
                format!(
                    "VmHWM after N jobs: {}; VmRSS at end {}",
                    samples.join(", "),
                    mib(rss)
                ),
            );
        }
        result
    }

    /// The same work against the reference facilitator (records everything, parses every frame, signs each job
    /// as it creates it), on its own thread and runtime.
    fn reference_run(
        binary: &Path,
        runner: Runner,
        jobs: usize,
        max_open: usize,
        report: &mut Report,
    ) {
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let facilitator = ReferenceFacilitator::start(FacilitatorConfig {
                    jobs: JobPlan::count(jobs as u64).max_open(max_open),
                    ..FacilitatorConfig::default()
                })
                .await
                .expect("the reference facilitator starts");
                let _ = url_tx.send(facilitator.url());
                let cpu_before = thread_cpu_ns();
                let records = facilitator
                    .wait_for(|r| r.finished_jobs() == jobs, Duration::from_secs(600))
                    .await
                    .expect("every job finishes");
                let cpu = thread_cpu_ns() - cpu_before;
                let _ = done_tx.send((records, cpu));
                let _ = stop_rx.await;
                drop(facilitator);
            });
        });
        let url = url_rx.recv().expect("the facilitator starts");
        let child = spawn(runner, binary, &url, "20");
        let pid = child.id();
        let cpu_before = cpu_ns(pid);
        let (records, server_cpu) = done_rx.recv().expect("the run ends");
        let cpu = cpu_ns(pid) - cpu_before;
        stop(child, runner);
        let _ = stop_tx.send(());
        let _ = thread.join();
        let first = records.status_updates.first().map(|s| s.at);
        let mut completed_at = std::collections::HashMap::new();
        for s in &records.status_updates {
            if s.status == JobStatus::Completed {
                completed_at.insert(s.uuid.as_str(), s.at);
            }
        }
        let last = completed_at.values().max().copied();
        let secs = match (first, last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => f64::NAN,
        };
        // The first `max_open` jobs were created before the client connected: their latency is not the client's.
        let mut latencies: Vec<Duration> = records
            .jobs
            .iter()
            .skip(max_open)
            .filter_map(|j| Some(*completed_at.get(j.uuid.as_str())? - j.created_at))
            .collect();
        latencies.sort();
        let name = runner.name();
        report.add(
            format!("{name}, reference facilitator, max_open {max_open}: jobs/s"),
            format!("{:.0}", jobs as f64 / secs),
            format!(
                "p50 {} p99 {}; {name} CPU {:.1} us/job ({:.0}% busy), facilitator thread {:.1} us/job ({:.0}% busy)",
                us(percentile(&latencies, 0.5)),
                us(percentile(&latencies, 0.99)),
                cpu as f64 / jobs as f64 / 1e3,
                cpu as f64 / 1e9 / secs * 100.0,
                server_cpu as f64 / jobs as f64 / 1e3,
                server_cpu as f64 / 1e9 / secs * 100.0,
            ),
        );
    }

    /// Three runs of `jobs` jobs through one client process: its peak RSS after each must not grow.
    fn memory_run(
        binary: &Path,
        server: &LoadServer,
        jobs: usize,
        max_open: usize,
        report: &mut Report,
    ) {
        let ended = server.progress.connections_ended.load(Ordering::SeqCst);
        let before = server.heartbeats();
        let child = spawn(Runner::Client, binary, &server.url, "20");
        let pid = child.id();
        wait_running(server, before);
        std::thread::sleep(Duration::from_millis(100));
        let mut samples = vec![format!("idle {}", mib(vm_kib(pid, "VmHWM")))];
        for run in 1..=3 {
            let _ = server
                .run(Plan {
                    jobs,
                    max_open,
                    hold: false,
                    sample_pid: None,
                })
                .blocking_recv();
            samples.push(format!("{} jobs {}", run * jobs, mib(vm_kib(pid, "VmHWM"))));
        }
        let rss = vm_kib(pid, "VmRSS");
        stop(child, Runner::Client);
        wait_connection_ended(server, ended);
        report.add(
            format!("client peak RSS over 3 x {jobs} jobs, max_open {max_open}"),
            samples.last().cloned().unwrap_or_default(),
            format!("VmHWM: {}; VmRSS at end {}", samples.join(", "), mib(rss)),
        );
    }

    fn sigint_runs(binary: &Path, server: &LoadServer, runs: usize, report: &mut Report) {
        let mut idle = Vec::new();
        let mut codes = Vec::new();
        for _ in 0..runs {
            let ended = server.progress.connections_ended.load(Ordering::SeqCst);
            let before = server.heartbeats();
            let mut child = spawn(Runner::Client, binary, &server.url, "20");
            wait_running(server, before);
            std::thread::sleep(Duration::from_millis(200));
            let (took, code) = signal_and_wait(&mut child, libc::SIGINT);
            idle.push(took.as_secs_f64());
            codes.push(code);
            wait_connection_ended(server, ended);
        }
        let median_idle = Duration::from_secs_f64(median(&mut idle));
        report.add(
            "SIGINT to exit, idle client",
            ms(median_idle),
            format!(
                "median of {runs}; min {} max {}; exit codes {codes:?}; target < 5 ms: {}",
                ms(Duration::from_secs_f64(idle[0])),
                ms(Duration::from_secs_f64(idle[idle.len() - 1])),
                if median_idle < Duration::from_millis(5) {
                    "met"
                } else {
                    "MISSED"
                }
            ),
        );

        let mut busy = Vec::new();
        let mut codes = Vec::new();
        let mut drained = 0;
        for _ in 0..runs {
            let ended = server.progress.connections_ended.load(Ordering::SeqCst);
            let before = server.heartbeats();
            let mut child = spawn(Runner::Client, binary, &server.url, "20");
            wait_running(server, before);
            let statuses = server.progress.statuses.load(Ordering::SeqCst);
            let done = server.run(Plan {
                jobs: 1000,
                max_open: 1000,
                hold: true,
                sample_pid: None,
            });
            // The client sends at most 256 statuses without a Response: wait for them, then let it take in the
            // rest of the 1,000 jobs.
            let deadline = Instant::now() + Duration::from_secs(20);
            while server.progress.statuses.load(Ordering::SeqCst) < statuses + 256 {
                assert!(
                    Instant::now() < deadline,
                    "the client did not send its statuses"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(300));
            let pid = child.id() as i32;
            let start = Instant::now();
            // SAFETY: as in `signal_and_wait`.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
            server.release();
            let status = child.wait().expect("waitpid");
            busy.push(start.elapsed().as_secs_f64());
            codes.push(status.code());
            if done.blocking_recv().is_ok() {
                drained += 1;
            }
            wait_connection_ended(server, ended);
        }
        let median_busy = Duration::from_secs_f64(median(&mut busy));
        report.add(
            "SIGINT to exit, 1,000 jobs in flight",
            ms(median_busy),
            format!(
                "median of {runs}; min {} max {}; exit codes {codes:?}; {drained} of {runs} runs had all 3,000 statuses acknowledged; target < 50 ms: {}",
                ms(Duration::from_secs_f64(busy[0])),
                ms(Duration::from_secs_f64(busy[busy.len() - 1])),
                if median_busy < Duration::from_millis(50) { "met" } else { "MISSED" }
            ),
        );
    }

    /// Returns wake-ups per second.
    fn idle_run(
        binary: &Path,
        server: &LoadServer,
        runner: Runner,
        secs: u64,
        report: &mut Report,
    ) -> f64 {
        let ended = server.progress.connections_ended.load(Ordering::SeqCst);
        let before = server.heartbeats();
        let child = spawn(runner, binary, &server.url, "1");
        let pid = child.id();
        wait_running(server, before);
        std::thread::sleep(Duration::from_millis(1500));
        let (switches, cpu, ticks, beats) = (
            context_switches(pid),
            cpu_ns(pid),
            stat_ticks(pid),
            server.heartbeats(),
        );
        std::thread::sleep(Duration::from_secs(secs));
        let wakeups = (context_switches(pid) - switches) as f64 / secs as f64;
        let cpu = (cpu_ns(pid) - cpu) as f64 / secs as f64;
        let ticks = stat_ticks(pid) - ticks;
        let beats = server.heartbeats() - beats;
        let threads = thread_count(pid);
        let hwm = vm_kib(pid, "VmHWM");
        stop(child, runner);
        wait_connection_ended(server, ended);
        let name = runner.name();
        report.add(
            format!("{name} idle: wake-ups/s"),
            format!("{wakeups:.2}"),
            format!(
                "context switches of all {threads} thread(s) over {secs} s; {beats} heartbeats seen"
            ),
        );
        report.add(
            format!("{name} idle: CPU per second"),
            format!("{:.1} us/s", cpu / 1e3),
            format!("schedstat; utime+stime {ticks} tick(s) of 10 ms over {secs} s"),
        );
        report.add(
            format!("{name} idle: peak RSS"),
            mib(hwm),
            "VmHWM after the idle period",
        );
        wakeups
    }

    // ---- callgrind -------------------------------------------------------------------------------------------

    fn callgrind_total(mut command: Command, out_file: &Path) -> Option<u64> {
        let status = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        parse_callgrind_total(out_file)
    }

    fn parse_callgrind_total(out_file: &Path) -> Option<u64> {
        read(out_file)
            .lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    fn valgrind(out_file: &Path) -> Command {
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()));
        command
    }

    /// Instructions of a client process that does `jobs` jobs then stops (SIGINT for the client).
    fn callgrind_jobs(
        binary: &Path,
        server: &LoadServer,
        runner: Runner,
        jobs: usize,
        out: &Path,
    ) -> Option<u64> {
        let mut command = valgrind(out);
        let inner = match runner {
            Runner::Client => client_command(binary, &server.url, "20"),
            Runner::Ceiling => ceiling_command(&server.url, "20"),
        };
        command.arg(inner.get_program()).args(inner.get_args());
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                command.env(k, v);
            }
        }
        if runner == Runner::Ceiling {
            // The ceiling client ends by itself after `jobs` jobs, so that callgrind writes its totals.
            command.env("CEILING_EXIT_AFTER", jobs.to_string());
        }
        let ended = server.progress.connections_ended.load(Ordering::SeqCst);
        let before = server.heartbeats();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        wait_running(server, before);
        if jobs > 0 {
            let stats = server
                .run(Plan {
                    jobs,
                    max_open: 64,
                    hold: false,
                    sample_pid: None,
                })
                .blocking_recv()
                .ok()?;
            let _ = stats;
        }
        if runner == Runner::Client {
            signal_and_wait(&mut child, libc::SIGINT);
        } else if jobs == 0 {
            signal_and_wait(&mut child, libc::SIGTERM);
        } else {
            let _ = child.wait();
        }
        wait_connection_ended(server, ended);
        parse_callgrind_total(out)
    }

    /// Returns (client instructions per job, instructions per signature check).
    fn callgrind_runs(
        binary: &Path,
        server: &LoadServer,
        keep: Option<&Path>,
        report: &mut Report,
    ) -> Option<(f64, f64)> {
        if Command::new("valgrind").arg("--version").output().is_err() {
            report.add("instructions", "skipped", "valgrind not found");
            return None;
        }
        let dir = std::env::temp_dir();
        let out = dir.join(format!("bench-callgrind-{}.out", std::process::id()));
        let (small, large) = (200usize, 1200usize);
        let verify = |batch: usize| {
            let mut command = valgrind(&out);
            command
                .arg(std::env::current_exe().expect("own path"))
                .args(["verify-loop", "500", &batch.to_string()]);
            callgrind_total(command, &out)
        };
        let baseline = verify(0);
        let per_job = |batch: usize| match (baseline, verify(batch)) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 500.0,
            _ => f64::NAN,
        };
        let per_verify = per_job(1);
        report.add(
            "instructions per job-signature check",
            format!("{per_verify:.0}"),
            "callgrind, bench verify-loop 500 1 minus verify-loop 500 0",
        );
        for batch in [16, 64] {
            let per = per_job(batch);
            report.add(
                format!("instructions per job, batch verification of {batch}"),
                format!("{per:.0}"),
                format!(
                    "= {:.2} checks; verify-loop 500 {batch} minus verify-loop 500 0",
                    per / per_verify
                ),
            );
        }
        let mut client = None;
        for runner in [Runner::Client, Runner::Ceiling] {
            let a = callgrind_jobs(binary, server, runner, small, &out);
            let b = callgrind_jobs(binary, server, runner, large, &out);
            if let Some(dir) = keep {
                let _ = std::fs::copy(
                    &out,
                    dir.join(format!("callgrind.{}.{large}", runner.name())),
                );
            }
            let per_job = match (a, b) {
                (Some(a), Some(b)) => (b.saturating_sub(a)) as f64 / (large - small) as f64,
                _ => f64::NAN,
            };
            report.add(
                format!("instructions per job, {}", runner.name()),
                format!("{per_job:.0}"),
                format!(
                    "callgrind, {large} jobs minus {small} (max_open 64); = {:.2} signature checks",
                    per_job / per_verify
                ),
            );
            if runner == Runner::Client {
                client = Some(per_job);
            }
        }
        let _ = std::fs::remove_file(&out);
        client.map(|per_job| (per_job, per_verify))
    }

    // ---- the ceiling client ----------------------------------------------------------------------------------

    mod ceiling {
        //! `bench ceiling-client URL HEARTBEAT_SECS`: the least a client can do per job. Authenticates, then for
        //! every job request finds the uuid by byte search and writes `received`, `accepted` and `completed` (the
        //! same texts the real client sends); ignores Responses; sends a heartbeat and a Ping every interval.
        //! current_thread runtime, like the real client. No JSON parsing, no signature check, no outbox.

        use super::*;

        pub fn main(args: &[String]) {
            let url = args.first().cloned().unwrap_or_else(|| super::usage());
            let heartbeat: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20.0);
            let exit_after: Option<usize> = std::env::var("CEILING_EXIT_AFTER")
                .ok()
                .and_then(|v| v.parse().ok());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(run(url, Duration::from_secs_f64(heartbeat), exit_after));
        }

        /// A status update's text split around its uuid.
        fn template(status: JobStatusUpdate) -> (String, String) {
            const MARK: &str = "ffffffff-ffff-ffff-ffff-ffffffffffff";
            let text = ClientMessage::StatusUpdate(status).to_json();
            let at = text.find(MARK).expect("the uuid is in the text");
            (text[..at].to_owned(), text[at + MARK.len()..].to_owned())
        }

        async fn run(url: String, heartbeat: Duration, exit_after: Option<usize>) {
            const MARK: &str = "ffffffff-ffff-ffff-ffff-ffffffffffff";
            let templates = [
                template(JobStatusUpdate::new(MARK, JobStatus::Received)),
                template(JobStatusUpdate::new(MARK, JobStatus::Accepted)),
                template(facilitator_client::handler::EchoHandler::completed(MARK)),
            ];
            let auth =
                ClientMessage::Auth(Hotkey::from_seed(&CLIENT_SEED).auth_request()).to_json();
            let heartbeat_text = ClientMessage::Heartbeat.to_json();
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("connects");
            ws.send(Message::text(auth)).await.expect("auth sent");
            let _ = ws.next().await;
            let mut ticks = tokio::time::interval(heartbeat);
            let mut jobs = 0usize;
            let mut out: Vec<Message> = Vec::new();
            loop {
                tokio::select! {
                    biased;
                    _ = ticks.tick() => {
                        out.push(Message::text(heartbeat_text.clone()));
                        out.push(Message::Ping(Default::default()));
                    }
                    frame = ws.next() => {
                        let mut frame = frame;
                        loop {
                            match frame {
                                Some(Ok(Message::Text(text))) => {
                                    let bytes = text.as_bytes();
                                    if let Some(at) = find(bytes, b"\"uuid\": \"") {
                                        let uuid = &text.as_str()[at + 9..at + 45];
                                        for (head, tail) in &templates {
                                            let mut reply = String::with_capacity(head.len() + 36 + tail.len());
                                            reply.push_str(head);
                                            reply.push_str(uuid);
                                            reply.push_str(tail);
                                            out.push(Message::text(reply));
                                        }
                                        jobs += 1;
                                    }
                                }
                                Some(Ok(_)) => {}
                                Some(Err(_)) | None => return,
                            }
                            match ws.next().now_or_never() {
                                Some(next) => frame = next,
                                None => break,
                            }
                        }
                    }
                }
                for message in out.drain(..) {
                    if ws.feed(message).await.is_err() {
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
                if exit_after.is_some_and(|n| jobs >= n) {
                    // Let the server read the last statuses before the socket goes.
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
    }
}
