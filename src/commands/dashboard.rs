//! `transcode-worker dashboard`: serves the farm's live page and JSON API
//! (see [`crate::dashboard`]) until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::config::Settings;
use crate::dashboard::Dashboard;

/// `dashboard`: serves on `listen` (else `dashboard.listen`) until
/// interrupted; 0 then, 1 when the address cannot be listened on.
pub async fn dashboard(settings: Settings, listen: Option<SocketAddr>) -> ExitCode {
    let Some(addr) = listen.or_else(|| settings.dashboard.listen_addr()) else {
        tracing::error!("dashboard.listen is not an IP:port address");
        return ExitCode::from(2);
    };
    let stop = crate::signals::interrupt_token();
    let actions = settings.dashboard.token().is_some();
    let server = match Dashboard::new(settings).serve(addr).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("http://{}/", server.addr());
    if actions {
        tracing::info!(addr = %server.addr(), "dashboard on {url} (actions need the token)");
    } else {
        tracing::info!(addr = %server.addr(), "dashboard on {url}, read-only (no dashboard.token set)");
    }
    stop.cancelled().await;
    tracing::info!("dashboard stopping");
    drop(server);
    ExitCode::SUCCESS
}
