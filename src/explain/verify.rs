//! Phases 3 and 4 described: the credential (with the token's unverified header, for
//! orientation), the issuers' key sets (awaited as `serve`'s readiness does), what
//! `Authenticator::verify_traced` reported (the key that verified the token, the token's
//! claims), and the sender constraint its `cnf` names with the phase's verdict on it.
//! The verdicts are the phase's; this file only words them.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::report::{
    CredentialStep, IssuerKeysStep, KeyUsed, SenderStep, TimeClaim, Unverified, VerificationStep,
};
use super::{human, secs, sha256_prefix, State, KEYS_POLL, KEYS_SLACK};
use crate::authn::{unix_now, Credential, SignedWith, Token, VerifyObserver};
use crate::config::{AuthMode, Config, Route};
use crate::reason::{AuthMethod, Reason};
use crate::rejection::Rejection;
use crate::token::claims::{numeric_date, Claims, Round};
use crate::token::jwt;

impl State {
    /// Waits (bounded) until every issuer's first key load has succeeded or failed, as `serve`'s
    /// readiness does, and describes each.
    pub(super) async fn await_keys(&self) -> Vec<IssuerKeysStep> {
        let issuers = self.authn.issuers();
        let slowest = self
            .config
            .issuers
            .iter()
            .map(|i| i.fetch_timeout)
            .max()
            .unwrap_or_default();
        let deadline = Instant::now() + slowest * 2 + KEYS_SLACK;
        let all = || (0..self.config.issuers.len()).filter_map(|i| issuers.get(i));
        while Instant::now() < deadline && !all().all(|k| k.is_ready() || k.refresh_counts().1 > 0)
        {
            tokio::time::sleep(KEYS_POLL).await;
        }
        all()
            .map(|keys| {
                let issuer = keys.issuer();
                let wants_jwks = issuer.algorithms.iter().any(|a| !a.is_hmac());
                let ready = keys.is_ready();
                IssuerKeysStep {
                    id: issuer.id.clone(),
                    issuer: issuer.issuer.clone(),
                    ready,
                    keys: keys.keys().map_or(0, |k| k.len()),
                    source: match (wants_jwks, self.offline_keys) {
                        (false, _) => "none",
                        (true, true) => "file",
                        (true, false) => "fetched",
                    },
                    error: match (ready, keys.last_error()) {
                        (_, Some(error)) => Some(error),
                        (false, None) => Some(format!(
                            "no key set loaded within {}s",
                            (slowest * 2 + KEYS_SLACK).as_secs()
                        )),
                        (true, None) => None,
                    },
                }
            })
            .collect()
    }
}

/// Phase 3's result, with the token's unverified header for orientation.
pub(super) fn credential_step(credential: &Credential<'_>, route: &Route) -> CredentialStep {
    let (scheme, raw) = match credential {
        Credential::None if route.auth == AuthMode::Public => ("not_examined", None),
        Credential::None => ("none", None),
        Credential::Bearer(raw) => ("bearer", Some(raw)),
        Credential::Dpop(raw) => ("dpop", Some(raw)),
    };
    let Some(raw) = raw else {
        return CredentialStep {
            scheme,
            token_sha256: None,
            format: None,
            unverified: None,
            refused: None,
        };
    };
    let (format, unverified) = if raw.is_jwt() {
        ("jwt", Some(unverified(raw.expose())))
    } else {
        ("opaque", None)
    };
    CredentialStep {
        scheme,
        token_sha256: Some(sha256_prefix(raw.expose())),
        format: Some(format),
        unverified,
        refused: None,
    }
}

