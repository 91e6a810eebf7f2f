//! `coordinator data …`: split a CSV among parties, or write the synthetic plant dataset.

use anyhow::Context as _;
use shared_model::data::{SplitFractions, copy_records, load};
use shared_model::partition::Partition;
use shared_model::plantdata::{PlantData, Target};
use shared_model::spec::ModelSpec;

use super::args::DataCommand;

pub(super) fn command(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Split {
            data,
            spec,
            parties,
            partition,
            holdout,
            seed,
            out,
        } => {
            anyhow::ensure!(
                (0.0..1.0).contains(&holdout),
                "--holdout must be in [0, 1), found {holdout}"
            );
            anyhow::ensure!(parties >= 1, "--parties must be at least 1");
            let spec = ModelSpec::from_file(&spec)?;
            let how: Partition = partition.parse()?;
            let (all, loaded) = load(&data, &spec)?;
            if !loaded.is_clean() {
                eprintln!("{}: {loaded}", data.display());
            }
            let [train, _, held] = all.split_indices(
                spec.task.kind,
                SplitFractions {
                    validation: 0.0,
                    holdout,
                },
                seed,
            );
            let pool = all.subset(&train);
            let parts = shared_model::partition::partition(&pool, &spec, &how, parties, 10, seed)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            // Each file holds its records exactly as the source wrote them.
            let mut records = vec![held.iter().map(|&i| loaded.offsets[i]).collect::<Vec<_>>()];
            let mut dests = vec![out.join("holdout.csv")];
            println!("{:<14} {:>6} rows (held back)", "holdout.csv", held.len());
            for (i, idx) in parts.iter().enumerate() {
                let name = format!("party-{}.csv", i + 1);
                records.push(idx.iter().map(|&k| loaded.offsets[train[k]]).collect());
                dests.push(out.join(&name));
                println!("{name:<14} {:>6} rows", idx.len());
            }
            copy_records(&data, &records, &dests)?;
        }
        DataCommand::Synth {
            kind,
            target,
            rows,
            sites,
            blank_share,
            seed,
            out,
        } => {
            anyhow::ensure!(kind == "plant", "--kind must be plant, found {kind:?}");
            anyhow::ensure!(
                rows >= 1 && sites >= 1,
                "--rows and --sites must be at least 1"
            );
            anyhow::ensure!(
                (0.0..1.0).contains(&blank_share),
                "--blank-share must be in [0, 1), found {blank_share}"
            );
            let target = match target.as_str() {
                "yield_kg" => Target::Yield,
                "grade" => Target::Grade,
                t => anyhow::bail!("--target must be yield_kg or grade, found {t:?}"),
            };
            let g = PlantData {
                rows_per_site: rows,
                sites,
                blank_share,
                seed,
            };
            std::fs::write(&out, g.csv(target))
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "wrote {} ({} rows from {sites} sites; target {})",
                out.display(),
                rows * sites,
                target.column()
            );
        }
    }
    Ok(())
}
