use super::*;

fn rules(forward_token: bool, trusted: &[&str]) -> ScrubRules {
    let names = [
        HeaderName::from_static("x-identity-assertion"),
        HeaderName::from_static("x-user-email"),
    ];
    ScrubRules::with(
        names.iter(),
        vec!["x-auth-".to_owned()],
        forward_token,
        trusted.iter().map(|c| c.parse().unwrap()).collect(),
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

static HOST: HeaderValue = HeaderValue::from_static("api.example.com");

fn view(peer: &str) -> Forwarding<'static> {
    let peer = peer.parse().unwrap();
    Forwarding {
        peer,
        // Leaked: a few bytes per test, for a 'static view.
        peer_value: Box::leak(Box::new(address_value(peer))),
        scheme: "http",
        host: Some(&HOST),
        upgrade: false,
    }
}

#[test]
fn spoofed_identity_headers_are_removed_in_every_spelling_and_duplicate() {
    let mut h = headers(&[
        ("X-Identity-Assertion", "forged"),
        ("x-identity-assertion", "forged2"),
        ("X_Identity_Assertion", "forged3"),
        ("X-User-Email", "a@evil"),
        ("x_user_email", "b@evil"),
        ("X-Auth-Subject", "admin"),
        ("X_AUTH_SUBJECT", "admin"),
        ("x-auth-anything", "1"),
        ("X-Other", "kept"),
    ]);
    request_headers(&mut h, &rules(false, &[]), &view("10.0.0.9"));
    let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("identity") || n.contains("auth") || n.contains("email")),
        "{names:?}"
    );
    assert_eq!(h["x-other"], "kept");
}

#[test]
fn the_clients_trace_context_is_removed_from_the_head() {
    // tokengate writes its own traceparent, and passes tracestate on only with the trace it
    // continues: a client's tracestate must not ride along with a new trace.
    let mut h = headers(&[
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("TraceState", "rojo=00f067aa0ba902b7"),
        ("X-Kept", "1"),
    ]);
    request_headers(&mut h, &rules(false, &[]), &view("10.0.0.9"));
    assert!(h.get("traceparent").is_none());
    assert!(h.get("tracestate").is_none());
    assert_eq!(h["x-kept"], "1");
}

#[test]
fn hop_by_hop_and_connection_named_headers_are_removed() {
    let mut h = headers(&[
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("Connection", "x-second"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "gzip, deflate"),
        ("Trailer", "x-t"),
        ("Upgrade", "websocket"),
        ("X-Secret-Hop", "1"),
        ("X-Second", "2"),
        ("X-Kept", "3"),
    ]);
    request_headers(&mut h, &rules(false, &[]), &view("10.0.0.9"));
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "x-secret-hop",
        "x-second",
    ] {
        assert!(!h.contains_key(gone), "{gone} survived");
    }
    assert_eq!(h["x-kept"], "3");
}

#[test]
fn te_trailers_is_the_one_te_value_passed_on() {
    for (sent, forwarded) in [
        ("trailers", Some("trailers")),
        ("gzip, trailers", Some("trailers")),
        ("Trailers;q=0.5", Some("trailers")),
        ("gzip", None),
        ("trailersx", None),
    ] {
        let mut h = headers(&[("TE", sent)]);
        request_headers(&mut h, &rules(false, &[]), &view("10.0.0.9"));
        let all: Vec<&str> = h
            .get_all("te")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(all, forwarded.into_iter().collect::<Vec<_>>(), "TE: {sent}");
    }
}

#[test]
fn trailer_fields_that_could_pass_for_identity_or_steer_the_hop_are_removed() {
    let mut t = headers(&[
        ("X-Identity-Assertion", "forged"),
        ("x_user_email", "a@evil"),
        ("X-Auth-Subject", "admin"),
        ("X-Forwarded-User", "admin"),
        ("Authorization", "Bearer x"),
        ("Host", "admin.example.com"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("Content-Length", "5"),
        ("Transfer-Encoding", "chunked"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "attacker=chosen"),
        ("Cookie", "session=other"),
        ("grpc-status", "0"),
        ("X-Checksum", "abc"),
    ]);
    request_trailers(&mut t, &rules(false, &[]));
    let mut names: Vec<&str> = t.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["grpc-status", "x-checksum"]);
}

