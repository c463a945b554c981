//! The dashboard's actions: submit a job, cancel one, requeue a dead
//! letter. Each needs ([`authorized_body`]):
//!
//! 1. a token in the settings (`dashboard.token`): without one the
//!    dashboard is read-only and every action answers 403;
//! 2. a same-origin request: a browser's `Sec-Fetch-Site` must be
//!    `same-origin` and its `Origin` must be the dashboard's own (the
//!    `Host` it was asked as); a program that sends neither is not a
//!    browser a page could drive;
//! 3. `Content-Type: application/json`, which a cross-site HTML form
//!    cannot send (and the dashboard answers no CORS preflight): 415;
//! 4. the token, as `Authorization: Bearer TOKEN`: 401 without it or with
//!    another (compared in constant time).

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Request, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{json_reply, path_id, Answer, ApiError, Dashboard};
use crate::broker::RequeueError;
use crate::history::JobState;
use crate::job::{Priority, Webhook};
use crate::operations::{self, Cancel, Submission};

/// Dead letters a requeue looks through at most for the one asked for.
pub const REQUEUE_SCAN: usize = 1000;

/// Who the history says asked, in records and attempt histories.
const BY: &str = "the dashboard";

/// Checks what every action needs (see the module's documentation) and
/// returns the request's body.
pub async fn authorized_body(
    d: &Dashboard,
    request: Request<Incoming>,
) -> Result<Vec<u8>, ApiError> {
    check(d.settings().dashboard.token(), request.headers())?;
    super::read_body(request).await
}

/// The checks of [`authorized_body`] on the headers, given the configured
/// token.
pub fn check(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this dashboard is read-only: no dashboard.token is set (TRANSCODE_DASHBOARD__TOKEN)",
        ));
    };
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let cross = |why: String| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("refused: {why}; actions are taken only from the dashboard's own page"),
        )
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" {
            return Err(cross(format!("the request comes from a {site} page")));
        }
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or_default();
        if !same_authority(&origin, &host) {
            return Err(cross(format!(
                "the request's origin {origin:?} is not this dashboard ({host:?})"
            )));
        }
    }
    let json = text(header::CONTENT_TYPE)
        .and_then(|t| t.split(';').next().map(|m| m.trim().to_ascii_lowercase()))
        .is_some_and(|m| m == "application/json");
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "actions take Content-Type: application/json",
        ));
    }
    let given = text(header::AUTHORIZATION)
        .and_then(|a| a.strip_prefix("Bearer ").map(|t| t.trim().to_string()));
    match given {
        Some(given) if same_secret(&given, token) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the token is not this dashboard's",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "actions need the dashboard's token (Authorization: Bearer TOKEN)",
        )),
    }
}

/// Whether the origin `origin` (`scheme://host[:port]`) names the
/// authority `host` (`host[:port]`, as the Host header gives it).
fn same_authority(origin: &str, host: &str) -> bool {
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    let Some(name) = url.host_str() else {
        return false;
    };
    let authority = match url.port() {
        Some(port) => format!("{name}:{port}"),
        None => name.to_string(),
    };
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// What `POST /api/jobs` takes: the fields of a job message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    input_key: String,
    output_key: String,
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    transcode_options: Option<String>,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    webhook: Option<Webhook>,
}

fn blank_to_none(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// `POST /api/jobs`: publishes a job (201 with its id and queue; 400 when
/// the workers would refuse it).
pub async fn submit(d: &Dashboard, body: &[u8]) -> Answer {
    let request: SubmitRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a job to submit: {e}")))?;
    let submission = Submission {
        input: request.input_key,
        output: request.output_key,
        preset: blank_to_none(request.preset),
        transcode_options: blank_to_none(request.transcode_options),
        job_id: blank_to_none(request.job_id),
        priority: request.priority.unwrap_or(Priority::Normal),
        requires: request.requires,
        webhook: request.webhook,
        segment_seconds: None,
    };
    let checked = submission.check(d.settings()).map_err(|e| {
        ApiError::bad_request(format!("the workers would refuse this job: {}", e.message))
    })?;
    let broker = d.broker().await?;
    let history = d.history().ok();
    let queue = operations::publish(&broker, history, &checked, BY)
        .await
        .map_err(|e| ApiError::unavailable(format!("the broker did not take the job: {e}")))?;
    tracing::info!(job_id = %checked.job.job_id, queue = %queue, "job submitted from the dashboard");
    Ok(json_reply(
        StatusCode::CREATED,
        &serde_json::json!({
            "job_id": checked.job.job_id,
            "queue": queue,
            "state": JobState::Queued,
        }),
    ))
}

/// `POST /api/jobs/{id}/cancel`: 202 when the job is (or will be)
/// cancelled, 404 when unknown, 409 when it has already ended.
pub async fn cancel(d: &Dashboard, id: &str) -> Answer {
    let id = path_id(id)?;
    let history = d.history()?;
    let outcome = operations::cancel(&d.settings().broker, history, id, BY)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot cancel {id}: {e}")))?;
    match outcome {
        Cancel::Unknown => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the farm has no record of job {id}; nothing to cancel"),
        )
        .with("job_id", id)
        .with("state", "unknown")),
        Cancel::Ended(record) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} has already ended ({}); nothing to cancel",
                record.state
            ),
        )
        .with("job_id", id)
        .with("state", record.state.as_str())),
        Cancel::Requested(record) => {
            tracing::info!(job_id = %id, state = %record.state, "cancel requested from the dashboard");
            let message = if record.state == JobState::Running {
                format!(
                    "cancel sent to {}: it stops within seconds",
                    record.worker.as_deref().unwrap_or("its worker")
                )
            } else {
                format!(
                    "cancel requested: it is {} and will be settled as cancelled when a worker reaches it",
                    record.state
                )
            };
            Ok(json_reply(
                StatusCode::ACCEPTED,
                &serde_json::json!({
                    "job_id": id,
                    "state": record.state,
                    "cancel_requested": true,
                    "message": message,
                }),
            ))
        }
    }
}

