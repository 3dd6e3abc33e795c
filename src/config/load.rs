//! Loading a configuration: text in, a compiled `model::Config` (or every problem) out.
//!
//! The pipeline, each step collecting problems instead of stopping at the first:
//!
//! 1. parse with `toml_edit` (a syntax error is the one problem that ends loading at once);
//! 2. report every key the schema does not know (`raw::unknown_keys`), then remove it;
//! 3. expand `${ENV}` in every string (`env.rs`); an unexpandable value is reported, removed;
//! 4. deserialize into the raw schema; on a type error, report it at its path, remove the
//!    offending value and try again (bounded), so one bad value does not hide the next;
//! 5. validate and compile every section into the model, reporting each bad value at its key
//!    path; a key removed in 2-4 is not reported again as "missing";
//! 6. with `load_file`, check that every file the configuration references can be read.
//!
//! Lines come from `locate.rs`, which maps a key path to the original text, so a problem found
//! at any step has the same `FILE:LINE: KEY.PATH: message` form (SPEC §2). A syntax error has
//! no key path and is reported as `(syntax)`.
//!
//! This file is the pipeline only. Step 5 lives in `compile.rs` (one function per table), with
//! `issuers.rs` and `routes.rs` for the array tables, `check.rs` for the pure value checks and
//! `ctx.rs` for the state every step reports into.
//!
//! Deliberately not here: key contents (PEM parsing, thumbprints), what makes a claim rule valid
//! (`crate::policy::Policy::compile`, which `routes.rs` calls and whose problems it reports at
//! their key paths), and route matching.

use std::collections::HashSet;
use std::path::Path;

use toml_edit::{DocumentMut, ImDocument};

use super::compile::compile;
use super::ctx::Ctx;
use super::env::{expand_document, Env};
use super::locate::{line_at, KeyPath, Seg};
use super::problem::{Loaded, Problem};
use super::raw::{self, RawConfig};

/// Reads and loads `file`: `${ENV}` from the process environment, relative paths resolved
/// against the file's directory, and every referenced file (TLS, CA, signing keys) checked to be
/// readable. On failure, every problem found, in line order.
pub fn load_file(file: &Path) -> Result<Loaded, Vec<Problem>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![Problem {
            file: file.to_path_buf(),
            line: 1,
            path: ".".to_owned(),
            message: format!("cannot read the configuration file: {e}"),
        }]
    })?;
    let env = |name: &str| std::env::var(name).ok();
    load(file, &text, &env, true)
}

/// Loads configuration text without touching the filesystem or the process environment:
/// `file` is only used for messages and to resolve relative paths, `env` looks variables up.
pub fn load_str(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Vec<Problem>> {
    load(file, text, env, false)
}

/// How many type errors are reported (and removed) before giving up on deserialization.
const MAX_TYPE_ERRORS: usize = 100;

fn load(file: &Path, text: &str, env: Env<'_>, check_files: bool) -> Result<Loaded, Vec<Problem>> {
    let located = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => return Err(vec![syntax_problem(file, text, &e)]),
    };
    let mut doc = located.clone().into_mut();
    let mut ctx = Ctx {
        file,
        doc: &located,
        base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        check_files,
        errors: Vec::new(),
        warnings: Vec::new(),
        pruned: HashSet::new(),
    };
    for (path, message) in raw::unknown_keys(doc.as_item()) {
        ctx.error(&path, message);
        ctx.prune(&mut doc, &path);
    }
    for (path, message) in expand_document(&mut doc, env) {
        ctx.error(&path, message);
        ctx.prune(&mut doc, &path);
    }
    let config = deserialize(&mut ctx, &mut doc).and_then(|raw| compile(&mut ctx, raw).ok());
    ctx.finish(config)
}

fn syntax_problem(file: &Path, text: &str, e: &toml_edit::TomlError) -> Problem {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Problem {
        file: file.to_path_buf(),
        line: e.span().map_or(1, |s| line_at(text, s.start)),
        path: "(syntax)".to_owned(),
        message: format!("invalid TOML: {message}"),
    }
}

/// Step 4: typed deserialization, removing each value serde rejects until it succeeds.
fn deserialize(ctx: &mut Ctx<'_>, doc: &mut DocumentMut) -> Option<RawConfig> {
    for _ in 0..MAX_TYPE_ERRORS {
        let de = toml_edit::de::Deserializer::from(doc.clone());
        match serde_path_to_error::deserialize::<_, RawConfig>(de) {
            Ok(raw) => return Some(raw),
            Err(e) => {
                let path = KeyPath::from_serde(e.path());
                let mut message = humanize(e.inner().message());
                if is_duration_key(&path) && message.starts_with("invalid type: integer") {
                    message.push_str(" (durations are strings such as \"30s\")");
                }
                ctx.error(&path, message);
                if !ctx.prune(doc, &path) {
                    return None;
                }
            }
        }
    }
    ctx.error(
        &KeyPath::root(),
        format!("stopped after {MAX_TYPE_ERRORS} type errors; fix these and run again"),
    );
    None
}

/// Keys whose value is a duration string, for a hint when a bare number is given.
fn is_duration_key(path: &KeyPath) -> bool {
    const KEYS: [&str; 13] = [
        "header_read_timeout",
        "shutdown_grace",
        "connect_timeout",
        "timeout",
        "clock_skew",
        "fetch_timeout",
        "jwks_refresh",
        "jwks_min_refresh",
        "cache_ttl",
        "negative_cache_ttl",
        "max_age",
        "ttl",
        "userinfo_max_age",
    ];
    matches!(path.segs().last(), Some(Seg::Key(k)) if KEYS.contains(&k.as_str()))
}

/// serde's type names in TOML's words.
fn humanize(message: &str) -> String {
    let mut m = message.to_owned();
    for (from, to) in [
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: table"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected i64", "expected an integer"),
    ] {
        m = m.replace(from, to);
    }
    m
}
