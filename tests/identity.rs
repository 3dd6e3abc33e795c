//! Identity assertions end to end through the library API (SPEC §2 `keygen`, §5, §7 JWKS): keys
//! made by `keygen::run`, assertions minted by `Minter`, and every one verified by an independent
//! JOSE library (`jsonwebtoken`, RustCrypto backend) using nothing but the published JWKS JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use tokengate::config::model::Identity;
use tokengate::identity::assertion::{AssertionInput, Minter};
use tokengate::identity::jwks::PublishedJwks;
use tokengate::identity::signing::SigningKey;
use tokengate::keygen::{self, KeygenAlg, KeygenError};

const ALGS: [KeygenAlg; 3] = [KeygenAlg::Es256, KeygenAlg::EdDsa, KeygenAlg::Rs256];
const AUDIENCE: &str = "http://127.0.0.1:3000";
const TOKEN_ISS: &str = "https://idp.example.com";

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("fits")
}

fn identity(ttl: u64, bind_request: bool) -> Identity {
    Identity {
        header: HeaderName::from_static("x-identity-assertion"),
        issuer: "tokengate".to_owned(),
        signing_key: None,
        key_id: None,
        previous_keys: Vec::new(),
        ttl: Duration::from_secs(ttl),
        claims: ["sub", "email", "name", "groups", "scope", "client_id"]
            .map(str::to_owned)
            .to_vec(),
        forward_token: false,
        bind_request,
        headers: Vec::new(),
    }
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("claims must be an object"),
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    kid: String,
}

fn keygen_into_tempdir(alg: KeygenAlg) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("identity.pem");
    let kid = keygen::run(alg, &path, false).expect("keygen");
    Setup {
        _dir: dir,
        path,
        kid,
    }
}

fn minter(path: &Path, ttl: u64, bind_request: bool) -> Minter {
    let key = SigningKey::load(path, None).expect("signing key");
    Minter::new(&identity(ttl, bind_request), key)
}

fn input<'a>(
    claims: &'a Map<String, Value>,
    token_exp: i64,
    cache_key: Option<[u8; 32]>,
) -> AssertionInput<'a> {
    AssertionInput {
        claims,
        token_exp,
        token_iss: TOKEN_ISS,
        auth: "jwt",
        route_id: "orders-write",
        audience: AUDIENCE,
        method: "POST",
        path: "/orders/7",
        cache_key,
        claims_source: 0,
    }
}

/// Verifies `assertion` with `jsonwebtoken`, finding the key by `kid` in the JWKS document only.
fn verify(
    jwks_body: &[u8],
    assertion: &HeaderValue,
) -> Result<(String, Map<String, Value>), String> {
    let token = assertion.to_str().map_err(|e| e.to_string())?;
    let set: JwkSet = serde_json::from_slice(jwks_body).map_err(|e| e.to_string())?;
    let header = decode_header(token).map_err(|e| e.to_string())?;
    if header.typ.as_deref() != Some("JWT") {
        return Err(format!("typ {:?}", header.typ));
    }
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = 0;
    validation.set_issuer(&["tokengate"]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| e.to_string())?;
    Ok((kid, data.claims))
}

fn jwt_alg(alg: KeygenAlg) -> Algorithm {
    match alg {
        KeygenAlg::Es256 => Algorithm::ES256,
        KeygenAlg::EdDsa => Algorithm::EdDSA,
        KeygenAlg::Rs256 => Algorithm::RS256,
    }
}

