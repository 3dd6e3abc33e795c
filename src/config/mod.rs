//! Configuration: the TOML file of SPEC §3, turned once into the immutable `model::Config`.
//!
//! - `raw`: the serde schema as written (every key of SPEC §3) and the table of known keys.
//! - `load`: the pipeline (parse, `${ENV}`, unknown keys, types, validation, compile) that
//!   reports every problem as `FILE:LINE: KEY.PATH: message`, plus warnings for `check`.
//! - `compile` (with `issuers`, `routes`): each table checked and built into the model;
//!   `check`: pure value checks; `ctx`: the loader's problem list and typed readers.
//! - `locate`: key paths and the line each points at; `problem`: what a load produces
//!   (`Loaded`, `Problem`).
//! - `env`: `${ENV_VAR}` expansion; `duration`: `"250ms"`/`"30s"`/`"5m"`/`"1h"`.
//! - `model`: the compiled types the rest of the proxy reads.
//!
//! `summary` renders the short overview `tokengate check` prints for a valid file.

mod check;
mod compile;
mod ctx;
mod duration;
mod env;
mod files;
mod issuers;
mod load;
mod locate;
pub mod model;
mod problem;
pub mod raw;
mod routes;

#[cfg(test)]
mod tests;

pub use load::{load_file, load_str};
pub use model::*;
pub use problem::{Loaded, Problem};

use std::fmt::Write as _;

/// A few lines describing a loaded configuration: listeners, upstream, issuers, routes.
pub fn summary(cfg: &Config) -> String {
    let mut out = String::new();
    let s = &cfg.server;
    let tls = if s.tls.is_some() { "TLS on" } else { "TLS off" };
    let _ = writeln!(out, "listen   {} ({tls})", s.listen);
    match &cfg.admin {
        Some(a) => {
            let _ = writeln!(out, "admin    {}", a.listen);
        }
        None => out.push_str("admin    none\n"),
    }
    let _ = writeln!(out, "upstream {}", cfg.upstream.target.origin);
    if cfg.issuers.is_empty() {
        out.push_str("issuers  none\n");
    }
    for i in &cfg.issuers {
        let _ = writeln!(out, "issuer   {}: {}", i.id, i.issuer);
    }
    let _ = writeln!(out, "routes   {}", cfg.routes.len());
    for r in &cfg.routes {
        let path = match &r.path {
            PathMatch::Exact(p) => format!("path {p}"),
            PathMatch::Prefix(p) if p.is_empty() => "prefix /".to_owned(),
            PathMatch::Prefix(p) => format!("prefix {p}"),
        };
        let host = r
            .host
            .as_ref()
            .map(|h| match h.port {
                Some(port) => format!(", host {}:{port}", h.name),
                None => format!(", host {}", h.name),
            })
            .unwrap_or_default();
        let methods = r.methods.as_ref().map_or_else(
            || "any method".to_owned(),
            |m| {
                m.iter()
                    .map(http::Method::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
        let auth = match r.auth {
            AuthMode::Public => "public",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        };
        let _ = writeln!(out, "  {}: {path}{host}, {methods}, auth {auth}", r.id);
    }
    out
}
