//! Integration tests: one test binary (`cargo test --test integration`), one
//! module per area. Services (RabbitMQ, S3) and fixtures come from
//! `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod chaos;
mod dashboard;
mod deploy;
mod ingest;
mod lifecycle;
mod operate;
mod queue_files;
mod reliability;
mod renditions;
mod routing;
mod security;
mod segment_ranges;
mod segments;
mod smoke;
mod storage;
mod topology;
mod tracks;
mod webhooks;
mod worker;
