//! The identity forwarded upstream (SPEC §5). For now: the plain claim headers of
//! `[identity.headers]`; the signed assertion joins them here.

pub mod assertion;
pub mod headers;
pub mod jwks;
pub mod signing;
