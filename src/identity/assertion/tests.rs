use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderName;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::{Jwk, KeyPair};
use josekit::jws::{JwsVerifier, ES256};
use serde_json::{json, Map, Value};

use super::*;

const NOW: i64 = 1_800_000_000;

fn pem() -> &'static [u8] {
    static PEM: OnceLock<Vec<u8>> = OnceLock::new();
    PEM.get_or_init(|| {
        EcKeyPair::generate(EcCurve::P256)
            .expect("p256")
            .to_pem_private_key()
    })
}

fn identity(ttl_secs: u64, bind_request: bool) -> Identity {
    Identity {
        header: HeaderName::from_static("x-identity-assertion"),
        issuer: "tokengate".to_owned(),
        signing_key: None,
        key_id: None,
        previous_keys: Vec::new(),
        ttl: Duration::from_secs(ttl_secs),
        claims: ["sub", "email", "name", "groups", "scope", "client_id"]
            .map(str::to_owned)
            .to_vec(),
        forward_token: false,
        bind_request,
        headers: Vec::new(),
    }
}

fn minter(ttl_secs: u64, bind_request: bool) -> Minter {
    let key = SigningKey::from_pem(pem(), None).expect("key");
    Minter::new(&identity(ttl_secs, bind_request), key)
}

fn obj(v: Value) -> Claims {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn input<'a>(claims: &'a Claims, token: Option<[u8; 32]>) -> AssertionInput<'a> {
    AssertionInput {
        claims,
        token_exp: NOW + 3600,
        token_iss: "https://idp.example.com",
        auth: "jwt",
        route_id: "orders",
        audience: "orders-backend",
        method: "POST",
        path: "/orders/7",
        cache_key: token,
        claims_source: 0,
    }
}

/// Verifies the signature with the key's public JWK and returns the payload.
fn payload(m: &Minter, value: &HeaderValue) -> Map<String, Value> {
    let text = value.to_str().expect("ascii");
    let (signed, sig) = text.rsplit_once('.').expect("three parts");
    let jwk = Jwk::from_map(m.key().public_jwk().clone()).expect("jwk");
    ES256
        .verifier_from_jwk(&jwk)
        .expect("verifier")
        .verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(sig).expect("b64"),
        )
        .expect("signature");
    let body = signed.split_once('.').expect("two parts").1;
    obj(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).expect("b64")).expect("json"))
}

#[test]
fn payload_has_every_spec_claim() {
    let m = minter(60, false);
    let claims = obj(json!({
        "iss": "https://idp.example.com", "sub": "alice", "email": "a@example.com",
        "groups": ["admin", "ops"], "scope": "orders:write", "client_id": "web",
        "secret_internal": "not copied"
    }));
    let v = m.mint(&input(&claims, None), NOW).expect("mint");
    assert!(v.is_sensitive());
    let p = payload(&m, &v);
    let jti = p["jti"].as_str().expect("jti").to_owned();
    assert_eq!(URL_SAFE_NO_PAD.decode(&jti).expect("b64").len(), 16);
    let mut expected = obj(json!({
        "iss": "tokengate", "sub": "alice", "aud": "orders-backend", "route": "orders",
        "token_iss": "https://idp.example.com", "auth": "jwt",
        "email": "a@example.com", "groups": ["admin", "ops"], "scope": "orders:write",
        "client_id": "web", "iat": NOW, "exp": NOW + 60, "jti": jti
    }));
    expected.sort_keys();
    let mut got = p;
    got.sort_keys();
    assert_eq!(got, expected);
}

#[test]
fn exp_is_the_earlier_of_ttl_and_token_exp() {
    let m = minter(60, false);
    let claims = obj(json!({"sub": "alice"}));
    let mut i = input(&claims, None);
    i.token_exp = NOW + 20;
    assert_eq!(
        payload(&m, &m.mint(&i, NOW).expect("mint"))["exp"],
        NOW + 20
    );
    i.token_exp = NOW + 61;
    assert_eq!(
        payload(&m, &m.mint(&i, NOW).expect("mint"))["exp"],
        NOW + 60
    );
    // A token accepted within clock skew after its exp: the assertion claims no more lifetime.
    i.token_exp = NOW - 5;
    assert_eq!(payload(&m, &m.mint(&i, NOW).expect("mint"))["exp"], NOW - 5);
}

