//! The key state of every configured issuer, for one configuration generation, and the background
//! tasks that keep it fresh (`token::jwks`). Dropping [`Issuers`] stops the tasks.
//! [`Issuers::with_keys`] is the offline variant: fixed key sets from a saved JWKS, no tasks.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::telemetry::trace::{self, Tracing};
use crate::telemetry::Metrics;
use crate::token::jwks::IssuerKeys;
use crate::token::keys::KeySet;

pub struct Issuers {
    keys: Vec<Arc<IssuerKeys>>,
    /// Issuers with `[issuer.introspection]`, in file order: the ones asked about opaque tokens.
    introspecting: Vec<(usize, Arc<IssuerKeys>)>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.issuer().id))
            .finish()
    }
}

impl Issuers {
    /// Builds the per-issuer state and starts the refresh tasks (must run inside a tokio runtime).
    /// The key state of an issuer whose settings equal one in `previous` (a reload) is carried
    /// over, so its keys stay loaded and no request waits for them (SPEC §8).
    pub fn start(
        config: &Config,
        previous: Option<&Issuers>,
        metrics: &Metrics,
        tracing: &Tracing,
    ) -> Result<Issuers, String> {
        let (stop, stop_rx) = watch::channel(false);
        let mut keys = Vec::with_capacity(config.issuers.len());
        for issuer in &config.issuers {
            let kept = previous.and_then(|p| p.keys.iter().find(|k| k.issuer() == issuer));
            let state = match kept {
                Some(state) => state.clone(),
                None => IssuerKeys::new(issuer.clone())
                    .map_err(|e| format!("issuer {}: {e}", issuer.id))?,
            };
            state.attach_metrics(metrics.issuer(&issuer.id));
            // A carried-over state gets a refresher tied to this generation; the previous
            // generation's stops when that generation is dropped.
            // Background loads carry a `traceparent` too, as root spans of their own.
            tokio::spawn(trace::background(
                tracing,
                state.clone().run(stop_rx.clone()),
            ));
            keys.push(state);
        }
        Ok(Issuers::assemble(keys, stop))
    }

    fn assemble(keys: Vec<Arc<IssuerKeys>>, stop: watch::Sender<bool>) -> Issuers {
        let introspecting = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.issuer().introspection.is_some())
            .map(|(i, k)| (i, k.clone()))
            .collect();
        Issuers {
            keys,
            introspecting,
            stop,
        }
    }

    /// Every issuer with the key set of `jwks` (a saved JWKS document), parsed for each issuer's
    /// allowed algorithms, instead of fetching (`tokengate explain --jwks`): no task fetches
    /// anything, and endpoints come from the configuration only.
    pub fn with_keys(config: &Config, jwks: &[u8]) -> Result<Issuers, String> {
        let (stop, _) = watch::channel(false);
        let mut keys = Vec::with_capacity(config.issuers.len());
        for issuer in &config.issuers {
            let set = KeySet::from_jwks(jwks, &issuer.algorithms)?;
            let state = IssuerKeys::with_keys(issuer.clone(), set)
                .map_err(|e| format!("issuer {}: {e}", issuer.id))?;
            keys.push(state);
        }
        Ok(Issuers::assemble(keys, stop))
    }

    /// A receiver that turns `true` when these issuers are dropped (for tasks tied to them).
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn get(&self, index: usize) -> Option<&Arc<IssuerKeys>> {
        self.keys.get(index)
    }

    /// The issuers that introspect opaque tokens, in file order.
    pub fn introspecting(&self) -> &[(usize, Arc<IssuerKeys>)] {
        &self.introspecting
    }

    /// Ids of issuers without a usable key set yet.
    pub fn not_ready(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| !k.is_ready())
            .map(|k| k.issuer().id.clone())
            .collect()
    }
}

impl Drop for Issuers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
