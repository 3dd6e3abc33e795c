//! Tokens: finding them in a request (`extract`), JWT rules (`jwt`, `claims`), issuer key sets
//! (`keys`, `jwks`), the HTTP rules of every call to an issuer (`fetch`), introspection of opaque
//! tokens (`introspect`) and DPoP proofs (`dpop`). JWT and proof checks are synchronous and
//! network-free; whatever calls an issuer (`jwks`, `introspect`, through `fetch`) lives apart.

pub mod claims;
pub mod dpop;
pub mod extract;
pub mod fetch;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod keys;
