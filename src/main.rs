//! The `breakwater` command: run the relay, check a config, drive a running relay.

use anyhow::Context as _;
use breakwater::config::{self, Config};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "breakwater",
    version,
    about = "Store-and-forward SMTP continuity relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log format, overriding `log.format`: text or json.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Check a configuration file; print every problem with its key path.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Backends (up or down, in a window), the gate, queue depth and oldest age.
    Status {
        #[command(flatten)]
        daemon: cli::Daemon,
    },
    /// See and steer the queue (like postqueue and postsuper).
    Queue {
        #[command(subcommand)]
        verb: cli::QueueVerb,
        #[command(flatten)]
        daemon: cli::Daemon,
    },
    /// Ad-hoc quiet-time windows (declared maintenance), beside the configured ones.
    Quiet {
        #[command(subcommand)]
        verb: cli::QuietVerb,
        #[command(flatten)]
        daemon: cli::Daemon,
    },
    /// Deliver retained mail again (after the backend was restored from a backup).
    Replay {
        #[command(flatten)]
        args: cli::ReplayArgs,
        #[command(flatten)]
        daemon: cli::Daemon,
    },
    /// Write retained and queued mail to an mbox or a maildir.
    Export {
        #[command(flatten)]
        args: cli::ExportArgs,
        #[command(flatten)]
        daemon: cli::Daemon,
    },
    /// Read a password on stdin, print an argon2id PHC string for
    /// `mailbox_access[N].password_hash`.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with 0; a usage error is exit 1
            // (2 means "daemon unreachable" in the CLI contract).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run { config, log_format } => run(&config, log_format.as_deref()),
        Command::CheckConfig { config } => match load(&config) {
            Some(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            None => ExitCode::from(1),
        },
        Command::Status { daemon } => cli::status(&daemon),
        Command::Queue { verb, daemon } => cli::queue(verb, &daemon),
        Command::Quiet { verb, daemon } => cli::quiet(verb, &daemon),
        Command::Replay { args, daemon } => cli::replay(args, &daemon),
        Command::Export { args, daemon } => cli::export(args, &daemon),
        Command::HashPassword => hash_password(),
    }
}

/// `breakwater hash-password`: one line from stdin (its line end removed).
fn hash_password() -> ExitCode {
    use std::io::{IsTerminal as _, Read as _};
    if std::io::stdin().is_terminal() {
        eprint!("Password (shown as typed): ");
    }
    let mut line = Vec::new();
    let mut stdin = std::io::stdin().lock().take(64 * 1024);
    let mut byte = [0u8; 1];
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("breakwater: cannot read the password from stdin: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let Ok(password) = String::from_utf8(line) else {
        eprintln!("breakwater: the password is not UTF-8 text");
        return ExitCode::from(1);
    };
    if password.is_empty() {
        eprintln!(
            "breakwater: refusing an empty password: type it and press Enter, or pipe it in (printf '%s\\n' \"$PASSWORD\" | breakwater hash-password)"
        );
        return ExitCode::from(1);
    }
    match breakwater::admin::mail::hash_password(&password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("breakwater: {e}");
            ExitCode::from(1)
        }
    }
}

/// Loads a config, printing every problem (with key paths) to stderr on failure.
fn load(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(config::Error::Invalid(problems)) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            None
        }
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

fn run(path: &std::path::Path, log_format: Option<&str>) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::from(1);
    };
    let json = match log_format {
        Some(f) => f == "json",
        None => config.log.format == config::LogFormat::Json,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log line that cannot be written (the log's file system is full, stderr
    // is closed) is dropped: by default the fmt layer reports the failure with
    // eprintln!, which panics when stderr cannot be written, and that would
    // kill whichever task or thread was logging (a delivery, the journal's
    // writer). Losing log lines must never stop mail.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    if json {
        logs.json().with_current_span(false).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        let listeners = breakwater::Listeners::bind(&config).await?;
        let shutdown = async {
            breakwater::shutdown::signal().await;
            // A second signal exits at once; the journal stays consistent
            // because every commit is atomic.
            tokio::spawn(async {
                breakwater::shutdown::signal().await;
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            });
        };
        breakwater::run(config, listeners, shutdown)
            .await
            .context("journal")?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("breakwater: {e:#}");
            ExitCode::from(1)
        }
    }
}
