//! The human-readable form of a [`Report`]: one block per phase, in the pipeline's order, each
//! line starting with the step's name so a long report can be scanned down its left edge.
//! Everything shown comes from the report; nothing is decided here.

use std::fmt::Write as _;

use serde_json::Value;

use super::report::{
    Admission, CheckStep, CredentialStep, IssuerKeysStep, Outcome, PolicyStep, Report, RouteTried,
    SenderStep, UserinfoStep, VerificationStep,
};

/// Column where a step's text starts.
const INDENT: &str = "              ";

/// Text output; `writeln!` into a `String` cannot fail, hence the ignored results.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    request(&mut out, report);
    if let Some(a) = &report.admission {
        admission(&mut out, a);
    }
    if let Some(routes) = &report.routes {
        routes_tried(&mut out, routes);
    }
    if let Some(c) = &report.credential {
        credential(&mut out, c);
    }
    if let Some(issuers) = &report.issuers {
        keys(&mut out, issuers);
    }
    if let Some(v) = &report.verification {
        verification(&mut out, v);
    }
    if let Some(s) = &report.sender_constraint {
        sender(&mut out, s);
    }
    if let Some(u) = &report.userinfo {
        userinfo(&mut out, u);
    }
    if let Some(p) = &report.policy {
        policy(&mut out, p);
    }
    outcome(&mut out, &report.outcome);
    let _ = writeln!(out, "{:<14}{}", "exit", report.exit_code);
    out
}

fn line(out: &mut String, label: &str, text: &str) {
    let _ = writeln!(out, "{label:<14}{text}");
}

fn more(out: &mut String, text: &str) {
    let _ = writeln!(out, "{INDENT}{text}");
}

fn request(out: &mut String, report: &Report) {
    let r = &report.request;
    let host = r.host.as_deref().unwrap_or("(none)");
    line(
        out,
        "request",
        &format!("{} {}  Host: {host}  ({})", r.method, r.target, r.scheme),
    );
    if let Some(hash) = &r.token_sha256 {
        more(
            out,
            &format!("token sha256:{hash}... (the token itself is never shown)"),
        );
    }
    if !r.headers.is_empty() {
        more(out, &format!("headers: {}", r.headers.join(", ")));
    }
}

fn admission(out: &mut String, a: &Admission) {
    match (&a.refused, &a.normalized_path) {
        (Some(why), _) => line(out, "admission", &format!("REFUSED: {why}")),
        (None, Some(path)) => {
            let mut text = format!("path {path} (normalized)");
            if a.forwarded_path.as_deref().is_some_and(|f| f != path) {
                let forwarded = a.forwarded_path.as_deref().unwrap_or_default();
                let _ = write!(text, "; forwarded as {forwarded}");
            }
            if let Some(host) = &a.host {
                let _ = write!(text, "; host {host}");
            }
            line(out, "admission", &text);
            if let Some(what) = &a.answered_by_tokengate {
                more(out, &format!("answered by tokengate itself: {what}"));
            }
        }
        (None, None) => {}
    }
}

fn routes_tried(out: &mut String, routes: &[RouteTried]) {
    let width = routes.iter().map(|r| r.id.len()).max().unwrap_or(0);
    let mut label = "routes";
    for r in routes {
        let verdict = match (r.matched, r.mismatch) {
            (true, _) => format!("MATCHED (auth {})", r.auth),
            (false, Some(why)) => format!("no: {why} does not match"),
            (false, None) => "no".to_owned(),
        };
        line(
            out,
            label,
            &format!("{:<width$}  {}  -> {verdict}", r.id, r.rule),
        );
        label = "";
    }
    if !routes.iter().any(|r| r.matched) {
        more(out, "no route matches");
    }
}

fn credential(out: &mut String, c: &CredentialStep) {
    if let Some(why) = &c.refused {
        line(out, "credential", &format!("REFUSED: {why}"));
        return;
    }
    let text = match c.scheme {
        "not_examined" => "not examined (public route)".to_owned(),
        "none" => "no token (no Authorization header, or another scheme)".to_owned(),
        scheme => format!(
            "{} token, {}, sha256:{}...",
            if scheme == "dpop" { "DPoP" } else { "Bearer" },
            c.format.unwrap_or("?"),
            c.token_sha256.as_deref().unwrap_or("?")
        ),
    };
    line(out, "credential", &text);
    let Some(u) = &c.unverified else {
        return;
    };
    if let Some(why) = &u.malformed {
        more(out, &format!("does not parse: {why}"));
        return;
    }
    let field = |name: &str, v: &Option<String>| v.as_ref().map(|v| format!("{name} {v}"));
    let header: Vec<String> = [
        field("alg", &u.alg),
        field("kid", &u.kid),
        field("typ", &u.typ),
    ]
    .into_iter()
    .flatten()
    .collect();
    more(out, &format!("header (unverified): {}", header.join(", ")));
    if let Some(iss) = &u.iss {
        more(out, &format!("iss (unverified): {iss}"));
    }
    for t in &u.times {
        more(out, &format!("{} {} ({})", t.claim, t.value, t.relative));
    }
}

fn keys(out: &mut String, issuers: &[IssuerKeysStep]) {
    let mut label = "keys";
    for i in issuers {
        let text = match (&i.error, i.source) {
            (Some(error), _) => format!("{}: NOT LOADED: {error}", i.id),
            (None, "none") => format!("{}: HMAC only, no key set", i.id),
            (None, "file") => format!("{}: {} usable key(s) from --jwks", i.id, i.keys),
            (None, _) => format!("{}: {} usable key(s), fetched", i.id, i.keys),
        };
        line(out, label, &text);
        label = "";
    }
}

