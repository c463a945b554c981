//! Unit tests of `rules`.

use super::*;
use std::collections::HashMap;

fn settings(extra: &[(&str, &str)]) -> Settings {
    let env: HashMap<String, String> = [
        ("S3_BUCKET_NAME", "videos"),
        ("AWS_S3_ENDPOINT_URL", "http://minio:9000"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Settings::from_env(None, &env).unwrap()
}

const LADDER: &str = r#"
[[rule]]
prefix = "uploads/"            # which new objects it matches
suffix = ".mov"                # optional; case-insensitive
fan_out = true
outputs = [
  { output_key = "renditions/720p/{stem}.mp4",  preset = "h264-720p" },
  { output_key = "renditions/1080p/{stem}.mp4", preset = "h264-1080p" },
]
"#;

fn parse(text: &str) -> Result<Rules, String> {
    Rules::parse(text, &settings(&[])).map_err(|e| e.0)
}

fn error(text: &str) -> String {
    parse(text).unwrap_err()
}

#[test]
fn the_shipped_rules_file_is_valid_for_the_default_settings() {
    let shipped = include_str!("../../../config/ingest.toml");
    let rules = parse(shipped).unwrap();
    assert_eq!(rules.list_prefixes(), ["uploads/"]);
}

#[test]
fn the_example_of_the_documentation_parses() {
    let rules = parse(LADDER).unwrap();
    let rule = &rules.all()[0];
    assert_eq!(rule.number, 1);
    assert_eq!(rule.prefix, "uploads/");
    assert_eq!(rule.suffix.as_deref(), Some(".mov"));
    assert!(rule.fan_out);
    assert_eq!(rule.outputs.len(), 2);
    assert_eq!(rule.outputs[1].preset.as_deref(), Some("h264-1080p"));
    assert_eq!(
        rule.outputs[0].output_key.expand("uploads/a b.mov"),
        "renditions/720p/a b.mp4"
    );
}

#[test]
fn suffixes_match_ignoring_case_and_the_farms_records_never_match() {
    let rules = parse(LADDER).unwrap();
    let rule = &rules.all()[0];
    assert!(rule.matches("uploads/a.mov"));
    assert!(rule.matches("uploads/sub/A.MOV"));
    assert!(!rule.matches("uploads/a.mp4"));
    assert!(!rule.matches("other/a.mov"));
    let everything = parse(
        r#"[[rule]]
prefix = ""
outputs = [{ output_key = "out/{key}.mp4" }]"#,
    )
    .unwrap();
    assert!(everything.all()[0].matches("a.mov"));
    assert!(!everything.all()[0].matches("_transcode/ingest/x.json"));
    assert_eq!(everything.matching("a.mov").count(), 1);
}

#[test]
fn placeholders_expand_to_parts_of_the_key() {
    let t = |text: &str, key: &str| Template::parse(text).unwrap().expand(key);
    assert_eq!(t("r/{key}.mp4", "up/a b.mov"), "r/up/a b.mov.mp4");
    assert_eq!(t("{dir}/small/{name}", "up/x/a.mov"), "up/x/small/a.mov");
    assert_eq!(t("{dir}/small/{name}", "a.mov"), "small/a.mov");
    assert_eq!(t("r/{stem}.mp4", "up/a.tar.gz"), "r/a.tar.mp4");
    assert_eq!(t("r/{stem}.mp4", "up/noext"), "r/noext.mp4");
    assert_eq!(t("r/{stem}.mp4", "up/.hidden"), "r/.hidden.mp4");
    assert_eq!(t("{dir}/{stem}-720p.mp4", "a/b/c.mov"), "a/b/c-720p.mp4");
}

#[test]
fn bad_templates_are_refused_with_the_reason() {
    for (text, expected) in [
        ("r/{stemm}.mp4", "unknown placeholder {stemm}"),
        ("r/{stem.mp4", "without its }"),
        ("r/stem}.mp4", "without its {"),
        (
            "r/{dir}.mp4",
            "every object would be written to the same key",
        ),
        ("fixed.mp4", "every object would be written to the same key"),
        ("{key}", "over its own input"),
        ("", "is empty"),
        ("a\nb{key}", "control character"),
    ] {
        let err = Template::parse(text).unwrap_err();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
}

#[test]
fn errors_name_the_rule_and_the_field() {
    let second =
        |outputs: &str| format!("{LADDER}\n[[rule]]\nprefix = \"inbox/\"\noutputs = [{outputs}]\n");
    let err = error(&second(r#"{ output_key = "r/{file}.mp4" }"#));
    assert!(
        err.starts_with(
            "rule 2 (prefix \"inbox/\"): output 1, output_key: unknown placeholder {file}"
        ),
        "{err}"
    );
    let err = error(&second(""));
    assert!(
        err.starts_with("rule 2 (prefix \"inbox/\"): outputs: the rule has no outputs"),
        "{err}"
    );
    let err = error(&second(
        r#"{ output_key = "r/{stem}.mp4", preset = "h264-720p" }, { output_key = "s/{stem}.mp4", preset = "h264-4k" }"#,
    ));
    assert!(
        err.starts_with("rule 2 (prefix \"inbox/\"): output 2: "),
        "{err}"
    );
    assert!(err.contains("no preset named \"h264-4k\""), "{err}");
    let err = error(&second(
        r#"{ output_key = "r/{stem}.mp4", preset = "h264-720p", transcode_options = "videoconvert ! x264enc" }"#,
    ));
    assert!(err.contains("output 1: give either preset"), "{err}");
    let err = error(&second(r#"{ output_key = "r/{stem}.exe" }"#));
    assert!(err.contains("output 1: a worker would refuse"), "{err}");
    assert!(err.contains(".exe"), "{err}");
    let err = error(&second(
        r#"{ output_key = "r/{stem}.mp4", transcode_options = "videoconvert ! filesink location=/etc/x" }"#,
    ));
    assert!(err.contains("output 1: a worker would refuse"), "{err}");
    let err = error(&second(
        r#"{ output_key = "r/{stem}.mp4" }, { output_key = "r/{stem}.mp4", preset = "h264-720p" }"#,
    ));
    assert!(err.contains("output 2, output_key"), "{err}");
    assert!(err.contains("already the key of another output"), "{err}");
    let err = error(&second(r#"{ output_key = "_transcode/{stem}.mp4" }"#));
    assert!(err.contains("output 1:"), "{err}");
    assert!(err.contains("farm's own records"), "{err}");
}

#[test]
fn rule_fields_are_checked() {
    let rule = |fields: &str| {
        format!("[[rule]]\nprefix = \"up/\"\n{fields}\noutputs = [{{ output_key = \"r/{{stem}}.mp4\" }}]\n")
    };
    assert!(parse(&rule("priority = \"normal\"")).is_ok());
    let high = parse(&rule("priority = \"high\"")).unwrap();
    assert_eq!(high.all()[0].priority, Some(Priority::High));
    assert!(error(&rule("priority = \"urgent\"")).contains("high, normal or low"));
    let ok = parse(&rule(
        "segment_seconds = 10\nwebhook = { url = \"https://example.org/hook\", secret = \"s\" }",
    ))
    .unwrap();
    assert_eq!(ok.all()[0].segment_seconds, Some(10.0));
    assert_eq!(
        ok.all()[0].webhook.as_ref().map(|w| w.url.as_str()),
        Some("https://example.org/hook")
    );
    assert!(error(&rule("segment_seconds = 0")).contains("segment_seconds"));
    assert!(error(&rule("webhook = { url = \"ftp://x\" }")).contains("webhook"));
    assert!(error(&rule("suffix = \"\"")).contains("suffix"));
    let err = error(
        "[[rule]]\nprefix = \"_transcode/x/\"\noutputs = [{ output_key = \"r/{stem}.mp4\" }]\n",
    );
    assert!(err.contains("prefix: _transcode/"), "{err}");
    // fan_out defaults to one job per output.
    assert!(parse(&rule("")).unwrap().all()[0].fan_out);
    assert!(!parse(&rule("fan_out = false")).unwrap().all()[0].fan_out);
}

#[test]
fn unknown_fields_missing_fields_and_empty_files_are_refused() {
    let err = error("[[rule]]\nprefix = \"up/\"\nsufix = \".mov\"\noutputs = []\n");
    assert!(err.contains("sufix"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    let err = error("[[rule]]\noutputs = [{ output_key = \"r/{stem}.mp4\" }]\n");
    assert!(err.contains("prefix"), "{err}");
    let err = error("[[rule]]\nprefix = \"up/\"\noutputs = [{ output_key = \"r/{stem}.mp4\", preset = \"h264-720p\", size = 3 }]\n");
    assert!(err.contains("size"), "{err}");
    assert!(error("").contains("there is no rule"));
    assert!(error("[rules]\n").contains("rules"));
}

#[test]
fn rules_are_planned_as_the_worker_plans_them() {
    let presets_only = settings(&[("TRANSCODE_PIPELINE__ALLOW_TRANSCODE_OPTIONS", "false")]);
    let text = "[[rule]]\nprefix = \"up/\"\noutputs = [{ output_key = \"r/{stem}.mp4\", transcode_options = \"videoconvert ! x264enc\" }]\n";
    assert!(parse(text).is_ok());
    let err = Rules::parse(text, &presets_only).unwrap_err().0;
    assert!(err.contains("transcode_options are refused"), "{err}");
    let fenced = settings(&[("TRANSCODE_STORAGE__ALLOWED_OUTPUT_PREFIXES", "out/")]);
    let err = Rules::parse(text, &fenced).unwrap_err().0;
    assert!(err.contains("allowed prefixes"), "{err}");
}

#[test]
fn listing_covers_every_prefix_once() {
    let text = |prefixes: &[&str]| {
        prefixes
            .iter()
            .map(|p| format!("[[rule]]\nprefix = \"{p}\"\noutputs = [{{ output_key = \"r/{{stem}}.mp4\" }}]\n"))
            .collect::<String>()
    };
    let rules = parse(&text(&["up/", "up/vip/", "inbox/", "up/"])).unwrap();
    assert_eq!(rules.list_prefixes(), ["inbox/", "up/"]);
    let rules = parse(&text(&["up/", ""])).unwrap();
    assert_eq!(rules.list_prefixes(), [""]);
}
