//! The real `tokengate serve` binary for black-box tests: started from a TOML string through
//! [`Process`](super::process::Process), its main and admin addresses read from the startup
//! line, and a bounded wait until every issuer has keys. Upstreams and issuers are the tests'
//! own in-process servers; this module only knows the proxy's outside.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::process::{strip_ansi, Process};

/// How long the proxy may take to start, or its issuers to get their keys, on a slow machine.
const START: Duration = Duration::from_secs(60);

pub struct Gate {
    pub process: Process,
    pub addr: SocketAddr,
    /// Set when the configuration has an `[admin]` listener.
    pub admin: Option<SocketAddr>,
}

impl Gate {
    /// Starts the binary on `toml` with `env` added; returns once it has logged its startup
    /// line. Needs a multi-threaded runtime: the wait blocks this thread while the test's own
    /// upstreams keep serving on the others.
    pub fn start(toml: &str, env: &[(&str, &str)]) -> Gate {
        let (process, addr) = tokio::task::block_in_place(|| Process::serve_ready(toml, env));
        let admin = startup_admin_addr(&process.stderr());
        Gate {
            process,
            addr,
            admin,
        }
    }

    /// [`Gate::start`], then waits until the admin `/readyz` answers 200 (every issuer has
    /// keys). The configuration must have an `[admin]` listener.
    pub async fn start_ready(toml: &str) -> Gate {
        let gate = Gate::start(toml, &[]);
        gate.wait_ready().await;
        gate
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the proxy logged so far.
    pub fn log(&self) -> String {
        self.process.stderr()
    }

    /// Polls `/readyz` on the admin listener (bounded).
    pub async fn wait_ready(&self) {
        let admin = self
            .admin
            .unwrap_or_else(|| panic!("no admin listener in the startup line:\n{}", self.log()));
        let url = format!("http://{admin}/readyz");
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if super::get(&url, &[]).await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the proxy never became ready\n{}", self.log());
    }
}

/// The `admin` field of the "tokengate serving" line (JSON or human format).
pub fn startup_admin_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("tokengate serving"))?;
    let line = strip_ansi(line.trim());
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(&line).ok()?;
        let admin = value
            .get("admin")
            .or_else(|| value.get("fields").and_then(|f| f.get("admin")))?;
        return admin.as_str()?.parse().ok();
    }
    let start = line.find("admin=")? + "admin=".len();
    let value = line[start..].split_whitespace().next()?;
    value.trim_matches('"').parse().ok()
}

/// The usual black-box world: an echo upstream, a mock issuer `corp` (audience `api`) and the
/// proxy in front of them, ready, with `routes` (TOML `[[route]]` tables) after the common
/// sections.
pub struct World {
    pub echo: super::echo::Echo,
    pub issuer: super::issuer::MockIssuer,
    pub gate: Gate,
}

impl World {
    pub async fn start(routes: &str) -> World {
        let echo = super::echo::Echo::start().await;
        let issuer = super::issuer::MockIssuer::start().await;
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [upstream]\nurl = \"http://{}\"\ntimeout = \"5s\"\n\n{}\n{routes}",
            echo.addr,
            issuer.config_toml("corp", &["api"])
        );
        let gate = Gate::start_ready(&toml).await;
        World { echo, issuer, gate }
    }
}