#[test]
fn ttl_rounds_up_to_whole_seconds() {
    assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
    assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
    assert_eq!(ttl_seconds(Duration::from_secs(60)), 60);
    assert_eq!(ttl_seconds(Duration::MAX), i64::from(u32::MAX));
}

#[test]
fn absent_and_null_claims_are_omitted() {
    let m = minter(60, false);
    let claims = obj(json!({"sub": "alice", "email": null, "name": ""}));
    let p = payload(&m, &m.mint(&input(&claims, None), NOW).expect("mint"));
    assert!(!p.contains_key("email"));
    assert!(!p.contains_key("groups"));
    assert_eq!(p["name"], "", "an empty string is a value, not an absence");
}

#[test]
fn sub_falls_back_to_client_id() {
    let m = minter(60, false);
    for claims in [
        json!({"client_id": "svc-billing"}),
        json!({"sub": null, "client_id": "svc-billing"}),
        json!({"sub": "", "client_id": "svc-billing"}),
    ] {
        let claims = obj(claims);
        let p = payload(&m, &m.mint(&input(&claims, None), NOW).expect("mint"));
        assert_eq!(p["sub"], "svc-billing");
        assert_eq!(p["client_id"], "svc-billing");
    }
    let claims = obj(json!({"scope": "x"}));
    let p = payload(&m, &m.mint(&input(&claims, None), NOW).expect("mint"));
    assert!(!p.contains_key("sub"), "neither sub nor client_id: no sub");
}

#[test]
fn claims_the_minter_sets_are_never_copied() {
    let mut id = identity(60, false);
    id.claims = vec!["sub".into(), "aud".into(), "exp".into(), "email".into()];
    let m = Minter::new(&id, SigningKey::from_pem(pem(), None).expect("key"));
    let claims =
        obj(json!({"sub": 42, "client_id": "cid", "aud": "idp-aud", "exp": 1, "email": "e"}));
    let text = m.mint(&input(&claims, None), NOW).expect("mint");
    let body = text
        .to_str()
        .expect("ascii")
        .split('.')
        .nth(1)
        .expect("payload");
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(body).expect("b64")).expect("utf8");
    assert_eq!(raw.matches("\"sub\"").count(), 1, "{raw}");
    assert_eq!(raw.matches("\"aud\"").count(), 1, "{raw}");
    assert_eq!(raw.matches("\"exp\"").count(), 1, "{raw}");
    let p = payload(&m, &text);
    assert_eq!(p["sub"], "cid", "a non-string sub falls back to client_id");
    assert_eq!(p["aud"], "orders-backend");
    assert_eq!(p["exp"], NOW + 60);
    assert_eq!(p["email"], "e");
}

#[test]
fn htm_and_htp_only_with_bind_request() {
    let claims = obj(json!({"sub": "alice"}));
    let unbound = minter(60, false);
    let p = payload(
        &unbound,
        &unbound.mint(&input(&claims, None), NOW).expect("mint"),
    );
    assert!(!p.contains_key("htm") && !p.contains_key("htp"));
    let bound = minter(60, true);
    let p = payload(
        &bound,
        &bound.mint(&input(&claims, None), NOW).expect("mint"),
    );
    assert_eq!(p["htm"], "POST");
    assert_eq!(p["htp"], "/orders/7");
}

#[test]
fn every_mint_without_cache_gets_a_new_jti() {
    let m = minter(60, false);
    let claims = obj(json!({"sub": "alice"}));
    let a = m.mint(&input(&claims, None), NOW).expect("mint");
    let b = m.mint(&input(&claims, None), NOW).expect("mint");
    assert_ne!(payload(&m, &a)["jti"], payload(&m, &b)["jti"]);
    assert_eq!(m.cached(), 0);
}

