//! hermes-turn: parse the config, start logging, relay until SIGTERM/SIGINT, drain, exit 0.

use clap::Parser;
use hermes_turn::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    hermes_service::telemetry::init(config.common.hermes_env);
    let settings = match config.resolve() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match hermes_turn::run(settings, hermes_service::shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
