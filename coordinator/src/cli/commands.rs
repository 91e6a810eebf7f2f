//! The operator's commands against a running coordinator (parties, tasks, rounds, models),
//! and the offline ones (audit log, specs).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use shared_model::spec::ModelSpec;
use yosegi_round::Limits;

use super::args::{AuditCommand, PartyCommand, RoundCommand, SpecCommand, TaskCommand};
use crate::remote::connect;
use crate::state;
use crate::views::print_rounds;

pub(super) fn audit_command(cmd: AuditCommand) -> anyhow::Result<()> {
    let open = |dir: &Path| {
        let path = dir.join(state::DB);
        anyhow::ensure!(
            path.exists(),
            "{} has no coordinator database ({} is missing)",
            dir.display(),
            path.display()
        );
        let store = crate::store::Store::open_read_only(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok((store, path))
    };
    match cmd {
        AuditCommand::Verify { data_dir } => {
            let (store, path) = open(&data_dir)?;
            let head = store
                .verify_audit()
                .with_context(|| format!("governance log in {}", path.display()))?;
            println!("audit log OK: {} records, head {}", head.records, head.hash);
        }
        AuditCommand::Show {
            data_dir,
            task,
            limit,
            json,
        } => {
            let (store, _) = open(&data_dir)?;
            let records = store.audit_records(task.as_deref(), limit)?;
            if json {
                let rows: Vec<serde_json::Value> = records
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(r)?;
                        // The detail as the object it is (the hash covers the stored text).
                        if let Ok(d) = serde_json::from_str::<serde_json::Value>(&r.detail) {
                            v["detail"] = d;
                        }
                        Ok(v)
                    })
                    .collect::<serde_json::Result<_>>()?;
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                crate::audit::write_table(&mut std::io::stdout().lock(), &records)?;
            }
        }
    }
    Ok(())
}

pub(super) fn spec_command(cmd: SpecCommand) -> anyhow::Result<()> {
    match cmd {
        SpecCommand::Id { file } => {
            let spec = ModelSpec::from_file(&file)?;
            println!("{}", spec.id());
        }
        SpecCommand::Init {
            data,
            target,
            kind,
            min_count,
            discover,
            out,
        } => {
            let inferred = crate::specinit::infer_spec(&data, &target, kind, min_count, discover)?;
            for s in &inferred.said {
                eprintln!("{}: {s}", data.display());
            }
            match out {
                None => print!("{}", inferred.toml),
                Some(out) => {
                    use std::io::Write as _;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&out)
                        .with_context(|| {
                            format!(
                                "creating {} (an existing file is not overwritten)",
                                out.display()
                            )
                        })?;
                    f.write_all(inferred.toml.as_bytes())?;
                    eprintln!(
                        "wrote {} (spec id {}, {} network inputs)",
                        out.display(),
                        inferred.spec.id(),
                        inferred.spec.input_width()
                    );
                }
            }
        }
        SpecCommand::Show { file, json } => {
            let spec = ModelSpec::from_file(&file)?;
            let tensors = spec.tensors();
            if json {
                let out = serde_json::json!({
                    "spec_id": spec.id().to_string(),
                    "name": spec.name,
                    "kind": spec.task.kind.name(),
                    "target": spec.task.target,
                    "features": spec.task.features,
                    "classes": spec.task.class_names,
                    "inputs": spec.input_names(),
                    "layer_widths": spec.layer_widths(),
                    "parameters": spec.parameter_count(),
                    "max_blob_bytes": spec.max_blob_bytes(),
                    "tensors": tensors.iter().map(|t| serde_json::json!({"name": t.name, "shape": t.shape})).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("spec id      {}", spec.id());
                println!("name         {}", spec.name);
                println!(
                    "task         {} on column {:?}",
                    spec.task.kind.name(),
                    spec.task.target
                );
                println!(
                    "features     {} columns, {} network inputs",
                    spec.task.features.len(),
                    spec.input_width()
                );
                for (name, c) in &spec.task.columns {
                    let what = match (&c.categories, &c.discover) {
                        (Some(cats), _) => {
                            format!("categorical, {} categories + other", cats.len())
                        }
                        (None, Some(d)) => format!(
                            "categorical, up to {} categories found in the statistics step (kept when {} rows across the plants hold one) + other",
                            d.slots, d.min_count
                        ),
                        (None, None) => "numeric".into(),
                    };
                    println!(
                        "  {name:<18} {what}, blanks: {}{}",
                        c.missing.name(),
                        if c.indicator {
                            ", missing indicator"
                        } else {
                            ""
                        }
                    );
                }
                if let Some(names) = &spec.task.class_names {
                    println!("classes      {}", names.join(", "));
                }
                println!("layers       {:?}", spec.layer_widths());
                println!("parameters   {}", spec.parameter_count());
                println!("max blob     {} bytes", spec.max_blob_bytes());
                println!("tensors");
                for t in tensors {
                    println!("  {:<20} {:?}", t.name, t.shape);
                }
            }
        }
    }
    Ok(())
}

pub(super) async fn party_command(cmd: PartyCommand) -> anyhow::Result<()> {
    match cmd {
        PartyCommand::Enroll {
            name,
            public_key,
            remote,
        } => {
            let key = shared_model::keys::read_public(&public_key)?;
            let fp = connect(&remote).await?.enroll(&name, &key).await?;
            println!("enrolled {name} (key {fp})");
        }
        PartyCommand::List { remote, json } => {
            let parties = connect(&remote).await?.parties().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&parties)?);
            } else {
                for p in parties {
                    let release = if p.protocol == 0 {
                        "no call since the coordinator started".to_string()
                    } else {
                        format!("release {} (protocol {})", p.release, p.protocol)
                    };
                    println!(
                        "{:<16} {}  {:<7}  {release}",
                        p.name,
                        p.fingerprint,
                        if p.revoked { "revoked" } else { "active" }
                    );
                }
            }
        }
        PartyCommand::RotateKey {
            name,
            public_key,
            remote,
        } => {
            let key = shared_model::keys::read_public(&public_key)?;
            let (fp, old) = connect(&remote).await?.rotate_key(&name, &key).await?;
            println!("{name}: key {old} replaced by {fp}; the old key is refused from now on");
        }
        PartyCommand::Revoke { name, remote } => {
            connect(&remote).await?.revoke(&name).await?;
            println!("revoked {name}");
        }
    }
    Ok(())
}

