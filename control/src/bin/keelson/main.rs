//! `keelson`: one binary, a subcommand per role.

mod agent;
mod apiserver;
mod controller_manager;
mod scheduler;
mod server;
mod store;
mod up;

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
    /// the commands that serve the Kubernetes API; at least one: see `process::worker_threads`).
    #[arg(long, global = true, env = "KEELSON_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one member of the replicated store (etcd v3 API), with etcd-style flags.
    Store(store::StoreArgs),
    /// Run a store member and a Kubernetes API server beside it.
    Server(Box<server::ServerArgs>),
    /// Run an extra Kubernetes API server over existing store endpoints.
    Apiserver(apiserver::ApiserverArgs),
    /// Run a scheduler replica (leader-elected).
    Scheduler(scheduler::SchedulerArgs),
    /// Run a controller manager replica (leader-elected): Deployments, ReplicaSets, …
    ControllerManager(controller_manager::ControllerManagerArgs),
    /// Run a node agent (kubelet); `--runtime hollow` runs many in-memory nodes for scale tests.
    Agent(agent::AgentArgs),
    /// Run a whole single-node cluster (store, API, scheduler, controllers, agent with its own
    /// containerd) under one data directory.
    Up(Box<up::UpArgs>),
}

/// Transparent huge pages off for the process: with them, each fresh or purged-and-reused
/// stretch of the allocator's memory was zeroed 2 MiB at a time, 14% of the CPU of a scheduling
/// benchmark (`sched-load`) spent in the kernel clearing pages, and RSS counted whole huge pages.
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        eprintln!("keelson: cannot disable transparent huge pages: {}", std::io::Error::last_os_error());
    }
}

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    // The one TLS crypto provider, for every server and client in the process.
    let _ = control::pki::crypto_provider().install_default();
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
    let serves_api = !matches!(cli.command, Command::Store(_));
    let workers = control::process::worker_threads(cli.worker_threads, serves_api);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keelson: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Store(args) => store::run(args).await,
            Command::Server(args) => server::server(*args).await,
            Command::Apiserver(args) => apiserver::apiserver(args).await,
            Command::Agent(args) => agent::agent(args).await,
            Command::Up(args) => up::up(*args).await,
            Command::Scheduler(args) => scheduler::scheduler(args).await,
            Command::ControllerManager(args) => controller_manager::controller_manager(args).await,
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
