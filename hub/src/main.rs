//! The `polyhub` command line: `run`, `check`, `passwd`, `compare`.

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
    /// Set a user's password in a password file (like `mosquitto_passwd`):
    /// writes a `$7$` (PBKDF2-SHA512) line, replacing the user's old one,
    /// creating the file (owner-only) if missing. The password is asked
    /// twice on a terminal, else read from the first line of stdin.
    Passwd {
        /// The password file.
        file: PathBuf,
        /// The user name.
        user: String,
        /// The password, on the command line (like `mosquitto_passwd -b`;
        /// visible to other local users in the process list).
        #[arg(short = 'b', long = "batch", value_name = "PASSWORD")]
        password: Option<String>,
        /// PBKDF2 iterations (Mosquitto 2 writes 101).
        #[arg(short = 'I', long, default_value_t = polyhub::auth::password::DEFAULT_ITERATIONS,
              value_parser = clap::value_parser!(u32).range(1..))]
        iterations: u32,
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
        Command::Passwd {
            file,
            user,
            password,
            iterations,
        } => passwd(&file, &user, password, iterations),
        Command::Check { config } => match Config::load(&config, &registry) {
            Ok(c) => {
                let auth = c.auth.as_ref().map_or(String::new(), |a| {
                    let s = a.summary();
                    format!(
                        "; [auth]: {} user(s), ACL for {} user(s), anonymous {}",
                        s.users,
                        s.acl_users,
                        if a.settings().allow_anonymous {
                            "allowed"
                        } else {
                            "refused"
                        }
                    )
                });
                println!(
                    "{}: OK ({} adapter(s): {}; {} route(s){auth})",
                    config.display(),
                    c.adapters.len(),
                    c.adapters
                        .iter()
                        .map(|a| format!("{} ({})", a.entry.name, a.kind))
                        .collect::<Vec<_>>()
                        .join(", "),
                    c.routes.len()
                );
                if let Some(dir) = &c.hub.data_dir {
                    match polyhub::store::describe(dir) {
                        Ok(said) => println!("data_dir {said}"),
                        Err(polyhub::store::StoreError::InUse { path }) => {
                            println!("data_dir {}: in use by a running hub", path.display())
                        }
                        Err(e) => {
                            eprintln!("error: [hub] data_dir: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
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

/// `polyhub passwd FILE USER`.
fn passwd(
    file: &std::path::Path,
    user: &str,
    password: Option<String>,
    iterations: u32,
) -> ExitCode {
    use std::io::IsTerminal;
    if let Err(e) = polyhub::auth::password::check_username(user) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let password = match password {
        Some(p) => p,
        None if std::io::stdin().is_terminal() => {
            let first = rpassword::prompt_password("Password: ");
            let second = rpassword::prompt_password("Reenter password: ");
            match (first, second) {
                (Ok(a), Ok(b)) if a == b => a,
                (Ok(_), Ok(_)) => {
                    eprintln!("error: the passwords do not match");
                    return ExitCode::FAILURE;
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("error: cannot read the password: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("error: cannot read the password from stdin: {e}");
                return ExitCode::FAILURE;
            }
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
    };
    if password.is_empty() {
        eprintln!("error: empty password");
        return ExitCode::FAILURE;
    }
    match polyhub::auth::password::set_password(file, user, password.as_bytes(), iterations) {
        Ok(replaced) => {
            eprintln!(
                "{}: {} user `{user}`",
                file.display(),
                if replaced { "updated" } else { "added" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> ExitCode {
    // Listen before starting: a signal that comes while the hub starts, or
    // while a reload runs, is then waiting here instead of lost (or, for
    // SIGHUP, ending the process).
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hub = match Hub::start(config).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal = loop {
        match signals.next().await {
            "SIGHUP" => {
                if hub.reload_auth().await.is_none() {
                    tracing::info!("Received SIGHUP; there is no [auth] to reload.");
                }
            }
            other => break other,
        }
    };
    tracing::info!(signal, "Received signal; shutting down.");
    match hub.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C, SIGTERM and SIGHUP (reload), listened to for the whole run.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
                _ = self.hup.recv() => "SIGHUP",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
