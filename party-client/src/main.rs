//! The `party-client` binary: tracing, then the CLI, then the chosen command. All logic lives
//! in the library so tests can drive it in-process.

use clap::Parser;

fn main() -> std::process::ExitCode {
    party_client::exit::quiet_on_closed_pipe();
    let cli = party_client::cli::Cli::parse();
    party_client::cli::init_tracing(cli.log_format);
    party_client::exit::code(party_client::cli::run(cli))
}
