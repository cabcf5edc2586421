//! The `switchboard` command: run, check-config, schema.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::{self, LogFormat};
use switchboard::honoroit;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Connects tickets to Matrix rooms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Run {
        /// The config file (default `switchboard.toml`; without one, `HONOROIT_*`
        /// variables configure a Honoroit drop-in).
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a config file (or the `HONOROIT_*` variables) and print every problem with its
    /// key and line.
    CheckConfig {
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the config file's JSON Schema.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Schema => {
            match serde_json::to_string_pretty(&config::json_schema()) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match load(config) {
            Ok((_, from, warnings)) => {
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                println!("{from}: ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let (loaded, from, warnings) = match load(config) {
                Ok(l) => l,
                Err(errors) => {
                    eprint!("{errors}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(&loaded.config.log);
            tracing::info!(config = %from, "configured");
            for w in warnings {
                tracing::warn!("{w}");
            }
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "switchboard stopped");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The config: the file named, else `switchboard.toml` if it exists, else the Honoroit
/// drop-in if any `HONOROIT_*` variable is set. Returns it, where it came from, and warnings.
fn load(
    explicit: Option<PathBuf>,
) -> Result<(config::Loaded, String, Vec<String>), config::ConfigErrors> {
    let default = PathBuf::from("switchboard.toml");
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let path = match explicit {
        Some(path) => path,
        None if !default.exists() && honoroit::present(&vars) => {
            let drop_in = honoroit::load(&vars)?;
            return Ok((
                drop_in.loaded,
                "HONOROIT_* variables".into(),
                drop_in.warnings,
            ));
        }
        None => default,
    };
    let loaded = config::load(&path)?;
    Ok((loaded, path.display().to_string(), Vec::new()))
}

async fn run(loaded: config::Loaded) -> anyhow::Result<()> {
    let running = switchboard::app::start(loaded).await?;
    tokio::select! {
        r = running.server => r?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init_tracing(log: &config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
