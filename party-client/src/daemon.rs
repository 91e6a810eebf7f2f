//! The site daemon: connect to the coordinator (reconnecting with backoff), long-poll for work,
//! and do it. Statistics: report feature sums of the local training rows. Training: download the
//! base model, verify its signed manifest against the pinned coordinator key (expiry, task, spec,
//! no rollback, blob hash), train locally with burn, clip (and in local mode noise) the update
//! when the task has differential privacy, evaluate on the local holdout, sign and upload the
//! blob. Evaluation: verify the published model the same way and report statistics.
//! Only feature sums (with, for a spec's `discover` columns, how many rows hold each value,
//! unless the site's policy withholds them), signed blobs and metric statistics leave the site.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use shared_model::blob::{self, BlobMeta, BlobRole};
use shared_model::data::load_observed;
use shared_model::dp;
use shared_model::eval::MetricStats;
use shared_model::ids::{ModelVersion, RoundNo, Sha256, StepNo, TaskId};
use shared_model::manifest::Manifest;
use shared_model::model::{Model, max_model_blob_bytes, model_limits};
use shared_model::network::CpuBackend;
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::train::TrainOptions;
use shared_model::update::SignedUpdate;

use crate::config::Config;
use crate::contribute::{self, PlantRows, Prepared};
use crate::grpc::{Assignment, PartyClient, Work, digest};
use crate::policy;
use crate::progress::Progress;
use crate::state::PartyState;

