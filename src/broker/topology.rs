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
use crate::config::{BrokerSettings, Settings};
use crate::job::Priority;

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

/// How often a webhook delivery may be taken by a worker that then stops
/// without settling it (a crash) before the broker moves it to the
/// webhooks' dead-letter queue; a delivery that fails is settled and
/// retried through a wait queue, which does not count.
pub const WEBHOOK_DELIVERY_LIMIT: i64 = 10;

impl Topology {
    /// The topology for `settings` (jobs are allowed `worker.max_attempts`
    /// attempts):
    ///
    /// - the jobs queues, one per priority (`<jobs_queue>.high`,
    ///   `<jobs_queue>`, `<jobs_queue>.low`): quorum, a delivery limit of
    ///   `max_attempts`, and at-least-once dead-lettering into
    /// - the dead-letter queue: quorum;
    /// - the progress exchange (fanout) with the progress queue bound to
    ///   it: quorum too (a classic queue lives on one node, and while that
    ///   node is down nobody could even declare it), keeping the newest
    ///   `progress_queue_max_length` events;
    /// - the unplaced queue, where jobs that waited too long for a capable
    ///   worker arrive (quorum, like the jobs queues), and the requirements
    ///   stream that records the queues of jobs waiting for capable workers
    ///   (see [`crate::capability`]; bounded to 30 days and 10 MB);
    /// - the control exchange (fanout) of `inspect` and `ping`;
    /// - the webhooks queue (quorum, dead-lettering into its own
    ///   dead-letter queue after [`WEBHOOK_DELIVERY_LIMIT`] unsettled
    ///   deliveries) and one wait queue per distinct `webhook.retry_delays`
    ///   entry: quorum, with that delay as message TTL, dead-lettering
    ///   expired messages back into the webhooks queue;
    /// - the uploads queue of S3 event notifications (quorum, the same
    ///   delivery limit, dead-lettering into `<uploads_queue>.dead`, also
    ///   quorum), bound to the uploads exchange (fanout).
    pub fn of(settings: &Settings) -> Topology {
        let s = &settings.broker;
        let max_attempts = settings.worker.max_attempts;
        let quorum = ("x-queue-type", Argument::Text("quorum".into()));
        let mut delays = settings.webhook.retry_delays.clone();
        delays.sort();
        delays.dedup();
        let waits: Vec<QueueSpec> = delays
            .into_iter()
            .map(|delay| QueueSpec {
                name: s.webhooks_wait_queue(delay),
                arguments: vec![
                    quorum.clone(),
                    (
                        "x-message-ttl",
                        Argument::Number(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                    ),
                ]
                .into_iter()
                .chain(dead_lettering_into(&s.webhooks_queue))
                .collect(),
            })
            .collect();
        Topology {
            queues: vec![
                QueueSpec {
                    name: s.dead_letter_queue.clone(),
                    arguments: vec![quorum.clone()],
                },
                QueueSpec {
                    name: s.jobs_queue_for(Priority::High),
                    arguments: jobs_queue_arguments(s, max_attempts),
                },
                QueueSpec {
                    name: s.jobs_queue.clone(),
                    arguments: jobs_queue_arguments(s, max_attempts),
                },
                QueueSpec {
                    name: s.jobs_queue_for(Priority::Low),
                    arguments: jobs_queue_arguments(s, max_attempts),
                },
                QueueSpec {
                    name: s.unplaced_queue(),
                    arguments: jobs_queue_arguments(s, max_attempts),
                },
                QueueSpec {
                    name: s.requirements_stream(),
                    arguments: vec![
                        ("x-queue-type", Argument::Text("stream".into())),
                        ("x-max-age", Argument::Text("30D".into())),
                        ("x-max-length-bytes", Argument::Number(10_000_000)),
                    ],
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
                    arguments: vec![quorum.clone()],
                },
                QueueSpec {
                    name: s.uploads_queue.clone(),
                    arguments: vec![
                        quorum.clone(),
                        (
                            "x-delivery-limit",
                            Argument::Number(i64::from(max_attempts)),
                        ),
                    ]
                    .into_iter()
                    .chain(dead_lettering_into(&s.uploads_dead_letter_queue()))
                    .collect(),
                },
                QueueSpec {
                    name: s.webhooks_dead_queue(),
                    arguments: vec![quorum.clone()],
                },
                QueueSpec {
                    name: s.webhooks_queue.clone(),
                    arguments: vec![
                        quorum.clone(),
                        ("x-delivery-limit", Argument::Number(WEBHOOK_DELIVERY_LIMIT)),
                    ]
                    .into_iter()
                    .chain(dead_lettering_into(&s.webhooks_dead_queue()))
                    .collect(),
                },
            ]
            .into_iter()
            .chain(waits)
            .collect(),
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
    /// Declares the queue of jobs waiting for capable workers `name`.
    pub async fn declare_waiting_queue(
        &self,
        name: &str,
        max_attempts: u32,
    ) -> Result<(), BrokerError> {
        self.declare_queue(
            name,
            field_table(&waiting_queue_arguments(&self.settings, max_attempts)),
        )
        .await
    }

    /// Declares the farm's topology, each queue and exchange on a throwaway
    /// channel, so a mismatch can be reported by name (the broker closes
    /// the channel).
    pub(super) async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        for queue in &topology.queues {
            self.declare_queue(&queue.name, field_table(&queue.arguments))
                .await?;
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

/// Queue arguments as AMQP field table.
fn field_table(arguments: &[(&'static str, Argument)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            Argument::Text(text) => AMQPValue::LongString(text.as_str().into()),
            Argument::Number(n) => AMQPValue::LongLongInt(*n),
        };
        table.insert((*name).into(), value);
    }
    table
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
    let mut arguments = vec![
        ("x-queue-type", Argument::Text("quorum".into())),
        (
            "x-delivery-limit",
            Argument::Number(i64::from(max_attempts)),
        ),
    ];
    arguments.extend(dead_lettering_into(&settings.dead_letter_queue));
    arguments
}

/// The arguments of a quorum queue that dead-letters, at least once,
/// into `queue` (through the default exchange).
fn dead_lettering_into(queue: &str) -> Vec<(&'static str, Argument)> {
    vec![
        ("x-dead-letter-exchange", Argument::Text(String::new())),
        (
            "x-dead-letter-routing-key",
            Argument::Text(queue.to_string()),
        ),
        (
            "x-dead-letter-strategy",
            Argument::Text("at-least-once".into()),
        ),
    ]
}

/// The arguments of a queue of jobs waiting for capable workers: like the
/// jobs queues, but a job that expires in it (after
/// `worker.no_capable_worker_timeout`) is dead-lettered into the unplaced
/// queue, which decides whether it waits again or is given up on.
pub fn waiting_queue_arguments(
    settings: &BrokerSettings,
    max_attempts: u32,
) -> Vec<(&'static str, Argument)> {
    let mut arguments = jobs_queue_arguments(settings, max_attempts);
    for (name, value) in &mut arguments {
        if *name == "x-dead-letter-routing-key" {
            *value = Argument::Text(settings.unplaced_queue());
        }
    }
    arguments
}

#[cfg(test)]
mod tests;
