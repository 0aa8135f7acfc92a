//! hermes-api: parse the config, start logging, serve until SIGTERM/SIGINT.

use clap::Parser;
use hermes_api::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    hermes_service::telemetry::init(config.common.hermes_env);
    let settings = match config.validate() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match hermes_api::run(settings, hermes_service::shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
