//! The program's subcommands behind `main.rs`: settings from flags, a TOML file and defaults (in that order of
//! precedence), the hotkey from a wallet or the environment, the handler from its flag, then the runtime on a
//! `current_thread` tokio runtime. Every configuration problem becomes one line saying what is wrong and how to
//! fix it ([`CliError::Usage`], exit 2); nothing here panics on user input.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::handler::celery::CeleryConfig;
use crate::handler::{CELERY_BROKER_ENV_VAR, CeleryHandler, EchoHandler, ExecHandler, JobHandler};
use crate::machine;
use crate::ops::{HealthPolicy, HttpLimits, Ops, log::LogFormat};
use crate::protocol::keys::{Hotkey, SEED_ENV_VAR, ss58_decode};
use crate::reference::{self, FacilitatorConfig, JobPlan, Validators};
use crate::runtime::{Client, ClientConfig, ConfigError};

mod demo;
mod error;

pub use error::CliError;

/// The `run` flags, as given (strings for durations and counts so their errors can name the flag). Every flag has
/// a key of the same name in the `--config` TOML file (with `_` for `-`); flags win over the file, the file over the
/// defaults. The doc comments are the `--help` text.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunOptions {
    /// The facilitator's WebSocket URL (e.g. wss://facilitator.computehorde.io/ws/v0/).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// How jobs run: `echo` (accepted, then completed, at once: demos only), `exec:SHELL COMMAND` (run with `sh -c`
    /// per job, the job JSON on stdin, JOB_UUID in the environment, status lines on stdout), or `celery` (handed to
    /// the validator's Celery workers over Redis: see --celery-*). Default: echo.
    #[arg(long, value_name = "echo|exec:COMMAND|celery")]
    pub handler: Option<String>,
    /// An SS58 address whose signed job requests are accepted (repeatable). The client's own hotkey is always
    /// trusted.
    #[arg(long = "trusted-signer", value_name = "SS58")]
    pub trusted_signers: Vec<String>,
    /// Seconds between heartbeats (V0Heartbeat + WebSocket Ping). Decimals allowed. Default: 20.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub heartbeat_interval: Option<String>,
    /// Seconds a shutdown waits for running jobs and unacknowledged statuses. Default: 10.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub drain_timeout: Option<String>,
    /// A silent peer (no frame, no Pong) is dead after this many seconds. Default: 2 x heartbeat interval.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub peer_timeout: Option<String>,
    /// Seconds allowed for TCP, TLS, the WebSocket handshake and the auth reply. Default: 10.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub connect_timeout: Option<String>,
    /// Seconds allowed for the close handshake after draining. Default: 2.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub close_timeout: Option<String>,
    /// At most this many jobs run at once; a job request beyond that is answered rejected/busy at once, without
    /// running anything. Default: 256.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_running_jobs: Option<String>,
    /// Serve GET /metrics (Prometheus, OpenMetrics text) and GET /healthz on this address, e.g. 127.0.0.1:9464.
    /// Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Log lines as `text` (default) or `json` (one object per line: ts, level, target, msg, and job_uuid, from,
    /// to, reason where they apply).
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
    /// A PEM file of certificate authorities to trust for wss:// besides the public ones (a staging or self-hosted
    /// facilitator behind a private CA).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// With --handler celery: the validator's Redis broker URL, e.g. redis://127.0.0.1:6379/0. Better given in the
    /// environment variable, so a password stays out of the process list. Never logged with its password.
    #[arg(
        long,
        value_name = "URL",
        env = CELERY_BROKER_ENV_VAR,
        hide_env_values = true
    )]
    pub celery_broker: Option<String>,
    /// With --handler celery: the name of the validator's task that routes and runs one job (required).
    #[arg(long, value_name = "NAME")]
    pub celery_task: Option<String>,
    /// With --handler celery: the Celery queue the task goes to. Default: organic_jobs.
    #[arg(long, value_name = "NAME")]
    pub celery_queue: Option<String>,
    /// With --handler celery: seconds a job may take before it is reported horde_failed. Default: 600.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub celery_job_timeout: Option<String>,
    /// With --handler celery: a task that receives each verified V0JobCheated report (one argument, the report as
    /// a map). Without it reports are logged and counted.
    #[arg(long, value_name = "NAME")]
    pub celery_cheated_task: Option<String>,
    /// The spool: the file where unacknowledged status updates and running jobs are kept, so that a crash (kill -9,
    /// the OOM killer, a power cut) loses neither. Default: one file per hotkey and facilitator under
    /// $XDG_STATE_HOME (else ~/.local/state)/facilitator-client/. A spool given here that cannot be opened is an
    /// error (exit 2); one at the default location that cannot be created means running from memory, with a
    /// warning.
    #[arg(long, value_name = "FILE")]
    pub spool: Option<PathBuf>,
    /// Keep no spool: statuses and running jobs live in memory only, and a crash loses them (a warning at start).
    /// TOML: `spool = false`.
    #[arg(long, conflicts_with = "spool")]
    pub no_spool: bool,
    /// Bittensor wallets directory. Default: ~/.bittensor/wallets.
    #[arg(long, value_name = "DIR")]
    pub wallet_path: Option<PathBuf>,
    /// Wallet name (the hotkey file is `<wallet-path>/<wallet-name>/hotkeys/<hotkey-name>`).
    #[arg(long, value_name = "NAME")]
    pub wallet_name: Option<String>,
    /// Hotkey name within the wallet.
    #[arg(long, value_name = "NAME")]
    pub hotkey_name: Option<String>,
    /// A TOML file with any of the settings above (keys like `url`, `heartbeat_interval = 20`,
    /// `trusted_signers = [...]`); flags win over the file, the file over the defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The `serve` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8765")]
    pub listen: String,
    /// Jobs to send to connected validators (0: none).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub jobs: u64,
    /// Seconds between jobs. Decimals allowed.
    #[arg(long, value_name = "SECS", default_value = "1")]
    pub job_interval: String,
    /// Accept only this validator hotkey (SS58; repeatable). Default: any hotkey whose signature verifies.
    #[arg(long = "validator", value_name = "SS58")]
    pub validators: Vec<String>,
    /// Serve wss:// with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

