//! Packaging (issue 7): the example configurations, the Dockerfile, the compose example and the
//! Kubernetes sidecar manifest. No Docker engine or cluster runs here, so these tests check what
//! can be checked without one:
//!
//! - `tokengate check` accepts every `.toml` under `config/` (recursively: `tests/cli.rs` covers
//!   the top level), `docker/tokengate.toml` and the configuration embedded in the Kubernetes
//!   ConfigMap, with their `${VAR}`s set and a freshly generated signing key where one is needed;
//! - the Dockerfile copies only paths that exist (and that `.dockerignore` keeps), copies every
//!   file Cargo.toml's declared targets need, builds the `tokengate` binary with exactly the cargo
//!   command `.ci/run` runs, and its HEALTHCHECK command really answers against a running proxy;
//! - the compose file and the manifest probe the admin `/readyz`, and their ports match the
//!   configuration they mount.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// Variables of the test's own environment that would change the child's behaviour.
const SCRUBBED_ENV: [&str; 4] = [
    "TOKENGATE_CONFIG",
    "TOKENGATE_LOG",
    "TOKENGATE_LOG_FORMAT",
    "RUST_LOG",
];

/// The generic value for a `${VAR}` this file has no realistic sample for. Long enough for any
/// secret (hmac_secret needs 32 bytes) and a valid host name label.
const GENERIC_VALUE: &str = "tokengate-packaging-test-value-0123456789abcdef";

/// Realistic values for the variables the shipped examples use, so that `check` sees what an
/// operator would write (a tenant GUID, a domain, an API identifier URL).
const SAMPLES: [(&str, &str); 12] = [
    ("AUTH0_DOMAIN", "example.eu.auth0.com"),
    ("AUTH0_API_IDENTIFIER", "https://orders.example.com"),
    ("KEYCLOAK_HOST", "sso.example.com"),
    ("KEYCLOAK_REALM", "corp"),
    ("KEYCLOAK_API_AUDIENCE", "orders-api"),
    ("KEYCLOAK_API_CLIENT", "orders-api"),
    ("OKTA_DOMAIN", "example.okta.com"),
    ("ENTRA_TENANT_ID", "8eaef023-2b34-4da1-9baa-8bc8c9d6a490"),
    (
        "ENTRA_API_CLIENT_ID",
        "6e74172b-be56-4843-9ff4-e66a39bb12e3",
    ),
    (
        "ENTRA_ADMIN_GROUP_ID",
        "0b2c6f3e-3a41-4e8a-9a52-6f1d2c9d7e10",
    ),
    (
        "GOOGLE_CLIENT_ID",
        "1234567890-abc123def456.apps.googleusercontent.com",
    ),
    ("GOOGLE_WORKSPACE_DOMAIN", "example.com"),
];

/// The variable the examples use for the identity signing key's path.
const SIGNING_KEY_VAR: &str = "TOKENGATE_SIGNING_KEY";

/// The issuer examples the README and issue 7 promise.
const ISSUER_EXAMPLES: [&str; 5] = ["auth0", "keycloak", "okta", "entra", "google"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn tokengate(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(root());
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.output().expect("run tokengate")
}

fn show(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A new ES256 identity key at `dir/name`, written by `tokengate keygen` itself.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    let out = tokengate(
        &[
            "keygen",
            "--alg",
            "ES256",
            "--out",
            path.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "keygen\n{}", show(&out));
    path
}

/// The environment `check` needs for `text`: a sample value for each `${VAR}`, and a real key
/// file for the signing-key variable.
fn env_for(text: &str, key: &Path) -> Vec<(String, String)> {
    support::env_vars_used(text)
        .into_iter()
        .map(|name| {
            let value = if name == SIGNING_KEY_VAR {
                key.to_str().expect("utf-8").to_owned()
            } else {
                SAMPLES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(GENERIC_VALUE, |(_, v)| v)
                    .to_owned()
            };
            (name, value)
        })
        .collect()
}

/// Runs `tokengate check --config FILE` and asserts it passed with a summary.
fn assert_check_passes(file: &str, env: &[(String, String)]) -> Output {
    let out = tokengate(&["check", "--config", file], env);
    assert_eq!(out.status.code(), Some(0), "{file}\n{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{file}: OK")),
        "{file}: the summary should start with \"{file}: OK\"\n{}",
        show(&out)
    );
    out
}

/// Every `.toml` file under `dir`, recursively, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .expect("under the crate root")
        .to_str()
        .expect("utf-8")
        .to_owned()
}

/// The port of an `ip:port` listen address.
fn port_of(listen: &str) -> u16 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen:?}"))
}

