//! A transcoding farm for one test: random queue and bucket names on the
//! shared RabbitMQ node and S3 server (so tests run in parallel), worker
//! processes started from the real binary, and observers of the progress
//! exchange and the dead-letter queue.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tempfile::TempDir;
use transcode_worker::broker::Broker;
use transcode_worker::config::Settings;
use transcode_worker::job::{Phase, Progress};
use transcode_worker::status::WorkerInfo;

use super::services::{shared_rabbit, shared_s3, RabbitNode, S3Server};
use super::{random_name, with_timeout, DEFAULT_TIMEOUT};

/// Path of the worker binary built for these tests.
pub const WORKER_BIN: &str = env!("CARGO_BIN_EXE_transcode-worker");

/// The RabbitMQ node a farm uses: the shared one, or a test's own (which
/// the test may stop and restart).
#[derive(Clone)]
pub enum Rabbit {
    /// The node shared by all tests.
    Shared(&'static RabbitNode),
    /// A node of this test only.
    Own(Arc<RabbitNode>),
}

impl std::ops::Deref for Rabbit {
    type Target = RabbitNode;
    fn deref(&self) -> &RabbitNode {
        match self {
            Rabbit::Shared(node) => node,
            Rabbit::Own(node) => node,
        }
    }
}

/// One test's farm.
pub struct Farm {
    /// The broker node.
    pub rabbit: Rabbit,
    /// Environment every worker of this farm gets.
    pub env: HashMap<String, String>,
    /// The bucket, when the farm uses S3.
    pub bucket: Option<Box<s3::Bucket>>,
    /// The storage folder, when the farm uses the directory backend.
    pub store_dir: Option<TempDir>,
    /// Scratch folders and logs.
    pub dir: TempDir,
    /// The test's own broker connection.
    pub conn: Connection,
    /// Settings as the worker sees them.
    pub settings: Settings,
}

impl Farm {
    /// A farm on S3 whose queues and exchanges nobody declared yet: as on
    /// a broker where no worker ever ran.
    pub async fn s3_undeclared(rabbit: Rabbit, extra: &[(&str, &str)]) -> Farm {
        let s3 = shared_s3();
        let bucket = s3.random_bucket().await;
        let mut env = base_env(&rabbit.amqp_url());
        env.insert("AWS_ACCESS_KEY_ID".into(), s3.access_key().into());
        env.insert("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key().into());
        env.insert("AWS_S3_ENDPOINT_URL".into(), s3.endpoint().into());
        env.insert("AWS_REGION".into(), s3.region().into());
        env.insert("S3_BUCKET_NAME".into(), bucket.name());
        Farm::build(rabbit, env, extra, Some(bucket), None, false).await
    }

    /// A farm on S3 with `extra` environment settings for the workers.
    pub async fn s3(extra: &[(&str, &str)]) -> Farm {
        Farm::s3_on(Rabbit::Shared(shared_rabbit()), shared_s3(), extra).await
    }

    /// A farm on the given broker node and S3 server.
    pub async fn s3_on(rabbit: Rabbit, s3: &S3Server, extra: &[(&str, &str)]) -> Farm {
        let bucket = s3.random_bucket().await;
        let mut env = base_env(&rabbit.amqp_url());
        env.insert("AWS_ACCESS_KEY_ID".into(), s3.access_key().into());
        env.insert("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key().into());
        env.insert("AWS_S3_ENDPOINT_URL".into(), s3.endpoint().into());
        env.insert("AWS_REGION".into(), s3.region().into());
        env.insert("S3_BUCKET_NAME".into(), bucket.name());
        Farm::finish(rabbit, env, extra, Some(bucket), None).await
    }

    /// A farm on the directory backend.
    pub async fn directory(extra: &[(&str, &str)]) -> Farm {
        let store = tempfile::tempdir().expect("store dir");
        let rabbit = Rabbit::Shared(shared_rabbit());
        let mut env = base_env(&rabbit.amqp_url());
        env.insert("TRANSCODE_STORAGE__BACKEND".into(), "directory".into());
        env.insert(
            "TRANSCODE_STORAGE__DIRECTORY".into(),
            store.path().display().to_string(),
        );
        Farm::finish(rabbit, env, extra, None, Some(store)).await
    }

    async fn finish(
        rabbit: Rabbit,
        env: HashMap<String, String>,
        extra: &[(&str, &str)],
        bucket: Option<Box<s3::Bucket>>,
        store_dir: Option<TempDir>,
    ) -> Farm {
        Farm::build(rabbit, env, extra, bucket, store_dir, true).await
    }

    async fn build(
        rabbit: Rabbit,
        mut env: HashMap<String, String>,
        extra: &[(&str, &str)],
        bucket: Option<Box<s3::Bucket>>,
        store_dir: Option<TempDir>,
        declare: bool,
    ) -> Farm {
        let dir = tempfile::tempdir().expect("farm dir");
        env.insert(
            "TRANSCODE_WORKER__SCRATCH_DIR".into(),
            dir.path().join("scratch").display().to_string(),
        );
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let settings = Settings::from_env(None, &env).expect("test settings");
        // Declare the topology exactly as a worker does, so jobs published
        // before any worker starts are kept.
        if declare {
            let broker = with_timeout(
                DEFAULT_TIMEOUT,
                "topology declaration",
                Broker::connect(&settings, "test"),
            )
            .await
            .expect("declare topology");
            broker.close().await;
        }
        let conn = connect(&rabbit.amqp_url()).await;
        Farm {
            rabbit,
            env,
            bucket,
            store_dir,
            dir,
            conn,
            settings,
        }
    }

    /// `transcode-worker ARGS` with the farm's environment, as an operator
    /// on another machine would run it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(WORKER_BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "warn")
            .envs(&self.env)
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs `transcode-worker ARGS` to its end (at most `timeout`) off the
    /// async threads.
    pub async fn cli(&self, args: &[&str], timeout: Duration) -> std::process::Output {
        let mut cmd = self.command(args);
        let what = format!("transcode-worker {args:?}");
        tokio::task::spawn_blocking(move || crate::common::run_with_timeout(&mut cmd, timeout))
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Opens a new test connection (after the broker restarted).
    pub async fn reconnect(&mut self) {
        self.conn = connect(&self.rabbit.amqp_url()).await;
    }

    /// Name of the jobs queue.
    pub fn jobs_queue(&self) -> &str {
        &self.settings.broker.jobs_queue
    }

    /// The scratch folder workers use.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    /// Publishes `body` exactly as the original service's pika example does:
    /// default exchange, routing key = jobs queue, no properties.
    pub async fn publish_raw(&self, body: &[u8]) {
        let channel = self.conn.create_channel().await.expect("channel");
        channel
            .basic_publish(
                "".into(),
                self.jobs_queue().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        let _ = channel.close(200, "done".into()).await;
    }

    /// Publishes a job with the given fields (as JSON built by serde_json),
    /// persistent, and waits for the broker's confirm that it is stored.
    pub async fn publish_job(&self, job: serde_json::Value) {
        self.publish_job_to(self.jobs_queue(), job).await
    }

    /// [`publish_job`](Self::publish_job) to `queue` (e.g. the high or low
    /// priority jobs queue).
    pub async fn publish_job_to(&self, queue: &str, job: serde_json::Value) {
        let channel = self.conn.create_channel().await.expect("channel");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                job.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "job not stored"
        );
        let _ = channel.close(200, "done".into()).await;
    }

    /// Puts the local file `path` into storage under `key`.
    pub async fn put_input(&self, key: &str, path: &Path) {
        let data = std::fs::read(path).expect("read fixture");
        if let Some(bucket) = &self.bucket {
            bucket.put_object(key, &data).await.expect("put input");
        } else {
            let dest = self.store_dir.as_ref().expect("store").path().join(key);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(dest, data).unwrap();
        }
    }

    /// Downloads the object `key` into the farm folder; `None` if missing.
    pub async fn get_output(&self, key: &str) -> Option<PathBuf> {
        let dest = self.dir.path().join(format!("got-{}", random_name("out")));
        if let Some(bucket) = &self.bucket {
            match bucket.get_object(key).await {
                Ok(resp) if resp.status_code() == 200 => {
                    std::fs::write(&dest, resp.bytes()).unwrap();
                    Some(dest)
                }
                _ => None,
            }
        } else {
            let src = self.store_dir.as_ref().expect("store").path().join(key);
            std::fs::copy(src, &dest).ok().map(|_| dest)
        }
    }

    /// Whether an object exists under `key`.
    pub async fn output_exists(&self, key: &str) -> bool {
        if let Some(bucket) = &self.bucket {
            matches!(bucket.head_object(key).await, Ok((_, 200)))
        } else {
            self.store_dir
                .as_ref()
                .expect("store")
                .path()
                .join(key)
                .is_file()
        }
    }

    /// Starts a worker process with this farm's environment plus `extra`.
    pub fn spawn_worker(&self, extra: &[(&str, &str)]) -> WorkerProc {
        let name = random_name("worker");
        let log = self.dir.path().join(format!("{name}.log"));
        let file = File::create(&log).expect("log file");
        let mut cmd = Command::new(WORKER_BIN);
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "info,transcode_worker=debug")
            .env("TRANSCODE_WORKER__ID", &name)
            .envs(&self.env)
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd.spawn().expect("start worker");
        WorkerProc { child, log, name }
    }

    /// Starts `transcode-worker ARGS` (a long-running command such as
    /// `ingest`) with this farm's environment plus `extra`, logging JSON
    /// lines (`LOG_FORMAT=json`) to its log file.
    pub fn spawn_command(&self, args: &[&str], extra: &[(&str, &str)]) -> WorkerProc {
        let name = random_name(args.first().copied().unwrap_or("command"));
        let log = self.dir.path().join(format!("{name}.log"));
        let file = File::create(&log).expect("log file");
        let mut cmd = Command::new(WORKER_BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "info,transcode_worker=debug")
            .env("LOG_FORMAT", "json")
            .envs(&self.env)
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd.spawn().expect("start the command");
        WorkerProc { child, log, name }
    }

    /// A consumer on a fresh exclusive queue bound to the progress exchange:
    /// it sees every event from now on without taking any from the
    /// `transcoding_progress` queue.
    pub async fn watch_progress(&self) -> ProgressWatch {
        let channel = self.conn.create_channel().await.expect("channel");
        let (_, consumer) = transcode_worker::broker::private_queue(
            &channel,
            Some(&self.settings.broker.progress_exchange),
            "watch",
        )
        .await
        .expect("a private queue on the progress exchange");
        ProgressWatch {
            _channel: channel,
            consumer,
            seen: Vec::new(),
        }
    }

    /// Takes every message now in the dead-letter queue: body and headers.
    pub async fn dead_letters(&self) -> Vec<(Vec<u8>, HashMap<String, String>)> {
        self.drain_queue(&self.settings.broker.dead_letter_queue.clone())
            .await
    }

    /// Waits up to `timeout` until the dead-letter queue holds a message,
    /// then takes every message in it: body and headers.
    pub async fn wait_dead_letters(
        &self,
        timeout: Duration,
    ) -> Vec<(Vec<u8>, HashMap<String, String>)> {
        super::wait_for_value(timeout, "the dead letter", || async {
            let dead = self.dead_letters().await;
            (!dead.is_empty()).then_some(dead)
        })
        .await
    }

    /// Takes every message now in `queue`.
    pub async fn drain_queue(&self, queue: &str) -> Vec<(Vec<u8>, HashMap<String, String>)> {
        let channel = self.conn.create_channel().await.expect("channel");
        let mut out = Vec::new();
        while let Some(msg) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            let headers = msg
                .delivery
                .properties
                .headers()
                .as_ref()
                .map(headers_to_strings)
                .unwrap_or_default();
            out.push((msg.delivery.data.clone(), headers));
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// The jobs queue as it counts itself (a passive declare;
    /// `rabbitmqctl list_queues` may lag for quorum queues): ready jobs and
    /// consumers.
    pub async fn queue_state(&self) -> (u32, u32) {
        let channel = self.channel().await;
        let queue = channel
            .queue_declare(
                self.jobs_queue().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        let _ = channel.close(200, "done".into()).await;
        (queue.message_count(), queue.consumer_count())
    }

    /// Jobs ready in the jobs queue.
    pub async fn ready_jobs(&self) -> u32 {
        self.queue_state().await.0
    }

    /// Stops `workers` (SIGTERM: each settles what it is doing and exits)
    /// and asserts that the jobs queues are empty: once the workers'
    /// connections are gone, any delivery they had not acked is back in
    /// its queue, so empty queues prove every job was acked.
    pub async fn assert_all_acked(&self, mut workers: Vec<WorkerProc>) {
        let names: Vec<String> = workers
            .iter()
            .map(|w| format!("transcode-worker {}", w.name))
            .collect();
        for worker in &mut workers {
            worker.signal(libc::SIGTERM);
            worker.wait_exit(DEFAULT_TIMEOUT).await;
        }
        drop(workers);
        self.wait_connections_gone(&names).await;
        for queue in self.settings.broker.jobs_queues() {
            let left = self.ready_in(&queue).await;
            assert_eq!(left, 0, "{left} job(s) in {queue} were not acked");
        }
    }

    /// Waits until the broker has no connection named by any of `names`
    /// (a worker's is `transcode-worker <worker id>`): what it held unacked
    /// is back in its queue.
    pub async fn wait_connections_gone(&self, names: &[String]) {
        super::wait_for(DEFAULT_TIMEOUT, "the workers' connections gone", || async {
            let listed = self
                .rabbit
                .try_ctl(&["list_connections", "user_provided_name"])
                .unwrap_or_default();
            !names.iter().any(|n| listed.contains(n.as_str()))
        })
        .await;
    }

    /// A passive declare of `queue` on a channel of its own: what the
    /// broker says of it, or why it refused (no such queue).
    async fn passive_declare(&self, queue: &str) -> Result<lapin::Queue, lapin::Error> {
        let channel = self.channel().await;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "done".into()).await;
        declared
    }

    /// Messages ready in `queue` (a passive declare).
    pub async fn ready_in(&self, queue: &str) -> u32 {
        self.passive_declare(queue)
            .await
            .expect("passive declare")
            .message_count()
    }

    /// The queue of `job_id`'s progress mark (a segmented job's, while
    /// it runs).
    pub fn mark_queue(&self, job_id: &str) -> String {
        format!("{}.mark.{job_id}", self.settings.broker.progress_queue)
    }

    /// Whether the broker has the queue `queue` (a passive declare).
    pub async fn has_queue(&self, queue: &str) -> bool {
        self.passive_declare(queue).await.is_ok()
    }

    /// A channel for ad-hoc checks.
    pub async fn channel(&self) -> Channel {
        self.conn.create_channel().await.expect("channel")
    }

    /// What the worker named `worker` says it is doing, asked on the
    /// control exchange as `transcode-worker inspect` asks; `None` when it
    /// has not answered within `timeout`.
    pub async fn inspect(&self, worker: &str, timeout: Duration) -> Option<WorkerInfo> {
        let channel = self.channel().await;
        let exchange = self.settings.broker.control_exchange();
        transcode_worker::broker::declare_fanout(&channel, &exchange)
            .await
            .expect("control exchange");
        let (reply_queue, mut replies) =
            transcode_worker::broker::private_queue(&channel, None, &random_name("inspect"))
                .await
                .expect("a reply queue");
        let correlation = random_name("ask");
        let request = serde_json::json!({"command": "inspect"}).to_string();
        channel
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                request.as_bytes(),
                BasicProperties::default()
                    .with_reply_to(reply_queue.as_str().into())
                    .with_correlation_id(correlation.as_str().into()),
            )
            .await
            .expect("publish the request");
        let answer = tokio::time::timeout(timeout, async {
            while let Some(Ok(delivery)) = replies.next().await {
                let ours = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .is_some_and(|id| id.as_str() == correlation);
                match serde_json::from_slice::<WorkerInfo>(&delivery.data) {
                    Ok(info) if ours && info.worker == worker => return Some(info),
                    _ => {}
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let _ = channel.close(200, "done".into()).await;
        answer
    }
}

async fn connect(url: &str) -> Connection {
    with_timeout(
        DEFAULT_TIMEOUT,
        "test AMQP connection",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("test connection")
}

fn headers_to_strings(table: &FieldTable) -> HashMap<String, String> {
    table
        .inner()
        .iter()
        .map(|(k, v)| {
            let v = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).to_string(),
                AMQPValue::ShortString(s) => s.to_string(),
                other => format!("{other:?}"),
            };
            (k.to_string(), v)
        })
        .collect()
}

fn base_env(amqp_url: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("AMQP_URL".into(), amqp_url.to_string());
    for (key, prefix) in [
        ("TRANSCODE_BROKER__JOBS_QUEUE", "jobs"),
        ("TRANSCODE_BROKER__PROGRESS_EXCHANGE", "progress-x"),
        ("TRANSCODE_BROKER__PROGRESS_QUEUE", "progress"),
        ("TRANSCODE_BROKER__DEAD_LETTER_QUEUE", "dead"),
        ("TRANSCODE_BROKER__WEBHOOKS_QUEUE", "webhooks"),
        ("TRANSCODE_BROKER__UPLOADS_QUEUE", "uploads"),
        ("TRANSCODE_BROKER__UPLOADS_EXCHANGE", "uploads-x"),
    ] {
        env.insert(key.into(), random_name(prefix));
    }
    // Short delays so retry paths run quickly in tests.
    env.insert("TRANSCODE_WORKER__RETRY_DELAY".into(), "200ms".into());
    env.insert("TRANSCODE_WORKER__RETRY_MAX_DELAY".into(), "1s".into());
    env.insert("TRANSCODE_BROKER__RECONNECT_MAX_DELAY".into(), "2s".into());
    env
}

/// A running worker process; killed when dropped.
pub struct WorkerProc {
    /// The process.
    pub child: Child,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// Its worker id.
    pub name: String,
}

impl WorkerProc {
    /// Process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to the worker.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit; panics with its log after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "worker {} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Process ids of this worker's pipeline processes (one while it
    /// encodes, none otherwise).
    pub fn pipelines(&self) -> Vec<i32> {
        super::pipelines_of(self.pid())
    }

    /// Process ids of this worker's standby pipeline processes (started
    /// ahead, waiting for a job; at most one is alive).
    pub fn standbys(&self) -> Vec<i32> {
        super::named_children_of(self.pid(), transcode_worker::transcoder::STANDBY_NAME)
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.logs());
        }
    }
}

/// Progress events seen on a test's own queue bound to the progress exchange.
pub struct ProgressWatch {
    _channel: Channel,
    consumer: Consumer,
    /// Every event received so far, in order.
    pub seen: Vec<Progress>,
}

impl ProgressWatch {
    /// Waits for the next event.
    pub async fn next(&mut self, timeout: Duration) -> Progress {
        match self.next_within(timeout).await {
            Some(event) => event,
            None => panic!("timed out after {timeout:?} waiting for a progress event"),
        }
    }

    /// The next event, or `None` when none comes within `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Progress> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()?
            .expect("progress consumer ended")
            .expect("progress delivery");
        let event: Progress = serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
            panic!(
                "bad progress event {:?}: {e}",
                String::from_utf8_lossy(&delivery.data)
            )
        });
        self.seen.push(event.clone());
        Some(event)
    }

