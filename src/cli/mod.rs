//! The program's subcommands behind `main.rs`: settings from flags, a TOML file and defaults (in that order of
//! precedence), the hotkey from a wallet or the environment, the handler from its flag, then the runtime on a
//! `current_thread` tokio runtime. Every configuration problem becomes one line saying what is wrong and how to
//! fix it ([`CliError::Usage`], exit 2); nothing here panics on user input.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::handler::{EchoHandler, ExecHandler, JobHandler};
use crate::machine;
use crate::protocol::keys::{Hotkey, SEED_ENV_VAR, ss58_decode};
use crate::reference::{self, FacilitatorConfig, JobPlan, Validators};
use crate::runtime::{Client, ClientConfig, ConfigError};

mod demo;
mod error;

pub use error::CliError;

/// The `run` flags, as given (strings for durations so their errors can name the flag).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub url: Option<String>,
    pub handler: Option<String>,
    pub trusted_signers: Vec<String>,
    pub heartbeat_interval: Option<String>,
    pub drain_timeout: Option<String>,
    pub peer_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub close_timeout: Option<String>,
    pub max_running_jobs: Option<String>,
    pub wallet_path: Option<PathBuf>,
    pub wallet_name: Option<String>,
    pub hotkey_name: Option<String>,
    pub config: Option<PathBuf>,
}

/// The `serve` flags.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub listen: String,
    pub jobs: u64,
    pub job_interval: String,
    pub validators: Vec<String>,
}

/// The TOML configuration file: the same settings as the flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    handler: Option<String>,
    #[serde(default)]
    trusted_signers: Vec<String>,
    heartbeat_interval: Option<f64>,
    drain_timeout: Option<f64>,
    peer_timeout: Option<f64>,
    connect_timeout: Option<f64>,
    close_timeout: Option<f64>,
    max_running_jobs: Option<usize>,
    wallet_path: Option<PathBuf>,
    wallet_name: Option<String>,
    hotkey_name: Option<String>,
    outbox_capacity: Option<usize>,
    max_message_size: Option<usize>,
}

