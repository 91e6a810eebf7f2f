//! Command-line interface of the `coordinator` binary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shared_model::spec::ModelSpec;

/// Yosegi coordinator: merges models trained apart at many sites without seeing their data.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect model specs.
    #[command(subcommand)]
    Spec(SpecCommand),
}

/// `coordinator spec …`
#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Print the spec id (sha256 of the canonical encoding) of a ModelSpec file.
    Id {
        /// The ModelSpec TOML file.
        file: PathBuf,
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

/// Sets up logging to stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Spec(SpecCommand::Id { file }) => {
            let spec = ModelSpec::from_file(&file)?;
            println!("{}", spec.id());
        }
        Command::Spec(SpecCommand::Show { file, json }) => {
            let spec = ModelSpec::from_file(&file)?;
            let tensors = spec.tensors();
            if json {
                let out = serde_json::json!({
                    "spec_id": spec.id().to_string(),
                    "name": spec.name,
                    "kind": spec.task.kind.name(),
                    "target": spec.task.target,
                    "features": spec.task.features,
                    "layer_widths": spec.layer_widths(),
                    "parameters": spec.parameter_count(),
                    "max_blob_bytes": spec.max_blob_bytes(),
                    "tensors": tensors.iter().map(|t| serde_json::json!({"name": t.name, "shape": t.shape})).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out).context("json")?);
            } else {
                println!("spec id      {}", spec.id());
                println!("name         {}", spec.name);
                println!(
                    "task         {} on column {:?}",
                    spec.task.kind.name(),
                    spec.task.target
                );
                println!("features     {}", spec.input_width());
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
