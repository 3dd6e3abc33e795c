//! What loading a configuration produces: the compiled configuration with its warnings
//! ([`Loaded`]), or the problems found ([`Problem`]). Its own module so that the loader and the
//! state every loading step reports into (`ctx.rs`) both use it without importing each other.

use std::fmt;
use std::path::PathBuf;

use super::model::Config;

/// One configuration problem (error or warning), printed as `FILE:LINE: KEY.PATH: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The configuration file, as given (not made absolute).
    pub file: PathBuf,
    /// 1-based line of the key, or of its table header when the key is missing.
    pub line: usize,
    /// `route[1].claims[0].equals`; `.` for the whole file; `(syntax)` for a syntax error.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.path,
            self.message
        )
    }
}

/// A valid configuration, and what `check` should warn about (shadowed routes, `allow_http`).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}
