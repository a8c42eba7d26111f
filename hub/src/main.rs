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
    /// More log output: -v debug, -vv trace (RUST_LOG, when set, wins over -v).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing
    /// directive such as `info,polyhub_mqtt=debug`. Wins over RUST_LOG and -v.
    #[arg(long, value_name = "FILTER", global = true)]
    log_level: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the hub until Ctrl-C or SIGTERM.
    Run {
        /// Config file (default polyhub.toml).
        #[arg(value_name = "CONFIG", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Config file, as an option (the same as the positional CONFIG).
        #[arg(short, long, value_name = "CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a config file (and load its plugins) without starting anything.
    Check {
        /// Config file.
        #[arg(default_value = "polyhub.toml")]
        config: PathBuf,
    },
    /// Measure MQTT, CoAP, HTTP, AMQP and XMPP side by side through the hub.
    #[cfg(feature = "compare")]
    Compare(CompareArgs),
}

/// `polyhub compare` options.
#[cfg(feature = "compare")]
#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// Protocols to compare, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mqtt,coap,http,amqp,xmpp"
    )]
    protocols: Vec<String>,
    /// Payload sizes in bytes, comma-separated (each at least 16).
    #[arg(long, value_delimiter = ',', default_value = "16,256,1024,4096")]
    sizes: Vec<usize>,
    /// Messages per protocol, size and phase.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Delivery level: 0 at-most-once, 1 acknowledged.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Directory for compare.json, compare.csv and the SVG charts.
    #[arg(long, default_value = "compare-out")]
    out: PathBuf,
    /// RabbitMQ address.
    #[arg(long, default_value = "127.0.0.1:5672")]
    amqp: std::net::SocketAddr,
    /// XMPP server (c2s, plaintext on loopback). Default
    /// 127.0.0.1:$POLYHUB_XMPP_PORT when set, else 127.0.0.1:5222.
    #[arg(long)]
    xmpp: Option<std::net::SocketAddr>,
    /// XMPP domain of the polyhub-cmp-{pub,sub,in,out} accounts.
    #[arg(long, default_value = "localhost")]
    xmpp_domain: String,
    /// Password of those accounts.
    #[arg(long, default_value = "polyhub-cmp")]
    xmpp_password: String,
}

#[cfg(feature = "compare")]
fn compare(args: CompareArgs) -> ExitCode {
    use polyhub::compare;
    let protocols: Result<Vec<compare::Protocol>, _> =
        args.protocols.iter().map(|p| p.parse()).collect();
    let protocols = match protocols {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let defaults = compare::Servers::default();
    let options = compare::Options {
        protocols,
        sizes: args.sizes,
        messages: args.messages,
        acked: args.qos == 1,
        out: Some(args.out.clone()),
        progress: true,
        servers: compare::Servers {
            amqp: args.amqp,
            xmpp: args.xmpp.unwrap_or(defaults.xmpp),
            xmpp_domain: args.xmpp_domain,
            xmpp_password: args.xmpp_password,
            ..defaults
        },
    };
    match compare::run(&options) {
        Ok(report) => {
            print!("{}", report.to_table());
            println!(
                "wrote {0}/compare.json, {0}/compare.csv, {0}/compare-bytes.svg, {0}/compare-overhead.svg, {0}/compare-latency.svg",
                args.out.display()
            );
            if report.rows.is_empty() {
                eprintln!("error: no protocol could be measured");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, coloured only when stderr is a terminal. The filter is
/// `--log-level`, else RUST_LOG, else `-v`/`-vv`, else `default`.
fn init_logging(default: &str, verbose: u8, log_level: Option<&str>) -> Result<(), String> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match log_level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|e| format!("--log-level `{level}`: {e}; expected a level such as info or debug"))?,
        None => match EnvFilter::try_from_default_env() {
            Ok(f) => f,
            Err(_) => EnvFilter::new(match verbose {
                0 => default.to_owned(),
                1 => format!("{default},polyhub=debug,polyhub_sdk=debug,polyhub_mqtt=debug,polyhub_coap=debug,polyhub_http=debug,polyhub_amqp=debug,polyhub_xmpp=debug"),
                _ => "trace".to_owned(),
            }),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `compare` prints a table: only warnings (and no client-library noise
    // about the connections it closes) unless RUST_LOG says otherwise.
    #[cfg(feature = "compare")]
    let quiet = matches!(cli.command, Command::Compare(_));
    #[cfg(not(feature = "compare"))]
    let quiet = false;
    // Ordinary events some libraries log at ERROR, off unless RUST_LOG or
    // --log-level ask for them: lapin logs a clean close ("invalid channel
    // state: Closing") and dumps the server's close frames
    // (`ShortString(...)`), which the AMQP adapter reports itself, with the
    // broker's address, at WARN.
    let default = if quiet {
        "warn,lapin=off"
    } else {
        "info,lapin=off"
    };
    if let Err(e) = init_logging(default, cli.verbose, cli.log_level.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let registry = Registry::builtin();
    match cli.command {
        #[cfg(feature = "compare")]
        Command::Compare(args) => compare(args),
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
        Command::Run { file, config } => {
            let path = file
                .or(config)
                .unwrap_or_else(|| PathBuf::from("polyhub.toml"));
            let config = match Config::load(&path, &registry) {
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