/// The `demo` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoOptions {
    /// Jobs to run.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub jobs: u64,
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
    metrics_listen: Option<String>,
    log_format: Option<String>,
    ca_file: Option<PathBuf>,
    celery_broker: Option<String>,
    celery_task: Option<String>,
    celery_queue: Option<String>,
    celery_job_timeout: Option<f64>,
    celery_cheated_task: Option<String>,
    wallet_path: Option<PathBuf>,
    wallet_name: Option<String>,
    hotkey_name: Option<String>,
    outbox_capacity: Option<usize>,
    max_message_size: Option<usize>,
    spool: Option<SpoolSetting>,
}

/// `spool = "FILE"`, `spool = false` (none) or `spool = true` (the default location) in the TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SpoolSetting {
    Enabled(bool),
    Path(PathBuf),
}

/// Where the spool is, as decided from the flags, the file and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolPlan {
    /// `--no-spool` or `spool = false` (named): everything in memory, with a warning.
    Off(&'static str),
    /// `--spool FILE` or `spool = "FILE"`: it must open, or the program exits 2.
    Explicit(PathBuf),
    /// The default location: if it cannot even be created (no writable home, a read-only container), the client
    /// runs from memory with a warning.
    Default(PathBuf),
    /// No default location: from memory, with a warning saying why.
    Unavailable(String),
}

/// Everything `run` needs, resolved and checked.
#[derive(Debug)]
pub struct RunPlan {
    /// The client's configuration.
    pub config: ClientConfig,
    /// How jobs run.
    pub handler: HandlerPlan,
    /// The hotkey.
    pub hotkey: Hotkey,
    /// Where to serve /metrics and /healthz.
    pub metrics_listen: Option<SocketAddr>,
    /// How log lines look.
    pub log_format: LogFormat,
    /// Where the spool is.
    pub spool: SpoolPlan,
}

