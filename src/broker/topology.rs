//! The farm's queues, exchanges and bindings on the broker, as one
//! [`Topology`] made from the settings. Every worker declares it at connect
//! (declaring is idempotent; a declaration whose arguments differ from an
//! existing queue's is refused and reported by name); `transcode-worker
//! setup` declares it and exits; and [`Topology::definitions`] writes it
//! as a RabbitMQ definitions file, which a broker loads at start, so that
//! a job published before any worker ever ran is kept.

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{json, Value};

use super::{declare_fanout, Broker, BrokerError};
use crate::config::BrokerSettings;

/// A queue argument's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argument {
    /// A text value.
    Text(String),
    /// A whole number.
    Number(i64),
}

/// A durable queue and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Its name.
    pub name: String,
    /// Its arguments (`x-queue-type` and the rest).
    pub arguments: Vec<(&'static str, Argument)>,
}

/// Everything the farm needs on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Durable queues, in the order they are declared.
    pub queues: Vec<QueueSpec>,
    /// Durable fanout exchanges.
    pub fanouts: Vec<String>,
    /// (queue, exchange) bindings with an empty routing key.
    pub bindings: Vec<(String, String)>,
}

impl Topology {
    /// The topology for `settings`, with jobs allowed `max_attempts`
    /// attempts.
    ///
    /// - the jobs queue: quorum, a delivery limit of `max_attempts`, and
    ///   at-least-once dead-lettering into
    /// - the dead-letter queue: quorum;
    /// - the progress exchange (fanout) with the progress queue bound to
    ///   it: quorum too (a classic queue lives on one node, and while that
    ///   node is down nobody could even declare it), keeping the newest
    ///   `progress_queue_max_length` events;
    /// - the control exchange (fanout) of `inspect` and `ping`;
    /// - the uploads queue of S3 event notifications (quorum, the same
    ///   delivery limit, dead-lettering into `<uploads_queue>.dead`, also
    ///   quorum), bound to the uploads exchange (fanout).
    pub fn of(settings: &BrokerSettings, max_attempts: u32) -> Topology {
        let s = settings;
        let quorum = ("x-queue-type", Argument::Text("quorum".into()));
        Topology {
            queues: vec![
                QueueSpec {
                    name: s.dead_letter_queue.clone(),
                    arguments: vec![quorum.clone()],
                },
                QueueSpec {
                    name: s.jobs_queue.clone(),
                    arguments: jobs_queue_arguments(s, max_attempts),
                },
                QueueSpec {
                    name: s.progress_queue.clone(),
                    arguments: vec![
                        quorum.clone(),
                        (
                            "x-max-length",
                            Argument::Number(i64::from(s.progress_queue_max_length)),
                        ),
                    ],
                },
                QueueSpec {
                    name: s.uploads_dead_letter_queue(),
                    arguments: vec![quorum],
                },
                QueueSpec {
                    name: s.uploads_queue.clone(),
                    arguments: limited_queue_arguments(
                        max_attempts,
                        &s.uploads_dead_letter_queue(),
                    ),
                },
            ],
            fanouts: vec![
                s.progress_exchange.clone(),
                s.control_exchange(),
                s.uploads_exchange.clone(),
            ],
            bindings: vec![
                (s.progress_queue.clone(), s.progress_exchange.clone()),
                (s.uploads_queue.clone(), s.uploads_exchange.clone()),
            ],
        }
    }

    /// The topology as a RabbitMQ definitions document for virtual host
    /// `vhost` (what `load_definitions` in `rabbitmq.conf` reads).
    pub fn definitions(&self, vhost: &str) -> Value {
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let arguments: serde_json::Map<String, Value> = q
                    .arguments
                    .iter()
                    .map(|(name, value)| {
                        let value = match value {
                            Argument::Text(text) => json!(text),
                            Argument::Number(n) => json!(n),
                        };
                        (name.to_string(), value)
                    })
                    .collect();
                json!({"name": q.name, "vhost": vhost, "durable": true,
                       "auto_delete": false, "arguments": arguments})
            })
            .collect();
        let exchanges: Vec<Value> = self
            .fanouts
            .iter()
            .map(|name| {
                json!({"name": name, "vhost": vhost, "type": "fanout", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}})
            })
            .collect();
        let bindings: Vec<Value> = self
            .bindings
            .iter()
            .map(|(queue, exchange)| {
                json!({"source": exchange, "vhost": vhost, "destination": queue,
                       "destination_type": "queue", "routing_key": "", "arguments": {}})
            })
            .collect();
        json!({"vhosts": [{"name": vhost}], "queues": queues, "exchanges": exchanges,
               "bindings": bindings})
    }
}

