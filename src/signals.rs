//! Process signals: the one place that waits for SIGTERM or SIGINT, for the
//! worker's graceful stop and the CLIs' interruption.

use tokio::signal::unix::{signal, SignalKind};

/// Waits for the first SIGTERM or SIGINT and names it; never resolves when
/// the handlers cannot be installed.
pub async fn stop_requested() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
