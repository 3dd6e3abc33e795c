//! SIGHUP: load the configuration file again and swap it in atomically (SPEC §8).
//!
//! A valid file becomes a new `Gateway` generation that new requests use; requests in flight
//! keep the generation they started with. Issuers whose settings did not change keep their key
//! state (no refetch, never unready). An invalid file changes nothing: every problem `check`
//! would print is logged at error level. Listener addresses, `[server.tls]` and the connection
//! settings (`header_read_timeout`, `idle_timeout`, `max_concurrent_streams`, `max_connections`,
//! `shutdown_grace`) are read at start only; a change to one of them is logged as needing a
//! restart, and the rest of the file takes effect.

use std::path::Path;
use std::sync::Arc;

use crate::config::{self, Config};
use crate::gateway::Gateway;
use crate::server::SharedGateway;

/// Reloads `path` into `shared`. Returns whether the new configuration took effect.
pub fn reload(path: &Path, shared: &SharedGateway) -> bool {
    let metrics = shared.load().metrics().clone();
    let ok = apply(path, shared);
    metrics.config_reload(ok);
    ok
}

fn apply(path: &Path, shared: &SharedGateway) -> bool {
    let loaded = match config::load_file(path) {
        Ok(loaded) => loaded,
        Err(problems) => {
            for problem in &problems {
                tracing::error!(problem = %problem, "configuration reload rejected");
            }
            tracing::error!(
                problems = problems.len(),
                "configuration reload rejected; the previous configuration keeps serving"
            );
            return false;
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!(warning = %warning, "configuration warning");
    }
    let current = shared.load_full();
    warn_about_start_only_settings(&current.config, &loaded.config);
    match Gateway::new(Arc::new(loaded.config), Some(&current)) {
        Ok(gateway) => {
            shared.store(Arc::new(gateway));
            tracing::info!(config = %path.display(), "configuration reloaded");
            true
        }
        Err(error) => {
            tracing::error!(%error, "configuration reload rejected; the previous configuration keeps serving");
            false
        }
    }
}

fn warn_about_start_only_settings(old: &Config, new: &Config) {
    let admin = |c: &Config| c.admin.as_ref().map(|a| a.listen);
    let changed = [
        ("server.listen", old.server.listen != new.server.listen),
        ("admin.listen", admin(old) != admin(new)),
        ("server.tls", old.server.tls != new.server.tls),
        (
            "server.header_read_timeout",
            old.server.header_read_timeout != new.server.header_read_timeout,
        ),
        (
            "server.idle_timeout",
            old.server.idle_timeout != new.server.idle_timeout,
        ),
        (
            "server.max_concurrent_streams",
            old.server.max_concurrent_streams != new.server.max_concurrent_streams,
        ),
        (
            "server.max_connections",
            old.server.max_connections != new.server.max_connections,
        ),
        ("telemetry", old.telemetry != new.telemetry),
        (
            "server.shutdown_grace",
            old.server.shutdown_grace != new.server.shutdown_grace,
        ),
    ];
    for (key, _) in changed.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(
            key,
            "changed setting is read at start only; restart to apply it"
        );
    }
}