/// A JWT's header and time claims, untrusted (`jwt::parse` checks only its shape).
fn unverified(token: &str) -> Unverified {
    let parsed = match jwt::parse(token) {
        Ok(parsed) => parsed,
        Err(error) => {
            return Unverified {
                alg: None,
                kid: None,
                typ: None,
                iss: None,
                times: Vec::new(),
                malformed: Some(error.description()),
            }
        }
    };
    let header_text = |name: &str| {
        parsed
            .header()
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let claims = parsed.unverified_claims();
    let now = unix_now();
    let times = ["exp", "nbf", "iat"]
        .into_iter()
        .filter_map(|claim| {
            let value = claims.get(claim)?;
            let relative = match numeric_date(value, Round::Down) {
                Some(at) if at >= now => format!("in {}", human(secs(at - now))),
                Some(at) => format!("{} ago", human(secs(now - at))),
                None => "not a NumericDate".to_owned(),
            };
            Some(TimeClaim {
                claim,
                value: value.clone(),
                relative,
            })
        })
        .collect();
    Unverified {
        alg: Some(parsed.alg().name().to_owned()),
        kid: parsed.kid().map(str::to_owned),
        typ: header_text("typ"),
        iss: parsed.unverified_issuer().map(str::to_owned),
        times,
        malformed: None,
    }
}

/// What `Authenticator::verify_traced` reported.
#[derive(Default)]
pub(super) struct Seen {
    /// The signature: issuer index, alg, and the key (or the HMAC secret) that verified it.
    signed: Option<Signed>,
    /// (issuer index, claims, how it was verified) of the token that passed.
    pub(super) token: Option<(usize, Arc<Claims>, AuthMethod)>,
}

struct Signed {
    issuer: usize,
    alg: &'static str,
    key: KeyUsed,
}

impl VerifyObserver for Seen {
    fn signed(&mut self, signed: SignedWith<'_>) {
        let key = match signed.key {
            Some(facts) => KeyUsed {
                source: "jwks",
                kid: facts.kid.map(str::to_owned),
                thumbprint: Some(facts.thumbprint.to_owned()),
            },
            None => KeyUsed {
                source: "hmac_secret",
                kid: None,
                thumbprint: None,
            },
        };
        self.signed = Some(Signed {
            issuer: signed.issuer,
            alg: signed.alg.name(),
            key,
        });
    }

    fn token(&mut self, token: &Token<'_>) {
        self.token = Some((token.issuer, token.claims.clone(), token.auth));
    }
}

pub(super) fn verification_step(
    config: &Config,
    seen: &Seen,
    refused: Option<(Reason, String)>,
) -> VerificationStep {
    let issuer = seen
        .token
        .as_ref()
        .map(|(i, _, _)| *i)
        .or(seen.signed.as_ref().map(|s| s.issuer))
        .and_then(|i| config.issuers.get(i));
    // A failure after the token passed is its sender constraint or the route's `issuers`: the
    // token itself verified, and the later steps say what failed.
    let (error, reason) = match refused {
        Some((reason, description)) if seen.token.is_none() => {
            (Some(description), Some(reason.as_str()))
        }
        _ => (None, None),
    };
    VerificationStep {
        verified: seen.token.is_some(),
        method: seen.token.as_ref().map(|(_, _, auth)| match auth {
            AuthMethod::Introspection => "introspection",
            _ => "jwt",
        }),
        issuer: issuer.map(|i| i.issuer.clone()),
        issuer_id: issuer.map(|i| i.id.clone()),
        alg: seen.signed.as_ref().map(|s| s.alg.to_owned()),
        key: seen.signed.as_ref().map(|s| s.key.clone()),
        claims: seen.token.as_ref().map(|(_, claims, _)| (**claims).clone()),
        error,
        reason,
    }
}

/// The token's binding as its `cnf` names it, and the phase's verdict on it.
pub(super) fn sender_step(
    scheme: &'static str,
    claims: &Claims,
    route: &Route,
    error: Option<&Rejection>,
) -> SenderStep {
    let cnf = claims.get("cnf").and_then(Value::as_object);
    let jkt = cnf.and_then(|c| c.get("jkt")).and_then(Value::as_str);
    let x5t = cnf.and_then(|c| c.get("x5t#S256")).and_then(Value::as_str);
    let binding = match (claims.get("cnf"), jkt, x5t) {
        (None, _, _) => "none",
        (_, Some(_), _) => "dpop",
        (_, None, Some(_)) => "mtls",
        _ => "unsupported",
    };
    let refusal = match error {
        Some(
            r @ (Rejection::Dpop { .. }
            | Rejection::InvalidToken {
                reason: Reason::SenderConstraint | Reason::Malformed,
                ..
            }),
        ) => Some(r),
        Some(r @ Rejection::Unavailable { .. }) => Some(r),
        _ => None,
    };
    let detail = match binding {
        "none" if route.require_sender_constrained => {
            "a plain bearer token; this route requires a sender-constrained one (DPoP or mTLS)"
                .to_owned()
        }
        "none" => "a plain bearer token (not sender-constrained)".to_owned(),
        "dpop" => format!(
            "bound to a DPoP key (cnf.jkt {}): it must be sent as Authorization: DPoP with a DPoP \
             proof for this exact request{}",
            jkt.unwrap_or_default(),
            x5t.map(|t| format!(
                ", on a TLS connection with the client certificate of cnf x5t#S256 {t}"
            ))
            .unwrap_or_default()
        ),
        "mtls" => format!(
            "bound to a TLS client certificate (cnf x5t#S256 {})",
            x5t.unwrap_or_default()
        ),
        _ => "cnf names a confirmation method tokengate cannot check".to_owned(),
    };
    let note = match (binding, scheme) {
        ("mtls", _) | ("dpop", _) if x5t.is_some() => Some(
            "explain cannot present a TLS client certificate: this is the answer for a \
             connection without that certificate; serve accepts the token only from a client \
             whose certificate has this SHA-256 thumbprint"
                .to_owned(),
        ),
        ("dpop", "dpop") => Some(
            "the proof given with --header 'DPoP: ...' was checked against a fresh replay cache \
             (a proof already used at serve passes here, never there)"
                .to_owned(),
        ),
        ("dpop", _) => Some(
            "to check a proof, give --header 'DPoP: <proof>' (the token is then sent with the \
             DPoP scheme)"
                .to_owned(),
        ),
        _ => None,
    };
    let verdict = match refusal {
        Some(_) => "refused",
        None => "accepted",
    };
    SenderStep {
        binding,
        scheme,
        verdict,
        detail,
        note,
    }
}
