//! Chaos: many short jobs while workers are killed (SIGKILL) or stopped
//! (SIGTERM) and replaced, and the broker is restarted, each fault landing
//! in the middle of an encode. Every job is completed exactly once (one
//! `completed` event per job id), nothing is dead-lettered, every output is
//! valid, the scratch folder ends empty, and each fault is shown to have hit
//! a job mid-encode that another attempt then completed.
//!
//! A fault lands mid-encode by construction: the test holds a worker's
//! pipeline process (SIGSTOP), asks the worker on the control exchange what
//! it is doing (it must say `transcoding`, and which job), and only then
//! kills or stops the worker, or restarts the broker.
//!
//! `short_chaos_run` runs in the default suite (30 jobs, 3 SIGKILLs,
//! 3 SIGTERMs, 1 broker restart). The long run is ignored by default:
//!
//! ```sh
//! scripts/chaos                  # 2,000 jobs, 3 workers, a fault every 2-5 s
//! CHAOS_JOBS=300 scripts/chaos
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use transcode_worker::job::Phase;

use crate::common::farm::{Farm, Rabbit, WorkerProc};
use crate::common::services::{shared_s3, RabbitNode, RabbitOptions};
use crate::common::{fixtures, process_ended, process_name, signal, wait_for};

/// Settings of every worker of a chaos run.
const WORKER_ENV: [(&str, &str); 4] = [
    // A stopped worker whose job is held gives it back after a second.
    ("TRANSCODE_WORKER__DRAIN_TIMEOUT", "1s"),
    ("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s"),
    ("TRANSCODE_BROKER__CONNECT_TIMEOUT", "5s"),
    ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity"),
];

/// About a second of encoding per job (25 frames, 40 ms each).
const TRANSCODE_OPTIONS: &str =
    "identity sleep-time=40000 ! videoconvert ! x264enc speed-preset=ultrafast";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Term,
    BrokerRestart,
}

/// When the faults come.
enum Schedule {
    /// These faults in this order, spread evenly over the jobs.
    Fixed(Vec<Fault>),
    /// A SIGKILL or SIGTERM every `gap` (at random within it), and one
    /// broker restart once a third of the jobs are done.
    Random { gap: std::ops::Range<Duration> },
}

