//! Command line only: parse arguments, then hand over to the library.
//! Exit codes (SPEC §2): 0 ok, 1 invalid configuration or failure at start, 2 bad usage;
//! `explain` adds 3: the request would be rejected.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tokengate::server;
use tokengate::{app, config, telemetry};

#[derive(Parser)]
#[command(
    name = "tokengate",
    version,
    about = "Authenticating reverse proxy: verifies OAuth 2.0 / OIDC access tokens, enforces \
             per-route claim policies and forwards a signed identity to the upstream.",
    propagate_version = true,
    after_help = "Exit codes: 0 ok, 1 invalid configuration or failure at start (port in use, \
                  unreadable key), 2 bad command-line usage (explain: 3 the request would be \
                  rejected).\n\
                  Environment: TOKENGATE_CONFIG (default --config), TOKENGATE_LOG or RUST_LOG \
                  (log level, default info), TOKENGATE_LOG_FORMAT=json (JSON log lines)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (logs go to stderr; SIGHUP reloads the configuration; SIGTERM/SIGINT drain
    /// in-flight requests and exit 0).
    Serve(ConfigArg),
    /// Validate the configuration without serving: exit 0 with a summary, or exit 1 with every
    /// problem as FILE:LINE: KEY.PATH: message.
    Check(ConfigArg),
    /// Write a new PKCS#8 PEM private key for signing identity assertions (file mode 0600) and
    /// print its kid (RFC 7638 thumbprint). Refuses to overwrite a file unless --force.
    Keygen {
        /// Signature algorithm: ES256 (P-256), EdDSA (Ed25519) or RS256 (RSA 2048).
        #[arg(long, value_enum)]
        alg: tokengate::keygen::KeygenAlg,
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Zero-setup local trial (NOT for production): starts a development issuer, an echo
    /// upstream and the proxy on loopback, and prints a token and curl commands to try.
    Demo,
    /// What would happen to this request, and why, without serving: runs the request pipeline
    /// (path, routes, token, keys, userinfo, policy, identity) and prints each step. Never prints
    /// the token. Exit 0 forwarded, 3 rejected, 1 configuration or lookup failure, 2 bad usage.
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// Configuration file (TOML).
    #[arg(
        long,
        short = 'c',
        env = "TOKENGATE_CONFIG",
        default_value = "tokengate.toml",
        value_name = "FILE"
    )]
    config: PathBuf,
    /// The access token (sent as `Authorization: Bearer`, or `DPoP` with a DPoP header). Visible
    /// to other local users in the process list: prefer --token-file.
    #[arg(long, value_name = "T", conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the access token (surrounding whitespace ignored).
    #[arg(long, value_name = "F")]
    token_file: Option<PathBuf>,
    /// Request method, exactly as a client sends it.
    #[arg(long, short = 'X', default_value = "GET", value_name = "M")]
    method: String,
    /// `Host` of the request (default: the main listener's address).
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// A request header, `Name: value` (repeatable). `DPoP: <proof>` sends the token with the
    /// DPoP scheme.
    #[arg(long = "header", short = 'H', value_name = "'Name: value'")]
    headers: Vec<String>,
    /// Verify against this saved JWKS instead of fetching the issuers' keys (offline).
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// Do not call userinfo: policy and identity see the token's claims only (said in the output).
    #[arg(long)]
    no_userinfo: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Request path and query, as the client sends it (`/orders/42?x=1`).
    #[arg(value_name = "PATH")]
    path: String,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(
        long,
        short = 'c',
        env = "TOKENGATE_CONFIG",
        default_value = "tokengate.toml",
        value_name = "FILE"
    )]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(&args.config),
        Command::Serve(args) => serve(&args.config),
        Command::Demo => demo(),
        Command::Explain(args) => explain(args),
        Command::Keygen { alg, out, force } => match tokengate::keygen::run(alg, &out, force) {
            Ok(kid) => {
                println!("{kid}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::from(1)
            }
        },
    }
}

/// Loads the configuration, printing every problem; `None` when it is invalid.
fn load(path: &Path) -> Option<config::Loaded> {
    match config::load_file(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            Some(loaded)
        }
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!(
                "{}: {} problem(s) found; the configuration was not loaded",
                path.display(),
                problems.len()
            );
            None
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Some(loaded) => {
            println!("{}: OK", path.display());
            print!("{}", config::summary(&loaded.config));
            ExitCode::SUCCESS
        }
        None => ExitCode::from(1),
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(telemetry::flush_on_park)
        .on_thread_stop(telemetry::flush_on_stop)
        .build()
    {
        Ok(rt) => Some(rt),
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            None
        }
    }
}

fn explain(args: ExplainArgs) -> ExitCode {
    // Warnings (a failed key fetch, a failed userinfo call) go to stderr; the report to stdout.
    let filter = std::env::var("TOKENGATE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let token = match (args.token, args.token_file) {
        (Some(text), _) => Some(tokengate::explain::TokenArg::Text(text)),
        (None, Some(path)) => Some(tokengate::explain::TokenArg::File(path)),
        (None, None) => None,
    };
    let json = args.json;
    let args = tokengate::explain::Args {
        config: args.config,
        token,
        method: args.method,
        host: args.host,
        headers: args.headers,
        jwks: args.jwks,
        no_userinfo: args.no_userinfo,
        path: args.path,
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    let explained = runtime.block_on(tokengate::explain::explain(&args));
    // Background key refreshers must not hold the process once the report is out.
    runtime.shutdown_background();
    match explained {
        Ok(report) => {
            let text = if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => text + "\n",
                    Err(error) => {
                        eprintln!("cannot write the report as JSON: {error}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                report.to_text()
            };
            // A closed pipe (`| head`) is the reader's choice, not a failure worth a panic.
            let mut stdout = std::io::stdout().lock();
            let _ = std::io::Write::write_all(&mut stdout, text.as_bytes());
            let _ = std::io::Write::flush(&mut stdout);
            ExitCode::from(report.exit_code)
        }
        Err(failure) => {
            match &failure {
                tokengate::explain::Failure::Usage(message) => eprintln!("error: {message}"),
                tokengate::explain::Failure::Config(lines) => {
                    for line in lines {
                        eprintln!("{line}");
                    }
                }
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

fn demo() -> ExitCode {
    let _log = telemetry::init();
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    match runtime.block_on(async { tokengate::demo::run(shutdown_signal()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo failed to start: {error}");
            ExitCode::from(1)
        }
    }
}

fn serve(path: &Path) -> ExitCode {
    let _log = telemetry::init();
    let Some(loaded) = load(path) else {
        return ExitCode::from(1);
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        // Installed before the proxy announces itself, so an early SIGHUP never kills it.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        server::raise_open_file_limit();
        let routes = loaded.config.routes.len();
        let running = match app::start(loaded.config, shutdown).await {
            Ok(running) => running,
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(
            listen = %running.addr,
            admin = running.admin.map(|a| a.to_string()).as_deref(),
            routes,
            "tokengate serving"
        );
        if let Some(mut hangup) = hangups {
            let (reloader, path) = (running.reloader(), path.to_path_buf());
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    reloader.reload(&path);
                }
            });
        }
        running.wait().await;
        ExitCode::SUCCESS
    })
}

/// Installs the SIGTERM (Kubernetes, docker stop) and SIGINT (Ctrl-C in development) handlers
/// now, so a signal that arrives while starting up is not fatal, and returns a future that
/// resolves on the first of them. Must be called inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

// mimalloc: the request path allocates small, short-lived buffers on every request, which
// glibc malloc serves measurably slower (bench/run.sh: about +8% req/s on a public route).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
