//! The built `tokengate` binary as a child process: a configuration written to a temp dir,
//! stdout and stderr captured by reader threads into shared buffers, the listening address read
//! from the startup log line, SIGTERM through `kill -TERM`, bounded waits, and the memory
//! figures of `/proc/PID/status`. Dropping a [`Process`] kills the child (nothing is left
//! running after a test, even one that panicked).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test (built by cargo for integration tests).
pub const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// Variables of the test's own environment that would change the child's behaviour; they are
/// removed unless a test sets them explicitly.
const SCRUBBED_ENV: [&str; 5] = [
    "TOKENGATE_CONFIG",
    "TOKENGATE_LOG",
    "TOKENGATE_LOG_FORMAT",
    "RUST_LOG",
    "NO_COLOR",
];

/// How often the bounded waits look again.
const POLL: Duration = Duration::from_millis(20);

/// What a reader thread has collected from one pipe; `cond` is signalled on every read and at
/// the end, so waiters wake as soon as a line arrives.
#[derive(Default)]
struct Captured {
    state: Mutex<(Vec<u8>, bool)>,
    cond: Condvar,
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.state.lock().expect("lock").0).into_owned()
    }
}

/// A running (or finished) `tokengate` child process.
pub struct Process {
    child: Child,
    stdout: Arc<Captured>,
    stderr: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    dir: Option<tempfile::TempDir>,
}

/// What a finished command printed, and how it ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Writes `toml` as `DIR/tokengate.toml` in a new temp dir; returns the dir and the file path.
pub fn write_config(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokengate.toml");
    std::fs::write(&path, toml).expect("write config");
    (dir, path)
}

/// Runs `tokengate ARGS` in `cwd` with `env` added, waits (at most `timeout`) and returns its
/// output. Panics, after killing it, if it is still running after `timeout`.
pub fn run(args: &[&str], cwd: &Path, env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut process = Process::spawn(args, cwd, env);
    match process.wait_exit(timeout) {
        Some(status) => Output {
            status,
            stdout: process.stdout(),
            stderr: process.stderr(),
        },
        None => {
            process.kill();
            panic!(
                "tokengate {args:?} still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                process.stdout(),
                process.stderr()
            )
        }
    }
}

impl Process {
    /// Starts `tokengate ARGS` in `cwd`, with `env` added to a scrubbed copy of the test's
    /// environment ([`SCRUBBED_ENV`]). stdin is closed; stdout and stderr are captured.
    pub fn spawn(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in SCRUBBED_ENV {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stdout = Arc::new(Captured::default());
        let stderr = Arc::new(Captured::default());
        let readers = vec![
            reader(child.stdout.take().expect("stdout pipe"), stdout.clone()),
            reader(child.stderr.take().expect("stderr pipe"), stderr.clone()),
        ];
        Process {
            child,
            stdout,
            stderr,
            readers,
            status: None,
            dir: None,
        }
    }

    /// Writes `toml` to a temp dir (kept as long as the process) and runs
    /// `tokengate serve --config DIR/tokengate.toml` there.
    pub fn serve(toml: &str, env: &[(&str, &str)]) -> Process {
        let (dir, path) = write_config(toml);
        let config = path.to_str().expect("utf-8 temp path").to_owned();
        let mut process = Process::spawn(&["serve", "--config", &config], dir.path(), env);
        process.dir = Some(dir);
        process
    }

    /// `serve` as above, then waits (at most 60 s) for the startup line and returns the process
    /// with the main listener's address.
    pub fn serve_ready(toml: &str, env: &[(&str, &str)]) -> (Process, SocketAddr) {
        let mut process = Process::serve(toml, env);
        let addr = process.listen_addr(Duration::from_secs(60));
        (process, addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding the configuration written by [`Process::serve`].
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// Everything written to stdout so far (all of it once the process has exited and been
    /// waited for).
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// Everything written to stderr so far (all of it once the process has exited and been
    /// waited for).
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits until `pred(stderr so far)` holds, waking as soon as new output arrives; false if
    /// `timeout` passes or stderr is closed (the process exited) first.
    pub fn wait_stderr(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let captured = self.stderr.clone();
        let mut state = captured.state.lock().expect("lock");
        loop {
            if pred(&String::from_utf8_lossy(&state.0)) {
                return true;
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                return false;
            }
            state = captured
                .cond
                .wait_timeout(state, deadline - now)
                .expect("lock")
                .0;
        }
    }

    /// The async form of [`Process::wait_stderr`], for tests whose runtime must keep running
    /// (an in-process upstream) while they wait.
    pub async fn wait_stderr_async(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stderr()) {
                return true;
            }
            if self.try_wait().is_some() {
                return pred(&self.stderr());
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The main listener's address from the "tokengate serving" line (human or JSON format).
    /// Panics with the captured output if it does not appear within `timeout` or the process
    /// exits first.
    pub fn listen_addr(&mut self, timeout: Duration) -> SocketAddr {
        let found = self.wait_stderr(timeout, |text| startup_listen_addr(text).is_some());
        match startup_listen_addr(&self.stderr()) {
            Some(addr) if found => addr,
            _ => panic!(
                "no \"tokengate serving\" line with listen=ADDR within {timeout:?} (exit: {:?})\nstderr:\n{}",
                self.try_wait(),
                self.stderr()
            ),
        }
    }

    /// Sends SIGTERM (through `kill -TERM PID`, no extra crate).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`"TERM"`, `"INT"`, `"HUP"`) through `kill -NAME PID`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// The exit status if the process has ended (reaping it and collecting its output).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                // The pipes are closed now: the readers finish with the last bytes.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
            }
        }
        self.status
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The async form of [`Process::wait_exit`].
    pub async fn wait_exit_async(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL and reap (no-op once it has exited).
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn rss_peak_kb(&self) -> u64 {
        rss_peak_kb(self.pid())
    }

    /// Current resident set size (VmRSS), in KiB.
    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn reader(mut pipe: impl Read + Send + 'static, into: Arc<Captured>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    into.state
                        .lock()
                        .expect("lock")
                        .0
                        .extend_from_slice(&buf[..n]);
                    into.cond.notify_all();
                }
            }
        }
        into.state.lock().expect("lock").1 = true;
        into.cond.notify_all();
    })
}

/// The `listen` field of the first "tokengate serving" line in `log`.
pub fn startup_listen_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|line| line.contains("tokengate serving"))
        .find_map(parse_listen)
}

/// `listen` of one log line: `"listen":"ADDR"` in a JSON line, `listen=ADDR` in a human one
/// (ANSI colour codes ignored).
pub fn parse_listen(line: &str) -> Option<SocketAddr> {
    let line = line.trim();
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let listen = value
            .get("listen")
            .or_else(|| value.get("fields").and_then(|f| f.get("listen")))?;
        return listen.as_str()?.parse().ok();
    }
    let plain = strip_ansi(line);
    let start = plain.find("listen=")? + "listen=".len();
    let value = plain[start..].split_whitespace().next()?;
    value.trim_matches('"').parse().ok()
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Peak resident set size of `pid` (VmHWM of `/proc/PID/status`), in KiB.
pub fn rss_peak_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM:")
}

/// Current resident set size of `pid` (VmRSS of `/proc/PID/status`), in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS:")
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

/// A port on 127.0.0.1 that was free a moment ago (for tests that need a fixed address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
