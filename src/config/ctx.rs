//! The loader's working state: where problems go, and the small typed readers every section uses.
//!
//! `Ctx` records each problem with its key path and line (from `locate.rs`) and remembers which
//! keys were removed after a problem was already reported, so a removed key is never reported a
//! second time as "missing". The readers (`required`, `duration`, `count`, `file_path`, ...) turn
//! an optional raw value into a checked one, reporting at the key's path. What a value must look
//! like is `check.rs`'s job; which keys a section has is `compile.rs`'s.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{DocumentMut, ImDocument};

use super::duration::parse_duration;
use super::files::FileKind;
use super::locate::{line_of, remove, KeyPath};
use super::model::Config;
use super::problem::{Loaded, Problem};

/// A problem has been recorded for this value; whatever needed it cannot be built.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reported;

pub(super) type Checked<T> = Result<T, Reported>;

/// Collects every item's outcome (no short-circuit, so every problem is reported).
pub(super) fn all<T>(items: Vec<Checked<T>>) -> Checked<Vec<T>> {
    items.into_iter().collect()
}

/// The loader's state: where problems go and how to find their lines.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    pub(super) doc: &'a ImDocument<&'a str>,
    /// Directory relative paths in the configuration are resolved against.
    pub(super) base: PathBuf,
    pub(super) check_files: bool,
    pub(super) errors: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
    /// Keys removed after a problem was reported for them: not "missing", just already reported.
    pub(super) pruned: HashSet<KeyPath>,
}

