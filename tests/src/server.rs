//! A coordinator run as its own process (the real `coordinator serve` binary) on a fixed
//! loopback port, so a test can kill it — SIGKILL, no goodbye — and start it again on the same
//! data dir while clients keep the address.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coordinator::grpc::client::OperatorClient;
use coordinator::tls::ClientTls;
use shared_model::SigningKey;

use crate::{bin, run_ok};

/// A coordinator process and its data dir.
#[derive(Debug)]
pub struct ServerProcess {
    /// The data dir (`coordinator init`).
    pub data_dir: PathBuf,
    /// Its `coordinator.toml` (a 20 ms engine tick).
    pub config: PathBuf,
    /// The loopback port it listens on, the same across restarts.
    pub port: u16,
    /// `https://localhost:PORT`.
    pub url: String,
    /// stderr of every run, appended.
    pub log: PathBuf,
    /// Runs started.
    pub starts: u32,
    /// Extra `serve` arguments.
    pub serve_args: Vec<String>,
    /// Start under `sh -c "trap '' XFSZ; exec …"`: a write past a file-size limit then
    /// fails with EFBIG instead of killing the process (for the disk-full test).
    pub ignore_sigxfsz: bool,
    child: Option<Child>,
}

impl ServerProcess {
    /// `coordinator init` under `root/coordinator-data`, a config with a 20 ms tick, a free port.
    pub fn init(root: &Path) -> Self {
        let data_dir = root.join("coordinator-data");
        run_ok(
            "coordinator",
            &["init", "--data-dir", data_dir.to_str().expect("utf-8 path")],
        );
        Self::existing(root, &data_dir)
    }

    /// An existing data dir (e.g. one a previous release wrote), its config and log in `root`,
    /// a 20 ms tick, a free port.
    pub fn existing(root: &Path, data_dir: &Path) -> Self {
        let data_dir = data_dir.to_path_buf();
        let config = root.join("coordinator.toml");
        std::fs::write(&config, "tick_ms = 20\n").expect("writes the config");
        let port = crate::free_port();
        Self {
            data_dir,
            config,
            port,
            url: format!("https://localhost:{port}"),
            log: root.join("coordinator.log"),
            starts: 0,
            serve_args: Vec::new(),
            ignore_sigxfsz: false,
            child: None,
        }
    }

    /// Starts `coordinator serve` and waits until it serves (30 s at most).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the coordinator is already running");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opens the log");
        self.starts += 1;
        writeln!(log, "---- start {}", self.starts).expect("writes the log");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--config".into(),
            self.config.display().to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
        ];
        args.extend(self.serve_args.iter().cloned());
        let mut cmd = if self.ignore_sigxfsz {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
                .arg(bin("coordinator"));
            c
        } else {
            Command::new(bin("coordinator"))
        };
        let child = cmd
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts the coordinator");
        self.child = Some(child);
        let started = Instant::now();
        // Ready when this run logs that it serves: its gRPC socket accepts before then (it is
        // bound before the data dir is opened), and the metrics endpoint is bound just before.
        let marker = format!("---- start {}", self.starts);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let this_run = text.rsplit_once(&marker).map_or("", |(_, run)| run);
            if this_run.contains("coordinator serving")
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("polls the coordinator"))
            {
                self.child = None;
                panic!(
                    "the coordinator exited with {status} while starting:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the coordinator did not listen within 30 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaps");
    }

    /// SIGTERM; it must shut down gracefully (exit 0).
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(ok.success());
        let status = child.wait().expect("reaps");
        assert!(
            status.success(),
            "the coordinator exited with {status}:\n{}",
            self.log_tail()
        );
    }

    /// The last 60 lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The TLS settings clients use (the CA `init` made).
    pub fn tls(&self) -> ClientTls {
        ClientTls {
            ca: Some(self.data_dir.join("tls/ca.pem")),
            identity: None,
        }
    }

    /// The operator's key.
    pub fn operator_key(&self) -> SigningKey {
        shared_model::keys::read_private(&self.data_dir.join("operator.key.pem"))
            .expect("operator key")
    }

    /// The coordinator's public key file (what parties pin).
    pub fn coordinator_pub(&self) -> PathBuf {
        self.data_dir.join("coordinator.pub.pem")
    }

    /// An operator client (connects lazily; calls fail while the server is down).
    pub async fn operator(&self) -> OperatorClient {
        OperatorClient::connect_with(&self.url, &self.tls(), self.operator_key())
            .await
            .expect("operator client")
    }

    /// A read-only view of its database (safe beside a running coordinator: WAL).
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.data_dir.join("yosegi.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("opens the database")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