fn verification(out: &mut String, v: &VerificationStep) {
    if !v.verified {
        let why = v.error.as_deref().unwrap_or("refused");
        let reason = v
            .reason
            .map(|r| format!(" (reason {r})"))
            .unwrap_or_default();
        line(out, "verification", &format!("FAILED: {why}{reason}"));
        return;
    }
    let issuer = match (&v.issuer_id, &v.issuer) {
        (Some(id), Some(iss)) => format!("issuer {id} ({iss})"),
        _ => "issuer ?".to_owned(),
    };
    let how = match (v.method, &v.key) {
        (Some("introspection"), _) => "active per the issuer's introspection endpoint".to_owned(),
        (_, Some(key)) if key.source == "hmac_secret" => format!(
            "{} signature verified with the issuer's hmac_secret",
            v.alg.as_deref().unwrap_or("?")
        ),
        (_, Some(key)) => format!(
            "{} signature verified by key kid {} (thumbprint {})",
            v.alg.as_deref().unwrap_or("?"),
            key.kid.as_deref().unwrap_or("(none)"),
            key.thumbprint.as_deref().unwrap_or("?")
        ),
        (_, None) => "verified".to_owned(),
    };
    line(out, "verification", &format!("OK: {issuer}"));
    more(out, &how);
    if let Some(claims) = &v.claims {
        more(out, &format!("claims: {}", Value::Object(claims.clone())));
    }
}

fn sender(out: &mut String, s: &SenderStep) {
    line(
        out,
        "sender",
        &format!("{} -> {}", s.detail, s.verdict.to_uppercase()),
    );
    if let Some(note) = &s.note {
        more(out, &format!("note: {note}"));
    }
}

fn userinfo(out: &mut String, u: &UserinfoStep) {
    line(out, "userinfo", &format!("{}: {}", u.status, u.detail));
    if let Some(endpoint) = &u.endpoint {
        more(out, &format!("endpoint {endpoint}"));
    }
    if let Some(cache) = &u.cache {
        more(out, cache);
    }
    if let Some(added) = &u.added_claims {
        if added.is_empty() {
            more(out, "added no claims");
        }
        for (name, value) in added {
            more(out, &format!("added {name} = {value}"));
        }
    }
}

fn policy(out: &mut String, p: &PolicyStep) {
    if p.empty {
        line(out, "policy", "no scopes or claim rules: passes");
        return;
    }
    let mut label = "policy";
    for c in &p.checks {
        line(out, label, &check(c));
        label = "";
    }
    more(out, &format!("decision: {}", p.decision));
}

fn check(c: &CheckStep) -> String {
    let verdict = if c.holds { "holds" } else { "FAILS" };
    let place = match (c.kind, c.block) {
        ("any_of", _) | (_, None) => String::new(),
        (_, Some(i)) => format!("any_of[{i}] "),
    };
    let saw = match (c.kind, &c.claim, &c.value) {
        ("any_of", _, _) => String::new(),
        (_, Some(claim), Some(value)) => format!("; saw {claim} = {value}"),
        ("scope", None, _) => "; no scope or scp claim".to_owned(),
        (_, Some(claim), None) => format!("; {claim} is absent"),
        _ => String::new(),
    };
    match c.kind {
        "scope" => format!("{place}scope {}: {verdict}{saw}", c.check),
        "claim" => format!("{place}claim {}: {verdict}{saw}", c.check),
        _ => format!("{}: {verdict}", c.check),
    }
}

fn outcome(out: &mut String, o: &Outcome) {
    match o.verdict {
        "forwarded" => {
            let route = o.route.as_deref().unwrap_or("?");
            let auth = o.auth.unwrap_or("anonymous");
            line(
                out,
                "outcome",
                &format!(
                    "FORWARDED to {} (route {route}, auth {auth})",
                    o.upstream.as_deref().unwrap_or("?")
                ),
            );
            if let Some(headers) = &o.identity_headers {
                for (name, value) in headers {
                    let value = value.as_str().unwrap_or_default();
                    more(out, &format!("{name}: {value}"));
                }
            }
            match &o.assertion {
                Some(a) => {
                    more(
                        out,
                        &format!("{}: signed, header {}", a.header, a.jose_header),
                    );
                    let pretty = serde_json::to_string_pretty(&a.claims).unwrap_or_default();
                    for l in pretty.lines() {
                        more(out, &format!("  {l}"));
                    }
                }
                None => {
                    if let Some(note) = &o.assertion_note {
                        more(out, note);
                    }
                }
            }
            if let Some(removed) = o.removed_headers.as_ref().filter(|r| !r.is_empty()) {
                more(
                    out,
                    &format!("not forwarded from the request: {}", removed.join(", ")),
                );
            }
        }
        "answered" => line(
            out,
            "outcome",
            &format!("ANSWERED by tokengate: {}", o.status.unwrap_or(200)),
        ),
        _ => {
            let status = o.status.map_or("?".to_owned(), |s| s.to_string());
            let error = o.error.as_deref().unwrap_or("(no body)");
            line(out, "outcome", &format!("REJECTED {status} {error}"));
            if let Some(d) = &o.error_description {
                more(out, &format!("error_description: {d}"));
            }
            if let Some(w) = &o.www_authenticate {
                more(out, &format!("WWW-Authenticate: {w}"));
            }
            if let Some(r) = &o.retry_after {
                more(out, &format!("Retry-After: {r}"));
            }
            if let Some(reason) = o.reason {
                more(out, &format!("access-log reason: {reason}"));
            }
        }
    }
}
