//! A job's webhook: where its endings are sent, which ones, and the
//! secret that signs them, checked before the job is taken.

use serde::{Deserialize, Serialize};

use super::invalid;
use crate::error::JobError;

/// Longest accepted webhook URL, in bytes.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;
/// Longest accepted webhook secret, in bytes.
pub const MAX_WEBHOOK_SECRET_LEN: usize = 1024;

/// A job's webhook: the URL the worker POSTs a JSON notice to when the job
/// ends, for which endings, and the secret that signs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// An `http://` or `https://` URL, without user name or password.
    pub url: String,
    /// The endings to notify; all three when left out.
    #[serde(default = "WebhookEvent::all")]
    pub events: Vec<WebhookEvent>,
    /// Signs each notice (`X-Transcode-Signature`); never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<WebhookSecret>,
}

/// An ending of a job a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// The output is stored.
    Completed,
    /// The job failed for good (it went to the dead-letter queue).
    Failed,
    /// The job was cancelled.
    Cancelled,
}

impl WebhookEvent {
    /// Every event: what a webhook without `events` is told about.
    pub fn all() -> Vec<WebhookEvent> {
        vec![
            WebhookEvent::Completed,
            WebhookEvent::Failed,
            WebhookEvent::Cancelled,
        ]
    }

    /// The event's word, as in JSON and the `X-Transcode-Event` header.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Completed => "completed",
            WebhookEvent::Failed => "failed",
            WebhookEvent::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A webhook's signing secret. Its `Debug` output is redacted; it is
/// serialized as given (it travels inside the job message).
#[derive(Clone)]
pub struct WebhookSecret(secrecy::SecretString);

impl WebhookSecret {
    /// The secret itself, for signing.
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl From<String> for WebhookSecret {
    fn from(secret: String) -> Self {
        WebhookSecret(secret.into())
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Serialize for WebhookSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for WebhookSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(WebhookSecret::from)
    }
}

impl Webhook {
    /// Checks the URL (`http` or `https`, a host, no user name or
    /// password, at most [`MAX_WEBHOOK_URL_LEN`] bytes), the events (at
    /// least one) and the secret (1 to [`MAX_WEBHOOK_SECRET_LEN`] bytes).
    /// Which hosts a worker may reach is decided when it delivers.
    pub(super) fn check(&self) -> Result<(), JobError> {
        if self.url.len() > MAX_WEBHOOK_URL_LEN {
            return Err(invalid(format!(
                "webhook.url is longer than {MAX_WEBHOOK_URL_LEN} bytes"
            )));
        }
        let url = url::Url::parse(&self.url)
            .map_err(|e| invalid(format!("webhook.url is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "webhook.url must be an http:// or https:// URL, not {}://",
                url.scheme()
            )));
        }
        if url.host().is_none() {
            return Err(invalid("webhook.url has no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "webhook.url must not hold a user name or password (use webhook.secret to sign the notices)".into(),
            ));
        }
        if self.events.is_empty() {
            return Err(invalid(
                "webhook.events is empty; leave it out to be told of every ending".into(),
            ));
        }
        if let Some(secret) = &self.secret {
            let len = secret.expose().len();
            if len == 0 || len > MAX_WEBHOOK_SECRET_LEN {
                return Err(invalid(format!(
                    "webhook.secret must be 1 to {MAX_WEBHOOK_SECRET_LEN} bytes long"
                )));
            }
        }
        Ok(())
    }
}
