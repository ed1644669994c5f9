//! The command line's error: a one-line message and whether it is the caller's usage (exit 2)
//! or something found at run time (exit 1).

use std::fmt;

/// A failed command. `Usage` = the command line itself is wrong (exit code 2, like clap's own
/// errors); `Runtime` = the input files or the computation failed (exit code 1).
#[derive(Debug)]
pub enum CliError {
    /// A flag value that can never work (bad top-p, temperature, output extension, device).
    Usage(String),
    /// A problem found while running: a missing file or tensor, a bad shape, dtype or value.
    Runtime(String),
}

/// `Result` of a command.
pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }

    /// Shorthand for a runtime error from anything printable.
    pub fn runtime(msg: impl fmt::Display) -> Self {
        CliError::Runtime(msg.to_string())
    }

    /// Shorthand for a usage error from anything printable.
    pub fn usage(msg: impl fmt::Display) -> Self {
        CliError::Usage(msg.to_string())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Runtime(m) => f.write_str(m),
        }
    }
}

impl From<rlvr_kernels::Error> for CliError {
    /// Settings the user typed (top-p, temperature, other config values) are usage errors;
    /// everything the crate finds in the data is a runtime error. The crate's message already
    /// names the input and the index, so it is passed through unchanged.
    fn from(e: rlvr_kernels::Error) -> Self {
        use rlvr_kernels::Error as E;
        match e {
            E::InvalidTopP(_) | E::InvalidTemperature(_) | E::InvalidConfig { .. } => CliError::usage(e),
            _ => CliError::runtime(e),
        }
    }
}
