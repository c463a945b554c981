//! Following progress events: the one follower that `watch`,
//! `queue-files --wait` and any other observer use.
//!
//! A [`Follower`] binds its own server-named, exclusive, auto-delete queue
//! to the progress exchange before anything it wants to see is published,
//! so it misses no event and never takes one from the durable
//! `transcoding_progress` queue (the broker deletes its queue when its
//! connection closes). It follows every job, or only the jobs it is told
//! to [`expect`](Follower::expect), until each of those has ended, a time
//! limit passes, it is interrupted, or the broker is lost; and says which
//! by a [`FollowEnd`].

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{declare_fanout, private_queue, Broker, BrokerError};
use crate::config::BrokerSettings;
use crate::control::{observer_connection, ObserverError};
use crate::job::{Ending, Progress};

/// Which jobs are followed.
#[derive(Debug)]
enum Wanted {
    /// Every job; following ends only on a limit.
    All,
    /// These jobs; following ends when each has ended.
    Only(HashSet<String>),
}

/// What the consumer task hands over.
#[derive(Debug)]
enum Event {
    /// An event of a followed job, with its JSON as published.
    Progress(Box<Progress>, Vec<u8>),
    /// The events stopped coming, and why.
    Lost(String),
}

/// What an observer is shown while following.
#[derive(Debug)]
pub enum Seen<'a> {
    /// A progress event of a followed job, and its JSON as published.
    Event(&'a Progress, &'a [u8]),
    /// A second passed (for observers that show how long a job is silent).
    Tick,
}

/// Why following stopped before every expected job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The time limit passed.
    TimedOut(Duration),
    /// The cancellation token fired (Ctrl-C, SIGTERM).
    Interrupted,
    /// The broker connection or the consumer was lost.
    Lost(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::TimedOut(limit) => {
                write!(f, "gave up after {}", humantime::format_duration(*limit))
            }
            Stop::Interrupted => f.write_str("interrupted"),
            Stop::Lost(why) => write!(f, "lost the progress events from RabbitMQ: {why}"),
        }
    }
}

/// How following ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowEnd {
    /// Jobs seen completing.
    pub completed: usize,
    /// Jobs seen failing for good.
    pub failed: usize,
    /// Jobs seen cancelled.
    pub cancelled: usize,
    /// Expected jobs that had not ended, by id.
    pub unfinished: Vec<String>,
    /// Why it stopped before every expected job ended, if it did.
    pub stopped: Option<Stop>,
}

impl FollowEnd {
    /// Whether every job seen ended well and nothing expected is left.
    pub fn success(&self) -> bool {
        self.failed == 0
            && self.cancelled == 0
            && self.unfinished.is_empty()
            && self.stopped.is_none()
    }
}

/// Follows progress events through a private queue.
pub struct Follower {
    wanted: Arc<Mutex<Wanted>>,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
    /// Its own connection, when it opened one.
    connection: Option<Connection>,
    /// Whether the connection it follows on is still up.
    alive: Box<dyn Fn() -> bool + Send + Sync>,
    /// Expected jobs that have ended.
    ended: HashSet<String>,
}

impl Follower {
    /// Opens a connection of its own named `name` (an observer needs no
    /// other settings than the broker's). It follows no job until told to
    /// [`expect`](Follower::expect) some, or [every
    /// job](Follower::expect_every_job).
    pub async fn open(settings: &BrokerSettings, name: &str) -> Result<Follower, ObserverError> {
        let connection = observer_connection(settings, name).await?;
        let fail = |e: lapin::Error| ObserverError {
            url: crate::config::redact_url(&settings.url),
            detail: e.to_string(),
        };
        let channel = connection.create_channel().await.map_err(fail)?;
        declare_fanout(&channel, &settings.progress_exchange)
            .await
            .map_err(fail)?;
        let tag = format!("follow-{}", std::process::id());
        let (_queue, consumer) = private_queue(&channel, Some(&settings.progress_exchange), &tag)
            .await
            .map_err(fail)?;
        let status = connection.status().clone();
        let mut follower = Follower::with(consumer, move || status.connected());
        follower.connection = Some(connection);
        Ok(follower)
    }

    /// Follows on `broker`'s connection (its consumer named `tag`); it
    /// follows no job until told to [`expect`](Follower::expect) some.
    pub async fn start(broker: &Arc<Broker>, tag: &str) -> Result<Follower, BrokerError> {
        let (_queue, consumer) = broker.consume_progress_events(tag).await?;
        let probe = Arc::downgrade(broker);
        Ok(Follower::with(consumer, move || {
            probe.upgrade().is_some_and(|b| b.is_connected())
        }))
    }

