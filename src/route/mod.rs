//! Which route a request belongs to: path normalization (`normalize`) and the first-match rule
//! of SPEC §3 (file order; `path`/`path_prefix`, `methods` and `host` must all match).

pub mod host;
pub mod normalize;

use http::Method;

use crate::config::Route;
use host::Host;

/// The first route that matches the normalized path, method and host, in file order.
pub fn find<'a>(
    routes: &'a [Route],
    path: &str,
    method: &Method,
    host: Option<&Host>,
) -> Option<&'a Route> {
    routes.iter().find(|r| r.matches(path, method, host))
}