#[test]
fn assertions_verify_with_the_published_jwks_alone() {
    for alg in ALGS {
        let s = keygen_into_tempdir(alg);
        let m = minter(&s.path, 60, false);
        let jwks = PublishedJwks::load(Some(m.key()), &[] as &[PathBuf]).expect("jwks");
        let now = now();
        let c = claims(json!({
            "iss": TOKEN_ISS, "sub": "alice", "email": "alice@example.com", "name": "Alice",
            "groups": ["admin", "ops"], "scope": "orders:read orders:write", "client_id": "web",
            "email_verified": true
        }));
        let a = m.mint(&input(&c, now + 3600, None), now).expect("mint");
        let (kid, p) = verify(jwks.body(), &a).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(kid, s.kid, "{alg:?}: the header kid is keygen's kid");
        assert_eq!(
            decode_header(a.to_str().expect("ascii"))
                .expect("header")
                .alg,
            jwt_alg(alg)
        );
        assert_eq!(p["iss"], "tokengate");
        assert_eq!(p["aud"], AUDIENCE, "aud is a string");
        assert_eq!(p["sub"], "alice");
        assert_eq!(p["iat"], now);
        assert_eq!(p["exp"], now + 60);
        assert_eq!(p["route"], "orders-write");
        assert_eq!(p["token_iss"], TOKEN_ISS);
        assert_eq!(p["auth"], "jwt");
        assert_eq!(p["email"], "alice@example.com");
        assert_eq!(p["name"], "Alice");
        assert_eq!(p["groups"], json!(["admin", "ops"]));
        assert_eq!(p["scope"], "orders:read orders:write");
        assert_eq!(p["client_id"], "web");
        let jti = p["jti"].as_str().expect("jti");
        assert_eq!(jti.len(), 22, "128 bits, base64url");
        assert!(
            !p.contains_key("email_verified"),
            "only configured claims are copied"
        );
        assert!(!p.contains_key("htm") && !p.contains_key("htp"));
        assert_eq!(p.len(), 14, "{p:?}");

        // The JWKS document itself.
        let doc: Value = serde_json::from_slice(jwks.body()).expect("json");
        let key = &doc["keys"][0];
        assert_eq!(key["kid"], s.kid.as_str());
        assert_eq!(key["alg"], m.key().alg());
        assert_eq!(key["use"], "sig");
        assert!(key.get("d").is_none());
        let resp = jwks.response();
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert!(resp.headers()["cache-control"]
            .to_str()
            .expect("ascii")
            .starts_with("public, max-age="));
    }
}

#[test]
fn rotation_publishes_both_keys_and_signs_with_the_new_one() {
    let old = keygen_into_tempdir(KeygenAlg::Es256);
    let new = keygen_into_tempdir(KeygenAlg::EdDsa);
    let now = now();
    let c = claims(json!({"sub": "alice"}));

    // Before the rotation: an assertion signed by the old key.
    let old_minter = minter(&old.path, 60, false);
    let before = old_minter
        .mint(&input(&c, now + 3600, None), now)
        .expect("mint");

    // After: the new key is active, the old one is a previous key (its private PEM works too).
    let new_minter = minter(&new.path, 60, false);
    let jwks = PublishedJwks::load(Some(new_minter.key()), &[&old.path]).expect("jwks");
    assert_eq!(jwks.kids(), [new.kid.as_str(), old.kid.as_str()]);
    let after = new_minter
        .mint(&input(&c, now + 3600, None), now)
        .expect("mint");
    let (kid, _) = verify(jwks.body(), &after).expect("a new assertion verifies");
    assert_eq!(kid, new.kid);
    let (kid, _) = verify(jwks.body(), &before).expect("an assertion minted before still verifies");
    assert_eq!(kid, old.kid);

    // The old key verifies nothing new: force the new assertion against the old key.
    let set: JwkSet = serde_json::from_slice(jwks.body()).expect("jwks");
    let old_key = DecodingKey::from_jwk(set.find(&old.kid).expect("old listed")).expect("key");
    let token = after.to_str().expect("ascii");
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let mut v = Validation::new(alg);
        v.set_audience(&[AUDIENCE]);
        assert!(decode::<Value>(token, &old_key, &v).is_err(), "{alg:?}");
    }

    // Once dropped from previous_keys, old assertions no longer verify.
    let jwks = PublishedJwks::load(Some(new_minter.key()), &[] as &[PathBuf]).expect("jwks");
    assert!(verify(jwks.body(), &before).is_err());

    // An SPKI public key file is an equally good previous key.
    let dir = tempfile::tempdir().expect("tempdir");
    let spki = dir.path().join("old.pub.pem");
    let old_private = std::fs::read(&old.path).expect("read");
    let public = josekit::jwk::alg::ec::EcKeyPair::from_pem(&old_private, None).expect("pair");
    std::fs::write(&spki, josekit::jwk::KeyPair::to_pem_public_key(&public)).expect("write");
    let jwks = PublishedJwks::load(Some(new_minter.key()), &[&spki]).expect("jwks");
    assert_eq!(jwks.kids(), [new.kid.as_str(), old.kid.as_str()]);
    verify(jwks.body(), &before).expect("verifies with the SPKI-published key");
}

