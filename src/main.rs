//! The `breakwater` command: run the relay, check a config, drive a running relay.

use anyhow::Context as _;
use breakwater::config::{self, Config};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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
    },
    /// Check a configuration file; print every problem with its key path.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Talk to a running relay's admin API.
    Queue {
        #[command(subcommand)]
        verb: QueueVerb,
        /// Admin API base URL.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9925")]
        admin: String,
    },
}

#[derive(Subcommand)]
enum QueueVerb {
    /// Make every deferred message due now.
    Flush,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { config } => match load(&config) {
            Some(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            None => ExitCode::from(1),
        },
        Command::Queue { verb, admin } => queue(verb, &admin),
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

fn run(path: &std::path::Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::from(1);
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
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

fn queue(verb: QueueVerb, admin: &str) -> ExitCode {
    let (method, path) = match verb {
        QueueVerb::Flush => ("POST", "/api/queue/flush"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(rt) = rt else {
        return ExitCode::from(1);
    };
    match rt.block_on(http(method, admin, path)) {
        Ok((status, body)) if (200..300).contains(&status) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("admin API answered {status}: {body}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("cannot reach the daemon at {admin}: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A minimal HTTP/1.1 request to the admin API.
async fn http(method: &str, base: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let authority = base
        .strip_prefix("http://")
        .context("--admin must be an http:// URL")?
        .trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connect {authority}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