/// Everything `run` needs, resolved and checked.
#[derive(Debug)]
pub struct RunPlan {
    /// The client's configuration.
    pub config: ClientConfig,
    /// The handler description (`echo` or `exec:...`).
    pub handler: String,
    /// The hotkey.
    pub hotkey: Hotkey,
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// Parses a positive duration in decimal seconds (`20`, `0.5`).
pub fn parse_seconds(what: &str, text: &str) -> Result<Duration, CliError> {
    let secs: f64 = text.trim().parse().map_err(|_| {
        usage(format!(
            "{what} must be a number of seconds like 20 or 0.5, not {text:?}"
        ))
    })?;
    seconds(what, secs)
}

fn seconds(what: &str, secs: f64) -> Result<Duration, CliError> {
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 * 365.0 {
        return Err(usage(format!(
            "{what} must be a positive number of seconds, not {secs}"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn load_file(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "cannot read the configuration file {}: {e}",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        usage(format!(
            "the configuration file {} is not valid: {}",
            path.display(),
            e.message().trim()
        ))
    })
}

fn duration(
    what: &str,
    flag: &Option<String>,
    file: Option<f64>,
    default: Duration,
) -> Result<Duration, CliError> {
    match (flag, file) {
        (Some(text), _) => parse_seconds(what, text),
        (None, Some(secs)) => seconds(what, secs),
        (None, None) => Ok(default),
    }
}

/// Resolves the flags, the file and the defaults into a plan; loads the hotkey.
pub fn plan(options: RunOptions) -> Result<RunPlan, CliError> {
    let file = match &options.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    let url = options.url.or(file.url).ok_or_else(|| {
        usage(
            "no facilitator URL: pass --url (e.g. --url wss://facilitator.computehorde.io/ws/v0/)",
        )
    })?;
    let handler = options
        .handler
        .or(file.handler)
        .unwrap_or_else(|| "echo".to_owned());
    parse_handler(&handler)?;
    let defaults = machine::Config::default();
    let heartbeat_interval = duration(
        "--heartbeat-interval",
        &options.heartbeat_interval,
        file.heartbeat_interval,
        defaults.heartbeat_interval,
    )?;
    let peer_timeout = duration(
        "--peer-timeout",
        &options.peer_timeout,
        file.peer_timeout,
        heartbeat_interval * 2,
    )?;
    if peer_timeout <= heartbeat_interval {
        return Err(usage(format!(
            "--peer-timeout ({}s) must be longer than --heartbeat-interval ({}s), or a healthy peer counts as dead",
            peer_timeout.as_secs_f64(),
            heartbeat_interval.as_secs_f64()
        )));
    }
    let mut machine = machine::Config {
        heartbeat_interval,
        peer_timeout,
        drain_timeout: duration(
            "--drain-timeout",
            &options.drain_timeout,
            file.drain_timeout,
            defaults.drain_timeout,
        )?,
        connect_timeout: duration(
            "--connect-timeout",
            &options.connect_timeout,
            file.connect_timeout,
            defaults.connect_timeout,
        )?,
        close_timeout: duration(
            "--close-timeout",
            &options.close_timeout,
            file.close_timeout,
            defaults.close_timeout,
        )?,
        ..defaults
    };
    machine.max_running_jobs = match (&options.max_running_jobs, file.max_running_jobs) {
        (Some(text), _) => text.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            usage(format!(
                "--max-running-jobs must be a whole number of jobs, at least 1, not {text:?}"
            ))
        })?,
        (None, Some(0)) => return Err(usage("max_running_jobs must be at least 1")),
        (None, Some(n)) => n,
        (None, None) => machine.max_running_jobs,
    };
    if let Some(capacity) = file.outbox_capacity {
        if capacity == 0 {
            return Err(usage("outbox_capacity must be at least 1"));
        }
        machine.outbox_capacity = capacity;
    }
    let mut config = ClientConfig::new(url);
    config.machine = machine;
    config.trusted_signers = if options.trusted_signers.is_empty() {
        file.trusted_signers
    } else {
        options.trusted_signers
    };
    config.handle_signals = true;
    if let Some(size) = file.max_message_size {
        if size < 1024 {
            return Err(usage(format!(
                "max_message_size must be at least 1024 bytes (a job request is about 1 KiB), not {size}"
            )));
        }
        config.limits.max_message_size = size;
        config.limits.max_frame_size = size;
    }
    let wallet_name = options.wallet_name.or(file.wallet_name);
    let hotkey_name = options.hotkey_name.or(file.hotkey_name);
    let wallet_path = options.wallet_path.or(file.wallet_path);
    let hotkey = load_hotkey(wallet_path, wallet_name, hotkey_name)?;
    Ok(RunPlan {
        config,
        handler,
        hotkey,
    })
}

/// The hotkey: from the wallet when a wallet or hotkey name is given, else from `FACILITATOR_HOTKEY_SEED`, else
/// from the default wallet (`default`/`default`), as bittensor does.
fn load_hotkey(
    wallet_path: Option<PathBuf>,
    wallet_name: Option<String>,
    hotkey_name: Option<String>,
) -> Result<Hotkey, CliError> {
    let explicit_wallet = wallet_name.is_some() || hotkey_name.is_some();
    if !explicit_wallet && std::env::var_os(SEED_ENV_VAR).is_some() {
        return Hotkey::from_env().map_err(|e| usage(e.to_string()));
    }
    let wallet_path = match wallet_path {
        Some(path) => path,
        None => default_wallet_path()?,
    };
    let wallet_name = wallet_name.unwrap_or_else(|| "default".to_owned());
    let hotkey_name = hotkey_name.unwrap_or_else(|| "default".to_owned());
    Hotkey::from_wallet(&wallet_path, &wallet_name, &hotkey_name).map_err(|e| {
        let hint = if explicit_wallet {
            String::new()
        } else {
            format!(" (no --wallet-name/--hotkey-name given and {SEED_ENV_VAR} is not set, so the default wallet was tried)")
        };
        usage(format!("{e}{hint}"))
    })
}

fn default_wallet_path() -> Result<PathBuf, CliError> {
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".bittensor").join("wallets"))
        .ok_or_else(|| usage("HOME is not set: pass --wallet-path"))
}

