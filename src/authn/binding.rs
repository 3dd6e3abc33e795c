//! Sender constraints (SPEC §4.8): a token bound to a key is accepted only from its holder.
//!
//! - A token presented as `Bearer`: a DPoP-bound one (`cnf.jkt`) is refused with a `DPoP`
//!   challenge; an mTLS-bound one (`cnf["x5t#S256"]`, RFC 8705) is accepted only on a TLS
//!   connection whose client certificate has that SHA-256 thumbprint; a confirmation method
//!   tokengate cannot check is refused (fail closed); on a `require_sender_constrained` route an
//!   unbound token is refused with a `DPoP` challenge, so the client learns which scheme to use.
//! - A token presented as `DPoP`: it must carry `cnf.jkt`, and the request's one `DPoP` header
//!   must be a valid proof by that key for this very request (`token::dpop` runs RFC 9449
//!   §4.3's checks; this file works out the URI the client addressed). A token that is also
//!   bound to a client certificate (`cnf` with both) needs that certificate too.
//!
//! The same rules hold for a JWT and for an opaque token whose introspection answer has `cnf`.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderValue;
use ipnet::IpNet;
use serde_json::Value;

use crate::config::{Config, Route};
use crate::inbound::Inbound;
use crate::reason::{AuthMethod, Reason};
use crate::rejection::{DpopError, Rejection};
use crate::scrub::{self, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::telemetry::metrics::{DpopOutcome, FixedLabel as _, Metrics};
use crate::token::claims::Claims;
use crate::token::dpop::{DpopChecker, ExpectedHtu, ProofErrorKind, ProofRequest};

/// How long a client is told to wait when the replay check cannot run.
const RETRY_AFTER_SECS: u32 = 1;

/// The sender-constraint checks of one configuration generation.
pub struct Senders {
    dpop: Arc<DpopChecker>,
    /// `[dpop].algorithms`, space-separated, for the `DPoP` challenge's `algs`.
    algs: Arc<str>,
    /// `public_base_url` split into scheme and authority, once.
    public_base: Option<(String, String)>,
    trusted_proxies: Vec<IpNet>,
    allow_path_parameters: bool,
    metrics: Arc<Metrics>,
}

impl Senders {
    pub fn new(config: &Config, dpop: Arc<DpopChecker>, metrics: Arc<Metrics>) -> Senders {
        let algs: Vec<&str> = dpop.algorithms().iter().map(|a| a.name()).collect();
        let public_base = config.server.public_base_url.as_deref().and_then(|url| {
            let (scheme, authority) = url.split_once("://")?;
            Some((
                scheme.to_owned(),
                authority.trim_end_matches('/').to_owned(),
            ))
        });
        Senders {
            dpop,
            algs: algs.join(" ").into(),
            public_base,
            trusted_proxies: config.server.trusted_proxies.clone(),
            allow_path_parameters: config.server.allow_path_parameters,
            metrics,
        }
    }

    pub fn dpop(&self) -> &Arc<DpopChecker> {
        &self.dpop
    }

    /// A fresh server nonce when `[dpop].require_nonce` is on (for `DPoP-Nonce`).
    pub fn current_nonce(&self, now: i64) -> Option<HeaderValue> {
        self.dpop.current_nonce(now)
    }

    /// A token presented with the `Bearer` scheme; `auth` is how it was verified.
    pub fn bearer(
        &self,
        route: &Route,
        claims: &Claims,
        client_cert: Option<&str>,
        auth: AuthMethod,
    ) -> Result<AuthMethod, Rejection> {
        let Some(cnf) = claims.get("cnf") else {
            if route.require_sender_constrained {
                return Err(self.challenge(
                    DpopError::InvalidToken,
                    Reason::SenderConstraint,
                    "this route requires a sender-constrained token (DPoP or mTLS-bound)",
                ));
            }
            return Ok(auth);
        };
        let Some(cnf) = cnf.as_object() else {
            return Err(invalid(
                Reason::Malformed,
                "token cnf claim is not an object",
            ));
        };
        if has_unknown_binding(cnf) {
            return Err(unknown_binding());
        }
        if cnf.contains_key("jkt") {
            return Err(self.challenge(
                DpopError::InvalidToken,
                Reason::SenderConstraint,
                "the token is bound to a DPoP key and must be sent with the DPoP scheme",
            ));
        }
        match cnf.get("x5t#S256").map(Value::as_str) {
            Some(Some(bound)) if client_cert == Some(bound) => Ok(auth),
            Some(_) => Err(invalid(Reason::SenderConstraint, CERT_NOT_PRESENTED)),
            None => Err(unknown_binding()),
        }
    }

    /// A token presented with the `DPoP` scheme: its `cnf.jkt` and the request's proof.
    pub fn dpop_proof(
        &self,
        inbound: &Inbound,
        token: &str,
        claims: &Claims,
        clock_skew_secs: i64,
        now: i64,
    ) -> Result<AuthMethod, Rejection> {
        let jkt = claims
            .get("cnf")
            .and_then(|cnf| cnf.get("jkt"))
            .and_then(Value::as_str);
        let Some(jkt) = jkt else {
            return Err(self.challenge(
                DpopError::InvalidToken,
                Reason::SenderConstraint,
                "the token is not bound to a DPoP key; send it with the Bearer scheme",
            ));
        };
        // Every binding the issuer put in the token must hold: a token also bound to a client
        // certificate needs that certificate as well as the proof, and one bound in a way
        // tokengate cannot check is refused, as it is without `jkt`.
        if claims
            .get("cnf")
            .and_then(Value::as_object)
            .is_some_and(has_unknown_binding)
        {
            return Err(self.challenge(
                DpopError::InvalidToken,
                Reason::SenderConstraint,
                UNKNOWN_BINDING,
            ));
        }
        if let Some(bound) = claims.get("cnf").and_then(|cnf| cnf.get("x5t#S256")) {
            if bound.as_str().is_none() || bound.as_str() != inbound.conn.client_cert.as_deref() {
                return Err(self.challenge(
                    DpopError::InvalidToken,
                    Reason::SenderConstraint,
                    CERT_NOT_PRESENTED,
                ));
            }
        }
        let (scheme, authority) = self.addressed(inbound);
        let request = ProofRequest {
            headers: &inbound.parts.headers,
            method: &inbound.parts.method,
            htu: ExpectedHtu {
                scheme: &scheme,
                authority: &authority,
                path: &inbound.path.forward_path,
                allow_path_parameters: self.allow_path_parameters,
            },
            access_token: token,
            clock_skew_secs,
            bound_jkt: Some(jkt),
        };
        let checked = self.dpop.check(&request, now);
        self.metrics.dpop_proof(match &checked {
            Ok(_) => DpopOutcome::Ok,
            Err(error) => DpopOutcome::from_label(error.outcome()).unwrap_or(DpopOutcome::Invalid),
        });
        match checked {
            Ok(_) => Ok(AuthMethod::Dpop),
            Err(error) => Err(match error.kind() {
                ProofErrorKind::InvalidProof => self.challenge(
                    DpopError::InvalidProof,
                    Reason::InvalidDpopProof,
                    error.description(),
                ),
                ProofErrorKind::InvalidToken => self.challenge(
                    DpopError::InvalidToken,
                    Reason::SenderConstraint,
                    error.description(),
                ),
                ProofErrorKind::UseNonce => Rejection::Dpop {
                    error: DpopError::UseNonce,
                    reason: Reason::UseDpopNonce,
                    description: error.description().into(),
                    algs: self.algs.clone(),
                    nonce: self.dpop.current_nonce(now),
                },
                ProofErrorKind::Unavailable => {
                    tracing::warn!("DPoP replay cache is full of live entries; raise [dpop].replay_cache_entries");
                    Rejection::Unavailable {
                        reason: Reason::Unavailable,
                        description: "the DPoP replay check is unavailable".into(),
                        retry_after_secs: RETRY_AFTER_SECS,
                    }
                }
            }),
        }
    }

    /// The scheme and authority the client addressed (SPEC §4.8 `htu`): `public_base_url`, else
    /// a trusted proxy's `X-Forwarded-Proto`/`-Host` (the first of a list), else the listener's
    /// scheme and the request's canonical host.
    fn addressed<'a>(&'a self, inbound: &'a Inbound) -> (Cow<'a, str>, Cow<'a, str>) {
        if let Some((scheme, authority)) = &self.public_base {
            return (Cow::Borrowed(scheme), Cow::Borrowed(authority));
        }
        let own_scheme = inbound.conn.scheme.as_str();
        let own_host = inbound.host.as_ref().map_or("", |h| h.as_str());
        if !scrub::is_trusted(&self.trusted_proxies, inbound.conn.peer.ip()) {
            return (Cow::Borrowed(own_scheme), Cow::Borrowed(own_host));
        }
        let first = |name| {
            let value = inbound.parts.headers.get(name)?.to_str().ok()?;
            let first = value.split(',').next()?.trim();
            (!first.is_empty()).then_some(first)
        };
        (
            Cow::Borrowed(first(&X_FORWARDED_PROTO).unwrap_or(own_scheme)),
            Cow::Borrowed(first(&X_FORWARDED_HOST).unwrap_or(own_host)),
        )
    }

    /// A token rejection for a request made with the `DPoP` scheme: the same `invalid_token`,
    /// with a `DPoP` challenge instead of a `Bearer` one. Other answers (503) are unchanged.
    pub fn in_dpop_scheme(&self, rejection: Rejection) -> Rejection {
        match rejection {
            Rejection::InvalidToken {
                reason,
                description,
            } => Rejection::Dpop {
                error: DpopError::InvalidToken,
                reason,
                description,
                algs: self.algs.clone(),
                nonce: None,
            },
            other => other,
        }
    }

    fn challenge(&self, error: DpopError, reason: Reason, description: &'static str) -> Rejection {
        Rejection::Dpop {
            error,
            reason,
            description: description.into(),
            algs: self.algs.clone(),
            nonce: None,
        }
    }
}

/// The confirmation methods tokengate checks: RFC 9449 `jkt`, RFC 8705 `x5t#S256`.
const CHECKED_BINDINGS: [&str; 2] = ["jkt", "x5t#S256"];

/// Whether `cnf` names a confirmation method tokengate cannot check (RFC 7800 `jwk`, `kid`,
/// `jku`, `jwe`, or anything else): such a token is refused, whatever else binds it.
fn has_unknown_binding(cnf: &serde_json::Map<String, Value>) -> bool {
    cnf.keys().any(|k| !CHECKED_BINDINGS.contains(&k.as_str()))
}

const UNKNOWN_BINDING: &str = "token is bound by a confirmation method tokengate cannot check";
const CERT_NOT_PRESENTED: &str =
    "token is bound to a TLS client certificate this connection did not present";

fn unknown_binding() -> Rejection {
    invalid(Reason::SenderConstraint, UNKNOWN_BINDING)
}

pub(super) fn invalid(reason: Reason, description: &'static str) -> Rejection {
    Rejection::InvalidToken {
        reason,
        description: description.into(),
    }
}
