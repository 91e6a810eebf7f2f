//! A sandbox that starts a real coordinator (gRPC on 127.0.0.1:0, SQLite and blobs in a temp
//! dir) and real party daemons in-process, each with its own keys, CSV slice and state dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coordinator::grpc::ServeConfig;
use coordinator::grpc::client::OperatorClient;
use coordinator::views::RoundView;
use shared_model::data::{Dataset, SplitFractions, load_csv};
use shared_model::keys;
use shared_model::partition::{Partition, partition};
use shared_model::spec::ModelSpec;
use shared_model::{SigningKey, VerifyingKey};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running coordinator.
#[derive(Debug)]
pub struct Sandbox {
    /// Temp root.
    pub dir: tempfile::TempDir,
    /// The coordinator's URL.
    pub url: String,
    /// The coordinator's data dir.
    pub data_dir: PathBuf,
    /// The coordinator's public key.
    pub coordinator_key: VerifyingKey,
    /// The operator's key.
    pub operator_key: SigningKey,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    parties: Vec<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

/// A party's files.
#[derive(Debug)]
pub struct PartyFiles {
    /// Name.
    pub name: String,
    /// Private key file.
    pub key: PathBuf,
    /// Public key file.
    pub public_key: PathBuf,
    /// Its CSV.
    pub data: PathBuf,
    /// Its state dir.
    pub state_dir: PathBuf,
}

impl Sandbox {
    /// Starts a coordinator.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("coordinator");
        let (coordinator_key, _) = coordinator::state::init(&data_dir).expect("init");
        let operator_key = keys::read_private(&data_dir.join(coordinator::state::OPERATOR_KEY))
            .expect("operator key");
        let data = coordinator::state::open(&data_dir).expect("open");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, rx) = oneshot::channel::<()>();
        let config = ServeConfig {
            tick: Duration::from_millis(50),
            grace: Duration::from_secs(2),
            ..Default::default()
        };
        let server = tokio::spawn(coordinator::grpc::serve(
            listener,
            data,
            config,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            dir,
            url,
            data_dir,
            coordinator_key,
            operator_key,
            stop: Some(stop),
            server: Some(server),
            parties: Vec::new(),
        }
    }

    /// An operator client.
    pub async fn operator(&self) -> OperatorClient {
        OperatorClient::connect(&self.url, self.operator_key.clone())
            .await
            .expect("operator connects")
    }

    /// Creates a party's key files and writes its rows as a CSV; does not enroll it.
    pub fn party_files(&self, name: &str, spec: &ModelSpec, rows: &Dataset) -> PartyFiles {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(&root).expect("party dir");
        let key = keys::generate().expect("key");
        let files = PartyFiles {
            name: name.to_string(),
            key: root.join("party.key.pem"),
            public_key: root.join("party.pub.pem"),
            data: root.join("data.csv"),
            state_dir: root.join("state"),
        };
        keys::write_private(&files.key, &key).expect("write key");
        keys::write_public(&files.public_key, &key.verifying_key()).expect("write pub");
        rows.write_csv(&files.data, spec).expect("write csv");
        files
    }

    /// Starts a party daemon pinned to `coordinator_key`.
    pub fn start_party(&mut self, files: &PartyFiles, coordinator_key: &Path) {
        let raw = party_client::config::RawConfig {
            server: Some(self.url.clone()),
            name: Some(files.name.clone()),
            key: Some(files.key.clone()),
            coordinator_key: Some(coordinator_key.to_path_buf()),
            data: Some(files.data.clone()),
            state_dir: Some(files.state_dir.clone()),
        };
        let config = raw.validate().expect("party config");
        let (tx, rx) = oneshot::channel::<()>();
        let h = tokio::spawn(party_client::daemon::run(config, async move {
            let _ = rx.await;
        }));
        self.parties.push((tx, h));
    }

    /// The coordinator's public key file.
    pub fn coordinator_pub(&self) -> PathBuf {
        self.data_dir.join(coordinator::state::COORDINATOR_PUB)
    }

    /// Polls the task's status until `done` holds (or panics after `timeout`).
    pub async fn wait_for(
        &self,
        task: &str,
        timeout: Duration,
        mut done: impl FnMut(&[RoundView]) -> bool,
    ) -> Vec<RoundView> {
        let mut op = self.operator().await;
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let rounds = op.status(task).await.expect("status");
            if done(&rounds) {
                return rounds;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "timed out waiting; status: {rounds:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the parties, then the coordinator, and checks they exited cleanly.
    pub async fn stop(mut self) {
        for (tx, h) in self.parties.drain(..) {
            let _ = tx.send(());
            h.await.expect("party task").expect("party exited cleanly");
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await
                .expect("server task")
                .expect("server exited cleanly");
        }
    }
}

/// WDBC split into a holdout no party sees and `n` IID party slices.
pub fn wdbc_split(n: usize) -> (ModelSpec, Dataset, Vec<Dataset>) {
    let spec = ModelSpec::from_file(&crate::data("wdbc.toml")).expect("spec");
    let all = load_csv(&crate::data("wdbc.csv"), &spec).expect("wdbc");
    let split = all.split(
        spec.task.kind,
        SplitFractions {
            validation: 0.0,
            holdout: 0.2,
        },
        2026,
    );
    let pool = split.train;
    let parts = partition(&pool, &spec, &Partition::Iid, n, 10, 1).expect("partition");
    let slices = parts.iter().map(|idx| pool.subset(idx)).collect();
    (spec, split.holdout, slices)
}
