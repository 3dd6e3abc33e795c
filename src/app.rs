//! Starting the proxy: the one start-up path `serve`, `demo` and the integration tests share.
//!
//! [`start`] builds the first configuration generation (keys loaded, background tasks running),
//! binds the listeners (a port in use or an unusable certificate fails here, exit 1), and serves
//! until `shutdown` resolves. What it returns knows the bound addresses and hands out a
//! [`Reloader`], which loads the file again and swaps the new generation in (SIGHUP).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::reload;
use crate::server::{self, Listeners, SharedGateway};

/// A running proxy.
pub struct Running {
    /// The main listener's address (its port, when the configuration asked for port 0).
    pub addr: SocketAddr,
    /// The admin listener's address, when there is one.
    pub admin: Option<SocketAddr>,
    gateway: SharedGateway,
    task: JoinHandle<()>,
}

/// Starts serving `config` until `shutdown` resolves (then drains, up to `shutdown_grace`).
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, String> {
    let config = Arc::new(config);
    let gateway = Gateway::new(config.clone(), None)
        .map_err(|e| format!("{}: {e}", config.source.display()))?;
    let listeners = Listeners::bind(&config).await?;
    let addr = listeners
        .main_addr()
        .ok_or("the main listener has no local address")?;
    let admin = listeners.admin_addr();
    let tracing = gateway.tracing().clone();
    let gateway: SharedGateway = Arc::new(ArcSwap::from_pointee(gateway));
    let served = server::run(listeners, gateway.clone(), shutdown);
    let task = tokio::spawn(async move {
        served.await;
        // Spans still queued go to the collector, for a bounded time.
        tracing.shutdown(Duration::from_secs(5)).await;
    });
    Ok(Running {
        addr,
        admin,
        gateway,
        task,
    })
}

/// Reloads the configuration of a running proxy (SIGHUP, SPEC §8).
#[derive(Clone)]
pub struct Reloader(SharedGateway);

impl Reloader {
    /// Loads `path` again and swaps it in atomically; whether it took effect.
    pub fn reload(&self, path: &Path) -> bool {
        reload::reload(path, &self.0)
    }
}

impl Running {
    pub fn reloader(&self) -> Reloader {
        Reloader(self.gateway.clone())
    }

    /// Waits until the server has shut down.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Stops serving at once, without draining (tests that drop a proxy).
    pub fn abort(&self) {
        self.task.abort();
    }
}