    /// Waits for the first event that satisfies `pred`, and returns it.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Progress) -> bool,
    ) -> Progress {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await;
            if pred(&event) {
                return event;
            }
        }
    }

    /// Waits until `job_id` (any job if `None`) is more than 5 % into its
    /// encode, and returns that event.
    pub async fn until_encoding(&mut self, job_id: Option<&str>, timeout: Duration) -> Progress {
        self.until(timeout, |e| {
            job_id.is_none_or(|id| e.job_id == id)
                && e.state == Phase::Transcoding
                && e.progress > 5.0
        })
        .await
    }

    /// Waits until `job_id` has reached a final state (completed, failed
    /// without retry, or cancelled) and returns that event.
    pub async fn until_final(&mut self, job_id: &str, timeout: Duration) -> Progress {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                panic!(
                    "job {job_id} did not finish within {timeout:?}; events: {:#?}",
                    self.of(job_id)
                );
            }
            let event = self.next(left).await;
            if event.job_id == job_id && event.ending().is_some() {
                return event;
            }
        }
    }

    /// The events of `job_id` seen so far.
    pub fn of(&self, job_id: &str) -> Vec<Progress> {
        self.seen
            .iter()
            .filter(|e| e.job_id == job_id)
            .cloned()
            .collect()
    }
}
