//! How a subcommand fails: the two outcomes the program turns into exit codes (2 for usage and configuration,
//! 1 for a failure at run time).

/// How a subcommand failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// A bad flag, file, seed, wallet or URL: exit 2.
    #[error("{0}")]
    Usage(String),
    /// A failure at run time: exit 1.
    #[error("{0}")]
    Fatal(String),
}
