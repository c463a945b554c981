//! The dashboard's view of the dead-letter queue: the oldest dead letters
//! with their reasons, and of each job message only the fields that are
//! safe to show.

use hyper::StatusCode;
use serde::Serialize;

use super::{limit, params, DEFAULT_DEAD_LETTERS, MAX_DEAD_LETTERS};
use crate::broker::DeadLetterMessage;
use crate::dashboard::{json_reply, Answer, ApiError, Dashboard};

/// A dead letter as the dashboard shows it: the reasons from its headers,
/// and from its job message only what is safe to show (no webhook
/// secret, no webhook URL query).
#[derive(Debug, Serialize)]
pub struct DeadLetterView {
    /// Its reasons, from its headers (without the message).
    #[serde(flatten)]
    pub letter: DeadLetterMessage,
    /// The jobs queue a requeue puts it in.
    pub requeue_to: String,
    /// The job message's fields that are safe to show, when it is JSON.
    pub job: Option<serde_json::Value>,
    /// Size of the job message, bytes.
    pub message_bytes: usize,
}

/// The fields of a job message that may be shown: no webhook secret, and
/// the webhook's URL without its query or fragment (which may carry a
/// token).
pub fn safe_job_fields(body: &[u8]) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let mut shown = serde_json::Map::new();
    for key in [
        "job_id",
        "input_key",
        "input_s3_path",
        "output_key",
        "output_s3_path",
        "preset",
        "transcode_options",
        "priority",
        "requires",
    ] {
        if let Some(v) = object.get(key) {
            shown.insert(key.to_string(), v.clone());
        }
    }
    if let Some(outputs) = object.get("outputs").and_then(|o| o.as_array()) {
        let keys: Vec<serde_json::Value> = outputs
            .iter()
            .filter_map(|o| {
                o.get("output_key")
                    .or_else(|| o.get("output_s3_path"))
                    .cloned()
            })
            .collect();
        shown.insert("outputs".into(), keys.into());
    }
    if let Some(hook) = object.get("webhook").and_then(|w| w.as_object()) {
        let url = hook
            .get("url")
            .and_then(|u| u.as_str())
            .and_then(|u| url::Url::parse(u).ok())
            .map(|mut u| {
                u.set_query(None);
                u.set_fragment(None);
                let _ = u.set_password(None);
                let _ = u.set_username("");
                u.to_string()
            });
        shown.insert(
            "webhook".into(),
            serde_json::json!({
                "url": url,
                "events": hook.get("events"),
                "signed": hook.get("secret").is_some_and(|s| !s.is_null()),
            }),
        );
    }
    Some(shown.into())
}

impl DeadLetterView {
    fn of(m: DeadLetterMessage, settings: &crate::config::BrokerSettings) -> DeadLetterView {
        DeadLetterView {
            requeue_to: m.requeue_queue(settings),
            job: safe_job_fields(&m.body),
            message_bytes: m.body.len(),
            letter: m,
        }
    }
}

/// `GET /api/dead-letters?limit=`: the oldest dead letters with their
/// reasons (left in the queue), and how many there are.
pub async fn dead_letters(d: &Dashboard, query: &str) -> Answer {
    let params = params(query, &["limit"])?;
    let limit = limit(&params, DEFAULT_DEAD_LETTERS, MAX_DEAD_LETTERS)?;
    let broker = d.broker().await?;
    let peeked = broker
        .peek_dead_letters(limit)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let settings = &d.settings().broker;
    let views: Vec<DeadLetterView> = peeked
        .messages
        .into_iter()
        .map(|m| DeadLetterView::of(m, settings))
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &serde_json::json!({
            "queue": settings.dead_letter_queue,
            "total": peeked.total,
            "dead_letters": views,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_view_carries_its_reasons_and_never_the_message() {
        let letter = DeadLetterMessage {
            id: "j".into(),
            job_id: Some("j".into()),
            error: Some("there is no input".into()),
            error_kind: Some("input_not_found".into()),
            attempts: Some(2),
            attempt_history: vec!["attempt 1 failed".into()],
            worker: Some("w".into()),
            failed_at: None,
            original_queue: Some("transcoding_jobs".into()),
            body: br#"{"job_id":"j","webhook":{"url":"https://h/","secret":"s3cret"}}"#.to_vec(),
        };
        let view = DeadLetterView {
            requeue_to: "transcoding_jobs".into(),
            job: safe_job_fields(&letter.body),
            message_bytes: letter.body.len(),
            letter,
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["job_id"], "j");
        assert_eq!(json["error_kind"], "input_not_found");
        assert_eq!(json["attempts"], 2);
        assert_eq!(json["attempt_history"][0], "attempt 1 failed");
        assert_eq!(json["requeue_to"], "transcoding_jobs");
        assert_eq!(json.get("body"), None);
        assert!(!json.to_string().contains("s3cret"), "{json}");
    }

    #[test]
    fn a_dead_letter_shows_no_webhook_secret_nor_url_query() {
        let body = br#"{"job_id":"j","input_key":"in/a.mov","output_key":"o.mp4",
            "webhook":{"url":"https://hooks.example/t?token=abc#x","secret":"s3cret-hook",
            "events":["failed"]},"outputs":[{"output_key":"a.mp4"}],"surprise":"field"}"#;
        let shown = safe_job_fields(body).unwrap();
        let text = shown.to_string();
        assert!(!text.contains("s3cret-hook"), "{text}");
        assert!(!text.contains("token=abc"), "{text}");
        assert!(!text.contains("surprise"), "{text}");
        assert_eq!(shown["webhook"]["url"], "https://hooks.example/t");
        assert_eq!(shown["webhook"]["signed"], true);
        assert_eq!(shown["outputs"], serde_json::json!(["a.mp4"]));
        assert_eq!(shown["input_key"], "in/a.mov");
        assert_eq!(safe_job_fields(b"not json"), None);
    }
}
