//! The command line (SPEC §2): `check` and `serve` run as the built binary, their exit codes
//! (0 ok, 1 invalid configuration or failure at start, 2 bad usage), where problems are printed
//! and in which form (`FILE:LINE: KEY.PATH: message`, FILE as given), and how `--config` is
//! found (`--config`, then `$TOKENGATE_CONFIG`, then `tokengate.toml` in the working directory).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::path::Path;
use std::time::Duration;

use support::process::{run, write_config, Output, Process};

/// Generous: a debug binary on a slow, shared machine.
const TIMEOUT: Duration = Duration::from_secs(60);

fn tokengate(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    run(args, cwd, env, TIMEOUT)
}

fn show(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status, out.stdout, out.stderr
    )
}

/// The lines of `text` that are problems reported for `file`: `FILE:LINE: ...`.
fn problem_lines<'a>(text: &'a str, file: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(file)
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect()
}

const MINIMAL: &str = "\
[server]
listen = \"127.0.0.1:0\"

[upstream]
url = \"http://127.0.0.1:9\"

[[route]]
id = \"all\"
path_prefix = \"/\"
auth = \"public\"
";

#[test]
fn check_accepts_every_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("config"))
        .expect("config/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no config/*.toml");
    // Long enough for any secret (hmac_secret needs 32 bytes).
    let value = "tokengate-cli-test-value-0123456789abcdef";
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let names = support::env_vars_used(&text);
        let env: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value)).collect();
        let rel = format!(
            "config/{}",
            file.file_name().expect("name").to_str().expect("utf-8")
        );
        let out = tokengate(&["check", "--config", &rel], root, &env);
        assert_eq!(out.code(), Some(0), "{rel}\n{}", show(&out));
        assert!(
            out.stdout.starts_with(&format!("{rel}: OK")),
            "{rel}: the summary should start with \"{rel}: OK\"\n{}",
            show(&out)
        );
        for section in ["listen", "upstream", "routes"] {
            assert!(
                out.stdout.lines().any(|l| l.starts_with(section)),
                "{rel}: the summary should have a {section:?} line\n{}",
                show(&out)
            );
        }
        assert!(
            out.stdout.contains("issuer"),
            "{rel}: the summary should list issuers\n{}",
            show(&out)
        );
    }
}

/// Line numbers below refer to this text (1-based).
const BROKEN: &str = "\
[server]
listen = \"127.0.0.1:0\"
header_read_timeout = \"10 parsecs\"

[upstream]
url = \"http://127.0.0.1:9\"

[[route]]
id = \"a\"
path = \"/a\"
auth = \"public\"

[[route]]
id = \"b\"
path_prefix = \"/b\"
pathh = \"/b/x\"
auth = \"public\"

[[route]]
id = \"c\"
path = \"/c\"
auth = \"public\"
upstream = \"${TG_TEST_UNSET_VAR}\"

[[route]]
id = \"d\"
auth = \"public\"
";

/// (line, key path, a fragment the message must contain), in line order.
const BROKEN_PROBLEMS: [(usize, &str, &str); 4] = [
    (3, "server.header_read_timeout", "10 parsecs"),
    (16, "route[1].pathh", "unknown key"),
    (23, "route[2].upstream", "TG_TEST_UNSET_VAR"),
    (25, "route[3]", "path"),
];

/// Asserts that `out` reports exactly BROKEN_PROBLEMS for `file`, on stderr, and nothing on
/// stdout.
fn assert_broken_report(out: &Output, file: &str) {
    assert_eq!(out.code(), Some(1), "{}", show(out));
    assert!(
        problem_lines(&out.stdout, file).is_empty(),
        "problems go to stderr\n{}",
        show(out)
    );
    let lines = problem_lines(&out.stderr, file);
    assert_eq!(
        lines.len(),
        BROKEN_PROBLEMS.len(),
        "one line per problem, FILE exactly {file:?}\n{}",
        show(out)
    );
    for (line, (number, path, fragment)) in lines.iter().zip(BROKEN_PROBLEMS) {
        let prefix = format!("{file}:{number}: {path}: ");
        assert!(
            line.starts_with(&prefix),
            "expected a line starting {prefix:?}, got {line:?}\n{}",
            show(out)
        );
        let message = &line[prefix.len()..];
        assert!(
            message.contains(fragment),
            "{line:?}: the message should mention {fragment:?}"
        );
    }
}

