//! The `facilitator-client` program: `run` (the client), `serve` (the reference facilitator alone) and `demo`
//! (both on loopback). The command line is a contract other tools rely on (docs/CLI.md): flags, the
//! `FACILITATOR_HOTKEY_SEED` variable, and the exit codes 0 (graceful stop), 130 (forced stop), 1 (fatal error at
//! run time) and 2 (usage or configuration error).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use facilitator_client::cli::{self, CliError, DemoOptions, RunOptions, ServeOptions};

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
    Run(RunOptions),
    /// Run the reference facilitator alone on loopback, for trying the client against.
    Serve(ServeOptions),
    /// Start the reference facilitator and the client together on loopback: 20 jobs, a dropped connection, a
    /// reconnect, and a graceful stop, with a timeline and a summary.
    Demo(DemoOptions),
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
        Command::Run(options) => cli::run(options),
        Command::Serve(options) => cli::serve(options),
        Command::Demo(options) => cli::demo(options),
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