fn parse_toml(text: &str, what: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{what} is not TOML: {e}"))
}

fn str_at<'a>(table: &'a toml::Table, section: &str, key: &str) -> &'a str {
    table
        .get(section)
        .and_then(|s| s.get(key))
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("no [{section}] {key}"))
}

// ------------------------------------------------------------------------------------------
// (a) every shipped configuration passes `tokengate check`

#[test]
fn check_accepts_every_config_under_config_recursively() {
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keygen(keys.path(), "identity.pem");
    let files = toml_files(&root().join("config"));
    assert!(
        files.len() >= 3 + ISSUER_EXAMPLES.len(),
        "config/ and config/issuers/ should hold the examples: {files:?}"
    );
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let env = env_for(&text, &key);
        let out = assert_check_passes(&rel(file), &env);
        // Examples are meant to be copied: none of them should teach a setup `check` warns about.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("warning"),
            "{}: check warns\n{}",
            rel(file),
            show(&out)
        );
    }
}

#[test]
fn issuer_examples_exist_and_each_configures_an_issuer() {
    for name in ISSUER_EXAMPLES {
        let file = format!("config/issuers/{name}.toml");
        let text = read(&file);
        assert!(text.contains("[[issuer]]"), "{file} has no [[issuer]]");
        // Each example names its provider's documentation, so the facts can be re-checked.
        assert!(text.contains("https://"), "{file} should cite its sources");
        // And every variable it uses has a realistic sample here (or is the signing key).
        for var in support::env_vars_used(&text) {
            assert!(
                var == SIGNING_KEY_VAR || SAMPLES.iter().any(|(n, _)| *n == var),
                "{file}: add a sample value for ${{{var}}} to SAMPLES"
            );
        }
    }
}

#[test]
fn check_accepts_the_compose_configuration_with_a_generated_key() {
    // docker/tokengate.toml names keys/identity.pem relative to itself, as mounted in the
    // container. The key is never committed: put a copy of the file next to a fresh key.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = read("docker/tokengate.toml");
    std::fs::write(dir.path().join("tokengate.toml"), &text).expect("write");
    keygen(dir.path(), "keys/identity.pem");
    let file = dir.path().join("tokengate.toml");
    let file = file.to_str().expect("utf-8");
    let out = assert_check_passes(file, &env_for(&text, Path::new("/nonexistent")));
    // Keycloak is reached over plain http on the compose network: check says so.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("allow_http"),
        "check should warn about allow_http\n{}",
        show(&out)
    );
}

#[test]
fn check_accepts_the_kubernetes_configmap_configuration() {
    let (toml_text, key_path) = k8s_config();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path(), "identity.pem");
    let text = toml_text.replace(&key_path, key.to_str().expect("utf-8"));
    let file = dir.path().join("tokengate.toml");
    std::fs::write(&file, &text).expect("write");
    assert_check_passes(file.to_str().expect("utf-8"), &env_for(&text, &key));
}

// ------------------------------------------------------------------------------------------
// (b) the Dockerfile

/// The Dockerfile's instructions: comments dropped, `\` continuations joined, as
/// (INSTRUCTION, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (word, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((word.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    assert!(current.is_empty(), "Dockerfile ends inside a continuation");
    out
}

/// Instructions of the final stage (after the last FROM).
fn final_stage(instructions: &[(String, String)]) -> &[(String, String)] {
    let last_from = instructions
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("a FROM");
    &instructions[last_from..]
}