/// How long one long poll may wait.
const POLL_MS: u32 = 10_000;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut state = PartyState::load(&config.state_dir)?;
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    let mut client: Option<PartyClient> = None;
    tracing::info!(party = %config.name, server = %config.server, "party daemon started");
    for rule in config.policy.describe() {
        tracing::info!(party = %config.name, "site policy: {rule}");
    }
    loop {
        let c = match client.as_mut() {
            Some(c) => c,
            None => {
                let connect = PartyClient::connect_with(
                    &config.server,
                    &config.tls,
                    config.name.as_str(),
                    config.key.clone(),
                );
                let r = tokio::select! {
                    _ = &mut shutdown => break,
                    r = connect => r,
                };
                match r {
                    Ok(c) => {
                        // Connecting does not authenticate: the backoff is reset only once a
                        // call succeeds, so a party not yet enrolled does not spin.
                        tracing::info!(server = %config.server, "connected");
                        client.insert(c)
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "coordinator unreachable");
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
        };
        let next = tokio::select! {
            _ = &mut shutdown => break,
            r = c.next_assignment(POLL_MS) => r,
        };
        match next {
            Ok(None) => backoff = Duration::from_millis(100),
            Ok(Some(a)) => {
                let id = a.id.clone();
                let done = handle(c, &config, &mut state, a).await;
                if done.is_ok() {
                    backoff = Duration::from_millis(100);
                }
                if let Err(e) = done {
                    if crate::grpc::is_skew(&e) {
                        tracing::error!(error = %e, "stopping: the coordinator and this daemon share no protocol");
                        return Err(e);
                    }
                    tracing::warn!(assignment = %id, error = %format!("{e:#}"), "assignment not completed");
                    // Give the coordinator a moment before the same work is offered again.
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            Err(e) if crate::grpc::is_skew(&e) => {
                tracing::error!(error = %e, "stopping: the coordinator and this daemon share no protocol");
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "lost the coordinator; reconnecting");
                client = None;
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!(party = %config.name, "party daemon stopped");
    Ok(())
}

/// The site's rows, split deterministically by the spec's seed: training rows, validation rows
/// and holdout rows ([`PlantRows::split`]).
///
/// Also returns how many training rows hold each value of the spec's `discover` columns (by
/// feature index), what the statistics step reports.
fn local_data(
    config: &Config,
    spec: &ModelSpec,
) -> anyhow::Result<(PlantRows, Vec<BTreeMap<String, u64>>)> {
    let size = std::fs::metadata(&config.data).map_or(0, |m| m.len());
    let mut progress = Progress::new(&format!("loading {}", config.data.display()), size, "bytes");
    let (ds, report) = load_observed(&config.data, spec, &mut |byte| progress.set(byte, ""))?;
    progress.finish(size, &format!("{} rows", ds.len()));
    if !report.is_clean() {
        tracing::info!(data = %config.data.display(), spec = %spec.name, "{report}");
    }
    let seen = if spec.discovers() {
        let train = PlantRows::train_indices(spec, &ds);
        report.counts.seen_among(Some(&train))
    } else {
        Vec::new()
    };
    let rows = PlantRows::of(spec, ds);
    anyhow::ensure!(
        !rows.train.is_empty(),
        "{}: no training rows after the split",
        config.data.display()
    );
    Ok((rows, seen))
}

/// The site's rows encoded as `spec` says, loaded off the async runtime.
async fn load_rows(
    config: &Config,
    spec: &ModelSpec,
) -> anyhow::Result<(PlantRows, Vec<BTreeMap<String, u64>>)> {
    let (cfg, spec) = (config.clone(), spec.clone());
    tokio::task::spawn_blocking(move || local_data(&cfg, &spec)).await?
}

/// A per-party, per-round training seed derived from the spec's seed.
fn train_seed(spec: &ModelSpec, party: &str, round: u64) -> u64 {
    let d = Sha256::of(format!("{}/{party}/{round}", spec.training.seed).as_bytes());
    u64::from_le_bytes(d.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Downloads a version and verifies it against the pinned key; returns manifest and weights.
async fn fetch_model(
    c: &mut PartyClient,
    config: &Config,
    state: &mut PartyState,
    spec: &ModelSpec,
    task: &str,
    version: u64,
) -> anyhow::Result<(Manifest, Model, ModelSpec)> {
    let (signed, bytes) = c
        .download(task, version, max_model_blob_bytes(spec))
        .await?;
    let m = crate::pinning::verify_manifest(c, config, state, &signed).await?;
    let task_id = TaskId::new(task)?;
    m.check_for(&task_id, spec.id(), state.accepted(task).map(ModelVersion))?;
    anyhow::ensure!(
        m.version.0 == version,
        "asked for version {version}, the manifest says {}",
        m.version
    );
    m.check_blob(&bytes)?;
    let role = if version == 0 {
        BlobRole::Initial
    } else {
        BlobRole::Merged
    };
    // The vocabularies the statistics step found travel in the task's models.
    let spec = blob::spec_for(&bytes, spec, model_limits(spec))
        .with_context(|| format!("model version {version} of {task}"))?;
    let model = Model::decode(&bytes, &spec, role)
        .with_context(|| format!("model version {version} of {task}"))?;
    Ok((m, model, spec))
}

/// The site's rows encoded with the vocabularies the task's model carries, when its spec
/// discovers some (the rows loaded before knowing them counted every value as "other");
/// `None` when they no longer load (the work is declined, naming the fault).
async fn reload_for(
    c: &mut PartyClient,
    config: &Config,
    (id, task, round): (&str, &str, u64),
    spec: &ModelSpec,
    rows: PlantRows,
) -> anyhow::Result<Option<PlantRows>> {
    if !spec.finds() {
        return Ok(Some(rows));
    }
    drop(rows);
    match load_rows(config, spec).await {
        Ok((rows, _)) => Ok(Some(rows)),
        Err(e) => {
            let reason = crate::dataerror::reason(&config.data, &e);
            tracing::error!(task = %task, round, assignment = %id, error = %format!("{e:#}"), "the site's data does not load for this task: declining the work");
            c.decline(id, &reason).await?;
            Ok(None)
        }
    }
}

async fn handle(
    c: &mut PartyClient,
    config: &Config,
    state: &mut PartyState,
    a: Assignment,
) -> anyhow::Result<()> {
    let spec = match ModelSpec::parse(&a.spec_toml, &format!("task {}", a.task)) {
        Ok(s) if s.id().to_string() == a.spec_id => s,
        Ok(s) => {
            let reason = format!(
                "spec text hashes to {}, not the announced {}",
                s.id(),
                a.spec_id
            );
            c.decline(&a.id, &reason).await?;
            anyhow::bail!(reason);
        }
        Err(e) => {
            c.decline(&a.id, &e.to_string()).await?;
            return Err(e.into());
        }
    };
    // The site's policy comes before anything touches the data.
    let refusals = match &a.work {
        Work::Train {
            local_epochs,
            round_parties,
            ..
        } => config
            .policy
            .check_training(&spec, *local_epochs, *round_parties),
        Work::Stats | Work::Evaluate { .. } => config.policy.check_spec(&spec),
    };
    if !refusals.is_empty() {
        let reason = policy::explain(&refusals);
        tracing::warn!(task = %a.task, round = a.round, assignment = %a.id, spec = %spec.id().0.short(), %reason, "work declined");
        c.decline(&a.id, &reason).await?;
        return Ok(());
    }
    let loaded = load_rows(config, &spec).await;
    let (rows, seen) = match loaded {
        Ok(rows) => rows,
        Err(e) => {
            // Declined, not retried: the operator sees where the data is wrong (not its
            // values), and the round goes on without this plant until its data is fixed.
            let reason = crate::dataerror::reason(&config.data, &e);
            tracing::error!(task = %a.task, round = a.round, assignment = %a.id, error = %format!("{e:#}"), "the site's data does not load for this task: declining the work");
            c.decline(&a.id, &reason).await?;
            return Ok(());
        }
    };
    match a.work {
        Work::Stats => {
            let mut sums = FeatureSums::of_dataset(&spec, &rows.train);
            if spec.discovers() {
                if config.policy.withhold_category_names {
                    tracing::info!(task = %a.task, "policy.share_category_names = false: reporting no category names");
                } else {
                    sums = sums.with_categories(&spec, &seen);
                }
            }
            tracing::info!(task = %a.task, rows = sums.count, "reporting feature sums");
            c.submit_sums(&a.id, &sums).await?;
        }
        Work::Train {
            base_version,
            base_sha256,
            strategy,
            fedprox_mu,
            learning_rate,
            frozen_layers,
            local_epochs,
            round_parties: _,
        } => {
            // A task with differential privacy can only run strategies whose upload is a delta
            // from the base model (the coordinator refuses the others at round start too).
            if let Some(d) = &spec.privacy.dp
                && let Err(e) = dp::check_strategy(d.mode, &strategy)
            {
                let reason = e.to_string();
                tracing::warn!(task = %a.task, round = a.round, %reason, "work declined");
                c.decline(&a.id, &reason).await?;
                return Ok(());
            }
            let (m, base, spec) =
                match fetch_model(c, config, state, &spec, &a.task, base_version).await {
                    Ok(x) => x,
                    Err(e) => {
                        let reason = format!("base model refused: {e:#}");
                        tracing::warn!(task = %a.task, round = a.round, %reason);
                        c.decline(&a.id, &reason).await?;
                        return Err(e);
                    }
                };
            anyhow::ensure!(
                m.blob_sha256 == digest(&base_sha256)?,
                "the assignment names base {base_sha256}, the manifest {}",
                m.blob_sha256
            );
            state.accept(&a.task, base_version)?;
            let rows = reload_for(c, config, (&a.id, &a.task, a.round), &spec, rows).await?;
            let Some(rows) = rows else { return Ok(()) };
            let mut opts =
                TrainOptions::from_spec(&spec, train_seed(&spec, config.name.as_str(), a.round));
            if fedprox_mu > 0.0 {
                opts.fedprox_mu = Some(fedprox_mu);
            }
            if learning_rate > 0.0 {
                opts.learning_rate = learning_rate;
            }
            opts.frozen_layers = frozen_layers as usize;
            if local_epochs > 0 {
                opts.epochs = local_epochs;
            }
            tracing::info!(task = %a.task, round = a.round, step = a.step, %strategy, rows = rows.train.len(), epochs = opts.epochs, "training");
            let samples = rows.train.len() as u64;
            let (spec2, key, party, task_id) = (
                spec.clone(),
                config.key.clone(),
                config.name.clone(),
                TaskId::new(&a.task)?,
            );
            let (round, step, base_sha) = (RoundNo(a.round), StepNo(a.step), m.blob_sha256);
            // Training, evaluation, encoding and hashing are CPU work: off the async runtime.
            let epochs = u64::from(opts.epochs);
            let mut bar = Progress::new(
                &format!("training {} round {}", a.task, a.round),
                u64::from(opts.epochs),
                "epochs",
            );
            let (task_name, round_no) = (a.task.clone(), a.round);
            let min_cohort = config.policy.min_other_parties.saturating_add(1);
            let site_threshold = config.policy.max_membership_advantage;
            let trained = tokio::task::spawn_blocking(move || {
                // Train, privatise, audit: the same turn `coordinator experiment` simulates.
                let prepared = contribute::prepare(
                    &spec2,
                    &strategy,
                    party.as_str(),
                    &base,
                    &rows,
                    &opts,
                    site_threshold,
                    &mut dp::os_rng(),
                    &mut |epoch, loss| bar.set(u64::from(epoch), &format!("loss {loss:.4}")),
                )
                .with_context(|| format!("task {task_name} round {round_no}: local training"))?;
                let c = match prepared {
                    Prepared::Ready(c) => {
                        let u = &c.update;
                        bar.finish(u.epoch_losses.len() as u64, "");
                        if let Some(e) = &u.early_stop {
                            tracing::info!(task = %task_name, round = round_no, epochs = u.epoch_losses.len(), best_epoch = e.best_epoch, validation_loss = e.validation_losses[e.best_epoch as usize - 1], "early stopping kept the best epoch's weights");
                        }
                        c
                    }
                    Prepared::Withheld { reason, audit } => {
                        bar.finish(epochs, "update withheld");
                        return anyhow::Ok(Err((reason, audit)));
                    }
                };
                let bytes = blob::encode(
                    &c.update.weights,
                    &BlobMeta::new(&spec2, BlobRole::Update),
                );
                let env = SignedUpdate::for_blob(
                    task_id,
                    spec2.id(),
                    round,
                    step,
                    base_sha,
                    party,
                    &bytes,
                    samples,
                    &key,
                );
                // The site's fewest-other-parties rule travels signed with the update.
                let env = if min_cohort > 1 {
                    env.with_min_cohort(min_cohort, &key)
                } else {
                    env
                };
                anyhow::Ok(Ok((bytes, env, c.local, c.audit, c.threshold)))
            })
            .await??;
            let (bytes, env, local, audit, threshold): (Vec<u8>, SignedUpdate, MetricStats, _, _) =
                match trained {
                    Ok(x) => x,
                    Err((reason, audit)) => {
                        // Only numbers leave the site, in the decline the operator sees.
                        match audit {
                            Some(audit) => {
                                tracing::warn!(task = %a.task, round = a.round, %audit, "update withheld: {reason}")
                            }
                            None => {
                                tracing::warn!(task = %a.task, round = a.round, %reason, "update withheld")
                            }
                        }
                        c.decline(&a.id, &reason).await?;
                        return Ok(());
                    }
                };
            tracing::info!(task = %a.task, round = a.round, %audit, threshold, "membership audit passed");
            let sha = env.header.blob_sha256;
            let ack = c
                .upload_with_audit(&a.id, &env, bytes, Some(&local), Some(&audit))
                .await?;
            state.log_ack(&format!(
                "{} task={} round={} blob={sha} ack={ack:?} audit_advantage={:.4} audit_auc={:.4}",
                now_ms(),
                a.task,
                a.round,
                audit.advantage,
                audit.auc
            ))?;
            let (name, v) = local.metrics().headline();
            tracing::info!(task = %a.task, round = a.round, blob = %sha.short(), ?ack, local_metric = name, value = v, "update uploaded");
        }
        Work::Evaluate { version } => {
            let (_, model, spec) =
                match fetch_model(c, config, state, &spec, &a.task, version).await {
                    Ok(x) => x,
                    Err(e) => {
                        let reason = format!("published model refused: {e:#}");
                        tracing::warn!(task = %a.task, version, %reason);
                        c.decline(&a.id, &reason).await?;
                        return Err(e);
                    }
                };
            state.accept(&a.task, version)?;
            let Some(rows) = reload_for(c, config, (&a.id, &a.task, a.round), &spec, rows).await?
            else {
                return Ok(());
            };
            let spec2 = spec.clone();
            let stats = tokio::task::spawn_blocking(move || {
                model.evaluate_stats(&spec2, &rows.holdout, CpuBackend::default())
            })
            .await?;
            let (name, v) = stats.metrics().headline();
            tracing::info!(task = %a.task, version, metric = name, value = v, "published model verified and evaluated on the local holdout");
            c.report_evaluation(&a.id, &stats).await?;
        }
    }
    Ok(())
}
