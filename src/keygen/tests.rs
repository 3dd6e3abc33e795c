use std::os::unix::fs::PermissionsExt;
use std::str::FromStr;

use super::*;
use crate::identity::signing::public_jwk_from_pem;

const ALGS: [KeygenAlg; 3] = [KeygenAlg::Es256, KeygenAlg::EdDsa, KeygenAlg::Rs256];

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn writes_a_pkcs8_key_with_mode_0600_and_returns_its_kid() {
    let dir = tempfile::tempdir().expect("tempdir");
    for alg in ALGS {
        let out = dir.path().join(format!("{}.pem", alg.as_str()));
        let kid = run(alg, &out, false).expect("keygen");
        assert_eq!(mode(&out), 0o600, "{alg:?}");
        let text = std::fs::read_to_string(&out).expect("read");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{alg:?}");
        let key = SigningKey::load(&out, None).expect("loads");
        assert_eq!(key.alg(), alg.as_str());
        assert_eq!(key.kid(), kid);
        assert_eq!(
            public_jwk_from_pem(&out).expect("public")["kid"],
            kid.as_str()
        );
        if alg == KeygenAlg::Rs256 {
            let n = key.public_jwk()["n"].as_str().expect("n");
            assert_eq!(
                n.len(),
                (RSA_BITS as usize / 8 * 4).div_ceil(3),
                "RSA_BITS-bit modulus"
            );
        }
    }
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("id.pem");
    std::fs::write(&out, "keep me").expect("write");
    let err = run(KeygenAlg::Es256, &out, false).unwrap_err();
    assert!(
        matches!(err, KeygenError::Exists(ref p) if p == &out),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).expect("read"), "keep me");
    // A dangling symlink counts as existing too (never followed).
    let link = dir.path().join("link.pem");
    std::os::unix::fs::symlink(dir.path().join("nowhere.pem"), &link).expect("symlink");
    assert!(matches!(
        run(KeygenAlg::Es256, &link, false),
        Err(KeygenError::Exists(_))
    ));
    assert!(!dir.path().join("nowhere.pem").exists());
}

#[test]
fn force_replaces_the_file_with_a_0600_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("id.pem");
    std::fs::write(&out, "old").expect("write");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let kid = run(KeygenAlg::EdDsa, &out, true).expect("keygen");
    assert_eq!(mode(&out), 0o600);
    assert_eq!(SigningKey::load(&out, None).expect("loads").kid(), kid);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["id.pem"], "no temporary file left behind");
    // --force on a path that does not exist yet simply creates it.
    let fresh = dir.path().join("fresh.pem");
    run(KeygenAlg::Es256, &fresh, true).expect("keygen");
    assert_eq!(mode(&fresh), 0o600);
}

#[test]
fn io_errors_name_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("missing-dir").join("id.pem");
    let err = run(KeygenAlg::Es256, &out, false).unwrap_err();
    assert!(matches!(err, KeygenError::Io { .. }));
    assert!(
        err.to_string().starts_with(&out.display().to_string()),
        "{err}"
    );
    let err = run(KeygenAlg::Es256, dir.path(), true).unwrap_err();
    assert!(matches!(err, KeygenError::Io { .. }), "{err}");
    let count = std::fs::read_dir(dir.path()).expect("read_dir").count();
    assert_eq!(count, 0, "a failed --force leaves no temporary file");
}

#[test]
fn every_key_is_new() {
    let (a, kid_a) = generate(KeygenAlg::Es256).expect("a");
    let (b, kid_b) = generate(KeygenAlg::Es256).expect("b");
    assert_ne!(a, b);
    assert_ne!(kid_a, kid_b);
}

#[test]
fn alg_names_parse_exactly() {
    for alg in ALGS {
        assert_eq!(KeygenAlg::from_str(alg.as_str()), Ok(alg));
        let possible = clap::ValueEnum::to_possible_value(&alg).expect("value");
        assert_eq!(possible.get_name(), alg.as_str());
    }
    assert!(KeygenAlg::from_str("HS256").is_err());
    assert!(KeygenAlg::from_str("es384").is_err());
}