/// `cargo build ...` as written in `text`: from "cargo build" to the end of its shell command.
fn cargo_build_command(text: &str) -> Option<String> {
    let start = text.find("cargo build")?;
    let rest = &text[start..];
    let end = ["&&", ";", "||", "\n"]
        .iter()
        .filter_map(|sep| rest.find(sep))
        .min()
        .unwrap_or(rest.len());
    Some(rest[..end].split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The COPY sources from the build context (not `--from=` another stage).
fn copy_sources(instructions: &[(String, String)]) -> Vec<String> {
    let mut sources = Vec::new();
    for (instruction, args) in instructions {
        if instruction != "COPY" && instruction != "ADD" {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
        assert!(
            paths.len() >= 2,
            "{instruction} {args}: needs a source and a destination"
        );
        sources.extend(paths[..paths.len() - 1].iter().map(|s| (*s).to_owned()));
    }
    sources
}

/// `.dockerignore` patterns, without comments and trailing slashes.
fn dockerignore() -> Vec<String> {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect()
}

#[test]
fn dockerfile_instructions_are_known_and_the_image_is_shaped_as_documented() {
    const KNOWN: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];
    let instructions = dockerfile();
    for (instruction, args) in &instructions {
        assert!(
            KNOWN.contains(&instruction.as_str()),
            "unknown Dockerfile instruction {instruction} {args}"
        );
    }
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[froms.len() - 1].starts_with("debian:bookworm-slim"),
        "runtime image: {froms:?}"
    );

    let runtime = final_stage(&instructions);
    let get = |name: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let runs = get("RUN").join("\n");
    for package in ["libssl3", "ca-certificates"] {
        assert!(
            runs.contains(package),
            "the runtime image installs {package}"
        );
    }
    assert!(
        runs.contains("--no-install-recommends"),
        "nothing but what is named"
    );
    let env = get("ENV").join(" ");
    assert!(
        env.contains("TOKENGATE_CONFIG=/etc/tokengate/tokengate.toml"),
        "the documented config path: {env}"
    );
    let user = get("USER");
    assert_eq!(user.len(), 1, "one USER in the runtime stage");
    let uid = user[0].split(':').next().unwrap_or("");
    assert!(uid != "0" && uid != "root", "non-root user: {}", user[0]);
    let expose = get("EXPOSE").join(" ");
    for port in ["8080", "9901"] {
        assert!(
            expose.split_whitespace().any(|p| p == port),
            "EXPOSE {port}: {expose}"
        );
    }
    assert_eq!(get("ENTRYPOINT"), vec![r#"["tokengate"]"#]);
    assert_eq!(get("CMD"), vec![r#"["serve"]"#]);
    assert_eq!(get("HEALTHCHECK").len(), 1, "a HEALTHCHECK");
}

#[test]
fn dockerfile_copies_only_existing_paths_and_everything_cargo_needs() {
    let instructions = dockerfile();
    let sources = copy_sources(&instructions);
    assert!(!sources.is_empty(), "the build stage copies the sources");
    let ignored = dockerignore();
    for source in &sources {
        let path = root().join(source.trim_end_matches('/'));
        assert!(path.exists(), "COPY source {source} does not exist");
        let first = source
            .trim_start_matches("./")
            .split('/')
            .next()
            .unwrap_or("");
        assert!(
            !ignored
                .iter()
                .any(|p| p == first || p == source.trim_end_matches('/')),
            "COPY source {source} is excluded by .dockerignore"
        );
    }
    // bench/ is a workspace member: cargo reads its manifest even when building tokengate only.
    for required in ["Cargo.toml", "Cargo.lock", "src", "bench"] {
        assert!(
            sources.iter().any(|s| s.trim_end_matches('/') == required),
            "the build needs {required}: COPY sources are {sources:?}"
        );
    }
    // target/ must never be sent to the Docker daemon.
    assert!(
        ignored.iter().any(|p| p == "target"),
        ".dockerignore excludes target/"
    );

    // Every target Cargo.toml declares must be in the context, or cargo refuses the manifest
    // (a [[bench]] whose file is missing fails even `cargo build --bin tokengate`).
    let manifest = parse_toml(&read("Cargo.toml"), "Cargo.toml");
    let covered = |path: &str| {
        sources.iter().any(|s| {
            let s = s.trim_end_matches('/');
            path == s || path.starts_with(&format!("{s}/"))
        })
    };
    for (kind, dir) in [
        ("bench", "benches"),
        ("test", "tests"),
        ("example", "examples"),
    ] {
        let Some(targets) = manifest.get(kind).and_then(toml::Value::as_array) else {
            continue;
        };
        for target in targets {
            let path = match target.get("path").and_then(toml::Value::as_str) {
                Some(p) => p.to_owned(),
                None => format!(
                    "{dir}/{}.rs",
                    target
                        .get("name")
                        .and_then(toml::Value::as_str)
                        .expect("name")
                ),
            };
            assert!(
                covered(&path),
                "Cargo.toml declares [[{kind}]] {path}, which the Dockerfile does not COPY"
            );
        }
    }
}

#[test]
fn dockerfile_builds_with_exactly_the_cargo_command_ci_runs() {
    let instructions = dockerfile();
    let runs: Vec<&str> = instructions
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    let builds: Vec<String> = runs.iter().filter_map(|r| cargo_build_command(r)).collect();
    assert_eq!(
        builds.len(),
        1,
        "one cargo build in the Dockerfile: {builds:?}"
    );
    let docker = &builds[0];

    let ci = read(".ci/run");
    let ci_builds: Vec<String> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(cargo_build_command)
        .collect();
    assert_eq!(
        ci_builds.len(),
        1,
        ".ci/run has one cargo build: {ci_builds:?}"
    );
    assert_eq!(
        docker, &ci_builds[0],
        "the Dockerfile must build exactly what CI builds"
    );
    assert!(docker.contains("--locked") && docker.contains("--release"));

    // The binary it names is this package's binary, and the image runs it.
    let words: Vec<&str> = docker.split_whitespace().collect();
    let bin = words
        .iter()
        .position(|w| *w == "--bin")
        .and_then(|i| words.get(i + 1))
        .expect("--bin NAME");
    assert_eq!(*bin, "tokengate");
    assert!(Path::new(BIN).exists(), "cargo built the {bin} binary");
    assert!(
        Path::new(BIN).file_name().is_some_and(|n| n == *bin),
        "{BIN} is the --bin target"
    );
    let copied_out = runs
        .iter()
        .any(|r| r.contains(&format!("target/release/{bin}")));
    assert!(
        copied_out,
        "the build step takes target/release/{bin} into the image"
    );
}

/// Kills the child on drop, so a failing assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tokengate serve` on `toml` with JSON logs and returns it with its admin address.
fn serve_with_admin(dir: &Path, toml: &str) -> (Running, String) {
    let file = dir.join("tokengate.toml");
    std::fs::write(&file, toml).expect("write");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config", file.to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    cmd.env("TOKENGATE_LOG_FORMAT", "json")
        .env("TOKENGATE_LOG", "info");
    let mut child = cmd.spawn().expect("spawn tokengate serve");
    let stderr = child.stderr.take().expect("stderr");
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let admin = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("admin").and_then(|a| a.as_str()).map(str::to_owned));
            if tx.send((line, admin)).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((_, Some(admin))) => return (running, admin),
            Ok((line, None)) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => break,
        }
    }
    panic!("tokengate did not report its admin address\n{seen}");
}

#[test]
fn dockerfile_healthcheck_probes_the_admin_healthz_of_a_running_proxy() {
    // The image has no curl: its HEALTHCHECK is bash with /dev/tcp. Run that exact command.
    let instructions = dockerfile();
    let healthcheck = &final_stage(&instructions)
        .iter()
        .find(|(i, _)| i == "HEALTHCHECK")
        .expect("HEALTHCHECK")
        .1;
    let json = &healthcheck[healthcheck.find("CMD").expect("CMD") + 3..];
    let argv: Vec<String> = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not an exec-form JSON array: {e}"));
    assert_eq!(argv.len(), 3, "{argv:?}");
    assert_eq!((argv[0].as_str(), argv[1].as_str()), ("bash", "-c"));
    let script = &argv[2];
    assert!(
        script.contains("/healthz"),
        "liveness probes /healthz: {script}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let config = "\
[server]
listen = \"127.0.0.1:0\"

[admin]
listen = \"127.0.0.1:0\"

[upstream]
url = \"http://127.0.0.1:9\"

[[route]]
id = \"all\"
path_prefix = \"/\"
auth = \"public\"
";
    let (running, admin) = serve_with_admin(dir.path(), config);
    let port = port_of(&admin).to_string();
    let probe = || {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("HEALTHCHECK_ADMIN_PORT", &port)
            .output()
            .expect("run bash")
    };
    let out = probe();
    assert!(
        out.status.success(),
        "healthy proxy, probe failed\n{}",
        show(&out)
    );
    drop(running);
    let out = probe();
    assert!(
        !out.status.success(),
        "stopped proxy, probe succeeded\n{}",
        show(&out)
    );
}

// ------------------------------------------------------------------------------------------
// (c) compose and Kubernetes: readiness on the admin /readyz, ports as configured

#[test]
fn compose_mounts_the_config_it_names_and_publishes_its_ports() {
    let compose = read("docker/compose.yaml");
    let config = parse_toml(&read("docker/tokengate.toml"), "docker/tokengate.toml");
    let main = port_of(str_at(&config, "server", "listen"));
    let admin = port_of(str_at(&config, "admin", "listen"));
    for port in [main, admin] {
        assert!(
            compose.contains(&format!(":{port}:{port}\"")),
            "compose should publish container port {port} (from docker/tokengate.toml)"
        );
    }
    assert!(
        compose.contains("/readyz"),
        "compose probes readiness on /readyz"
    );
    assert!(
        compose.contains(&format!("/dev/tcp/127.0.0.1/{admin}")),
        "compose's readiness probe targets the admin port {admin}"
    );
    assert!(
        compose.contains("./tokengate.toml:/etc/tokengate/tokengate.toml"),
        "compose mounts docker/tokengate.toml at the image's documented path"
    );
    // Every host path compose mounts exists (relative to docker/).
    for line in compose.lines() {
        let Some(mount) = line.trim().strip_prefix("- ./") else {
            continue;
        };
        let host = mount.split(':').next().unwrap_or("");
        assert!(
            root().join("docker").join(host).exists(),
            "compose mounts docker/{host}, which does not exist"
        );
    }
    // The upstream is the compose service the config forwards to.
    let upstream = str_at(&config, "upstream", "url");
    let host = upstream
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or("");
    assert!(
        compose.contains(&format!("\n  {host}:\n")),
        "docker/tokengate.toml forwards to {upstream}, which should be a compose service"
    );
}

/// The ConfigMap's `tokengate.toml: |` block of the Kubernetes manifest, dedented, and the
/// `signing_key` path it names.
fn k8s_config() -> (String, String) {
    let manifest = read("docker/kubernetes/sidecar.yaml");
    let mut lines = manifest.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == "tokengate.toml: |")
        .expect("a ConfigMap key `tokengate.toml: |`");
    let mut block: Vec<&str> = Vec::new();
    for line in lines {
        if !line.trim().is_empty() && !line.starts_with("    ") {
            break;
        }
        block.push(line);
    }
    let text: String = block
        .iter()
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let table = parse_toml(&text, "the ConfigMap's tokengate.toml");
    let key = str_at(&table, "identity", "signing_key").to_owned();
    (text, key)
}

/// `containerPort` by port name in the manifest (`- name: http` followed by `containerPort: N`).
fn container_ports(manifest: &str) -> BTreeMap<String, u16> {
    let mut ports = BTreeMap::new();
    let lines: Vec<&str> = manifest.lines().map(str::trim).collect();
    for pair in lines.windows(2) {
        if let (Some(name), Some(port)) = (
            pair[0].strip_prefix("- name: "),
            pair[1].strip_prefix("containerPort: "),
        ) {
            let port = port.split_whitespace().next().unwrap_or("");
            ports.insert(name.to_owned(), port.parse().expect("containerPort number"));
        }
    }
    ports
}

#[test]
fn kubernetes_probes_readyz_and_exposes_only_tokengate() {
    let manifest = read("docker/kubernetes/sidecar.yaml");
    let (text, key_path) = k8s_config();
    let config = parse_toml(&text, "ConfigMap tokengate.toml");
    let ports = container_ports(&manifest);
    assert_eq!(
        ports.get("http"),
        Some(&port_of(str_at(&config, "server", "listen"))),
        "containerPort http = [server] listen port: {ports:?}"
    );
    assert_eq!(
        ports.get("admin"),
        Some(&port_of(str_at(&config, "admin", "listen"))),
        "containerPort admin = [admin] listen port: {ports:?}"
    );
    assert_eq!(
        ports.len(),
        2,
        "only tokengate's ports are declared: {ports:?}"
    );
    for probe in ["readinessProbe:", "livenessProbe:"] {
        assert!(manifest.contains(probe), "a {probe}");
    }
    assert!(
        manifest.contains("path: /readyz"),
        "readiness on the admin /readyz"
    );
    assert!(
        manifest.contains("path: /healthz"),
        "liveness on the admin /healthz"
    );
    assert_eq!(
        manifest.matches("port: admin").count(),
        2,
        "both probes use the admin port"
    );
    assert!(
        manifest.contains("targetPort: http"),
        "the Service targets tokengate's port"
    );

    // The app listens on loopback only, where tokengate's upstream points.
    let upstream = str_at(&config, "upstream", "url");
    let app_listen = upstream.trim_start_matches("http://");
    assert!(
        app_listen.starts_with("127.0.0.1:"),
        "upstream on loopback: {upstream}"
    );
    assert!(
        manifest.contains(&format!("-listen={app_listen}")),
        "the app container binds {app_listen}"
    );

    // Config from the ConfigMap, key from a read-only Secret mounted where signing_key says.
    let key_dir = Path::new(&key_path)
        .parent()
        .and_then(Path::to_str)
        .expect("key dir");
    assert!(
        manifest.contains(&format!("mountPath: {key_dir}")),
        "the Secret is mounted at {key_dir}"
    );
    for needle in [
        "kind: ConfigMap",
        "configMap:",
        "secretName:",
        "defaultMode: 0400",
        "readOnly: true",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "drop: [\"ALL\"]",
        "requests:",
        "mountPath: /etc/tokengate",
        "value: /etc/tokengate/tokengate.toml",
    ] {
        assert!(
            manifest.contains(needle),
            "the manifest should contain {needle:?}"
        );
    }
}
