//! `tokengate demo` (SPEC §2): the built binary starts, prints a token and one-line curl
//! commands, and those commands do what the demo says (200, 403, 401); the printed `explain`
//! command explains the denied one (exit 3, never showing the token); then SIGTERM exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use std::time::{Duration, Instant};

use support::process::Process;

/// The URL and `Authorization` value of a printed `curl` line.
fn parse_curl(line: &str) -> (String, Option<String>) {
    let url = line
        .split_whitespace()
        .last()
        .expect("curl line has a URL")
        .to_owned();
    let auth = line
        .split("-H \"Authorization: ")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned);
    (url, auth)
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_prints_curl_commands_that_work_as_described() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Process::spawn(&["demo"], dir.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !demo.stdout().contains("Press Ctrl-C") {
        assert!(
            Instant::now() < deadline,
            "demo did not start:\n{}",
            demo.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = demo.stdout();
    assert!(out.contains("NOT FOR PRODUCTION"));
    assert!(out.lines().any(|l| l.starts_with("TOKEN=ey")));
    let curls: Vec<&str> = out.lines().filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(curls.len(), 5, "{out}");
    let (orders, profile, jwks, denied, unauthenticated) =
        (curls[0], curls[1], curls[2], curls[3], curls[4]);

    // The issuer's keys may still be loading: poll the first request (bounded).
    let (url, auth) = parse_curl(orders);
    let auth = auth.expect("the allowed request carries a token");
    let mut answer = support::get(&url, &[("authorization", &auth)]).await;
    while answer.status == 503 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = support::get(&url, &[("authorization", &auth)]).await;
    }
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let seen = answer.json();
    let decoded = &seen["upstream_saw"]["identity_assertion_decoded"];
    assert_eq!(decoded["sub"], "demo-user");
    assert_eq!(decoded["route"], "orders");
    assert_eq!(
        seen["upstream_saw"]["headers"]["x-auth-subject"],
        "demo-user"
    );

    let (url, auth) = parse_curl(profile);
    let answer = support::get(&url, &[("authorization", &auth.unwrap())]).await;
    assert_eq!(answer.status, 200);
    let name = &answer.json()["upstream_saw"]["identity_assertion_decoded"]["name"];
    assert!(
        name.as_str().is_some_and(|n| n.contains("userinfo")),
        "{name}"
    );

    let (url, _) = parse_curl(jwks);
    let answer = support::get(&url, &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["keys"].as_array().map(Vec::len), Some(1));

    let (url, auth) = parse_curl(denied);
    let answer = support::get(&url, &[("authorization", &auth.unwrap())]).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json()["error"], "insufficient_scope");

    let (url, auth) = parse_curl(unauthenticated);
    assert!(auth.is_none());
    let answer = support::get(&url, &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\"")
    );

    // The printed explain command, run as pasted (its program replaced by the binary under
    // test), explains the denial without printing the token.
    let explain = out
        .lines()
        .find(|l| l.contains(" explain --config "))
        .expect("an explain command");
    let words: Vec<&str> = explain.split_whitespace().collect();
    assert_eq!(words[1], "explain", "{explain}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN="))
        .expect("TOKEN line");
    let output = tokio::task::spawn_blocking({
        let args: Vec<String> = words[1..].iter().map(|w| (*w).to_owned()).collect();
        let cwd = dir.path().to_path_buf();
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            support::process::run(&args, &cwd, &[], Duration::from_secs(60))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        output.code(),
        Some(3),
        "{}\n{}",
        output.stdout,
        output.stderr
    );
    assert!(
        output.stdout.contains("REJECTED 403 insufficient_scope"),
        "{}",
        output.stdout
    );
    assert!(
        output.stdout.contains("scope admin: FAILS"),
        "{}",
        output.stdout
    );
    assert!(!output.stdout.contains(&token[..16]), "{}", output.stdout);
    assert!(
        !output.stdout.contains(&token[token.len() - 16..]),
        "{}",
        output.stdout
    );

    demo.sigterm();
    let status = demo
        .wait_exit(Duration::from_secs(30))
        .expect("demo exits on SIGTERM");
    assert_eq!(status.code(), Some(0));
}
