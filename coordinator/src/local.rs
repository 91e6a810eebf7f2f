//! A whole federation on one machine: a real coordinator (gRPC on 127.0.0.1:0, SQLite and blobs
//! under a root directory) and real party daemons in-process, each with its own keys, CSV slice
//! and state dir. Used by `coordinator demo` and by the integration tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use shared_model::data::Dataset;
use shared_model::keys;
use shared_model::spec::ModelSpec;
use shared_model::{SigningKey, VerifyingKey};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::grpc::ServeConfig;
use crate::grpc::client::OperatorClient;
use crate::views::RoundView;

/// A running coordinator with its in-process parties.
#[derive(Debug)]
pub struct LocalFederation {
    /// Root directory of all state.
    pub root: PathBuf,
    /// The coordinator's URL.
    pub url: String,
    /// The coordinator's data dir.
    pub data_dir: PathBuf,
    /// The coordinator's public key.
    pub coordinator_key: VerifyingKey,
    /// The operator's key.
    pub operator_key: SigningKey,
    config: ServeConfig,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    parties: Vec<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

/// A party's files.
#[derive(Debug, Clone)]
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

impl LocalFederation {
    /// Initialises a coordinator under `root/coordinator` (keys, database, CA and server
    /// certificate) and serves it over TLS on a loopback port.
    pub async fn start(root: &Path, mut config: ServeConfig) -> anyhow::Result<Self> {
        let data_dir = root.join("coordinator");
        let (coordinator_key, _) = crate::state::init(&data_dir)?;
        if !crate::tls::dir(&data_dir)
            .join(crate::tls::CA_CERT)
            .exists()
        {
            crate::tls::create(&data_dir, &[])?;
        }
        if config.tls.is_none() {
            config.tls = Some(crate::tls::ServerTls::from_data_dir(&data_dir, None)?);
        }
        let operator_key = keys::read_private(&data_dir.join(crate::state::OPERATOR_KEY))?;
        let mut fed = Self {
            root: root.to_path_buf(),
            url: String::new(),
            data_dir,
            coordinator_key,
            operator_key,
            config,
            stop: None,
            server: None,
            parties: Vec::new(),
        };
        fed.serve().await?;
        Ok(fed)
    }

    /// Serves the data dir on a new loopback port (sets `url`).
    async fn serve(&mut self) -> anyhow::Result<()> {
        let data = crate::state::open(&self.data_dir)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        self.url = format!("https://{}", listener.local_addr()?);
        let (stop, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.server = Some(tokio::spawn(crate::grpc::serve(
            listener,
            data,
            config,
            async move {
                let _ = rx.await;
            },
        )));
        self.stop = Some(stop);
        Ok(())
    }

    /// Stops the coordinator (its parties keep running) and serves the same data dir again, as
    /// after a restart of the process; `url` changes to the new port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.context("server task panicked")??;
        }
        self.serve().await
    }

    /// An operator client.
    pub async fn operator(&self) -> anyhow::Result<OperatorClient> {
        OperatorClient::connect_with(&self.url, &self.client_tls(), self.operator_key.clone()).await
    }

    /// The CA certificate clients pin.
    pub fn ca(&self) -> PathBuf {
        crate::tls::dir(&self.data_dir).join(crate::tls::CA_CERT)
    }

    /// What a client of this coordinator needs for TLS.
    pub fn client_tls(&self) -> crate::tls::ClientTls {
        crate::tls::ClientTls {
            ca: Some(self.ca()),
            identity: None,
        }
    }

    /// Creates parties' key files and copies each its records of `source` (byte offsets, as
    /// [`shared_model::data::LoadReport::offsets`]) as they are written there; enrolls none.
    pub fn party_files_from(
        &self,
        names: &[String],
        source: &Path,
        records: &[Vec<u64>],
    ) -> anyhow::Result<Vec<PartyFiles>> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            out.push(self.party_keys(name)?);
        }
        let dests: Vec<PathBuf> = out.iter().map(|f| f.data.clone()).collect();
        shared_model::data::copy_records(source, records, &dests)?;
        Ok(out)
    }

    /// Creates a party's key files and writes its rows as a CSV; does not enroll it.
    pub fn party_files(
        &self,
        name: &str,
        spec: &ModelSpec,
        rows: &Dataset,
    ) -> anyhow::Result<PartyFiles> {
        let files = self.party_keys(name)?;
        rows.write_csv(&files.data, spec)
            .with_context(|| format!("writing {}", files.data.display()))?;
        Ok(files)
    }

    fn party_keys(&self, name: &str) -> anyhow::Result<PartyFiles> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = keys::generate()?;
        let files = PartyFiles {
            name: name.to_string(),
            key: dir.join("party.key.pem"),
            public_key: dir.join("party.pub.pem"),
            data: dir.join("data.csv"),
            state_dir: dir.join("state"),
        };
        keys::write_private(&files.key, &key)?;
        keys::write_public(&files.public_key, &key.verifying_key())?;
        Ok(files)
    }

    /// Starts a party daemon pinned to the key in `coordinator_key`.
    pub fn start_party(
        &mut self,
        files: &PartyFiles,
        coordinator_key: &Path,
    ) -> anyhow::Result<()> {
        self.start_party_with_policy(files, coordinator_key, None)
    }

    /// Starts a party daemon pinned to the key in `coordinator_key`, with a site policy.
    pub fn start_party_with_policy(
        &mut self,
        files: &PartyFiles,
        coordinator_key: &Path,
        policy: Option<party_client::policy::RawPolicy>,
    ) -> anyhow::Result<()> {
        let raw = party_client::config::RawConfig {
            server: Some(self.url.clone()),
            name: Some(files.name.clone()),
            key: Some(files.key.clone()),
            coordinator_key: Some(coordinator_key.to_path_buf()),
            data: Some(files.data.clone()),
            state_dir: Some(files.state_dir.clone()),
            ca: Some(self.ca()),
            tls_cert: None,
            tls_key: None,
            policy,
        };
        let config = raw.validate()?;
        let (tx, rx) = oneshot::channel::<()>();
        let h = tokio::spawn(party_client::daemon::run(config, async move {
            let _ = rx.await;
        }));
        self.parties.push((tx, h));
        Ok(())
    }

    /// The coordinator's public key file.
    pub fn coordinator_pub(&self) -> PathBuf {
        self.data_dir.join(crate::state::COORDINATOR_PUB)
    }

    /// Polls the task's status until `done` holds; fails after `timeout` with the last status.
    pub async fn wait_for(
        &self,
        task: &str,
        timeout: Duration,
        mut done: impl FnMut(&[RoundView]) -> bool,
    ) -> anyhow::Result<Vec<RoundView>> {
        let mut op = self.operator().await?;
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let rounds = op.status(task).await?;
            if done(&rounds) {
                return Ok(rounds);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < until,
                "timed out after {timeout:?} waiting for task {task}; status: {rounds:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the parties, then the coordinator; fails if any of them failed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for (tx, h) in self.parties.drain(..) {
            let _ = tx.send(());
            h.await.context("party task panicked")??;
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.context("server task panicked")??;
        }
        Ok(())
    }
}
