//! The `facilitator-client` program: `run` (the client), `serve` (the reference facilitator alone) and `demo`
//! (both on loopback). The command line is a contract other tools rely on (docs/CLI.md): flags, the
//! `FACILITATOR_HOTKEY_SEED` variable, and the exit codes 0 (graceful stop), 130 (forced stop), 1 (fatal error at
//! run time) and 2 (usage or configuration error).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use facilitator_client::cli::{self, CliError, RunOptions, ServeOptions};

/// The ComputeHorde validator's client for the facilitator: authenticates with the validator's sr25519 hotkey,
/// keeps the connection alive, receives signed jobs, runs them through a job handler, and delivers every job
/// status update, across reconnects and shutdowns.
#[derive(Parser, Debug)]
#[command(name = "facilitator-client", version, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 graceful stop, 130 forced stop (second Ctrl-C), 1 fatal error at run time \
(e.g. the facilitator rejected the hotkey), 2 usage or configuration error.\nLogs: RUST_LOG=debug for more, \
RUST_LOG=warn for less."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once per process: the size difference between the variants costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Connect to a facilitator and process jobs until Ctrl-C (first: drain and stop; second: stop at once).
    Run(RunArgs),
    /// Run the reference facilitator alone on loopback, for trying the client against.
    Serve(ServeArgs),
    /// Start the reference facilitator and the client together on loopback: 20 jobs, a dropped connection, a
    /// reconnect, and a graceful stop, with a timeline and a summary.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The facilitator's WebSocket URL (e.g. wss://facilitator.computehorde.io/ws/v0/).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// How jobs run: `echo` (accepted, then completed, at once) or `exec:SHELL COMMAND` (run with `sh -c` per job,
    /// the job JSON on stdin, JOB_UUID in the environment, status lines on stdout). Default: echo.
    #[arg(long, value_name = "echo|exec:COMMAND")]
    handler: Option<String>,
    /// An SS58 address whose signed job requests are accepted (repeatable). The client's own hotkey is always
    /// trusted.
    #[arg(long = "trusted-signer", value_name = "SS58")]
    trusted_signers: Vec<String>,
    /// Seconds between heartbeats (V0Heartbeat + WebSocket Ping). Decimals allowed. Default: 20.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    heartbeat_interval: Option<String>,
    /// Seconds a shutdown waits for running jobs and unacknowledged statuses. Default: 10.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    drain_timeout: Option<String>,
    /// A silent peer (no frame, no Pong) is dead after this many seconds. Default: 2 x heartbeat interval.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    peer_timeout: Option<String>,
    /// Seconds allowed for TCP, TLS, the WebSocket handshake and the auth reply. Default: 10.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    connect_timeout: Option<String>,
    /// Seconds allowed for the close handshake after draining. Default: 2.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    close_timeout: Option<String>,
    /// At most this many jobs run at once; a job request beyond that is answered rejected/busy at once, without
    /// running anything. Default: 256.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    max_running_jobs: Option<String>,
    /// Bittensor wallets directory. Default: ~/.bittensor/wallets.
    #[arg(long, value_name = "DIR")]
    wallet_path: Option<PathBuf>,
    /// Wallet name (the hotkey file is <wallet-path>/<wallet-name>/hotkeys/<hotkey-name>).
    #[arg(long, value_name = "NAME")]
    wallet_name: Option<String>,
    /// Hotkey name within the wallet.
    #[arg(long, value_name = "NAME")]
    hotkey_name: Option<String>,
    /// A TOML file with any of the settings above (keys like `url`, `heartbeat_interval = 20`,
    /// `trusted_signers = [...]`); flags win over the file, the file over the defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8765")]
    listen: String,
    /// Jobs to send to connected validators (0: none).
    #[arg(long, value_name = "N", default_value_t = 10)]
    jobs: u64,
    /// Seconds between jobs. Decimals allowed.
    #[arg(long, value_name = "SECS", default_value = "1")]
    job_interval: String,
    /// Accept only this validator hotkey (SS58; repeatable). Default: any hotkey whose signature verifies.
    #[arg(long = "validator", value_name = "SS58")]
    validators: Vec<String>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Jobs to run.
    #[arg(long, value_name = "N", default_value_t = 20)]
    jobs: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and exit 0; usage errors exit 2 with clap's message.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Run(args) => cli::run(RunOptions {
            url: args.url,
            handler: args.handler,
            trusted_signers: args.trusted_signers,
            heartbeat_interval: args.heartbeat_interval,
            drain_timeout: args.drain_timeout,
            peer_timeout: args.peer_timeout,
            connect_timeout: args.connect_timeout,
            close_timeout: args.close_timeout,
            max_running_jobs: args.max_running_jobs,
            wallet_path: args.wallet_path,
            wallet_name: args.wallet_name,
            hotkey_name: args.hotkey_name,
            config: args.config,
        }),
        Command::Serve(args) => cli::serve(ServeOptions {
            listen: args.listen,
            jobs: args.jobs,
            job_interval: args.job_interval,
            validators: args.validators,
        }),
        Command::Demo(args) => cli::demo(args.jobs),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(CliError::Usage(message)) => {
            eprintln!("facilitator-client: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Fatal(message)) => {
            eprintln!("facilitator-client: {message}");
            ExitCode::from(1)
        }
    }
}
