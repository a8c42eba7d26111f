//! The `polyhub` command line: `run`, `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use polyhub::{Config, Hub, Registry};

#[derive(Parser, Debug)]
#[command(
    name = "polyhub",
    version,
    about = "Multi-protocol IoT hub: MQTT, CoAP, HTTP, AMQP and XMPP devices reach each other"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the hub until Ctrl-C or SIGTERM.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "polyhub.toml")]
        config: PathBuf,
    },
    /// Check a config file (and load its plugins) without starting anything.
    Check {
        /// Config file.
        #[arg(default_value = "polyhub.toml")]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let registry = Registry::builtin();
    match cli.command {
        Command::Check { config } => match Config::load(&config, &registry) {
            Ok(c) => {
                println!(
                    "{}: OK ({} adapter(s): {}; {} route(s))",
                    config.display(),
                    c.adapters.len(),
                    c.adapters
                        .iter()
                        .map(|a| format!("{} ({})", a.entry.name, a.kind))
                        .collect::<Vec<_>>()
                        .join(", "),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let config = match Config::load(&config, &registry) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config))
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let hub = match Hub::start(config).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal = wait_for_signal().await;
    tracing::info!(signal, "Received signal; shutting down.");
    match hub.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