#[test]
fn cache_reuses_until_the_refresh_point_only() {
    let m = minter(60, false);
    let claims = obj(json!({"sub": "alice"}));
    let first = m.mint(&input(&claims, Some([1; 32])), NOW).expect("mint");
    // margin = min(10, 60 / 4) = 10 s: reused while now < exp - 10 = NOW + 50.
    for t in [NOW, NOW + 1, NOW + 49] {
        assert_eq!(
            m.mint(&input(&claims, Some([1; 32])), t).expect("mint"),
            first
        );
    }
    let refreshed = m
        .mint(&input(&claims, Some([1; 32])), NOW + 50)
        .expect("mint");
    assert_ne!(refreshed, first);
    assert_eq!(payload(&m, &refreshed)["iat"], NOW + 50);
    // A clock that steps back before the cached iat gets a fresh assertion too.
    let back = m
        .mint(&input(&claims, Some([1; 32])), NOW + 10)
        .expect("mint");
    assert_ne!(back, refreshed);
}

#[test]
fn cache_respects_a_token_exp_sooner_than_ttl() {
    let m = minter(60, false);
    let claims = obj(json!({"sub": "alice"}));
    let mut i = input(&claims, Some([2; 32]));
    i.token_exp = NOW + 30;
    let first = m.mint(&i, NOW).expect("mint");
    assert_eq!(m.mint(&i, NOW + 19).expect("mint"), first);
    assert_ne!(m.mint(&i, NOW + 20).expect("mint"), first);
    // Within the margin of the token's exp nothing is stored at all.
    let fresh = minter(60, false);
    i.token_exp = NOW + 5;
    let a = fresh.mint(&i, NOW).expect("mint");
    assert_eq!(fresh.cached(), 0);
    assert_ne!(fresh.mint(&i, NOW).expect("mint"), a);
}

#[test]
fn cache_never_crosses_tokens_routes_audiences_claims_or_bound_requests() {
    let claims = obj(json!({"sub": "alice", "email": "a@example.com"}));
    let other_claims = obj(json!({"sub": "alice", "email": "new@example.com"}));
    for bind in [false, true] {
        let m = minter(60, bind);
        let base = input(&claims, Some([3; 32]));
        let first = m.mint(&base, NOW).expect("mint");
        assert_eq!(m.mint(&base, NOW).expect("mint"), first);
        let mut variants = vec![
            AssertionInput {
                cache_key: Some([4; 32]),
                ..base
            },
            AssertionInput {
                route_id: "orders-admin",
                ..base
            },
            AssertionInput {
                audience: "other",
                ..base
            },
            AssertionInput {
                claims: &other_claims,
                claims_source: 7,
                ..base
            },
            AssertionInput {
                token_iss: "https://other-idp.example.com",
                ..base
            },
            AssertionInput {
                auth: "dpop",
                ..base
            },
            AssertionInput {
                token_exp: NOW + 3000,
                ..base
            },
        ];
        if bind {
            variants.push(AssertionInput {
                method: "GET",
                ..base
            });
            variants.push(AssertionInput {
                path: "/orders/8",
                ..base
            });
        }
        for v in &variants {
            let got = m.mint(v, NOW).expect("mint");
            assert_ne!(got, first, "bind={bind} {v:?}");
            let p = payload(&m, &got);
            assert_eq!(p["route"], v.route_id);
            assert_eq!(p["aud"], v.audience);
            if bind {
                assert_eq!(p["htm"], v.method);
                assert_eq!(p["htp"], v.path);
            }
        }
        if !bind {
            // Without bind_request the assertion says nothing of method or path: reuse is fine.
            let same = AssertionInput {
                method: "GET",
                path: "/orders/8",
                ..base
            };
            assert_eq!(m.mint(&same, NOW).expect("mint"), first);
        }
    }
}

