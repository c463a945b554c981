//! The rules file of `transcode-worker ingest`: which new objects make
//! which jobs. TOML, one `[[rule]]` table per rule:
//!
//! ```toml
//! [[rule]]
//! prefix = "uploads/"            # which new objects it matches
//! suffix = ".mov"                # optional; case-insensitive
//! fan_out = true                 # one job per output (the default), or one job with all outputs
//! outputs = [
//!   { output_key = "renditions/720p/{stem}.mp4",  preset = "h264-720p" },
//!   { output_key = "renditions/1080p/{stem}.mp4", preset = "h264-1080p" },
//! ]
//! ```
//!
//! An output key is a template with the placeholders `{key}` (the whole
//! key), `{dir}` (its folder, without the last `/`), `{name}` (the file
//! name) and `{stem}` (the file name without its extension). A rule may
//! also set `priority`, `segment_seconds` and `webhook`, which are passed
//! on in its jobs.
//!
//! The file is checked as a whole when it is loaded, with errors that name
//! the rule and the field: an unknown placeholder, a rule without outputs,
//! and every job a rule would make is planned as a worker with the same
//! settings plans it (so an unknown preset, a refused fragment, a container
//! the worker does not write or a key outside the allowed prefixes is
//! found before any object is looked at).

use crate::job::{Priority, Webhook};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::INTERNAL_PREFIX;
use crate::config::Settings;
use crate::job::{Job, MAX_KEY_LEN};

/// A rules file that cannot be used, with what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RulesError(pub String);

/// The checked rules, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// One rule: which objects it matches and the jobs each one makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its place in the file, from 1.
    pub number: usize,
    /// Keys it matches start with this.
    pub prefix: String,
    /// Keys it matches end with this, ignoring case.
    pub suffix: Option<String>,
    /// One job per output (`true`), or one job listing every output.
    pub fan_out: bool,
    /// What each matched object is made into.
    pub outputs: Vec<Output>,
    /// Each job's priority: the queue it goes to.
    pub priority: Option<Priority>,
    /// Passed on in each job as `segment_seconds`.
    pub segment_seconds: Option<f64>,
    /// Each job's webhook.
    pub webhook: Option<Webhook>,
}

/// One output of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Where it is stored, as a template of the input's key.
    pub output_key: Template,
    /// The preset it is made with (the worker's default when neither
    /// this nor `transcode_options` is given).
    pub preset: Option<String>,
    /// The pipeline fragment it is made with.
    pub transcode_options: Option<String>,
}

/// A key template: text with `{key}`, `{dir}`, `{name}` and `{stem}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Key,
    Dir,
    Name,
    Stem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

/// The placeholders a template may use, as written.
pub const PLACEHOLDERS: &[&str] = &["{key}", "{dir}", "{name}", "{stem}"];

/// The rules file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    #[serde(default)]
    rule: Vec<RuleText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleText {
    prefix: String,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default = "fan_out_default")]
    fan_out: bool,
    #[serde(default)]
    outputs: Vec<OutputText>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    segment_seconds: Option<f64>,
    #[serde(default)]
    webhook: Option<Webhook>,
}

fn fan_out_default() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputText {
    output_key: String,
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    transcode_options: Option<String>,
}

impl Rules {
    /// Reads and checks the rules file at `path` for a farm with `settings`.
    pub fn load(path: &Path, settings: &Settings) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RulesError(format!(
                "cannot read the rules file {}: {e}",
                path.display()
            ))
        })?;
        Rules::parse(&text, settings)
            .map_err(|e| RulesError(format!("rules file {}: {e}", path.display())))
    }

    /// Parses and checks rules from `text` for a farm with `settings`.
    pub fn parse(text: &str, settings: &Settings) -> Result<Rules, RulesError> {
        let file: FileText =
            toml::from_str(text).map_err(|e| RulesError(e.to_string().trim_end().to_string()))?;
        if file.rule.is_empty() {
            return Err(RulesError(
                "there is no rule: add a [[rule]] table with a prefix and outputs".into(),
            ));
        }
        let rules = file
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, text)| Rule::check(i + 1, text, settings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rules { rules })
    }

    /// Every rule, in file order.
    pub fn all(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules that match `key`, in file order.
    pub fn matching<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |rule| rule.matches(key))
    }

    /// The prefixes to list to find every object some rule matches: each
    /// rule's prefix, less those another listed prefix already covers.
    pub fn list_prefixes(&self) -> Vec<&str> {
        let mut prefixes: Vec<&str> = self.rules.iter().map(|r| r.prefix.as_str()).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        let all = prefixes.clone();
        prefixes.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
        prefixes
    }
}

