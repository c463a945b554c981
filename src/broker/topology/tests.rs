//! Unit tests of `topology`.

use super::*;
use crate::config::Settings;

fn defaults() -> Settings {
    let env = [("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::for_broker_from_env(None, &env).unwrap()
}

/// The definitions file shipped for brokers to load at start (and its
/// copy in the puppet module) is the topology of the default settings:
/// regenerate it with `transcode-worker setup --definitions`.
#[test]
fn the_shipped_definitions_file_is_the_default_topology() {
    let s = defaults();
    let generated = Topology::of(&s).definitions("/");
    for (path, text) in [
        (
            "config/rabbitmq-definitions/topology.json",
            include_str!("../../../config/rabbitmq-definitions/topology.json"),
        ),
        (
            "puppet/modules/transcode_worker/files/rabbitmq-definitions/topology.json",
            include_str!(
                "../../../puppet/modules/transcode_worker/files/rabbitmq-definitions/topology.json"
            ),
        ),
    ] {
        let shipped: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            shipped,
            generated,
            "{path} is out of date; regenerate it with `transcode-worker setup --definitions`:\n{}",
            serde_json::to_string_pretty(&generated).unwrap()
        );
    }
}

#[test]
fn every_queue_is_a_quorum_queue_but_the_requirements_stream_and_jobs_dead_letter() {
    let mut s = defaults();
    s.worker.max_attempts = 5;
    let t = Topology::of(&s);
    let stream = s.broker.requirements_stream();
    for q in &t.queues {
        let kind = if q.name == stream { "stream" } else { "quorum" };
        assert!(
            q.arguments
                .contains(&("x-queue-type", Argument::Text(kind.into()))),
            "{q:?}"
        );
    }
    let jobs = t
        .queues
        .iter()
        .find(|q| q.name == "transcoding_jobs")
        .unwrap();
    assert!(jobs
        .arguments
        .contains(&("x-delivery-limit", Argument::Number(5))));
    assert!(jobs.arguments.contains(&(
        "x-dead-letter-routing-key",
        Argument::Text("transcoding_jobs.dead".into())
    )));
    let d = t.definitions("/");
    assert_eq!(d["queues"].as_array().unwrap().len(), t.queues.len());
    assert_eq!(d["bindings"][0]["destination"], "transcoding_progress");
}

#[test]
fn webhooks_wait_in_one_queue_per_delay_and_come_back() {
    let mut s = defaults();
    s.webhook.retry_delays = ["10s", "1m", "1h", "1m", "90s"]
        .iter()
        .map(|d| humantime::parse_duration(d).unwrap())
        .collect();
    let t = Topology::of(&s);
    let queue = |name: &str| {
        t.queues
            .iter()
            .find(|q| q.name == name)
            .unwrap_or_else(|| panic!("no queue {name}"))
    };
    let hooks = queue("transcoding_webhooks");
    assert!(hooks.arguments.contains(&(
        "x-dead-letter-routing-key",
        Argument::Text("transcoding_webhooks.dead".into())
    )));
    queue("transcoding_webhooks.dead");
    let waits: Vec<&QueueSpec> = t
        .queues
        .iter()
        .filter(|q| q.name.starts_with("transcoding_webhooks.wait."))
        .collect();
    let names: Vec<&str> = waits.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "transcoding_webhooks.wait.10s",
            "transcoding_webhooks.wait.1m",
            "transcoding_webhooks.wait.1m30s",
            "transcoding_webhooks.wait.1h"
        ]
    );
    let ninety = queue("transcoding_webhooks.wait.1m30s");
    assert!(ninety
        .arguments
        .contains(&("x-message-ttl", Argument::Number(90_000))));
    assert!(ninety.arguments.contains(&(
        "x-dead-letter-routing-key",
        Argument::Text("transcoding_webhooks".into())
    )));
}

#[test]
fn upload_events_have_a_queue_bound_to_their_exchange_and_dead_letter() {
    let mut s = defaults();
    s.worker.max_attempts = 5;
    let t = Topology::of(&s);
    let uploads = t
        .queues
        .iter()
        .find(|q| q.name == "transcoding_uploads")
        .unwrap();
    assert!(uploads
        .arguments
        .contains(&("x-delivery-limit", Argument::Number(5))));
    assert!(uploads.arguments.contains(&(
        "x-dead-letter-routing-key",
        Argument::Text("transcoding_uploads.dead".into())
    )));
    assert!(t
        .queues
        .iter()
        .any(|q| q.name == "transcoding_uploads.dead"));
    assert!(t.fanouts.contains(&"transcoding.uploads".to_string()));
    assert!(t.bindings.contains(&(
        "transcoding_uploads".to_string(),
        "transcoding.uploads".to_string()
    )));
    // The dead-letter queue is declared before the queue that feeds it.
    let position = |name: &str| t.queues.iter().position(|q| q.name == name).unwrap();
    assert!(position("transcoding_uploads.dead") < position("transcoding_uploads"));
}
