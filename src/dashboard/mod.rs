//! `transcode-worker dashboard`: one page that shows the farm live, and the
//! same data as a JSON API.
//!
//! The dashboard is a client of the broker and of the job history, like
//! `inspect` and `status`: it keeps nothing of its own beyond a broker
//! connection and the last answer of the workers (for one second, so that
//! several open pages ask the workers once), so any number can run, on
//! any machine. Every request reads a bounded amount: at most
//! [`api::MAX_JOBS`] records, [`api::SCAN`] index entries, and
//! [`api::MAX_DEAD_LETTERS`] dead letters; reads of the history run at most
//! [`HISTORY_READS`] at a time.
//!
//! Routes (module [`api`] for the JSON views, [`actions`] for the POSTs):
//! - `GET /` (also `/index.html`), `/app.js`, `/style.css`, `/favicon.svg`:
//!   the page (built into the binary from `src/dashboard/assets/`);
//! - `GET /api/about`, `/api/workers`, `/api/queues`, `/api/jobs?state=&limit=&q=`,
//!   `/api/jobs/{id}`, `/api/dead-letters?limit=`;
//! - `POST /api/jobs`, `/api/jobs/{id}/cancel`, `/api/dead-letters/{id}/requeue`.
//!
//! Safety: every answer carries a Content-Security-Policy that allows only
//! the dashboard's own script and style (no inline script), and the page
//! writes every value with DOM text nodes, never as markup; the actions
//! need the token and a same-origin request (see [`actions`]); no answer
//! holds a secret: the API shows job messages only field by field, without
//! a webhook's secret.

pub mod actions;
pub mod api;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use crate::broker::Broker;
use crate::config::Settings;
use crate::control::{self, Command};
use crate::history::History;
use crate::http::{reply, HttpServer, Reply};
use crate::status::WorkerInfo;

/// Reads of the history served at once (each reads at most
/// [`api::MAX_JOBS`] records): bounds the memory the history can take.
pub const HISTORY_READS: usize = 4;

/// Largest request body accepted (a submitted job), in bytes.
const MAX_BODY: usize = 64 * 1024;

/// How long the workers' answer is reused.
const WORKERS_FRESH: Duration = Duration::from_secs(1);

/// Longest wait for the workers' answers (when a worker that answered last
/// time is missing, or the first time).
const WORKERS_WAIT: Duration = Duration::from_millis(1000);

/// How long the dashboard still listens once every worker that answered
/// last time has answered again (for new ones).
const WORKERS_GRACE: Duration = Duration::from_millis(100);

/// Longest wait for a broker connection.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// What every answer says about how the browser may use it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// An answer that went wrong, as JSON `{"error": "..."}` with its status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// Extra fields of the JSON body (such as `job_id` and `state`).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }

    /// 400: a bad request.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 503: the broker or the storage cannot be reached.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// Adds a field to the JSON body.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> ApiError {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    fn reply(&self) -> Reply {
        let mut body = self.extra.clone();
        body.insert("error".into(), self.message.clone().into());
        json_reply(self.status, &body)
    }
}

/// The result of a route.
pub type Answer = Result<Reply, ApiError>;

/// A JSON answer.
pub fn json_reply(status: StatusCode, value: &impl Serialize) -> Reply {
    let body = serde_json::to_vec(value).expect("a JSON view serializes");
    reply(status, "application/json", body)
}

/// The dashboard's shared parts: settings, the history, the broker
/// connection, the workers' last answer.
#[derive(Debug)]
pub struct Dashboard {
    settings: Settings,
    history: Result<History, String>,
    broker: tokio::sync::Mutex<Option<Arc<Broker>>>,
    workers: Mutex<Option<(Instant, Arc<Vec<WorkerInfo>>)>>,
    asking: tokio::sync::Mutex<()>,
    history_reads: tokio::sync::Semaphore,
}

impl Dashboard {
    /// A dashboard of the farm `settings` describe.
    pub fn new(settings: Settings) -> Dashboard {
        let history = History::from_settings(&settings);
        Dashboard {
            settings,
            history,
            broker: tokio::sync::Mutex::new(None),
            workers: Mutex::new(None),
            asking: tokio::sync::Mutex::new(()),
            history_reads: tokio::sync::Semaphore::new(HISTORY_READS),
        }
    }

