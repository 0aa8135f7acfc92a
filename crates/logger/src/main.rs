//! `hermes-logger`: parse the configuration, set up process logging (stderr) and run until
//! SIGINT/SIGTERM. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use hermes_logger::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    hermes_service::telemetry::init(config.common.hermes_env);
    let shutdown = hermes_service::shutdown::on_signal();
    match hermes_logger::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes-logger: {e}");
            ExitCode::FAILURE
        }
    }
}