/// A job that a fault hit while the worker said it was transcoding it.
#[derive(Debug, Clone)]
struct Hit {
    fault: Fault,
    worker: String,
    job_id: String,
    attempt: u32,
    /// The held pipeline process.
    pipeline: i32,
    at: SystemTime,
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_run() {
    use Fault::*;
    let schedule = Schedule::Fixed(vec![Kill, Term, Kill, BrokerRestart, Term, Kill, Term]);
    let summary = run_chaos(30, 3, schedule, Duration::from_secs(600)).await;
    println!("{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with scripts/chaos"]
async fn chaos_run() {
    let jobs = env_number("CHAOS_JOBS", 2000);
    let workers = env_number("CHAOS_WORKERS", 3);
    let limit = Duration::from_secs(env_number("CHAOS_TIMEOUT_SECS", 4 * 3600) as u64);
    let schedule = Schedule::Random {
        gap: Duration::from_secs(2)..Duration::from_secs(5),
    };
    let summary = run_chaos(jobs, workers, schedule, limit).await;
    println!("{summary}");
}

/// Runs `jobs` jobs on `workers` workers under `schedule`, checks
/// everything the module promises, and returns the summary line.
async fn run_chaos(jobs: usize, workers: usize, schedule: Schedule, limit: Duration) -> String {
    let started = Instant::now();
    let node = Arc::new(RabbitNode::start(RabbitOptions::default()));
    let mut farm = Farm::s3_on(Rabbit::Own(node.clone()), shared_s3(), &WORKER_ENV).await;
    let input = fixtures::mjpeg_mov(1);
    farm.put_input("in/clip.mov", &input).await;
    let ids: Vec<String> = (0..jobs).map(|i| format!("chaos-{i:05}")).collect();
    for id in &ids {
        farm.publish_job(json!({"job_id": id, "input_key": "in/clip.mov",
            "output_key": format!("out/{id}.mp4"), "transcode_options": TRANSCODE_OPTIONS}))
            .await;
    }

    let mut pool: Vec<WorkerProc> = (0..workers)
        .map(|_| farm.spawn_worker(&WORKER_ENV))
        .collect();
    let mut retired: Vec<WorkerProc> = Vec::new();
    let mut rng = rand::rng();
    let mut hits: Vec<Hit> = Vec::new();
    let mut restart: Vec<Hit> = Vec::new();
    let mut events = Events::default();
    let progress_queue = farm.settings.broker.progress_queue.clone();
    let mut next_fault = 0usize;
    let mut next_random = Instant::now() + Duration::from_secs(2);
    loop {
        // The completed and failed events are persistent and confirmed:
        // the progress queue has them all, across the broker restart.
        events.add(farm.drain_queue(&progress_queue).await);
        let done = events.completed.len();
        let due = match &schedule {
            Schedule::Fixed(faults) => {
                if done == jobs && next_fault == faults.len() {
                    break;
                }
                assert!(
                    done < jobs,
                    "the jobs ran out after {next_fault} of {} faults",
                    faults.len()
                );
                // Fault i once (i + 1) / (n + 3) of the jobs are done.
                faults
                    .get(next_fault)
                    .filter(|_| done * (faults.len() + 3) >= (next_fault + 1) * jobs)
                    .copied()
            }
            Schedule::Random { .. } => {
                if done == jobs {
                    break;
                }
                if restart.is_empty() && done >= jobs / 3 {
                    Some(Fault::BrokerRestart)
                } else if Instant::now() >= next_random {
                    Some(if rng.random_bool(0.5) {
                        Fault::Kill
                    } else {
                        Fault::Term
                    })
                } else {
                    None
                }
            }
        };
        assert!(
            started.elapsed() < limit,
            "{done} of {jobs} jobs completed in {limit:?}; faults so far: {hits:#?}"
        );
        let injected = match due {
            Some(fault @ (Fault::Kill | Fault::Term)) => {
                let faulted = faulted_jobs(&hits, &restart);
                match hold_one_encode(&farm, &pool, &faulted, &mut rng).await {
                    Some((index, pid, job)) => {
                        let worker = &pool[index];
                        let hit = Hit {
                            fault,
                            worker: worker.name.clone(),
                            job_id: job.job_id,
                            attempt: job.attempt,
                            pipeline: pid,
                            at: SystemTime::now(),
                        };
                        worker.signal(if fault == Fault::Kill {
                            libc::SIGKILL
                        } else {
                            libc::SIGTERM
                        });
                        let mut old =
                            std::mem::replace(&mut pool[index], farm.spawn_worker(&WORKER_ENV));
                        let status = old.wait_exit(Duration::from_secs(60)).await;
                        if fault == Fault::Term {
                            assert!(
                                status.success(),
                                "a stopped worker exits 0: {status:?}\n{}",
                                old.logs()
                            );
                        }
                        retired.push(old);
                        hits.push(hit);
                        true
                    }
                    None => false,
                }
            }
            Some(Fault::BrokerRestart) => match hold_every_encode(&farm, &pool).await {
                Some(held) => {
                    let at = SystemTime::now();
                    node.restart();
                    farm.reconnect().await;
                    restart = held
                        .into_iter()
                        .map(|(index, pid, job)| Hit {
                            fault: Fault::BrokerRestart,
                            worker: pool[index].name.clone(),
                            job_id: job.job_id,
                            attempt: job.attempt,
                            pipeline: pid,
                            at,
                        })
                        .collect();
                    true
                }
                None => false,
            },
            None => false,
        };
        if injected {
            next_fault += 1;
            if let Schedule::Random { gap } = &schedule {
                next_random = Instant::now() + rng.random_range(gap.clone());
            }
        }
        // Pacing the loop: every check above is repeated until done.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = |fault| hits.iter().filter(|h| h.fault == fault).count();
    let (kills, terms) = (count(Fault::Kill), count(Fault::Term));
    if let Schedule::Fixed(faults) = &schedule {
        let planned = |fault| faults.iter().filter(|f| **f == fault).count();
        assert_eq!(kills, planned(Fault::Kill));
        assert_eq!(terms, planned(Fault::Term));
    }
    assert!(!restart.is_empty(), "the broker was restarted mid-encode");

    // Stop the workers politely: each removes its own scratch folder.
    for w in &pool {
        w.signal(libc::SIGTERM);
    }
    for w in &mut pool {
        let status = w.wait_exit(Duration::from_secs(60)).await;
        assert!(status.success(), "{status:?}\n{}", w.logs());
    }
    retired.append(&mut pool);
    events.add(farm.drain_queue(&progress_queue).await);

    // Every job completed exactly once.
    let expected: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let seen: BTreeSet<&str> = events.completed.keys().map(String::as_str).collect();
    assert_eq!(seen, expected, "every job completed");
    let twice: Vec<_> = events
        .completed
        .iter()
        .filter(|(_, c)| c.len() != 1)
        .collect();
    assert!(twice.is_empty(), "completed more than once: {twice:#?}");
    let dead = farm.dead_letters().await;
    assert!(
        dead.is_empty(),
        "{} dead letters: {:#?}",
        dead.len(),
        dead.iter().map(|(_, h)| h).collect::<Vec<_>>()
    );

    // Each fault hit a job mid-encode, and another attempt completed it.
    for hit in &hits {
        let completed = &events.completed[&hit.job_id][0];
        assert_ne!(
            completed["worker"], hit.worker,
            "completed by another worker: {hit:#?}\n{completed:#}"
        );
        match hit.fault {
            // A killed attempt counts.
            Fault::Kill => assert!(
                completed["attempt"].as_u64().unwrap() > u64::from(hit.attempt),
                "{hit:#?}\n{completed:#}"
            ),
            // A stopped worker gives its job back, saying why.
            _ => assert!(
                events
                    .failed
                    .iter()
                    .any(|e| e["job_id"] == hit.job_id.as_str()
                        && e["worker"] == hit.worker.as_str()
                        && e["error_kind"] == "shutdown"
                        && e["will_retry"] == true),
                "no give-back event: {hit:#?}"
            ),
        }
    }
    for hit in &restart {
        let completed = &events.completed[&hit.job_id][0];
        let made = humantime::parse_rfc3339(completed["timestamp"].as_str().unwrap()).unwrap();
        assert!(made > hit.at, "completed after the restart: {hit:#?}");
        let logs = retired
            .iter()
            .find(|w| w.name == hit.worker)
            .map(WorkerProc::logs)
            .unwrap_or_default();
        let marker = format!("job_id={} attempt={}", hit.job_id, hit.attempt);
        assert!(
            logs.lines().any(|l| l.contains(&marker)
                && l.contains("the broker connection was lost during the job")),
            "the attempt at the restart was abandoned: {hit:#?}\n{logs}"
        );
    }
    // The held pipeline processes ended with their attempts.
    wait_for(
        Duration::from_secs(30),
        "the held encodes ended",
        || async {
            hits.iter()
                .chain(&restart)
                .all(|h| process_ended(h.pipeline))
        },
    )
    .await;

    // Every output is an H.264 video of the input's duration, with its audio.
    let want = fixtures::probe(&input);
    let want_duration = want.duration.unwrap();
    for id in &ids {
        let out = farm
            .get_output(&format!("out/{id}.mp4"))
            .await
            .unwrap_or_else(|| panic!("no output for {id}"));
        let info = fixtures::probe(&out);
        assert!(
            info.video.len() == 1
                && info.video[0].media_type == "video/x-h264"
                && info.audio.len() == want.audio.len()
                && info
                    .duration
                    .is_some_and(|d| d.abs_diff(want_duration) <= Duration::from_millis(500)),
            "invalid output for {id}: {info:#?}"
        );
        std::fs::remove_file(out).unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(left.is_empty(), "scratch not empty: {left:?}");
    format!(
        "chaos: {jobs} jobs, each completed exactly once, 0 dead-lettered, {jobs} valid outputs, \
         {workers} workers, {kills} SIGKILL and {terms} SIGTERM each mid-encode, \
         1 broker restart with {} encodes running, scratch empty, {:.0} s",
        restart.len(),
        started.elapsed().as_secs_f64()
    )
}

/// The completed and failed events of the run, from the progress queue.
#[derive(Default)]
struct Events {
    completed: BTreeMap<String, Vec<Value>>,
    failed: Vec<Value>,
}

impl Events {
    fn add(&mut self, messages: Vec<(Vec<u8>, std::collections::HashMap<String, String>)>) {
        for (body, _) in messages {
            let event: Value = serde_json::from_slice(&body).unwrap();
            if event["state"] == "completed" {
                let id = event["job_id"].as_str().unwrap().to_string();
                self.completed.entry(id).or_default().push(event);
            } else if event["state"] == "failed" {
                self.failed.push(event);
            }
        }
    }
}

/// Jobs some fault already hit (each job is hit at most once, so that its
/// attempts stay within `max_attempts`).
fn faulted_jobs(hits: &[Hit], restart: &[Hit]) -> BTreeSet<String> {
    hits.iter()
        .chain(restart)
        .map(|h| h.job_id.clone())
        .collect()
}

/// A job as a worker says it is running it.
struct Running {
    job_id: String,
    attempt: u32,
}

/// Holds (SIGSTOP) the pipeline process of `worker` and asks the worker
/// what it is doing: returns the process and the job when the worker says
/// it is transcoding that job (and the process still has it). Otherwise
/// lets the process go on and returns `None`.
async fn hold_encode(farm: &Farm, worker: &WorkerProc) -> Option<(i32, Running)> {
    let pid = *worker.pipelines().first()?;
    signal(pid, libc::SIGSTOP);
    let info = farm.inspect(&worker.name, Duration::from_secs(10)).await;
    let running = info.and_then(|info| {
        let job = info.jobs.first()?;
        (job.phase == Phase::Transcoding).then(|| Running {
            job_id: job.job_id.clone(),
            attempt: job.attempt,
        })
    });
    let still_has_it =
        process_name(pid).as_deref() == Some(transcode_worker::transcoder::RUNNING_NAME);
    match running {
        Some(job) if still_has_it => Some((pid, job)),
        _ => {
            signal(pid, libc::SIGCONT);
            None
        }
    }
}

/// Holds the encode of one worker, at random, whose job no fault hit yet.
async fn hold_one_encode(
    farm: &Farm,
    pool: &[WorkerProc],
    faulted: &BTreeSet<String>,
    rng: &mut impl Rng,
) -> Option<(usize, i32, Running)> {
    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.shuffle(rng);
    for index in order {
        if let Some((pid, job)) = hold_encode(farm, &pool[index]).await {
            if !faulted.contains(&job.job_id) {
                return Some((index, pid, job));
            }
            signal(pid, libc::SIGCONT);
        }
    }
    None
}

/// Holds the encodes of every worker, when every worker is transcoding
/// (so that none is between its `completed` event and its ack when the
/// broker goes away); otherwise holds none.
async fn hold_every_encode(farm: &Farm, pool: &[WorkerProc]) -> Option<Vec<(usize, i32, Running)>> {
    let mut held = Vec::new();
    for (index, worker) in pool.iter().enumerate() {
        match hold_encode(farm, worker).await {
            Some((pid, job)) => held.push((index, pid, job)),
            None => {
                for (_, pid, _) in &held {
                    signal(*pid, libc::SIGCONT);
                }
                return None;
            }
        }
    }
    Some(held)
}