#[test]
fn keygen_writes_0600_refuses_overwrite_and_prints_the_jwks_kid() {
    for alg in ALGS {
        let s = keygen_into_tempdir(alg);
        let mode = std::fs::metadata(&s.path)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{alg:?}");
        let before = std::fs::read(&s.path).expect("read");
        let err = keygen::run(alg, &s.path, false).unwrap_err();
        assert!(matches!(err, KeygenError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(&s.path).expect("read"), before, "untouched");
        let key = SigningKey::load(&s.path, None).expect("load");
        let jwks = PublishedJwks::new(Some(&key), &[]).expect("jwks");
        assert_eq!(jwks.kids(), [s.kid.as_str()]);
        let kid = keygen::run(alg, &s.path, true).expect("force");
        assert_ne!(kid, s.kid, "a new key");
        assert_ne!(std::fs::read(&s.path).expect("read"), before);
        let mode = std::fs::metadata(&s.path)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn exp_is_min_of_ttl_and_token_exp() {
    let s = keygen_into_tempdir(KeygenAlg::Es256);
    let m = minter(&s.path, 60, false);
    let jwks = PublishedJwks::new(Some(m.key()), &[]).expect("jwks");
    let now = now();
    let c = claims(json!({"sub": "alice"}));
    let (_, p) = verify(
        jwks.body(),
        &m.mint(&input(&c, now + 20, None), now).expect("mint"),
    )
    .expect("verify");
    assert_eq!(p["exp"], now + 20);
    let (_, p) = verify(
        jwks.body(),
        &m.mint(&input(&c, now + 600, None), now).expect("mint"),
    )
    .expect("verify");
    assert_eq!(p["exp"], now + 60);
}

#[test]
fn absent_and_null_claims_are_omitted_and_sub_falls_back_to_client_id() {
    let s = keygen_into_tempdir(KeygenAlg::EdDsa);
    let m = minter(&s.path, 60, false);
    let jwks = PublishedJwks::new(Some(m.key()), &[]).expect("jwks");
    let now = now();
    let c = claims(json!({"client_id": "svc-billing", "email": null, "scope": "billing"}));
    let (_, p) = verify(
        jwks.body(),
        &m.mint(&input(&c, now + 600, None), now).expect("mint"),
    )
    .expect("verify");
    assert_eq!(p["sub"], "svc-billing");
    assert_eq!(p["client_id"], "svc-billing");
    assert_eq!(p["scope"], "billing");
    for absent in ["email", "name", "groups"] {
        assert!(!p.contains_key(absent), "{absent}");
    }
}

#[test]
fn htm_and_htp_only_with_bind_request() {
    let s = keygen_into_tempdir(KeygenAlg::Es256);
    let now = now();
    let c = claims(json!({"sub": "alice"}));
    for bind in [false, true] {
        let m = minter(&s.path, 60, bind);
        let jwks = PublishedJwks::new(Some(m.key()), &[]).expect("jwks");
        let (_, p) = verify(
            jwks.body(),
            &m.mint(&input(&c, now + 600, None), now).expect("mint"),
        )
        .expect("verify");
        if bind {
            assert_eq!(p["htm"], "POST");
            assert_eq!(p["htp"], "/orders/7");
        } else {
            assert!(!p.contains_key("htm") && !p.contains_key("htp"));
        }
    }
}

#[test]
fn cache_is_scoped_to_token_route_request_and_lifetime() {
    let s = keygen_into_tempdir(KeygenAlg::Es256);
    let now = now();
    let c = claims(json!({"sub": "alice", "email": "a@example.com"}));
    let token_a = token_hash("token-a");
    let token_b = token_hash("token-b");

    let m = minter(&s.path, 60, true);
    let jwks = PublishedJwks::new(Some(m.key()), &[]).expect("jwks");
    let first = m
        .mint(&input(&c, now + 3600, Some(token_a)), now)
        .expect("mint");
    let again = m
        .mint(&input(&c, now + 3600, Some(token_a)), now + 5)
        .expect("mint");
    assert_eq!(again, first, "reused for the same token, route and request");
    let (_, p) = verify(jwks.body(), &again).expect("verify");
    assert_eq!(p["iat"], now);

    let other_token = m
        .mint(&input(&c, now + 3600, Some(token_b)), now)
        .expect("mint");
    assert_ne!(other_token, first, "never across tokens");
    let mut other_route = input(&c, now + 3600, Some(token_a));
    other_route.route_id = "orders-read";
    let got = m.mint(&other_route, now).expect("mint");
    assert_ne!(got, first, "never across routes");
    assert_eq!(
        verify(jwks.body(), &got).expect("verify").1["route"],
        "orders-read"
    );
    let mut other_method = input(&c, now + 3600, Some(token_a));
    other_method.method = "DELETE";
    let got = m.mint(&other_method, now).expect("mint");
    assert_ne!(got, first, "never across methods with bind_request");
    assert_eq!(
        verify(jwks.body(), &got).expect("verify").1["htm"],
        "DELETE"
    );
    let mut other_path = input(&c, now + 3600, Some(token_a));
    other_path.path = "/orders/8";
    let got = m.mint(&other_path, now).expect("mint");
    assert_ne!(got, first, "never across paths with bind_request");
    assert_eq!(
        verify(jwks.body(), &got).expect("verify").1["htp"],
        "/orders/8"
    );
    let changed = claims(json!({"sub": "alice", "email": "new@example.com"}));
    let got = m
        .mint(&input(&changed, now + 3600, Some(token_a)), now)
        .expect("mint");
    assert_ne!(got, first, "never after the merged claims changed");
    assert_eq!(
        verify(jwks.body(), &got).expect("verify").1["email"],
        "new@example.com"
    );

    // Never past the refresh point: exp - min(10 s, ttl / 4) = now + 50.
    assert_eq!(
        m.mint(&input(&c, now + 3600, Some(token_a)), now + 49)
            .expect("mint"),
        first
    );
    let refreshed = m
        .mint(&input(&c, now + 3600, Some(token_a)), now + 50)
        .expect("mint");
    assert_ne!(refreshed, first);

    // Without a cache key nothing is reused.
    let x = m.mint(&input(&c, now + 3600, None), now).expect("mint");
    let y = m.mint(&input(&c, now + 3600, None), now).expect("mint");
    assert_ne!(x, y);
}

/// Not a benchmark with assertions: prints the signing cost per assertion (reuse disabled) and a
/// cache hit, for the record. `cargo test --release --test identity -- --nocapture`.
#[test]
fn signing_time_per_assertion() {
    let iterations: u32 = if cfg!(debug_assertions) { 100 } else { 2000 };
    let dir = tempfile::tempdir().expect("tempdir");
    let rsa3072 = dir.path().join("rsa3072.pem");
    let pair = josekit::jwk::alg::rsa::RsaKeyPair::generate(3072).expect("rsa");
    std::fs::write(&rsa3072, josekit::jwk::KeyPair::to_pem_private_key(&pair)).expect("write");
    let keys: Vec<(String, Setup)> = ALGS
        .iter()
        .map(|&alg| {
            let label = match alg {
                KeygenAlg::Rs256 => format!("RS256 ({} bit)", keygen::RSA_BITS),
                other => other.as_str().to_owned(),
            };
            (label, keygen_into_tempdir(alg))
        })
        .collect();
    let mut paths: Vec<(String, PathBuf)> = keys
        .iter()
        .map(|(l, s)| (l.clone(), s.path.clone()))
        .collect();
    paths.push(("RS256 (3072 bit)".to_owned(), rsa3072));

    let now = now();
    let c = claims(json!({
        "sub": "alice", "email": "alice@example.com", "name": "Alice",
        "groups": ["admin", "ops"], "scope": "orders:read orders:write", "client_id": "web"
    }));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("identity assertion cost ({profile}, {iterations} iterations each):");
    for (label, path) in &paths {
        let m = minter(path, 60, true);
        let i = input(&c, now + 3600, None);
        m.mint(&i, now).expect("warm-up");
        let start = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(m.mint(std::hint::black_box(&i), now).expect("mint"));
        }
        let sign = start.elapsed() / iterations;
        let cached = input(&c, now + 3600, Some(token_hash("t")));
        m.mint(&cached, now).expect("prime");
        let start = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(m.mint(std::hint::black_box(&cached), now).expect("hit"));
        }
        let hit = start.elapsed() / iterations;
        let payload = br#"{"iss":"tokengate","sub":"alice","aud":"http://127.0.0.1:3000"}"#;
        let start = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(
                m.key()
                    .sign_compact(std::hint::black_box(payload))
                    .expect("sign"),
            );
        }
        let raw = start.elapsed() / iterations;
        let len = m.mint(&i, now).expect("mint").len();
        println!(
            "  {label:<18} mint (no reuse) {sign:>9.1?}   sign_compact only {raw:>9.1?}   \
             cache hit {hit:>8.1?}   {len} bytes"
        );
    }
}
