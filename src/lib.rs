//! transcode-worker: a distributed video transcoding worker.
//!
//! Jobs arrive as JSON on a RabbitMQ queue; the worker fetches the input
//! from S3-compatible storage or a shared directory, runs a GStreamer
//! pipeline in a child process, stores the verified output, publishes
//! progress, and acks the job only once the output is safely stored and
//! its final status is published.
//!
//! # Layers
//!
//! Each module imports only from the layers below its own.
//!
//! 1. **Messages and planning**, pure logic:
//!    [`error`] (the error of an attempt and its disposition),
//!    [`job`] (the job and progress messages, the phases of an attempt),
//!    [`fragment`] (checking untrusted pipeline fragments),
//!    [`config`] (settings from defaults, a file and the environment),
//!    [`rendition`] (what a job makes: its outputs, files or HLS packages,
//!    the encodings of one decode, frame sizes without upscaling),
//!    [`hls`] (HLS playlists as text, the codec names and bandwidths they
//!    give),
//!    [`plan`] (what pipeline a job gets, which elements a worker needs),
//!    [`capability`] (what a worker can run, what a job needs, where a job
//!    waits for a worker that can), [`byte_range`] (what an answer to a
//!    range request of an object says);
//!    and the process basics [`telemetry`] (logs) and [`signals`].
//! 2. **Outside systems**, one module each:
//!    [`broker`] (RabbitMQ through lapin: topology, publishing, a delivered
//!    job and its header protocol),
//!    [`storage`] (S3 through rust-s3, or a directory),
//!    [`pipeline`] (GStreamer: probe, transcode, verify),
//!    [`transcoder`] (the pipeline child process and its protocol),
//!    [`scratch`] (the local scratch folder),
//!    [`history`] (job records in the storage: status, jobs, cancel
//!    requests).
//! 3. **Live state and observation**:
//!    [`metrics`] (the Prometheus registry), [`status`] (the live state of
//!    a worker, counted into the metrics), [`progress`] (the progress
//!    events of one attempt), [`control`] (the control exchange that
//!    `inspect` and `ping` use), [`follow`] (the one follower of progress
//!    events), [`http`] (the small HTTP server), [`terminal`] (bars and
//!    lines for people), [`webhook`] (notices of ended jobs: queued,
//!    signed, delivered).
//! 4. **The worker and the operator commands**:
//!    [`worker`] (session, attempt, settling), [`segment`] (segmented
//!    jobs: plans and cuts, part tasks, their storage objects, the inputs
//!    a worker keeps for their parts), [`ingest`] (jobs made by
//!    uploads: rules, S3 events, listings, markers), [`operations`]
//!    (submitting and cancelling jobs, shared by the commands and the
//!    dashboard), [`dashboard`] (the live page and JSON API),
//!    [`commands`] (one function per command), [`cli`] (the command line).
//!
//! The workspace's other members: `queue-files/` (the CLI that scans a
//! library, uploads and publishes jobs; it uses this library) and
//! `tools/s3-test-server/` (the S3 server the tests and benchmarks run).

#![warn(missing_docs)]
// The modules link to their private parts: the documentation is of an
// application, read with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod broker;
pub mod byte_range;
pub mod capability;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod error;
pub mod follow;
pub mod fragment;
pub mod history;
pub mod hls;
pub mod http;
pub mod ingest;
pub mod job;
pub mod metrics;
pub mod operations;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod rendition;
pub mod scratch;
pub mod segment;
pub mod signals;
pub mod status;
pub mod storage;
pub mod telemetry;
pub mod terminal;
pub mod transcoder;
pub mod webhook;
pub mod worker;
