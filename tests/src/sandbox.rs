//! The integration tests' sandbox: a [`LocalFederation`] in a temp dir that panics with the
//! reason instead of returning errors, plus the WDBC split the tests share.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use coordinator::grpc::ServeConfig;
use coordinator::grpc::client::OperatorClient;
pub use coordinator::local::{LocalFederation, PartyFiles};
use coordinator::views::RoundView;
use shared_model::data::{Dataset, SplitFractions, load_csv};
use shared_model::partition::{Partition, partition};
use shared_model::spec::ModelSpec;

/// A running coordinator in a temp dir.
#[derive(Debug)]
pub struct Sandbox {
    /// Temp root (removed on drop).
    pub dir: tempfile::TempDir,
    fed: LocalFederation,
}

impl Deref for Sandbox {
    type Target = LocalFederation;
    fn deref(&self) -> &LocalFederation {
        &self.fed
    }
}

impl DerefMut for Sandbox {
    fn deref_mut(&mut self) -> &mut LocalFederation {
        &mut self.fed
    }
}

impl Sandbox {
    /// Starts a coordinator that ticks every 50 ms.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a coordinator that also serves Prometheus metrics; returns their address.
    pub async fn start_with_metrics() -> (Self, std::net::SocketAddr) {
        // A free loopback port outside the ephemeral range (the coordinator binds it right after).
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        (Self::start_with(Some(addr)).await, addr)
    }

    async fn start_with(metrics: Option<std::net::SocketAddr>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = ServeConfig {
            tick: Duration::from_millis(50),
            grace: Duration::from_secs(2),
            metrics,
            ..Default::default()
        };
        let fed = LocalFederation::start(dir.path(), config)
            .await
            .expect("coordinator starts");
        Self { dir, fed }
    }

    /// Enrolls one plant per slice under `names`, pinned to this coordinator's key, and starts
    /// their daemons; returns their files.
    pub async fn enroll_and_start(
        &mut self,
        op: &mut OperatorClient,
        names: &[&str],
        spec: &ModelSpec,
        slices: &[Dataset],
    ) -> Vec<PartyFiles> {
        let mut files = Vec::new();
        for (name, rows) in names.iter().zip(slices) {
            let f = self.party_files(name, spec, rows);
            let key = shared_model::keys::read_public(&f.public_key).expect("public key");
            op.enroll(name, &key).await.expect("enrolls");
            files.push(f);
        }
        let pinned = self.coordinator_pub();
        for f in &files {
            self.start_party(f, &pinned);
        }
        files
    }

    /// An operator client.
    pub async fn operator(&self) -> OperatorClient {
        self.fed.operator().await.expect("operator connects")
    }

    /// Key files and CSV of a party (not enrolled).
    pub fn party_files(&self, name: &str, spec: &ModelSpec, rows: &Dataset) -> PartyFiles {
        self.fed.party_files(name, spec, rows).expect("party files")
    }

    /// Starts a party daemon pinned to `coordinator_key`.
    pub fn start_party(&mut self, files: &PartyFiles, coordinator_key: &Path) {
        self.fed
            .start_party(files, coordinator_key)
            .expect("party starts");
    }

    /// Starts a party daemon pinned to `coordinator_key` under a site policy.
    pub fn start_party_with_policy(
        &mut self,
        files: &PartyFiles,
        coordinator_key: &Path,
        policy: party_client::policy::RawPolicy,
    ) {
        self.fed
            .start_party_with_policy(files, coordinator_key, Some(policy))
            .expect("party starts");
    }

    /// Waits until `done` holds for the task's rounds.
    pub async fn wait_for(
        &self,
        task: &str,
        timeout: Duration,
        done: impl FnMut(&[RoundView]) -> bool,
    ) -> Vec<RoundView> {
        self.fed
            .wait_for(task, timeout, done)
            .await
            .expect("condition reached")
    }

    /// Stops everything and checks every daemon and the server exited cleanly.
    pub async fn stop(self) {
        self.fed.stop().await.expect("clean shutdown");
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

/// `GET path` over HTTP/1.1 in TLS pinned to the CA certificate `ca` (as Prometheus scrapes
/// the metrics endpoint); returns the status line and the body.
pub fn https_get(addr: std::net::SocketAddr, path: &str, ca: &Path) -> (String, String) {
    coordinator::metrics::get(addr, path, Some(ca)).expect("scrapes the metrics endpoint")
}