pub(super) async fn task_command(cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Create {
            spec,
            name,
            parties,
            limits,
            remote,
        } => {
            // validate locally first, for an error that names the file
            ModelSpec::from_file(&spec)?;
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("reading {}", spec.display()))?;
            let limits_text = match &limits {
                None => String::new(),
                Some(path) => {
                    let t = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Limits::from_toml(&t)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    t
                }
            };
            let id = connect(&remote)
                .await?
                .create_task_limited(&name, &text, &parties, &limits_text)
                .await
                .with_context(|| match &limits {
                    Some(path) => format!("creating task {name} with limits {}", path.display()),
                    None => format!("creating task {name}"),
                })?;
            println!("created task {name} (spec {id})");
        }
        TaskCommand::List { remote, json } => {
            let tasks = connect(&remote).await?.tasks().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else {
                for t in tasks {
                    println!(
                        "{:<16} spec {} ({})  parties {}  latest version {}",
                        t.name,
                        &t.spec_id[..12.min(t.spec_id.len())],
                        t.spec_name,
                        t.parties.join(","),
                        t.latest_version
                    );
                    if let Ok(l) = Limits::from_toml(&t.limits_toml) {
                        println!("{:<16} {}", "", l.summary());
                    }
                }
            }
        }
    }
    Ok(())
}

pub(super) async fn round_command(cmd: RoundCommand) -> anyhow::Result<()> {
    match cmd {
        RoundCommand::Start {
            task,
            strategy,
            options,
            min_parties,
            deadline,
            rounds,
            remote,
        } => {
            let mut map: HashMap<String, String> = HashMap::new();
            for (k, v) in options {
                if let Some(old) = map.insert(k.clone(), v.clone()) {
                    anyhow::bail!("--option {k} is given twice ({old} and {v})");
                }
            }
            let options = map;
            let relay = matches!(strategy.as_str(), "transfer" | "series");
            let first = connect(&remote)
                .await?
                .start_round(
                    &task,
                    &strategy,
                    options,
                    min_parties,
                    deadline.as_millis() as u64,
                    rounds,
                )
                .await?;
            if relay {
                println!(
                    "queued {rounds} {strategy} relay(s) of {task} from round {first}: one round per party step, each party in turn"
                );
            } else {
                let last = first + u64::from(rounds) - 1;
                println!(
                    "queued rounds {first}..={last} of {task} ({strategy}, quorum {min_parties})"
                );
            }
        }
        RoundCommand::Status { task, json, remote } => {
            let (rounds, declines) = connect(&remote).await?.status_with_declines(&task).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rounds)?);
            } else {
                print_rounds(&task, &rounds);
                crate::views::print_declines(&declines);
            }
        }
        RoundCommand::Watch {
            task,
            interval_secs,
            remote,
        } => {
            let mut c = connect(&remote).await?;
            loop {
                let (rounds, declines) = c.status_with_declines(&task).await?;
                print_rounds(&task, &rounds);
                crate::views::print_declines(&declines);
                if rounds.iter().all(|r| r.is_final()) {
                    break;
                }
                println!();
                tokio::time::sleep(Duration::from_secs(interval_secs.max(1))).await;
            }
        }
    }
    Ok(())
}