impl Broker {
    /// Declares the farm's topology, each queue and exchange on a throwaway
    /// channel, so a mismatch can be reported by name (the broker closes
    /// the channel).
    pub(super) async fn declare(&self, max_attempts: u32) -> Result<(), BrokerError> {
        let topology = Topology::of(&self.settings, max_attempts);
        for queue in &topology.queues {
            let mut arguments = FieldTable::default();
            for (name, value) in &queue.arguments {
                let value = match value {
                    Argument::Text(text) => AMQPValue::LongString(text.as_str().into()),
                    Argument::Number(n) => AMQPValue::LongLongInt(*n),
                };
                arguments.insert((*name).into(), value);
            }
            self.declare_queue(&queue.name, arguments).await?;
        }
        for exchange in &topology.fanouts {
            let channel = self
                .connection
                .create_channel()
                .await
                .map_err(|e| self.amqp(e))?;
            declare_fanout(&channel, exchange)
                .await
                .map_err(|e| self.mismatch(&format!("exchange {exchange:?}"), e))?;
            let _ = channel.close(200, "declared".into()).await;
        }
        for (queue, exchange) in &topology.bindings {
            self.publish_channel()
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| self.amqp(e))?;
        }
        Ok(())
    }

    async fn declare_queue(&self, name: &str, arguments: FieldTable) -> Result<(), BrokerError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| self.amqp(e))?;
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .map_err(|e| self.mismatch(&format!("queue {name:?}"), e))?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    fn mismatch(&self, what: &str, e: lapin::Error) -> BrokerError {
        let detail = e.to_string();
        if detail.contains("PRECONDITION_FAILED") || detail.contains("inequivalent") {
            BrokerError::TopologyMismatch {
                what: what.to_string(),
                detail,
            }
        } else {
            self.amqp(e)
        }
    }
}

/// The arguments of the jobs queue: quorum type, a delivery limit of
/// `max_attempts` redeliveries, and at-least-once dead-lettering into the
/// dead-letter queue.
///
/// The limit lets one delivery more through than a worker will attempt:
/// when every allowed attempt ended without a result (each killed its
/// worker), the next worker to get the job dead-letters it at once with a
/// `failed` event; the broker's own limit is the backstop behind that.
pub fn jobs_queue_arguments(
    settings: &BrokerSettings,
    max_attempts: u32,
) -> Vec<(&'static str, Argument)> {
    let mut arguments = limited_queue_arguments(max_attempts, &settings.dead_letter_queue);
    arguments.push(("x-overflow", Argument::Text("reject-publish".into())));
    arguments
}

/// The arguments of a quorum queue whose messages are dead-lettered (at
/// least once) into `dead_letter_queue` after `max_attempts` redeliveries.
fn limited_queue_arguments(
    max_attempts: u32,
    dead_letter_queue: &str,
) -> Vec<(&'static str, Argument)> {
    vec![
        ("x-queue-type", Argument::Text("quorum".into())),
        (
            "x-delivery-limit",
            Argument::Number(i64::from(max_attempts)),
        ),
        ("x-dead-letter-exchange", Argument::Text(String::new())),
        (
            "x-dead-letter-routing-key",
            Argument::Text(dead_letter_queue.to_string()),
        ),
        (
            "x-dead-letter-strategy",
            Argument::Text("at-least-once".into()),
        ),
    ]
}

#[cfg(test)]
mod tests {
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
        let generated = Topology::of(&s.broker, s.worker.max_attempts).definitions("/");
        for (path, text) in [
            (
                "config/rabbitmq-definitions/topology.json",
                include_str!("../../config/rabbitmq-definitions/topology.json"),
            ),
            (
                "puppet/modules/transcode_worker/files/rabbitmq-definitions/topology.json",
                include_str!(
                    "../../puppet/modules/transcode_worker/files/rabbitmq-definitions/topology.json"
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
    fn every_queue_is_a_durable_quorum_queue_and_jobs_dead_letter() {
        let s = defaults();
        let t = Topology::of(&s.broker, 5);
        assert!(t.queues.iter().all(|q| q
            .arguments
            .contains(&("x-queue-type", Argument::Text("quorum".into())))));
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
    fn upload_events_have_a_queue_bound_to_their_exchange_and_dead_letter() {
        let s = defaults();
        let t = Topology::of(&s.broker, 5);
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
}
