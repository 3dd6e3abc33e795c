//! Command line only: parse arguments, then hand over to the library.
//! Exit codes (SPEC §2): 0 ok, 1 invalid configuration or failure at start, 2 bad usage.

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
                  unreadable key), 2 bad command-line usage.\n\
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