impl Rule {
    /// Whether this rule matches `key` (its prefix, and its suffix
    /// ignoring case). Keys under the farm's own prefix never match.
    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
            && !key.starts_with(INTERNAL_PREFIX)
            && self
                .suffix
                .as_ref()
                .is_none_or(|suffix| key.to_lowercase().ends_with(&suffix.to_lowercase()))
    }

    fn check(number: usize, text: RuleText, settings: &Settings) -> Result<Rule, RulesError> {
        let name = format!("rule {number} (prefix {:?})", text.prefix);
        let fail = |field: &str, problem: String| RulesError(format!("{name}: {field}: {problem}"));
        if text.prefix.chars().any(char::is_control) || text.prefix.len() > MAX_KEY_LEN {
            return Err(fail(
                "prefix",
                format!("must be at most {MAX_KEY_LEN} bytes without control characters"),
            ));
        }
        if text.prefix.starts_with(INTERNAL_PREFIX) {
            return Err(fail(
                "prefix",
                format!("{INTERNAL_PREFIX} holds the farm's own records and is never ingested"),
            ));
        }
        if let Some(suffix) = &text.suffix {
            if suffix.is_empty() || suffix.chars().any(char::is_control) {
                return Err(fail(
                    "suffix",
                    "must be a non-empty text without control characters (leave it out to match any key)"
                        .into(),
                ));
            }
        }
        if text.outputs.is_empty() {
            return Err(fail(
                "outputs",
                "the rule has no outputs: list at least one { output_key = \"...\", preset = \"...\" }"
                    .into(),
            ));
        }
        let priority = match text.priority.as_deref().map(str::parse::<Priority>) {
            None => None,
            Some(Ok(priority)) => Some(priority),
            Some(Err(e)) => return Err(fail("priority", e)),
        };
        if let Some(seconds) = text.segment_seconds {
            if !(seconds.is_finite() && seconds > 0.0) {
                return Err(fail(
                    "segment_seconds",
                    format!("{seconds} must be a number of seconds above 0"),
                ));
            }
        }
        if let Some(webhook) = &text.webhook {
            if !(webhook.url.starts_with("http://") || webhook.url.starts_with("https://")) {
                return Err(fail(
                    "webhook",
                    format!("{:?} is not an http:// or https:// URL", webhook.url),
                ));
            }
        }
        let mut outputs: Vec<Output> = Vec::new();
        for (i, output) in text.outputs.into_iter().enumerate() {
            let field = format!("output {}", i + 1);
            let template = Template::parse(&output.output_key)
                .map_err(|e| fail(&format!("{field}, output_key"), e))?;
            if output.preset.is_some() && output.transcode_options.is_some() {
                return Err(fail(
                    &field,
                    "give either preset or transcode_options, not both".into(),
                ));
            }
            if outputs.iter().any(|o| o.output_key == template) {
                return Err(fail(
                    &format!("{field}, output_key"),
                    format!("{:?} is already the key of another output", template.text),
                ));
            }
            outputs.push(Output {
                output_key: template,
                preset: output.preset,
                transcode_options: output.transcode_options,
            });
        }
        let rule = Rule {
            number,
            prefix: text.prefix,
            suffix: text.suffix,
            fan_out: text.fan_out,
            outputs,
            priority,
            segment_seconds: text.segment_seconds,
            webhook: text.webhook,
        };
        rule.check_with_worker(settings)
            .map_err(|(i, problem)| fail(&format!("output {}", i + 1), problem))?;
        Ok(rule)
    }

    /// Plans the job of each output for an example key this rule matches,
    /// as a worker with `settings` plans it; the first refusal is returned
    /// with the output's index.
    fn check_with_worker(&self, settings: &Settings) -> Result<(), (usize, String)> {
        let example = format!(
            "{}example{}",
            self.prefix,
            self.suffix.as_deref().unwrap_or(".mov")
        );
        for (i, output) in self.outputs.iter().enumerate() {
            let output_key = output.output_key.expand(&example);
            if output_key.starts_with(INTERNAL_PREFIX) {
                return Err((
                    i,
                    format!(
                        "output_key {:?} is under {INTERNAL_PREFIX}, which holds the farm's own records",
                        output.output_key.text
                    ),
                ));
            }
            let job = Job {
                job_id: "rules-check".into(),
                input_key: example.clone(),
                output_key,
                transcode_options: output.transcode_options.clone(),
                preset: output.preset.clone(),
                source: None,
                outputs: None,
                segment_seconds: None,
                priority: None,
                requires: Vec::new(),
                webhook: None,
            };
            crate::plan::plan(&job, settings).map_err(|e| {
                (
                    i,
                    format!("a worker would refuse its jobs (for a key such as {example:?}): {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// `rule N (prefix "...")`, for messages.
    pub fn describe(&self) -> String {
        format!("rule {} (prefix {:?})", self.number, self.prefix)
    }
}

impl Template {
    /// Parses `text`, which must use only the known placeholders and at
    /// least one of `{key}`, `{name}` and `{stem}` (else every object of a
    /// folder would be written to the same key).
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.is_empty() {
            return Err("is empty".into());
        }
        if text.chars().any(char::is_control) {
            return Err(format!("{text:?} contains a control character"));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("{text:?} has a }} without its {{"));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("{text:?} has a {{ without its }}"));
            };
            let placeholder = &rest[open..open + close + 1];
            let value = match placeholder {
                "{key}" => Placeholder::Key,
                "{dir}" => Placeholder::Dir,
                "{name}" => Placeholder::Name,
                "{stem}" => Placeholder::Stem,
                other => {
                    return Err(format!(
                        "unknown placeholder {other} in {text:?} (known: {})",
                        PLACEHOLDERS.join(", ")
                    ))
                }
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            parts.push(Part::Value(value));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let distinct = parts.iter().any(|p| {
            matches!(
                p,
                Part::Value(Placeholder::Key | Placeholder::Name | Placeholder::Stem)
            )
        });
        if !distinct {
            return Err(format!(
                "{text:?} uses none of {{key}}, {{name}}, {{stem}}: every object would be written to the same key"
            ));
        }
        if parts == [Part::Value(Placeholder::Key)] {
            return Err("{key} alone would write each output over its own input".into());
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    /// The key this template makes of the input key `key`. Slashes left
    /// doubled or leading by an empty `{dir}` (a key at the top level) are
    /// dropped: `{dir}/small/{name}` makes `small/a.mov` of `a.mov`.
    pub fn expand(&self, key: &str) -> String {
        let (dir, name) = match key.rfind('/') {
            Some(slash) => (&key[..slash], &key[slash + 1..]),
            None => ("", key),
        };
        let stem = match name.rfind('.') {
            Some(dot) if dot > 0 => &name[..dot],
            _ => name,
        };
        let mut out = String::with_capacity(key.len() + 32);
        for part in &self.parts {
            out.push_str(match part {
                Part::Text(text) => text,
                Part::Value(Placeholder::Key) => key,
                Part::Value(Placeholder::Dir) => dir,
                Part::Value(Placeholder::Name) => name,
                Part::Value(Placeholder::Stem) => stem,
            });
        }
        while out.contains("//") {
            out = out.replace("//", "/");
        }
        out.trim_start_matches('/').to_string()
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests;
