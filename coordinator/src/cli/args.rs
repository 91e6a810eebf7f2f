//! The subcommands' arguments (clap).

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::{parse_duration, parse_kv};
use crate::remote::Remote;

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Create the CA and server certificate of an existing data dir (`init` does this for a new
    /// one). Refuses to overwrite.
    Init {
        /// The data directory.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
        /// A host name or IP address parties dial (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Replace the server certificate and key with new ones from the same CA (expiring, or its
    /// key exposed): plants pin the CA, so none is re-enrolled. Restart the coordinator after.
    Renew {
        /// The data directory holding the CA.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
        /// A host name or IP address parties dial (repeat every one given at init).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Issue a client certificate for mutual TLS (serve with --client-ca DATA_DIR/tls/ca.pem).
    Client {
        /// The data directory holding the CA.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
        /// The party's name (the certificate's common name).
        #[arg(long)]
        name: String,
        /// Directory to write NAME.pem and NAME.key.pem into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Print the spec id (sha256 of the canonical encoding) of a ModelSpec file.
    Id {
        /// The ModelSpec TOML file.
        file: PathBuf,
    },
    /// Write a commented spec inferred from a CSV: feature types (numbers, categories and
    /// their vocabulary), missing-value policies, the task kind and its classes. Says what it
    /// inferred and why on stderr; refuses an ambiguous column naming its lines.
    Init {
        /// The CSV (a sample of a plant's data, or pooled data for a demo).
        #[arg(long)]
        data: PathBuf,
        /// The target column.
        #[arg(long)]
        target: String,
        /// The task kind, instead of inferring it from the target's values.
        #[arg(long, value_enum)]
        kind: Option<crate::experiment::infer::Kind>,
        /// A name seen fewer times in a categorical column counts as "other".
        #[arg(long, default_value_t = crate::specinit::DEFAULT_MIN_COUNT)]
        min_count: u64,
        /// Write no category name into the spec: a text column's vocabulary is found in the
        /// task's statistics step (`discover`, names kept when `--min-count` rows across the
        /// plants hold them), so a sample of one plant's names never reaches the others.
        #[arg(long)]
        discover: bool,
        /// Where to write the spec (refuses an existing file); stdout when not given.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validate a ModelSpec file and describe the network and its weight blobs.
    Show {
        /// The ModelSpec TOML file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `coordinator data …`
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Split a CSV into `holdout.csv` (never given to a party) and `party-1.csv` … `party-N.csv`.
    Split {
        /// The CSV.
        #[arg(long)]
        data: PathBuf,
        /// The ModelSpec naming its columns.
        #[arg(long)]
        spec: PathBuf,
        /// Number of parties.
        #[arg(long, default_value_t = 3)]
        parties: usize,
        /// iid, dirichlet:ALPHA, quantity:ALPHA or shift:FEATURE.
        #[arg(long, default_value = "iid")]
        partition: String,
        /// Fraction of rows held back as the common holdout.
        #[arg(long, default_value_t = 0.2)]
        holdout: f64,
        /// Seed of the split and the partition.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a synthetic dataset: `--kind plant` is a plant-process export (line, product,
    /// supplier and shift as text, sensor blanks, a batch id, targets `yield_kg` and `grade`,
    /// each site with its own process shift).
    Synth {
        /// The dataset (plant).
        #[arg(long, default_value = "plant")]
        kind: String,
        /// The target column written: yield_kg (regression) or grade (ok/rework/scrap).
        #[arg(long, default_value = "yield_kg")]
        target: String,
        /// Rows per site.
        #[arg(long, default_value_t = 300)]
        rows: usize,
        /// Sites, each with its own process.
        #[arg(long, default_value_t = 3)]
        sites: usize,
        /// Share of sensor cells left blank.
        #[arg(long, default_value_t = 0.05)]
        blank_share: f64,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// The CSV to write.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// `coordinator party …`
#[derive(Debug, Subcommand)]
pub enum PartyCommand {
    /// Enroll a party with its public key file (from `party-client keygen`).
    Enroll {
        /// The party's name.
        #[arg(long)]
        name: String,
        /// Its public key (SPKI PEM).
        #[arg(long)]
        public_key: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// List parties.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace a party's key (lost, exposed or renewed), keeping its name and its place in every
    /// task: the old key is refused from now on. The plant then runs its daemon with the new key.
    RotateKey {
        /// The party's name.
        #[arg(long)]
        name: String,
        /// Its new public key (SPKI PEM, from `party-client keygen`).
        #[arg(long)]
        public_key: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a party: its key is refused from now on, mid-round included.
    Revoke {
        /// The party's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `coordinator operator …`
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Make a key pair for a new operator: PREFIX.key.pem (mode 0600, kept by that operator)
    /// and PREFIX.pub.pem (given to an admin for `operator add`).
    Keygen {
        /// Where to write the keys, e.g. `alice` for alice.key.pem and alice.pub.pem.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a named operator key with a role (admin only): viewer (status, lists, models),
    /// operator (also tasks, rounds, restores) or admin (also parties and operators).
    Add {
        /// The operator's name (shared with parties: it may not be a party's).
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: yosegi_round::Role,
        /// Its public key (from `coordinator operator keygen`).
        #[arg(long)]
        public_key: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke an operator key (admin only): refused from its next call on. The last admin
    /// cannot be revoked.
    Revoke {
        /// The operator's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List operators: name, role, key fingerprint, active or revoked.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// With the coordinator stopped, and only the data dir: add an admin key and revoke
    /// operators without any operator's signature — the way back when admin keys are lost or
    /// stolen. Logged with `"by": "data-dir"`.
    Recover {
        /// The coordinator's data directory.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
        /// The new admin's name (with --public-key).
        #[arg(long, requires = "public_key")]
        name: Option<String>,
        /// The new admin's public key.
        #[arg(long, requires = "name")]
        public_key: Option<PathBuf>,
        /// An operator to revoke (repeatable), after the new admin is added.
        #[arg(long = "revoke")]
        revoke: Vec<String>,
    },
}

/// `coordinator task …`
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a task from a ModelSpec; parties default to every enrolled party.
    Create {
        /// The ModelSpec TOML file.
        #[arg(long)]
        spec: PathBuf,
        /// The task's name.
        #[arg(long)]
        name: String,
        /// Parties taking part (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        parties: Vec<String>,
        /// Contribution limits (TOML; docs/CONFIG.md): the largest share and weight of one
        /// party, per-party exceptions, declared feature ranges. Default: no party above half.
        #[arg(long)]
        limits: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tasks.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `coordinator round …`
#[derive(Debug, Subcommand)]
pub enum RoundCommand {
    /// Start one or more rounds of a task.
    Start {
        /// The task.
        #[arg(long)]
        task: String,
        /// Merge strategy: fedavg, fedprox, ensemble, transfer, series, median, trimmed-mean,
        /// krum or multi-krum (docs/STRATEGIES.md).
        #[arg(long, default_value = "fedavg")]
        strategy: String,
        /// Strategy option KEY=VALUE, e.g. mu=0.01 (fedprox), beta=0.2 (trimmed-mean), f=1
        /// (krum), passes=2 / freeze=1 / lr_scale=0.5 / order=random / seed=S (transfer),
        /// norm_bound=5 (broadcast strategies); repeatable.
        #[arg(long = "option", value_parser = parse_kv)]
        options: Vec<(String, String)>,
        /// Fewest accepted updates needed to merge.
        #[arg(long)]
        min_parties: u32,
        /// Time allowed per round, e.g. 90s, 5m, 1h.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        deadline: Duration,
        /// Rounds to run back to back.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show every round of a task: phase, who answered, who is late, rejections, metrics.
    Status {
        /// The task.
        #[arg(long)]
        task: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow a task's rounds until none is queued or training.
    Watch {
        /// The task.
        #[arg(long)]
        task: String,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1)]
        interval_secs: u64,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `coordinator model …`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a published model and its manifest, verified with the coordinator's key.
    Pull {
        /// The task.
        #[arg(long)]
        task: String,
        /// Version (default: latest).
        #[arg(long)]
        version: Option<u64>,
        /// Where to write the blob; the signed manifest goes to FILE.manifest.json.
        #[arg(long)]
        out: PathBuf,
        /// The coordinator's public key file (what parties pin).
        #[arg(
            long,
            env = "YOSEGI_COORDINATOR_KEY",
            default_value = "coordinator-data/coordinator.pub.pem"
        )]
        coordinator_key: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write a published model's blob again on the coordinator from a copy, when its own copy
    /// is damaged or lost (a round on it fails naming this command). The copy must hash to the
    /// sha256 recorded at publication: `model pull` saved one, and each plant keeps the models
    /// it accepted in its state dir.
    Restore {
        /// The task.
        #[arg(long)]
        task: String,
        /// The published version the copy is of.
        #[arg(long)]
        version: u64,
        /// The copy (a safetensors blob).
        #[arg(long)]
        blob: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `coordinator key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Replace the coordinator's signing key, with the coordinator stopped: the new key is
    /// announced in a statement signed by the old key and the new one, every published manifest
    /// is signed again, and plants follow the statement from the key they pin (no plant is
    /// re-enrolled; after following it they refuse the old key). Logged as
    /// `coordinator_key_rotated`.
    Rotate {
        /// The coordinator's data directory.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
    },
}

/// `coordinator audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain: prints the record count and the head hash, or names the first
    /// broken record (seq, kind, what is wrong) and exits non-zero.
    Verify {
        /// The coordinator's data directory.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
    },
    /// List records, oldest first, as a table.
    Show {
        /// The coordinator's data directory.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
        /// Only records of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only the newest N records.
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON (every field, the detail as an object) instead of a table.
        #[arg(long)]
        json: bool,
    },
}