/// `POST /api/dead-letters/{id}/requeue`: puts the dead letter back into
/// its jobs queue with its history and a fresh set of attempts (200), 404
/// when it is not among the first [`REQUEUE_SCAN`].
pub async fn requeue(d: &Dashboard, id: &str) -> Answer {
    let id = path_id(id)?;
    let broker = d.broker().await?;
    let requeued = broker
        .requeue_dead_letter(id, REQUEUE_SCAN, BY)
        .await
        .map_err(|e| match e {
            RequeueError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string()).with("id", id)
            }
            RequeueError::Broker(_) => ApiError::unavailable(e.to_string()),
        })?;
    tracing::info!(id = %id, queue = %requeued.queue, "dead letter requeued from the dashboard");
    if let (Some(job_id), Ok(history)) = (&requeued.job_id, d.history()) {
        let queue = requeued.queue.clone();
        let recorded = history
            .update(job_id, |r| {
                r.error = None;
                r.error_kind = None;
                r.ended_at = None;
                r.mark(
                    JobState::Queued,
                    None,
                    None,
                    format!("requeued from the dead-letter queue to {queue} by {BY}"),
                );
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!("cannot record the requeue of {job_id} in the history: {e}");
        }
    }
    Ok(json_reply(
        StatusCode::OK,
        &serde_json::json!({
            "id": requeued.id,
            "job_id": requeued.job_id,
            "queue": requeued.queue,
            "state": JobState::Queued,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const OK: &[(&str, &str)] = &[
        ("host", "127.0.0.1:3000"),
        ("origin", "http://127.0.0.1:3000"),
        ("sec-fetch-site", "same-origin"),
        ("content-type", "application/json"),
        ("authorization", "Bearer s3cret"),
    ];

    fn with(change: &[(&str, &str)]) -> HeaderMap {
        let mut h = headers(OK);
        for (k, v) in change {
            let name = header::HeaderName::from_bytes(k.as_bytes()).unwrap();
            if v.is_empty() {
                h.remove(name);
            } else {
                h.insert(name, HeaderValue::from_str(v).unwrap());
            }
        }
        h
    }

    fn status(token: Option<&str>, h: &HeaderMap) -> Option<StatusCode> {
        check(token, h).err().map(|e| e.status)
    }

    #[test]
    fn actions_need_a_token_a_same_origin_json_request_and_the_token() {
        let token = Some("s3cret");
        assert_eq!(status(token, &headers(OK)), None);
        assert_eq!(status(None, &headers(OK)), Some(StatusCode::FORBIDDEN));
        let cases: &[(&[(&str, &str)], StatusCode)] = &[
            (&[("sec-fetch-site", "cross-site")], StatusCode::FORBIDDEN),
            (&[("sec-fetch-site", "same-site")], StatusCode::FORBIDDEN),
            (&[("origin", "http://evil.example")], StatusCode::FORBIDDEN),
            (
                &[("origin", "http://127.0.0.1:3001")],
                StatusCode::FORBIDDEN,
            ),
            (&[("origin", "null")], StatusCode::FORBIDDEN),
            (
                &[("content-type", "application/x-www-form-urlencoded")],
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                &[("content-type", "text/plain")],
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (&[("content-type", "")], StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (&[("authorization", "")], StatusCode::UNAUTHORIZED),
            (
                &[("authorization", "Bearer s3cre")],
                StatusCode::UNAUTHORIZED,
            ),
            (
                &[("authorization", "Basic s3cret")],
                StatusCode::UNAUTHORIZED,
            ),
        ];
        for (change, want) in cases {
            assert_eq!(status(token, &with(change)), Some(*want), "{change:?}");
        }
        // A program (no Origin, no Sec-Fetch-Site) with the token may act.
        let program = with(&[("origin", ""), ("sec-fetch-site", "")]);
        assert_eq!(status(token, &program), None);
        let charset = with(&[("content-type", "application/json; charset=utf-8")]);
        assert_eq!(status(token, &charset), None);
    }

    #[test]
    fn origins_match_hosts_by_authority() {
        assert!(same_authority("http://127.0.0.1:3000", "127.0.0.1:3000"));
        assert!(same_authority("https://dash.example", "dash.example"));
        assert!(same_authority(
            "http://Dash.Example:8080",
            "dash.example:8080"
        ));
        assert!(!same_authority("http://dash.example", "dash.example:8080"));
        assert!(!same_authority("http://a.example", ""));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("", "a"));
    }
}