/// The job handler `run` builds (the Celery one needs the runtime, so it is built there).
#[derive(Debug)]
pub enum HandlerPlan {
    /// `echo`.
    Echo,
    /// `exec:COMMAND`.
    Exec(String),
    /// `celery`.
    Celery(Box<CeleryConfig>),
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
    let log_format = match options.log_format.as_ref().or(file.log_format.as_ref()) {
        Some(text) => text
            .parse::<LogFormat>()
            .map_err(|e| usage(format!("--log-format: {e}")))?,
        None => LogFormat::Text,
    };
    let metrics_listen = match options
        .metrics_listen
        .as_ref()
        .or(file.metrics_listen.as_ref())
    {
        Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|_| {
            usage(format!(
                "--metrics-listen must be an address like 127.0.0.1:9464, not {text:?}"
            ))
        })?),
        None => None,
    };
    let handler = options
        .handler
        .or(file.handler)
        .unwrap_or_else(|| "echo".to_owned());
    let handler = match handler.as_str() {
        "celery" => {
            let broker = options.celery_broker.or(file.celery_broker).ok_or_else(|| {
                usage(format!(
                    "--handler celery needs the validator's Redis broker: --celery-broker URL or {CELERY_BROKER_ENV_VAR}"
                ))
            })?;
            let task = options.celery_task.or(file.celery_task).ok_or_else(|| {
                usage("--handler celery needs --celery-task NAME: the validator's task that routes and runs a job")
            })?;
            let mut celery = CeleryConfig::new(broker, task);
            if let Some(queue) = options.celery_queue.or(file.celery_queue) {
                celery.queue = queue;
            }
            celery.job_timeout = duration(
                "--celery-job-timeout",
                &options.celery_job_timeout,
                file.celery_job_timeout,
                celery.job_timeout,
            )?;
            celery.cheated_task = options.celery_cheated_task.or(file.celery_cheated_task);
            celery.validate().map_err(|e| usage(e.to_string()))?;
            HandlerPlan::Celery(Box::new(celery))
        }
        other => {
            if options.celery_task.is_some() || file.celery_task.is_some() {
                return Err(usage(format!(
                    "--celery-task is only for --handler celery (the handler is {other:?})"
                )));
            }
            match parse_handler(other)? {
                Some(command) => HandlerPlan::Exec(command),
                None => HandlerPlan::Echo,
            }
        }
    };
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
    config.ca_file = options.ca_file.or(file.ca_file);
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
    let spool = if options.no_spool {
        SpoolPlan::Off("--no-spool")
    } else if let Some(path) = options.spool {
        SpoolPlan::Explicit(path)
    } else {
        match file.spool {
            Some(SpoolSetting::Enabled(false)) => SpoolPlan::Off("spool = false"),
            Some(SpoolSetting::Path(path)) => SpoolPlan::Explicit(path),
            Some(SpoolSetting::Enabled(true)) | None => match crate::spool::default_state_dir() {
                // A URL that cannot name a spool is refused by the client itself, with the URL's own message.
                Some(dir) => match crate::spool::default_path(&dir, &hotkey.ss58(), &config.url) {
                    Ok(path) => SpoolPlan::Default(path),
                    Err(e) => SpoolPlan::Unavailable(e.to_string()),
                },
                None => SpoolPlan::Unavailable(
                    "neither $XDG_STATE_HOME nor $HOME is set, so there is no default location (pass --spool \
                     FILE)"
                        .to_owned(),
                ),
            },
        }
    };
    Ok(RunPlan {
        config,
        handler,
        hotkey,
        metrics_listen,
        log_format,
        spool,
    })
}

