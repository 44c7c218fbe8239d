//! `keelson`: one binary, a subcommand per role.

mod api;
mod api_cmd;
mod store_cmd;

// Every request and log entry allocates; mimalloc spends fewer cycles on it than the system
// allocator (measured with the `load` benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keelson", version, about = "A container orchestrator whose control plane keeps its own database")]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `raft_store=debug`.
    #[arg(long, global = true, env = "KEELSON_LOG", default_value = "info,openraft=off")]
    log_level: String,
    /// Threads running the async runtime (default: half the CPUs for `store`, all of them for
    /// the commands that serve the Kubernetes API; at least one). A bare store's write path is a
    /// chain of hand-offs, and on a small machine shared with its peers fewer threads mean fewer
    /// cross-thread wake-ups; the API's JSON work is better spread over every CPU.
    #[arg(long, global = true, env = "KEELSON_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one member of the replicated store (etcd v3 API), with etcd-style flags.
    Store(store_cmd::StoreArgs),
    /// Run a store member and a Kubernetes API server beside it.
    Server(api_cmd::ServerArgs),
    /// Run an extra Kubernetes API server over existing store endpoints.
    Apiserver(api_cmd::ApiserverArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("keelson: invalid --log-level {:?}: {e}", cli.log_level);
            return std::process::ExitCode::from(2);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let default_workers = match cli.command {
        Command::Store(_) => cpus / 2,
        Command::Server(_) | Command::Apiserver(_) => cpus,
    };
    let workers = cli.worker_threads.unwrap_or(default_workers).max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keelson: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Store(args) => store_cmd::run(args).await,
            Command::Server(args) => api_cmd::server(args).await,
            Command::Apiserver(args) => api_cmd::apiserver(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelson: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
