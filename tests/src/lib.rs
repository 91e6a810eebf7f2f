//! Support for Yosegi's integration tests: finding the workspace's binaries and data, and
//! running commands with readable failures.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// A file under the workspace's `data/`.
pub fn data(name: &str) -> PathBuf {
    root().join("data").join(name)
}

/// The path of a workspace binary (`coordinator` or `party-client`). `cargo test --workspace`
/// builds both next to the test executables (each has a smoke test of its own, which makes
/// cargo build it). When this crate's tests run alone, the binaries are built on demand with
/// the same command, so features unify the same way and nothing else is rebuilt.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["test", "--workspace", "--no-run", "--quiet"])
            .current_dir(root())
            .status()
            .expect("running cargo test --no-run");
        assert!(status.success(), "building the workspace's binaries failed");
        assert!(path.exists(), "{} was not built", path.display());
    }
    path
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Runs a workspace binary with arguments and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// Runs a workspace binary, asserts success, returns stdout.
pub fn run_ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Child processes of a test, killed if the test fails before it stops them.
#[derive(Debug, Default)]
pub struct Procs(pub Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// Starts a workspace binary with stderr to `log`.
    pub fn spawn(&mut self, name: &str, args: &[&str], log: &Path) {
        let child = Command::new(bin(name))
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("creates the log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.0.push((log.display().to_string(), child));
    }

    /// Starts a `party-client run` daemon for plant `name` whose key and state live in `dir`
    /// (`party.key.pem`, `state/`, as `party-client keygen --out dir` wrote them), pinned to
    /// `coordinator_key` and the CA `ca`, on `data`; its log is `dir/../NAME.log`.
    pub fn daemon(
        &mut self,
        server: &str,
        name: &str,
        dir: &Path,
        coordinator_key: &Path,
        ca: &Path,
        data: &Path,
    ) {
        let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
        let log = dir.with_file_name(format!("{name}.log"));
        self.spawn(
            "party-client",
            &[
                "run",
                "--server",
                server,
                "--name",
                name,
                "--key",
                &s(&dir.join("party.key.pem")),
                "--coordinator-key",
                &s(coordinator_key),
                "--ca",
                &s(ca),
                "--data",
                &s(data),
                "--state-dir",
                &s(&dir.join("state")),
            ],
            &log,
        );
    }

    /// Asserts every process is still running (none exited, for instance after losing its
    /// coordinator).
    pub fn assert_running(&mut self) {
        for (log, c) in &mut self.0 {
            if let Some(status) = c.try_wait().expect("polls a child") {
                panic!(
                    "{log}: exited with {status}:\n{}",
                    std::fs::read_to_string(&*log).unwrap_or_default()
                );
            }
        }
    }

    /// SIGTERM everything, last started first; each must exit 0 (graceful shutdown).
    pub fn terminate(&mut self) {
        for (log, c) in self.0.iter_mut().rev() {
            let ok = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(ok.success());
            let status = c.wait().expect("reaps");
            assert!(
                status.success(),
                "{log}: exited with {status}:\n{}",
                std::fs::read_to_string(&*log).unwrap_or_default()
            );
        }
        self.0.clear();
    }
}

pub mod raw;
pub mod sandbox;
pub mod server;

/// A loopback port for a server a test starts and may restart on the same port. Ports handed out
/// by binding `:0` come from the kernel's ephemeral range, where a released one can be taken
/// again at once by any outgoing connection (the tests make many); these come from below it
/// (20000–32767 here; Linux's ephemeral range starts at 32768), spread by process id, never twice
/// in one process, and each is checked free by binding it first.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const BASE: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = BASE + (start.wrapping_add(k.wrapping_mul(7))) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {BASE}..{}", BASE + SPAN)
}
