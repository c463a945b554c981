//! Process signals: the one place that waits for SIGTERM or SIGINT, for the
//! worker's graceful stop and the CLIs' interruption.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Handlers for SIGTERM and SIGINT, installed when made: from then on the
/// signals no longer end the process (as PID 1 in a container, a process
/// without a handler ignores SIGTERM), they are waited for.
#[derive(Debug)]
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Installs the handlers; `None` when they cannot be installed. Call it
    /// inside the runtime, as early as possible.
    pub fn install() -> Option<StopSignals> {
        Some(StopSignals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
        })
    }

    /// Waits for the first SIGTERM or SIGINT and names it.
    pub async fn first(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Waits for the first SIGTERM or SIGINT and names it; never resolves when
/// the handlers cannot be installed.
pub async fn stop_requested() -> &'static str {
    match StopSignals::install() {
        Some(signals) => signals.first().await,
        None => std::future::pending().await,
    }
}

/// A token cancelled by the first SIGTERM or SIGINT (for commands that
/// stop what they follow when interrupted). Call inside the runtime.
pub fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let on_signal = token.clone();
    tokio::spawn(async move {
        stop_requested().await;
        on_signal.cancel();
    });
    token
}