impl Ctx<'_> {
    pub(super) fn problem(&self, path: &KeyPath, message: String) -> Problem {
        Problem {
            file: self.file.to_path_buf(),
            line: line_of(self.doc, path),
            path: path.to_string(),
            message,
        }
    }

    pub(super) fn error(&mut self, path: &KeyPath, message: impl Into<String>) -> Reported {
        let p = self.problem(path, message.into());
        self.errors.push(p);
        Reported
    }

    pub(super) fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        let p = self.problem(path, message.into());
        self.warnings.push(p);
    }

    pub(super) fn line(&self, path: &KeyPath) -> usize {
        line_of(self.doc, path)
    }

    /// Removes the value at `path` from `doc`; false when there was nothing to remove.
    pub(super) fn prune(&mut self, doc: &mut DocumentMut, path: &KeyPath) -> bool {
        match remove(doc, path) {
            Some(removed) => {
                self.pruned.insert(removed);
                true
            }
            None => false,
        }
    }

    /// Whether a problem was already reported for this key or for something inside it (the key,
    /// an enclosing one, or one below it was removed for it).
    pub(super) fn reported_within(&self, path: &KeyPath) -> bool {
        self.pruned
            .iter()
            .any(|p| path.starts_with(p) || p.starts_with(path))
    }

    /// Whether a problem was already reported for this key (it was removed for it).
    pub(super) fn was_pruned(&self, path: &KeyPath) -> bool {
        self.pruned.iter().any(|p| path.starts_with(p))
    }

    pub(super) fn check<T>(&mut self, path: &KeyPath, result: Result<T, String>) -> Checked<T> {
        result.map_err(|message| self.error(path, message))
    }

    /// Checks every element of a list at its index (`path[i]`), reporting each problem, and
    /// keeps the first of duplicate values in order.
    pub(super) fn unique_list<I, T: PartialEq>(
        &mut self,
        path: &KeyPath,
        items: impl IntoIterator<Item = I>,
        mut check: impl FnMut(I) -> Result<T, String>,
    ) -> Checked<Vec<T>> {
        let mut out = Ok(Vec::new());
        for (i, item) in items.into_iter().enumerate() {
            match (self.check(&path.index(i), check(item)), &mut out) {
                (Ok(value), Ok(list)) if !list.contains(&value) => list.push(value),
                (Err(r), _) => out = Err(r),
                _ => {}
            }
        }
        out
    }

    pub(super) fn required<T>(&mut self, value: Option<T>, path: &KeyPath) -> Checked<T> {
        match value {
            Some(v) => Ok(v),
            None if self.was_pruned(path) => Err(Reported),
            None => Err(self.error(path, "required key is missing")),
        }
    }

    pub(super) fn required_table<T>(&mut self, value: Option<T>, path: &KeyPath) -> Checked<T> {
        match value {
            Some(v) => Ok(v),
            None if self.was_pruned(path) => Err(Reported),
            None => Err(self.error(path, format!("required table [{path}] is missing"))),
        }
    }

    /// A required, non-empty string.
    pub(super) fn text(&mut self, value: Option<String>, path: &KeyPath) -> Checked<String> {
        let v = self.required(value, path)?;
        self.check(path, non_empty(v))
    }

    /// An optional string that must not be empty when present.
    pub(super) fn opt_text(
        &mut self,
        value: Option<String>,
        path: &KeyPath,
    ) -> Checked<Option<String>> {
        value.map(|v| self.check(path, non_empty(v))).transpose()
    }

    pub(super) fn duration(
        &mut self,
        value: Option<String>,
        path: &KeyPath,
        default: Duration,
        zero: Zero,
    ) -> Checked<Duration> {
        Ok(self.opt_duration(value, path, zero)?.unwrap_or(default))
    }

    pub(super) fn opt_duration(
        &mut self,
        value: Option<String>,
        path: &KeyPath,
        zero: Zero,
    ) -> Checked<Option<Duration>> {
        let Some(text) = value else { return Ok(None) };
        let d = self.check(path, parse_duration(&text))?;
        if d.is_zero() && zero == Zero::Rejected {
            return Err(self.error(
                path,
                format!("{text:?} is not allowed here: must be greater than 0"),
            ));
        }
        Ok(Some(d))
    }

    pub(super) fn count(
        &mut self,
        value: Option<i64>,
        path: &KeyPath,
        default: usize,
        min: i64,
        max: i64,
    ) -> Checked<usize> {
        let Some(n) = value else { return Ok(default) };
        if n < min || n > max {
            let range = if max == i64::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            return Err(self.error(path, format!("must be {range}, found {n}")));
        }
        self.check(
            path,
            usize::try_from(n).map_err(|_| format!("{n} is too large")),
        )
    }

    pub(super) fn flag(value: Option<bool>) -> bool {
        value.unwrap_or(false)
    }

    /// A file path, resolved against the configuration's directory; with `load_file`, it must
    /// name a readable file.
    pub(super) fn file_path(
        &mut self,
        value: String,
        path: &KeyPath,
        kind: FileKind,
    ) -> Checked<PathBuf> {
        if value.is_empty() {
            return Err(self.error(path, "must not be empty"));
        }
        let resolved = self.base.join(&value);
        if self.check_files {
            let readable = std::fs::File::open(&resolved).and_then(|f| f.metadata());
            match readable {
                Ok(meta) if meta.is_file() => {
                    if let Err(message) = kind.validate(&resolved) {
                        let shown = resolved.display().to_string();
                        return Err(self.error(path, format!("{shown:?}: {message}")));
                    }
                }
                Ok(_) => {
                    return Err(self.error(
                        path,
                        format!("{:?} is not a file", resolved.display().to_string()),
                    ))
                }
                Err(e) => {
                    return Err(self.error(
                        path,
                        format!("cannot read {:?}: {e}", resolved.display().to_string()),
                    ))
                }
            }
        }
        Ok(resolved)
    }

    pub(super) fn opt_file(
        &mut self,
        value: Option<String>,
        path: &KeyPath,
        kind: FileKind,
    ) -> Checked<Option<PathBuf>> {
        value.map(|v| self.file_path(v, path, kind)).transpose()
    }

    pub(super) fn finish(self, config: Option<Config>) -> Result<Loaded, Vec<Problem>> {
        let mut errors = self.errors;
        let mut warnings = self.warnings;
        errors.sort_by_key(|p| p.line);
        warnings.sort_by_key(|p| p.line);
        match config {
            Some(config) if errors.is_empty() => Ok(Loaded { config, warnings }),
            _ if errors.is_empty() => Err(vec![Problem {
                file: self.file.to_path_buf(),
                line: 1,
                path: ".".to_owned(),
                message: "the configuration could not be loaded".to_owned(),
            }]),
            _ => Err(errors),
        }
    }
}

/// Whether a zero duration makes sense for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Zero {
    Allowed,
    Rejected,
}

pub(super) fn non_empty(v: String) -> Result<String, String> {
    if v.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(v)
    }
}

/// Reports every repeated value (each naming the line of its first use).
pub(super) fn unique(
    ctx: &mut Ctx<'_>,
    values: &[(KeyPath, Option<String>)],
    what: &str,
) -> Checked<()> {
    let mut result = Ok(());
    for (j, (path, value)) in values.iter().enumerate() {
        // An empty value is reported as empty, not also as a duplicate.
        let Some(value) = value.as_ref().filter(|v| !v.is_empty()) else {
            continue;
        };
        let first = values[..j]
            .iter()
            .find(|(_, v)| v.as_deref() == Some(value.as_str()));
        if let Some((first, _)) = first {
            let line = ctx.line(first);
            result = Err(ctx.error(
                path,
                format!("duplicate {what} {value:?} (first used on line {line})"),
            ));
        }
    }
    result
}