#[test]
fn check_reports_every_problem_with_file_line_and_key_path() {
    let (dir, _) = write_config(BROKEN);
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/broken.toml"), BROKEN).expect("write");
    // FILE is printed as given: relative, with "./", via "..", and absolute.
    let absolute = dir.path().join("sub/broken.toml");
    let absolute = absolute.to_str().expect("utf-8");
    for file in [
        "tokengate.toml",
        "./sub/broken.toml",
        "sub/../sub/broken.toml",
        absolute,
    ] {
        let out = tokengate(&["check", "--config", file], dir.path(), &[]);
        assert_broken_report(&out, file);
        assert!(
            !out.stdout.contains("OK"),
            "no summary for an invalid file\n{}",
            show(&out)
        );
    }
}

#[test]
fn check_reports_an_unset_variable_only_when_it_is_unset() {
    let (dir, _) = write_config(BROKEN);
    let out = tokengate(
        &["check", "--config", "tokengate.toml"],
        dir.path(),
        &[("TG_TEST_UNSET_VAR", "http://127.0.0.1:10")],
    );
    assert_eq!(out.code(), Some(1), "{}", show(&out));
    let lines = problem_lines(&out.stderr, "tokengate.toml");
    assert_eq!(lines.len(), 3, "{}", show(&out));
    assert!(!out.stderr.contains("TG_TEST_UNSET_VAR"), "{}", show(&out));
}

const SHADOWED: &str = "\
[server]
listen = \"127.0.0.1:0\"

[upstream]
url = \"http://127.0.0.1:9\"

[[route]]
id = \"api\"
path_prefix = \"/api\"
auth = \"public\"

[[route]]
id = \"api-users\"
path = \"/api/users\"
auth = \"public\"

[[route]]
id = \"other\"
path = \"/other\"
auth = \"public\"
";

#[test]
fn check_warns_about_a_shadowed_route_but_succeeds() {
    let (dir, _) = write_config(SHADOWED);
    let out = tokengate(&["check", "--config", "tokengate.toml"], dir.path(), &[]);
    assert_eq!(out.code(), Some(0), "{}", show(&out));
    assert!(
        out.stdout.starts_with("tokengate.toml: OK"),
        "{}",
        show(&out)
    );
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("tokengate.toml:12: route[1]"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for route[1] (line 12)\n{}",
        show(&out)
    );
    assert!(
        warnings[0].contains("api-users") && warnings[0].contains("api"),
        "the warning should name both routes: {:?}",
        warnings[0]
    );
    assert!(
        warnings[0].to_ascii_lowercase().contains("warning"),
        "it is a warning: {:?}",
        warnings[0]
    );
    assert!(
        !out.stderr.contains("route[2]"),
        "route[2] is not shadowed\n{}",
        show(&out)
    );
}

#[test]
fn serve_refuses_an_invalid_file_with_the_same_messages_and_never_listens() {
    let (dir, _) = write_config(BROKEN);
    let checked = tokengate(&["check", "--config", "tokengate.toml"], dir.path(), &[]);
    let out = tokengate(&["serve", "--config", "tokengate.toml"], dir.path(), &[]);
    assert_broken_report(&out, "tokengate.toml");
    assert_eq!(
        problem_lines(&out.stderr, "tokengate.toml"),
        problem_lines(&checked.stderr, "tokengate.toml"),
        "serve and check print the same problems"
    );
    assert!(
        !out.stderr.contains("tokengate serving"),
        "it must not have started serving\n{}",
        show(&out)
    );
    // Also with JSON logs: the problems are still printed one per line, as check prints them.
    let out = tokengate(
        &["serve", "--config", "tokengate.toml"],
        dir.path(),
        &[("TOKENGATE_LOG_FORMAT", "json")],
    );
    assert_eq!(out.code(), Some(1), "{}", show(&out));
    assert!(!out.stderr.contains("tokengate serving"), "{}", show(&out));
    for (number, path, _) in BROKEN_PROBLEMS {
        let prefix = format!("tokengate.toml:{number}: {path}: ");
        assert!(
            out.stderr.contains(&prefix),
            "JSON logs: {prefix:?} missing\n{}",
            show(&out)
        );
    }
}

#[test]
fn serve_on_a_port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let toml = MINIMAL.replace("127.0.0.1:0", &addr.to_string());
    let (dir, _) = write_config(&toml);
    let out = tokengate(&["serve", "--config", "tokengate.toml"], dir.path(), &[]);
    assert_eq!(out.code(), Some(1), "{}", show(&out));
    assert!(
        out.stderr.contains(&addr.to_string()),
        "the error should name {addr}\n{}",
        show(&out)
    );
    assert!(!out.stderr.contains("tokengate serving"), "{}", show(&out));
    drop(taken);
}

