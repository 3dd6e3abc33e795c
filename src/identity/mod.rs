//! The identity forwarded upstream (SPEC §5): the signed assertion (`signing` loads the key,
//! `assertion` mints and reuses assertions, `jwks` publishes the verification keys) and the
//! plain claim headers of `[identity.headers]` (`headers`); `mint` is the pipeline phase that
//! turns an authorized request into the one the upstream receives.

pub mod assertion;
pub mod headers;
pub mod jwks;
mod mint;
pub mod signing;

pub(crate) use mint::Outgoing;
pub use mint::{Identity, UpstreamRequest};
