//! The `party-client` binary: tracing, then the CLI, then the chosen command. All logic lives
//! in the library so tests can drive it in-process.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = party_client::cli::Cli::parse();
    party_client::cli::init_tracing(cli.log_format);
    match party_client::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
