//! transcode-worker: a distributed video transcoding worker.
//!
//! Jobs arrive as JSON on a RabbitMQ queue; the worker fetches the input
//! from S3-compatible storage or a shared directory, runs a GStreamer
//! pipeline in a child process, stores the verified output, publishes
//! progress, and acks the job only once the output is safely stored and
//! its final status is published.
//!
//! Layout, one module per concept:
//! - [`cli`]: the `transcode-worker` command line and exit codes;
//! - [`config`]: settings from defaults, a file and the environment;
//! - [`telemetry`]: log set-up;
//! - [`job`]: the job and progress messages;
//! - [`error`]: the error type of an attempt and its disposition;
//! - [`fragment`]: checking the untrusted pipeline fragment;
//! - [`plan`]: what pipeline a job gets (fragment or preset, container);
//! - [`broker`]: RabbitMQ (lapin);
//! - [`storage`]: S3 (rust-s3) and directory backends;
//! - [`pipeline`]: GStreamer (probe, transcode, verify);
//! - [`transcoder`]: the pipeline child process and its protocol;
//! - [`progress`]: progress events of one attempt;
//! - [`signals`]: waiting for SIGTERM and SIGINT;
//! - [`worker`]: the consume, process, settle loop;
//! - [`status`]: the live state of a worker (who, connected, running
//!   attempts, counts), read by the three below;
//! - [`control`]: the control exchange (`inspect`, `ping`);
//! - [`metrics`]: Prometheus metrics and the `/metrics` and `/healthz` server;
//! - [`watch`]: `watch`, live progress for people.

pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod fragment;
pub mod job;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod signals;
pub mod status;
pub mod storage;
pub mod telemetry;
pub mod transcoder;
pub mod watch;
pub mod worker;