/// Builds the client with the planned spool. The default location falls back to memory, with a warning, when it
/// cannot be created; an explicit spool that cannot be opened, or any existing spool that is refused (another
/// process, another hotkey, a newer format), is an error.
fn build_client(
    mut config: ClientConfig,
    spool: SpoolPlan,
    hotkey: Hotkey,
    handler: Arc<dyn JobHandler>,
) -> Result<Client, ConfigError> {
    const FROM_MEMORY: &str = "unacknowledged status updates and running jobs live in memory only, and a crash \
                               (kill -9, the OOM killer, a power cut) loses them";
    // Warnings once the client is built: a configuration error (exit 2) needs no warning beside it.
    let (default, warning) = match spool {
        SpoolPlan::Off(by) => (false, Some(format!("{by}: no spool: {FROM_MEMORY}"))),
        SpoolPlan::Unavailable(why) => (false, Some(format!("no spool: {why}: {FROM_MEMORY}"))),
        SpoolPlan::Explicit(path) => {
            config.spool = Some(path);
            (false, None)
        }
        SpoolPlan::Default(path) => {
            config.spool = Some(path);
            (true, None)
        }
    };
    let client = match Client::new(config.clone(), hotkey.clone(), Arc::clone(&handler)) {
        Err(ConfigError::Spool(e)) if default && e.nothing_existing_was_refused() => {
            let client = Client::new(
                ClientConfig {
                    spool: None,
                    ..config
                },
                hotkey,
                handler,
            )?;
            log::warn!(
                "no spool: {e} (its default location; pass --spool FILE, or --no-spool to silence this): \
                 {FROM_MEMORY}"
            );
            client
        }
        other => other?,
    };
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    Ok(client)
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

/// `echo` (`None`) or `exec:COMMAND` (the command); anything else is a usage error naming the choices.
fn parse_handler(text: &str) -> Result<Option<String>, CliError> {
    if text == "echo" {
        return Ok(None);
    }
    match text.strip_prefix("exec:") {
        Some(command) if !command.trim().is_empty() => Ok(Some(command.to_owned())),
        Some(_) => Err(usage(
            "--handler exec: needs a command, e.g. --handler 'exec:./run-job.sh'",
        )),
        None => Err(usage(format!(
            "unknown --handler {text:?}: use `echo`, `exec:SHELL COMMAND` or `celery`"
        ))),
    }
}

/// Installs the logger: `RUST_LOG` if set, else `default_level`; text or JSON lines.
pub fn init_logging(format: LogFormat, default_level: &str) {
    crate::ops::log::init(format, default_level);
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
    init_logging(plan.log_format, "info");
    let runtime = runtime()?;
    runtime.block_on(async move {
        let handler: Arc<dyn JobHandler> = match plan.handler {
            HandlerPlan::Echo => {
                log::warn!(
                    "using the echo handler: every job is reported completed without running anything"
                );
                Arc::new(EchoHandler::new())
            }
            HandlerPlan::Exec(command) => Arc::new(ExecHandler::new(command)),
            HandlerPlan::Celery(celery) => {
                log::info!(
                    "handing jobs to Celery task {} on queue {} through {}",
                    celery.task,
                    celery.queue,
                    celery.redacted_broker()
                );
                Arc::new(CeleryHandler::start(*celery).map_err(|e| usage(e.to_string()))?)
            }
        };
        let backoff_cap = plan.config.machine.backoff.cap;
        let mut client = build_client(plan.config, plan.spool, plan.hotkey, handler).map_err(|e| match e {
            ConfigError::Signals(e) => {
                CliError::Fatal(format!("cannot install the signal handlers: {e}"))
            }
            other => usage(other.to_string()),
        })?;
        if let Some(addr) = plan.metrics_listen {
            let ops = Ops::new(
                client.metrics(),
                HealthPolicy::for_backoff_cap(backoff_cap),
                std::time::Instant::now(),
            );
            client.observe(Arc::new(ops.clone()));
            let server = ops
                .bind(addr, HttpLimits::default())
                .await
                .map_err(|e| usage(format!("--metrics-listen: cannot listen on {addr}: {e}")))?;
            let bound = server.local_addr().unwrap_or(addr);
            log::info!("serving /metrics and /healthz on http://{bound}");
            tokio::spawn(server.run());
        }
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
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(
            reference::tls_config_from_files(cert, key)
                .map_err(|e| usage(format!("--tls-cert/--tls-key: {e}")))?,
        ),
        (None, None) => None,
        _ => return Err(usage("--tls-cert and --tls-key go together")),
    };
    init_logging(LogFormat::Text, "info");
    let config = FacilitatorConfig {
        listen,
        validators,
        jobs: JobPlan::count(options.jobs).every(interval),
        tls,
        ..FacilitatorConfig::default()
    };
    runtime()?.block_on(reference::serve(config)).map_err(|e| {
        CliError::Fatal(format!("the reference facilitator failed on {listen}: {e}"))
    })?;
    Ok(0)
}

/// `facilitator-client demo`: the reference facilitator and the client on loopback, jobs through the echo
/// handler, one dropped connection, then a graceful stop as if Ctrl-C were pressed; a timeline and a summary.
pub fn demo(options: DemoOptions) -> Result<u8, CliError> {
    let jobs = options.jobs;
    if jobs == 0 {
        return Err(usage("--jobs must be at least 1"));
    }
    init_logging(LogFormat::Text, "warn");
    runtime()?.block_on(demo::run(
        jobs,
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
    ))
}
