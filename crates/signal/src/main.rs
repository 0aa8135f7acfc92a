//! hermes-signal: parse the config, start logging, run until SIGTERM/SIGINT.

use clap::Parser;
use hermes_signal::config::{Cli, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    hermes_service::telemetry::init(cli.common.hermes_env);
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match hermes_signal::run(config, hermes_service::shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
