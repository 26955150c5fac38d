//! The `herald` binary: `serve`, `token issue`, `org create`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald::config::{Config, Overrides};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: a webhook allocates and frees a whole JSON tree,
/// headers and rows per request, and glibc's malloc was a visible share of that path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "herald", version, about = "Chatbot integration gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server and the fanout workers.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "HERALD_LISTEN")]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Organizations.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// WASM plugins: check and try a component without a server.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a component against the plugin worlds herald supports; exits 0 when usable.
    Check {
        file: PathBuf,
        /// A TOML config file whose [plugins] limits apply.
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run a component on a request body and print the messages it would post, as JSON.
    Run {
        file: PathBuf,
        /// The raw request body, e.g. plugins/<name>/fixtures/<case>.json.
        #[arg(long)]
        request: PathBuf,
        /// A JSON object of header name → value (e.g. <case>.headers.json).
        #[arg(long)]
        headers: Option<PathBuf>,
        /// The robot's config, as key=value; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// A TOML config file whose [plugins] limits apply.
        #[arg(long = "config-file", env = "HERALD_CONFIG")]
        config_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a bearer token for a user on stdout.
    Issue {
        /// Org name or id.
        #[arg(long, default_value = "default")]
        org: String,
        /// User name or id.
        #[arg(long, default_value = "admin")]
        user: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an org with an admin user named `admin`; prints its ids as JSON.
    Create {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where the store is; shared by every subcommand.
#[derive(Args, Clone)]
struct StoreArgs {
    /// Directory of the embedded SQLite store [default: ./herald-data].
    #[arg(long, env = "HERALD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// postgres://… to use PostgreSQL instead of SQLite.
    #[arg(long, env = "HERALD_DATABASE_URL")]
    database_url: Option<String>,
    /// A TOML config file (see README, Configuration).
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
}

impl StoreArgs {
    fn load(&self, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
        let overrides = Overrides {
            listen,
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone().filter(|u| !u.is_empty()),
            outgoing_allow_cidrs: std::env::var("HERALD_OUTGOING_ALLOW_CIDRS").ok(),
        };
        Config::load(self.config.as_deref(), &overrides)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Plugin { command } = &cli.command {
        return plugin_command(command);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
                .unwrap_or_else(|_| "herald=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve { listen, store } => serve(store.load(listen)?).await,
            Command::Token {
                command: TokenCommand::Issue { org, user, store },
            } => issue_token(store.load(None)?, &org, &user).await,
            Command::Org {
                command: OrgCommand::Create { name, store },
            } => create_org(store.load(None)?, &name).await,
            Command::Plugin { .. } => unreachable!("handled before the runtime starts"),
        }
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let _lock = if config.uses_postgres() {
        None
    } else {
        Some(lock_data_dir(&config)?)
    };
    let (store, boot) = herald::open_store(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let backend = if config.uses_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    println!("herald listening on http://{addr} ({backend})");
    tracing::info!(%addr, backend, "herald started");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    herald::run(config, store, &boot.signing_key, listener, shutdown).await
}

/// One server per SQLite file: a second `serve` on the same data dir fails fast.
fn lock_data_dir(config: &Config) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&config.data_dir)?;
    let path = config.data_dir.join("herald.lock");
    let file = std::fs::File::create(&path)?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another herald is serving {}; one server per data dir",
            config.data_dir.display()
        )
    })?;
    Ok(file)
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

async fn issue_token(config: Config, org: &str, user: &str) -> anyhow::Result<()> {
    let (store, boot) = herald::open_store(&config).await?;
    let org = store.find_org(org).await.context("finding the org")?;
    let user = store
        .find_user(org.id, user)
        .await
        .context("finding the user")?;
    anyhow::ensure!(user.active, "user {} is deactivated", user.id);
    let keys = herald::auth::Keys::new(&boot.signing_key, config.auth.token_ttl_seconds);
    println!("{}", keys.issue(&user)?.token);
    Ok(())
}

async fn create_org(config: Config, name: &str) -> anyhow::Result<()> {
    let (store, _) = herald::open_store(&config).await?;
    let (org, admin) = store.create_org(name).await?;
    println!(
        "{}",
        serde_json::json!({"org_id": org.id, "name": org.name, "admin_user_id": admin.id})
    );
    Ok(())
}

/// `herald plugin …`: no store, no async runtime; the plugin runs on this thread.
fn plugin_command(command: &PluginCommand) -> anyhow::Result<()> {
    use herald::plugin::cli;
    let settings = |file: &Option<PathBuf>| -> anyhow::Result<_> {
        Ok(Config::load(file.as_deref(), &Overrides::default())?.plugins)
    };
    let output = match command {
        PluginCommand::Check { file, config } => cli::check(&settings(config)?, file)?,
        PluginCommand::Run {
            file,
            request,
            headers,
            settings: pairs,
            config_file,
        } => {
            let args = cli::RunArgs {
                file,
                request,
                headers: headers.as_deref(),
                config: pairs,
            };
            serde_json::to_value(cli::run(&settings(config_file)?, &args)?)?
        }
    };
    print_or_quit(&serde_json::to_string_pretty(&output)?)
}

/// Prints a CLI result. A reader that went away (`herald plugin run … | head`) ends the
/// command quietly instead of panicking in `println!`.
fn print_or_quit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