#[test]
fn serve_with_the_admin_port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let toml = format!("{MINIMAL}\n[admin]\nlisten = \"{addr}\"\n");
    let (dir, _) = write_config(&toml);
    let out = tokengate(&["serve", "--config", "tokengate.toml"], dir.path(), &[]);
    assert_eq!(out.code(), Some(1), "{}", show(&out));
    assert!(
        out.stderr.contains(&addr.to_string()),
        "the error should name {addr}\n{}",
        show(&out)
    );
    assert!(!out.stderr.contains("tokengate serving"), "{}", show(&out));
    drop(taken);
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [
        &["frobnicate"][..],
        &["serve", "--bogus"],
        &["check", "--bogus"],
        &["check", "--config"],
        &[],
    ] {
        let out = tokengate(args, dir.path(), &[]);
        assert_eq!(out.code(), Some(2), "tokengate {args:?}\n{}", show(&out));
        assert!(
            !out.stderr.trim().is_empty(),
            "tokengate {args:?}: say what is wrong\n{}",
            show(&out)
        );
        assert!(
            !out.stderr.contains("tokengate serving"),
            "tokengate {args:?}\n{}",
            show(&out)
        );
    }
}

#[test]
fn version_and_help_exit_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tokengate(&["--version"], dir.path(), &[]);
    assert_eq!(out.code(), Some(0), "{}", show(&out));
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        show(&out)
    );
    let out = tokengate(&["--help"], dir.path(), &[]);
    assert_eq!(out.code(), Some(0), "{}", show(&out));
    for command in ["serve", "check"] {
        assert!(out.stdout.contains(command), "{}", show(&out));
    }
    for sub in ["serve", "check"] {
        let out = tokengate(&[sub, "--help"], dir.path(), &[]);
        assert_eq!(out.code(), Some(0), "{sub} --help\n{}", show(&out));
        assert!(out.stdout.contains("--config"), "{}", show(&out));
    }
}

#[test]
fn config_defaults_to_tokengate_config_then_tokengate_toml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    std::fs::write(cwd.join("tokengate.toml"), MINIMAL).expect("write");
    std::fs::write(cwd.join("other.toml"), SHADOWED).expect("write");
    std::fs::write(cwd.join("broken.toml"), BROKEN).expect("write");

    // Neither --config nor $TOKENGATE_CONFIG: ./tokengate.toml.
    let out = tokengate(&["check"], cwd, &[]);
    assert_eq!(out.code(), Some(0), "{}", show(&out));
    assert!(
        out.stdout.starts_with("tokengate.toml: OK"),
        "{}",
        show(&out)
    );

    // $TOKENGATE_CONFIG wins over ./tokengate.toml.
    let out = tokengate(&["check"], cwd, &[("TOKENGATE_CONFIG", "other.toml")]);
    assert_eq!(out.code(), Some(0), "{}", show(&out));
    assert!(out.stdout.starts_with("other.toml: OK"), "{}", show(&out));
    let out = tokengate(&["check"], cwd, &[("TOKENGATE_CONFIG", "broken.toml")]);
    assert_broken_report(&out, "broken.toml");

    // --config wins over $TOKENGATE_CONFIG.
    let out = tokengate(
        &["check", "--config", "other.toml"],
        cwd,
        &[("TOKENGATE_CONFIG", "broken.toml")],
    );
    assert_eq!(out.code(), Some(0), "{}", show(&out));
    assert!(out.stdout.starts_with("other.toml: OK"), "{}", show(&out));

    // No file at all: exit 1, naming tokengate.toml.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = tokengate(&["check"], empty.path(), &[]);
    assert_eq!(out.code(), Some(1), "{}", show(&out));
    assert!(
        out.stderr.lines().any(|l| l.starts_with("tokengate.toml:")),
        "{}",
        show(&out)
    );

    // serve finds the same defaults. (Stopped by Drop: SIGTERM and the exit code are
    // lifecycle.rs's business.)
    let mut serve = Process::spawn(&["serve"], cwd, &[("TOKENGATE_CONFIG", "other.toml")]);
    serve.listen_addr(TIMEOUT);
    assert!(
        serve.stderr().contains("other.toml:12: route[1]"),
        "serve loaded other.toml (and warned about its shadowed route)\n{}",
        serve.stderr()
    );
    drop(serve);
    let mut serve = Process::spawn(&["serve"], cwd, &[]);
    serve.listen_addr(TIMEOUT);
    assert!(
        !serve.stderr().contains("route[1]"),
        "serve loaded ./tokengate.toml, which has no shadowed route\n{}",
        serve.stderr()
    );
    drop(serve);
    let mut serve = Process::spawn(&["serve"], empty.path(), &[]);
    let status = serve
        .wait_exit(TIMEOUT)
        .expect("serve without a file exits");
    assert_eq!(status.code(), Some(1), "{}", serve.stderr());
    assert!(
        serve
            .stderr()
            .lines()
            .any(|l| l.starts_with("tokengate.toml:")),
        "{}",
        serve.stderr()
    );
}
