//! What every `keelson` process shares: how it is asked to stop, and how its async runtime is
//! sized.

/// Resolves when the process is asked to stop (SIGTERM or SIGINT).
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Threads for the async runtime: `requested` if given, else half the CPUs for a bare store
/// member and all of them for a process that serves the Kubernetes API; at least one. A bare
/// store's write path is a chain of hand-offs, and on a small machine shared with its peers fewer
/// threads mean fewer cross-thread wake-ups; the API's JSON work is better spread over every CPU.
pub fn worker_threads(requested: Option<usize>, serves_api: bool) -> usize {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    requested.unwrap_or(if serves_api { cpus } else { cpus / 2 }).max(1)
}