    fn with(
        mut consumer: lapin::Consumer,
        alive: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Follower {
        let wanted = Arc::new(Mutex::new(Wanted::Only(HashSet::new())));
        let (tx, events) = mpsc::unbounded_channel();
        let filter = wanted.clone();
        // Events of jobs nobody follows are dropped here, as they come, so
        // they never pile up while the observer is busy elsewhere.
        let task = tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let delivery = match delivery {
                    Ok(delivery) => delivery,
                    Err(e) => {
                        let _ = tx.send(Event::Lost(e.to_string()));
                        return;
                    }
                };
                let Ok(progress) = serde_json::from_slice::<Progress>(&delivery.data) else {
                    continue;
                };
                let followed = match &*lock(&filter) {
                    Wanted::All => true,
                    Wanted::Only(ids) => ids.contains(&progress.job_id),
                };
                if followed
                    && tx
                        .send(Event::Progress(Box::new(progress), delivery.data))
                        .is_err()
                {
                    return;
                }
            }
            let _ = tx.send(Event::Lost(
                "the broker cancelled the progress consumer".into(),
            ));
        });
        Follower {
            wanted,
            events,
            task,
            connection: None,
            alive: Box::new(alive),
            ended: HashSet::new(),
        }
    }

    /// Follows every job from now on; following then ends only on a
    /// limit (time, interruption, a lost broker).
    pub fn expect_every_job(&self) {
        *lock(&self.wanted) = Wanted::All;
    }

    /// Follows `job_id` (call before publishing it); following ends when
    /// each expected job has ended.
    pub fn expect(&self, job_id: &str) {
        let mut wanted = lock(&self.wanted);
        match &mut *wanted {
            Wanted::All => *wanted = Wanted::Only(HashSet::from([job_id.to_string()])),
            Wanted::Only(ids) => {
                ids.insert(job_id.to_string());
            }
        }
    }

    /// Stops following `job_id` (its publish failed).
    pub fn forget(&self, job_id: &str) {
        if let Wanted::Only(ids) = &mut *lock(&self.wanted) {
            ids.remove(job_id);
        }
    }

    /// The expected jobs that have not ended, sorted.
    fn open_jobs(&self) -> BTreeSet<String> {
        match &*lock(&self.wanted) {
            Wanted::All => BTreeSet::new(),
            Wanted::Only(ids) => ids.difference(&self.ended).cloned().collect(),
        }
    }

    fn following_all(&self) -> bool {
        matches!(*lock(&self.wanted), Wanted::All)
    }

    /// Shows each event of a followed job to `observe`, and a
    /// [`Seen::Tick`] every second, until every expected job has ended
    /// (never, when following all jobs), `timeout` passes, `cancel` fires,
    /// or the events are lost. An expected job that has ended is not shown
    /// again.
    pub async fn follow(
        &mut self,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
        mut observe: impl FnMut(Seen<'_>),
    ) -> FollowEnd {
        let mut end = FollowEnd::default();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if !self.following_all() && self.open_jobs().is_empty() {
                break;
            }
            let timed_out = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(Event::Progress(progress, raw)) => {
                        let all = self.following_all();
                        if !all && self.ended.contains(&progress.job_id) {
                            continue;
                        }
                        observe(Seen::Event(&progress, &raw));
                        match progress.ending() {
                            Some(Ending::Completed) => end.completed += 1,
                            Some(Ending::Failed) => end.failed += 1,
                            Some(Ending::Cancelled) => end.cancelled += 1,
                            None => continue,
                        }
                        if !all {
                            self.ended.insert(progress.job_id.clone());
                        }
                    }
                    Some(Event::Lost(why)) => {
                        end.stopped = Some(Stop::Lost(why));
                        break;
                    }
                    None => {
                        end.stopped = Some(Stop::Lost("the consumer ended".into()));
                        break;
                    }
                },
                _ = tick.tick() => {
                    if !(self.alive)() {
                        end.stopped = Some(Stop::Lost("the connection to RabbitMQ closed".into()));
                        break;
                    }
                    observe(Seen::Tick);
                }
                _ = timed_out => {
                    end.stopped = Some(Stop::TimedOut(timeout.unwrap_or_default()));
                    break;
                }
                _ = cancel.cancelled() => {
                    end.stopped = Some(Stop::Interrupted);
                    break;
                }
            }
        }
        end.unfinished = self.open_jobs().into_iter().collect();
        if self.following_all() && !matches!(end.stopped, Some(Stop::Lost(_))) {
            // Following everything ends only on a limit; that is no failure.
            end.stopped = None;
        }
        end
    }

    /// Stops following and closes its own connection, if it has one.
    pub async fn close(mut self) {
        self.task.abort();
        if let Some(connection) = self.connection.take() {
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("wanted", &self.wanted)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