#[test]
fn authorization_and_dpop_are_removed_unless_forward_token() {
    let pairs = [("Authorization", "Bearer abc"), ("DPoP", "proof")];
    let mut h = headers(&pairs);
    request_headers(&mut h, &rules(false, &[]), &view("10.0.0.9"));
    assert!(!h.contains_key("authorization") && !h.contains_key("dpop"));
    let mut h = headers(&pairs);
    request_headers(&mut h, &rules(true, &[]), &view("10.0.0.9"));
    assert_eq!(h["authorization"], "Bearer abc");
    assert_eq!(h["dpop"], "proof");
}

#[test]
fn untrusted_peer_forwarded_headers_are_replaced_by_the_proxys_view() {
    let mut h = headers(&[
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=1.2.3.4"),
    ]);
    request_headers(&mut h, &rules(false, &[]), &view("10.0.0.9"));
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(h["x-forwarded-for"], "10.0.0.9");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert!(!h.contains_key("forwarded"));
}

#[test]
fn trusted_proxy_chain_is_appended_and_its_proto_and_host_kept() {
    let mut h = headers(&[
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-For", "5.6.7.8"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "public.example"),
    ]);
    request_headers(&mut h, &rules(false, &["10.0.0.0/8"]), &view("10.0.0.9"));
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.9");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "public.example");
}

#[test]
fn trusted_proxy_without_forwarded_headers_gets_the_proxys_view() {
    let mut h = headers(&[]);
    request_headers(&mut h, &rules(false, &["127.0.0.1/32"]), &view("127.0.0.1"));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
}

#[test]
fn ipv4_mapped_ipv6_peer_matches_an_ipv4_trusted_range() {
    let r = rules(false, &["10.0.0.0/8"]);
    assert!(r.is_trusted_proxy("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!r.is_trusted_proxy("11.0.0.1".parse().unwrap()));
}

#[test]
fn permitted_upgrade_keeps_upgrade_and_connection() {
    let mut h = headers(&[("Connection", "Upgrade"), ("Upgrade", "websocket")]);
    let mut v = view("10.0.0.9");
    v.upgrade = true;
    request_headers(&mut h, &rules(false, &[]), &v);
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
}

#[test]
fn response_hop_by_hop_headers_are_removed() {
    let mut h = headers(&[
        ("Connection", "x-private"),
        ("X-Private", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Type", "text/plain"),
    ]);
    response_headers(&mut h, false);
    assert_eq!(h.len(), 1);
    assert_eq!(h["content-type"], "text/plain");
}

#[test]
fn request_id_is_kept_when_valid_and_generated_otherwise() {
    let ok = headers(&[("X-Request-Id", "abc-123")]);
    assert_eq!(request_id(&ok), "abc-123");
    let long = "a".repeat(129);
    for bad in [
        headers(&[("X-Request-Id", "")]),
        headers(&[("X-Request-Id", "has space")]),
        headers(&[("X-Request-Id", long.as_str())]),
        headers(&[("X-Request-Id", "a"), ("X-Request-Id", "b")]),
        headers(&[]),
    ] {
        let id = request_id(&bad);
        assert_eq!(id.len(), 32, "{id:?}");
        assert!(id.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let max = "b".repeat(128);
    assert_eq!(
        request_id(&headers(&[("X-Request-Id", max.as_str())])),
        max.as_str()
    );
}

#[test]
fn generated_request_ids_are_unique() {
    let a = request_id(&HeaderMap::new());
    let b = request_id(&HeaderMap::new());
    assert_ne!(a, b);
    // 32 lower-case hex digits.
    for id in [&a, &b] {
        assert_eq!(id.len(), 32);
        assert!(id
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
    }
}

#[test]
fn generated_request_ids_cannot_be_predicted_from_earlier_ones() {
    // Not a prefix and a counter: two ids share no half (a chance of 2^-64 each).
    let ids: Vec<HeaderValue> = (0..64).map(|_| request_id(&HeaderMap::new())).collect();
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert_ne!(a.as_bytes()[..16], b.as_bytes()[..16]);
            assert_ne!(a.as_bytes()[16..], b.as_bytes()[16..]);
        }
    }
}
