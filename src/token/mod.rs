//! Tokens: finding them in a request (`extract`), JWT rules (`jwt`, `claims`), issuer key sets
//! (`keys`, `jwks`, `fetch`). Verification is synchronous and network-free; fetching lives apart.

pub mod claims;
pub mod dpop;
pub mod extract;
pub mod fetch;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod keys;
