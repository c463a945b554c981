//! `transcode-worker run` (the default command): the worker itself, with
//! its `/metrics` and `/healthz` server, until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::HttpServer;
use crate::signals::StopSignals;
use crate::transcoder::Transcoder;
use crate::worker::Worker;

/// Runs a worker with `settings` until a stop signal (then drains) or,
/// with `exit_when_idle`, until no job has come for that long.
pub async fn run(settings: Settings, exit_when_idle: Option<Duration>) -> ExitCode {
    // First of all: a SIGTERM from now on stops the worker gracefully (a
    // Kubernetes preStop hook waits for the metrics port, which opens later).
    let signals = StopSignals::install();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::error!("cannot find the worker's own program: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit_mb = settings.worker.pipeline_memory_limit_mb;
    let listen = settings.metrics.listen_addr();
    let transcoder = Transcoder::new(exe, (limit_mb > 0).then_some(limit_mb << 20));
    let worker = match Worker::new(settings, transcoder, exit_when_idle) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let _http = match listen {
        Some(addr) => match HttpServer::worker(addr, worker.status().clone()).await {
            Ok(server) => {
                tracing::info!(address = %server.addr(), "serving /metrics and /healthz");
                Some(server)
            }
            Err(e) => {
                tracing::error!(address = %addr, error = %e, "cannot serve /metrics and /healthz (metrics.listen); running without them");
                None
            }
        },
        None => None,
    };
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let Some(signals) = signals else {
            return tracing::warn!("cannot handle SIGTERM and SIGINT; a stop will not drain");
        };
        let signal = signals.first().await;
        tracing::info!("{signal}: finishing the running job, taking no new one");
        on_signal.cancel();
    });
    match worker.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