    /// Serves the dashboard on `addr` (port 0 picks a free one).
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<HttpServer> {
        let dashboard = Arc::new(self);
        HttpServer::start(addr, move |request| {
            let dashboard = dashboard.clone();
            async move { dashboard.answer(request).await }
        })
        .await
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The history, or 503 with why there is none.
    pub fn history(&self) -> Result<&History, ApiError> {
        self.history.as_ref().map_err(ApiError::unavailable)
    }

    /// Waits for a turn to read the history.
    pub async fn history_turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.history_reads
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// The broker connection, opened (again) when needed; 503 when the
    /// broker cannot be reached.
    pub async fn broker(&self) -> Result<Arc<Broker>, ApiError> {
        let mut slot = self.broker.lock().await;
        if let Some(broker) = slot.as_ref().filter(|b| b.is_connected()) {
            return Ok(broker.clone());
        }
        let opened = tokio::time::timeout(
            CONNECT_WAIT,
            Broker::open(&self.settings.broker, "transcode-worker dashboard"),
        )
        .await;
        let broker = match opened {
            Ok(Ok(broker)) => Arc::new(broker),
            Ok(Err(e)) => return Err(ApiError::unavailable(e.to_string())),
            Err(_) => {
                return Err(ApiError::unavailable(format!(
                    "RabbitMQ at {} did not answer within {CONNECT_WAIT:?}",
                    crate::config::redact_url(&self.settings.broker.url)
                )))
            }
        };
        *slot = Some(broker.clone());
        Ok(broker)
    }

    fn fresh_workers(&self) -> Option<Arc<Vec<WorkerInfo>>> {
        let last = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < WORKERS_FRESH)
            .map(|(_, infos)| infos.clone())
    }

    /// What every live worker says now (through the control exchange);
    /// one question serves every request of the same second.
    pub async fn workers(&self) -> Result<Arc<Vec<WorkerInfo>>, ApiError> {
        if let Some(infos) = self.fresh_workers() {
            return Ok(infos);
        }
        let _asking = self.asking.lock().await;
        if let Some(infos) = self.fresh_workers() {
            return Ok(infos);
        }
        let expected: Vec<String> = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, infos)| infos.iter().map(|w| w.worker.clone()).collect())
            .unwrap_or_default();
        let broker = self.broker().await?;
        let channel = broker
            .open_channel()
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let request = control::Request {
            command: Command::Inspect,
            requires: None,
            job_id: None,
            input: None,
        };
        let all_back = |answers: &[control::Answer]| {
            !expected.is_empty()
                && expected
                    .iter()
                    .all(|w| answers.iter().any(|a| &a.info.worker == w))
        };
        let asked = control::ask_on(
            &channel,
            &self.settings.broker,
            &request,
            WORKERS_WAIT,
            all_back,
            WORKERS_GRACE,
        )
        .await;
        let _ = channel.close(200, "done".into()).await;
        let infos: Arc<Vec<WorkerInfo>> = Arc::new(
            asked
                .map_err(|e| ApiError::unavailable(format!("asking the workers: {e}")))?
                .into_iter()
                .map(|a| a.info)
                .collect(),
        );
        *self.workers.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), infos.clone()));
        Ok(infos)
    }

    /// Answers one request, with the security headers.
    async fn answer(&self, request: Request<Incoming>) -> Reply {
        let mut reply = match self.route(request).await {
            Ok(reply) => reply,
            Err(e) => e.reply(),
        };
        let headers = reply.headers_mut();
        for (name, value) in [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        reply
    }

    async fn route(&self, request: Request<Incoming>) -> Answer {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let read = method == Method::GET || method == Method::HEAD;
        match (segments.as_slice(), read) {
            ([""] | ["index.html"], true) => Ok(asset("text/html; charset=utf-8", INDEX_HTML)),
            (["app.js"], true) => Ok(asset("text/javascript; charset=utf-8", APP_JS)),
            (["style.css"], true) => Ok(asset("text/css; charset=utf-8", STYLE_CSS)),
            (["favicon.svg"], true) => Ok(asset("image/svg+xml", FAVICON_SVG)),
            (["api", "about"], true) => Ok(api::about(self)),
            (["api", "workers"], true) => api::workers(self).await,
            (["api", "queues"], true) => api::queues(self).await,
            (["api", "jobs"], true) => api::jobs(self, &query).await,
            (["api", "jobs", id], true) => api::job(self, id).await,
            (["api", "dead-letters"], true) => api::dead_letters(self, &query).await,
            (["api", "jobs"], false) if method == Method::POST => {
                let body = actions::authorized_body(self, request).await?;
                actions::submit(self, &body).await
            }
            (["api", "jobs", id, "cancel"], false) if method == Method::POST => {
                let id = id.to_string();
                actions::authorized_body(self, request).await?;
                actions::cancel(self, &id).await
            }
            (["api", "dead-letters", id, "requeue"], false) if method == Method::POST => {
                let id = id.to_string();
                actions::authorized_body(self, request).await?;
                actions::requeue(self, &id).await
            }
            _ => Err(not_found_or_not_allowed(&segments, &method)),
        }
    }
}

