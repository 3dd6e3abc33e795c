//! The identity forwarded upstream (SPEC §5): the signed assertion (`signing` loads the key,
//! `assertion` mints and reuses assertions, `jwks` publishes the verification keys) and the
//! plain claim headers of `[identity.headers]` (`headers`).

pub mod assertion;
pub mod headers;
pub mod jwks;
pub mod signing;
