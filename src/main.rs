//! The `switchboard` command: run, check-config, schema.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::{self, LogFormat};
use switchboard::env_config;

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
        /// The config file (default `switchboard.toml`; without one, a connector may make
        /// the config of the environment variables of a program it stands in for).
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a config file (or the environment variables that stand in for one) and print every problem with its
    /// key and line.
    CheckConfig {
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the config file's JSON Schema.
    Schema,
    /// Per source: deliveries and actions waiting to be done, failed and set-aside items,
    /// the oldest waiting item's age; and whether the database and the homeserver answer.
    /// Works against a running or a stopped instance's database. Exits 1 when something
    /// waits for an operator or does not answer.
    Status {
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List what did not go through and waits for an operator: actions that failed for
    /// good or were set aside after failing again and again, and deliveries set aside.
    /// Works against a running or a stopped instance's database.
    Failed {
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// Only this source's.
        #[arg(long)]
        source: Option<String>,
        /// Only this ticket's actions.
        #[arg(long)]
        ticket: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put failed or set-aside items back in line, once their cause is mended (e.g. the
    /// bot was given power in a room). A running instance picks them up within a second.
    Retry {
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// An item as `switchboard failed` lists it: `action:<id>` or `delivery:<id>`.
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        id: Option<String>,
        /// Every failed or set-aside item (of `--source`, if given).
        #[arg(long)]
        all_failed: bool,
        #[arg(long, requires = "all_failed")]
        source: Option<String>,
    },
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
        Command::Status { config } => operate(config, |store, loaded| async move {
            let healthy = status(&store, &loaded).await?;
            if !healthy {
                anyhow::bail!("something waits for an operator or does not answer");
            }
            Ok(())
        }),
        Command::Failed {
            config,
            source,
            ticket,
            limit,
        } => operate(config, |store, _| async move {
            let problems = store
                .problems(source.as_deref(), ticket.as_deref(), limit)
                .await?;
            if problems.is_empty() {
                println!("nothing failed or set aside");
            }
            for p in problems {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{} tries\t{}\t{}",
                    p.id,
                    switchboard::operate::utc(p.updated_at),
                    p.source_id,
                    p.ticket_key.as_deref().unwrap_or("-"),
                    p.kind,
                    p.tries,
                    p.state,
                    p.error.replace(['\n', '\t'], " "),
                );
            }
            Ok(())
        }),
        Command::Retry {
            config,
            id,
            all_failed: _,
            source,
        } => operate(config, |store, _| async move {
            use switchboard::store::Retry;
            let which = match id {
                Some(id) => Retry::One(id),
                None => Retry::All { source },
            };
            let n = store.retry_problems(&which).await?;
            println!("{n} put back in line");
            if n == 0 && matches!(which, Retry::One(_)) {
                anyhow::bail!("no failed or set-aside item with that ID");
            }
            Ok(())
        }),
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
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(loaded)) {
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

/// Runs an operator's command against the configured database.
fn operate<F, Fut>(config: Option<PathBuf>, job: F) -> ExitCode
where
    F: FnOnce(switchboard::store::Store, config::Loaded) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (loaded, _, _) = match load(config) {
        Ok(l) => l,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let url = match &loaded.secrets.database_url {
            Some(u) => u.expose().to_string(),
            None => switchboard::store::Store::sqlite_url(&loaded.config.data_dir),
        };
        let store = switchboard::store::Store::connect(&url, None).await?;
        job(store, loaded).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the status of each source, the database's and the homeserver's; whether nothing
/// waits for an operator and the homeserver answers.
async fn status(
    store: &switchboard::store::Store,
    loaded: &config::Loaded,
) -> anyhow::Result<bool> {
    println!("database: answers");
    let homeserver = &loaded.config.matrix.homeserver;
    let versions = homeserver.join("_matrix/client/versions")?;
    let answer = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?
        .get(versions)
        .send()
        .await;
    let homeserver_up = match answer {
        Ok(r) if r.status().is_success() => {
            println!("homeserver: {homeserver} answers");
            true
        }
        Ok(r) => {
            println!("homeserver: {homeserver} answered {}", r.status());
            false
        }
        Err(e) => {
            // The cause (refused, no such host, a timeout) is in the error's sources.
            let e = e.without_url();
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            println!("homeserver: {homeserver} does not answer: {why}");
            false
        }
    };
    println!();
    println!(
        "source\tkind\tdeliveries waiting\tactions pending\tfailed\tset aside\toldest waiting"
    );
    let rows = switchboard::operate::sources(
        store,
        loaded
            .config
            .sources
            .iter()
            .map(|(id, s)| (id.as_str(), s.kind.as_str())),
    )
    .await?;
    for s in &rows {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            s.id,
            s.kind,
            s.deliveries,
            s.actions,
            s.failed,
            s.set_aside,
            s.oldest.as_deref().unwrap_or("-"),
        );
    }
    let waits = rows.iter().any(|s| s.needs_operator());
    if waits {
        println!("\n`switchboard failed` lists what failed; `switchboard retry` tries it again.");
    }
    Ok(homeserver_up && !waits)
}

/// The config: the file named, else `switchboard.toml` if it exists, else one a connector
/// makes of environment variables it reads. Returns it, where it came from, and warnings.
fn load(
    explicit: Option<PathBuf>,
) -> Result<(config::Loaded, String, Vec<String>), config::ConfigErrors> {
    let default = PathBuf::from("switchboard.toml");
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let path = match explicit {
        Some(path) => path,
        None if !default.exists() => match env_config::load(&vars) {
            Some(made) => {
                let made = made?;
                return Ok((made.loaded, made.name, made.warnings));
            }
            None => default,
        },
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
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter = EnvFilter::new(log.filter(env.as_deref()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