#[test]
fn cache_stays_bounded() {
    let m = minter(60, false).with_cache_capacity(16);
    let claims = obj(json!({"sub": "alice"}));
    for i in 0..200u8 {
        let mut token = [0u8; 32];
        token[0] = i;
        m.mint(&input(&claims, Some(token)), NOW).expect("mint");
        assert!(m.cached() <= 16, "{} entries", m.cached());
    }
    // Stale entries are swept first, keeping fresh ones.
    let m = minter(60, false).with_cache_capacity(4);
    for i in 0..3u8 {
        m.mint(&input(&claims, Some([i; 32])), NOW).expect("mint");
    }
    let keep = m
        .mint(&input(&claims, Some([9; 32])), NOW + 45)
        .expect("mint");
    assert_eq!(m.cached(), 4);
    m.mint(&input(&claims, Some([10; 32])), NOW + 55)
        .expect("mint");
    assert_eq!(m.cached(), 2, "the three stale entries were swept");
    assert_eq!(
        m.mint(&input(&claims, Some([9; 32])), NOW + 55)
            .expect("mint"),
        keep
    );
}

#[test]
fn capacity_zero_disables_reuse() {
    let m = minter(60, false).with_cache_capacity(0);
    let claims = obj(json!({"sub": "alice"}));
    let a = m.mint(&input(&claims, Some([5; 32])), NOW).expect("mint");
    let b = m.mint(&input(&claims, Some([5; 32])), NOW).expect("mint");
    assert_ne!(a, b);
    assert_eq!(m.cached(), 0);
}

#[test]
fn short_ttls_use_a_proportional_margin() {
    assert_eq!(minter(1, false).margin, 1);
    assert_eq!(minter(8, false).margin, 2);
    assert_eq!(minter(60, false).margin, 10);
    assert_eq!(minter(3600, false).margin, 10);
    // ttl 1 s: the refresh point is iat itself, so nothing is ever reused.
    let m = minter(1, false);
    let claims = obj(json!({"sub": "alice"}));
    m.mint(&input(&claims, Some([6; 32])), NOW).expect("mint");
    assert_eq!(m.cached(), 0);
}

#[test]
fn claim_values_are_serialized_as_json_without_reordering() {
    let m = minter(60, false);
    let claims = obj(json!({"sub": "a\"b\n", "groups": {"z": 1, "a": [true, null, 1.5]}}));
    let p = payload(&m, &m.mint(&input(&claims, None), NOW).expect("mint"));
    assert_eq!(p["sub"], "a\"b\n");
    assert_eq!(
        serde_json::to_string(&p["groups"]).expect("json"),
        r#"{"z":1,"a":[true,null,1.5]}"#
    );
}

#[test]
fn minter_is_shareable_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Minter>();
    shareable::<SigningKey>();
    shareable::<crate::identity::jwks::PublishedJwks>();
}

#[test]
fn remembered_source_key_is_always_the_key_of_the_inputs_given() {
    let claims = obj(json!({"sub": "u"}));
    let base = input(&claims, Some([1; 32]));
    let variants = [
        AssertionInput { ..base },
        AssertionInput { ..base },
        AssertionInput {
            cache_key: Some([2; 32]),
            ..base
        },
        AssertionInput {
            token_exp: base.token_exp + 1,
            ..base
        },
        AssertionInput {
            claims_source: 7,
            ..base
        },
        AssertionInput {
            route_id: "other",
            ..base
        },
        AssertionInput {
            audience: "https://other.example",
            ..base
        },
        AssertionInput {
            token_iss: "https://other-issuer.example",
            ..base
        },
        AssertionInput {
            auth: "dpop",
            ..base
        },
        AssertionInput { ..base },
    ];
    for v in &variants {
        let token = v.cache_key.expect("a token hash");
        assert_eq!(remembered_source_key(&token, v), source_key(&token, v));
    }
}