/// `echo` or `exec:COMMAND`.
pub fn parse_handler(text: &str) -> Result<Arc<dyn JobHandler>, CliError> {
    if text == "echo" {
        return Ok(Arc::new(EchoHandler::new()));
    }
    match text.strip_prefix("exec:") {
        Some(command) if !command.trim().is_empty() => {
            Ok(Arc::new(ExecHandler::new(command.to_owned())))
        }
        Some(_) => Err(usage(
            "--handler exec: needs a command, e.g. --handler 'exec:./run-job.sh'",
        )),
        None => Err(usage(format!(
            "unknown --handler {text:?}: use `echo` or `exec:SHELL COMMAND`"
        ))),
    }
}

/// Installs the logger: `RUST_LOG` if set, else `default_level`.
pub fn init_logging(default_level: &str) {
    let env = env_logger::Env::default().default_filter_or(default_level);
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Fatal(format!("cannot start the tokio runtime: {e}")))
}

/// `facilitator-client run`: returns the exit code.
pub fn run(options: RunOptions) -> Result<u8, CliError> {
    let plan = plan(options)?;
    init_logging("info");
    let handler = parse_handler(&plan.handler)?;
    if plan.handler == "echo" {
        log::warn!(
            "using the echo handler: every job is reported completed without running anything"
        );
    }
    let runtime = runtime()?;
    runtime.block_on(async move {
        let client = Client::new(plan.config, plan.hotkey, handler).map_err(|e| match e {
            ConfigError::Signals(e) => {
                CliError::Fatal(format!("cannot install the signal handlers: {e}"))
            }
            other => usage(other.to_string()),
        })?;
        let outcome = client
            .run()
            .await
            .map_err(|e| CliError::Fatal(e.to_string()))?;
        match outcome.reason {
            machine::StopReason::AuthRejected => Err(CliError::Fatal(outcome.reason.to_string())),
            reason => Ok(reason.exit_code().clamp(0, 255) as u8),
        }
    })
}

/// Parses a non-negative duration in decimal seconds (`0` allowed).
fn parse_interval(what: &str, text: &str) -> Result<Duration, CliError> {
    match text.trim().parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_seconds(what, text),
    }
}

/// `facilitator-client serve`: the reference facilitator alone, until Ctrl-C.
pub fn serve(options: ServeOptions) -> Result<u8, CliError> {
    let listen: std::net::SocketAddr = options.listen.parse().map_err(|_| {
        usage(format!(
            "--listen must be an address like 127.0.0.1:8765, not {:?}",
            options.listen
        ))
    })?;
    let interval = parse_interval("--job-interval", &options.job_interval)?;
    let validators = if options.validators.is_empty() {
        Validators::Any
    } else {
        let keys = options
            .validators
            .iter()
            .map(|ss58| {
                ss58_decode(ss58)
                    .map_err(|e| usage(format!("--validator {ss58:?} is not an SS58 address: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Validators::Listed(keys)
    };
    init_logging("info");
    let config = FacilitatorConfig {
        listen,
        validators,
        jobs: JobPlan::count(options.jobs).every(interval),
        ..FacilitatorConfig::default()
    };
    runtime()?.block_on(reference::serve(config)).map_err(|e| {
        CliError::Fatal(format!("the reference facilitator failed on {listen}: {e}"))
    })?;
    Ok(0)
}

/// `facilitator-client demo`: the reference facilitator and the client on loopback, jobs through the echo
/// handler, one dropped connection, then a graceful stop as if Ctrl-C were pressed; a timeline and a summary.
pub fn demo(jobs: u64) -> Result<u8, CliError> {
    if jobs == 0 {
        return Err(usage("--jobs must be at least 1"));
    }
    init_logging("warn");
    runtime()?.block_on(demo::run(
        jobs,
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
    ))
}
