//! `transcode-worker setup`: declares the farm's queues and exchanges on an
//! existing broker and exits, so that jobs published before any worker
//! ever started are kept; or, with `--definitions`, prints them as a
//! RabbitMQ definitions file for a broker to load at start.

use std::process::ExitCode;

use crate::broker::{Broker, Topology};
use crate::config::Settings;

/// Declares the topology (exit 0 once it is in place), or prints it as
/// definitions for the virtual host `vhost` when `definitions` is set.
pub async fn setup(settings: &Settings, definitions: bool, vhost: &str) -> ExitCode {
    let max_attempts = settings.worker.max_attempts;
    if definitions {
        let topology = Topology::of(&settings.broker, max_attempts);
        let text = serde_json::to_string_pretty(&topology.definitions(vhost))
            .expect("definitions serialize");
        println!("{text}");
        return ExitCode::SUCCESS;
    }
    let b = &settings.broker;
    let timeout = b.connect_timeout * (b.urls().len() as u32 + 1);
    let connect = Broker::connect(b, max_attempts, 1, "transcode-worker setup");
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(broker)) => {
            broker.close().await;
            let topology = Topology::of(b, max_attempts);
            let queues: Vec<&str> = topology.queues.iter().map(|q| q.name.as_str()).collect();
            eprintln!(
                "declared the queues {queues:?} and the exchanges {:?}",
                topology.fanouts
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            tracing::error!("the broker did not answer within {timeout:?}");
            ExitCode::FAILURE
        }
    }
}
