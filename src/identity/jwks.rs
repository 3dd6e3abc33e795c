//! The published verification keys of the identity assertions (SPEC §5, §7): a JWKS served at
//! `GET /.well-known/tokengate/jwks.json` on the main listener and `GET /jwks.json` on the admin
//! listener.
//!
//! The document is `{"keys":[...]}`: the active key first, then every `previous_keys` entry in
//! configuration order. Each key carries `kty`, `crv`/`x`/`y` (EC, OKP) or `n`/`e` (RSA), `kid`,
//! `alg` and `use: "sig"` — enough for any JOSE library to verify an assertion from this document
//! alone. It is serialized once when the configuration is loaded; serving it clones a `Bytes`.
//!
//! Caching: `Cache-Control: public, max-age=300` ([`MAX_AGE_SECS`]). Assertions live at most
//! `[identity].ttl` (60 s by default), so five minutes keeps verifier load negligible while a key
//! change still reaches every verifier within minutes. A verifier that meets an unknown `kid`
//! should refetch the JWKS at once (most JOSE libraries do). To rotate without any verifier
//! ever seeing an unknown `kid`, pre-publish: list the *new* key's public PEM in `previous_keys`,
//! reload, wait `max-age`, then make it the `signing_key` (the old one moving to `previous_keys`)
//! and reload again. Keep the old key listed for at least `ttl` + `max-age` after that.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response};
use http_body_util::Full;
use serde_json::{Map, Value};

use super::signing::{public_jwk_from_pem, SigningKey};
use crate::token::keys::thumbprint;

/// `max-age` of the published JWKS, in seconds (see the module docs for the reasoning).
pub const MAX_AGE_SECS: u32 = 300;

/// The serialized JWKS, ready to serve.
#[derive(Debug, Clone)]
pub struct PublishedJwks {
    body: Bytes,
    max_age: u32,
    cache_control: HeaderValue,
    kids: Vec<String>,
}

impl PublishedJwks {
    /// The JWKS of the active key (if any) followed by `previous` (public JWKs as
    /// [`public_jwk_from_pem`] returns them, each with a `kid`). An entry whose `kid` is already
    /// listed for the same key (same thumbprint) is published once; two *different* keys under
    /// one `kid` are an error, since a verifier could not tell them apart.
    pub fn new(
        active: Option<&SigningKey>,
        previous: &[Map<String, Value>],
    ) -> Result<PublishedJwks, String> {
        let mut keys: Vec<Map<String, Value>> = Vec::new();
        let mut kids: Vec<String> = Vec::new();
        let mut prints: Vec<String> = Vec::new();
        let entries = active
            .map(SigningKey::public_jwk)
            .into_iter()
            .chain(previous);
        for jwk in entries {
            let kid = jwk
                .get("kid")
                .and_then(Value::as_str)
                .ok_or_else(|| "a published key has no \"kid\"".to_owned())?;
            let print = thumbprint(jwk)
                .ok_or_else(|| format!("the published key {kid:?} is not a valid public key"))?;
            if let Some(i) = kids.iter().position(|k| k == kid) {
                if prints[i] == print {
                    continue;
                }
                return Err(format!(
                    "two different identity keys share the kid {kid:?}; set a distinct \
                     [identity].key_id"
                ));
            }
            kids.push(kid.to_owned());
            prints.push(print);
            keys.push(jwk.clone());
        }
        let keys: Vec<Value> = keys.into_iter().map(Value::Object).collect();
        let mut doc = Map::new();
        doc.insert("keys".to_owned(), Value::Array(keys));
        let body = serde_json::to_vec(&Value::Object(doc))
            .map_err(|e| format!("cannot serialize the JWKS: {e}"))?;
        Ok(PublishedJwks {
            body: Bytes::from(body),
            max_age: MAX_AGE_SECS,
            cache_control: HeaderValue::from_str(&format!("public, max-age={MAX_AGE_SECS}"))
                .map_err(|e| format!("bad Cache-Control value: {e}"))?,
            kids,
        })
    }

    /// [`PublishedJwks::new`] with the previous keys read from PEM files
    /// (`[identity].previous_keys`); errors name the file.
    pub fn load(
        active: Option<&SigningKey>,
        previous_keys: &[impl AsRef<std::path::Path>],
    ) -> Result<PublishedJwks, String> {
        let previous = previous_keys
            .iter()
            .map(|p| public_jwk_from_pem(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        PublishedJwks::new(active, &previous)
    }

    /// The serialized document.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The published `kid`s, in document order (active first).
    pub fn kids(&self) -> &[String] {
        &self.kids
    }

    /// `max-age` of the `Cache-Control` header, in seconds.
    pub fn max_age(&self) -> u32 {
        self.max_age
    }

    /// 200 with the document, `Content-Type: application/json` and
    /// `Cache-Control: public, max-age=N`.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body.clone()));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, self.cache_control.clone());
        resp
    }
}

#[cfg(test)]
mod tests;