/// 405 for a known path asked with the wrong method, 404 otherwise.
fn not_found_or_not_allowed(segments: &[&str], method: &Method) -> ApiError {
    let allowed = match segments {
        [""] | ["index.html"] | ["app.js"] | ["style.css"] | ["favicon.svg"] => Some("GET, HEAD"),
        ["api", "about" | "workers" | "queues" | "dead-letters"] | ["api", "jobs", _] => {
            Some("GET, HEAD")
        }
        ["api", "jobs"] => Some("GET, HEAD, POST"),
        ["api", "jobs", _, "cancel"] | ["api", "dead-letters", _, "requeue"] => Some("POST"),
        _ => None,
    };
    match allowed {
        Some(allowed) => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed here (allowed: {allowed})"),
        ),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no such page: the page is /, the API is under /api/ (README, Dashboard)",
        ),
    }
}

fn asset(content_type: &str, body: &'static str) -> Reply {
    reply(StatusCode::OK, content_type, body)
}

/// The body of `request` (at most [`MAX_BODY`] bytes).
async fn read_body(request: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    let limited = Limited::new(request.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// Checks a job id (or dead-letter id) given in a path: 400 when it is
/// not one.
pub fn path_id(id: &str) -> Result<&str, ApiError> {
    crate::job::check_job_id(id)
        .map(|()| id)
        .map_err(|e| ApiError::bad_request(format!("{id:?} is not a job id: {}", e.message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_are_404_and_known_ones_with_another_method_405() {
        let e = not_found_or_not_allowed(&["api", "nope"], &Method::GET);
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = not_found_or_not_allowed(&["api", "jobs", "x", "cancel"], &Method::GET);
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(e.message.contains("POST"), "{}", e.message);
        let e = not_found_or_not_allowed(&["api", "workers"], &Method::DELETE);
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn ids_in_paths_are_job_ids() {
        assert_eq!(path_id("job-1.a:b_c"), Ok("job-1.a:b_c"));
        for bad in ["", "a%20b", "<script>", "a/b", "..%2f"] {
            let e = path_id(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_and_loads_its_own() {
        let tags: Vec<&str> = INDEX_HTML
            .match_indices("<script")
            .map(|(i, _)| &INDEX_HTML[i..])
            .collect();
        assert_eq!(tags.len(), 1, "one script tag");
        assert!(
            tags[0].starts_with("<script src=\"/app.js\""),
            "{}",
            &tags[0][..40]
        );
        let handler = INDEX_HTML.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert_eq!(handler, None, "no inline event handler");
        assert!(!INDEX_HTML.contains("style=\""), "no inline style");
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("outerHTML"));
        assert!(!APP_JS.contains("insertAdjacentHTML") && !APP_JS.contains("document.write"));
        assert!(!APP_JS.contains("eval("));
    }
}
