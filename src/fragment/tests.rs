//! Tests of the fragment parser and its limits.

use super::*;

fn parse(text: &str) -> Result<Fragment, JobError> {
    Fragment::parse(text, &Allowlist::default())
}

#[test]
fn accepts_the_original_example() {
    let f = parse("videoconvert ! x264enc").unwrap();
    assert_eq!(f.to_string(), "videoconvert ! x264enc");
    assert_eq!(
        f.factories().collect::<Vec<_>>(),
        ["videoconvert", "x264enc"]
    );
}

#[test]
fn canonicalizes_properties_and_caps() {
    let f = parse(
        "videoconvert ! videoscale ! video/x-raw, height=720 ! x264enc speed-preset=fast  bitrate=\"2000\"",
    )
    .unwrap();
    assert_eq!(
        f.to_string(),
        "videoconvert ! videoscale ! video/x-raw, height=720 ! x264enc speed-preset=\"fast\" bitrate=\"2000\""
    );
}

#[test]
fn refuses_sources_sinks_and_unknown_elements() {
    for text in [
        "filesink location=/etc/cron.d/x",
        "videoconvert ! filesrc location=/root/.aws/credentials",
        "videoconvert ! tcpclientsink host=1.2.3.4",
        "multifilesink",
        "appsink",
    ] {
        let err = parse(text).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidPipeline);
        assert!(
            err.message.contains("not allowed"),
            "{text}: {}",
            err.message
        );
    }
}

#[test]
fn refuses_file_properties_on_allowed_elements() {
    for text in [
        "x264enc stats-file=/tmp/x",
        "x264enc multipass-cache-file=/tmp/x",
        "x264enc option-string=dump-yuv=/tmp/y",
        "x264enc name=mux",
        "vp9enc location=/tmp/x",
        "x264enc LOCATION=/tmp/x",
    ] {
        let err = parse(text).unwrap_err();
        assert!(
            err.message.contains("is not allowed"),
            "{text}: {}",
            err.message
        );
    }
}

#[test]
fn refuses_branches_references_and_bins() {
    for text in [
        "videoconvert ! x264enc mux.",
        "videoconvert ! tw_mux.",
        "x264enc ! mux. videotestsrc",
        "( videoconvert ! x264enc )",
        "videoconvert ! ! x264enc",
        "videoconvert !",
        "",
        "video/x-raw",
        "audio/x-raw ! x264enc",
        "x264enc bitrate=\"2000",
        "x264enc bitrate=2000\\",
        "x264enc bitrate=$(id)",
        "x264enc bitrate=`id`",
        "x264enc bitrate=a;b",
        "x264enc bitrate=\"1 ! filesink location=x\"",
        "videoconvert\u{0}! x264enc",
    ] {
        assert!(parse(text).is_err(), "accepted {text:?}");
    }
}

#[test]
fn refuses_overlong_fragments() {
    let long = vec!["queue"; MAX_SEGMENTS + 1].join(" ! ");
    assert!(parse(&long).unwrap_err().message.contains("more than"));
    let huge = format!("x264enc bitrate={}", "1".repeat(MAX_FRAGMENT_LEN));
    assert!(parse(&huge).unwrap_err().message.contains("longer than"));
}

#[test]
fn limits_cap_frame_size_and_bitrate() {
    let limits = Limits {
        max_width: 1920,
        max_height: 1080,
        max_bitrate_kbps: 50_000,
    };
    let ok = parse("videoscale ! video/x-raw,width=1920,height=(int)1080 ! x264enc bitrate=8000")
        .unwrap();
    assert!(ok.check_limits(&limits).is_ok());
    for text in [
        "videoscale ! video/x-raw,width=100000 ! x264enc",
        "videoscale ! video/x-raw, height=(int)4320 ! x264enc",
        "x264enc bitrate=900000",
        "vp9enc target-bitrate=90000000",
    ] {
        let err = parse(text).unwrap().check_limits(&limits).unwrap_err();
        assert!(err.message.contains("limit"), "{text}: {}", err.message);
    }
}

fn limits() -> Limits {
    Limits {
        max_width: 7680,
        max_height: 4320,
        max_bitrate_kbps: 200_000,
    }
}

/// The reason `text` is refused, by the parser or by the limits.
fn refusal(text: &str) -> String {
    match parse(text).and_then(|f| f.check_limits(&limits())) {
        Ok(()) => panic!("accepted {text:?}"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::InvalidPipeline);
            e.message
        }
    }
}

fn accepted(text: &str) -> Fragment {
    let f = parse(text).unwrap_or_else(|e| panic!("{text}: {}", e.message));
    f.check_limits(&limits())
        .unwrap_or_else(|e| panic!("{text}: {}", e.message));
    f
}

#[test]
fn multi_pass_modes_are_refused_single_pass_ones_accepted() {
    for (text, reason) in [
        (
            "x264enc pass=pass1",
            "x264enc pass=pass1 is not allowed: multi-pass",
        ),
        ("x264enc pass=17", "x264enc pass=17 is not allowed"),
        ("avenc_mpeg4 pass=pass2", "accepted: cbr, quant, qual"),
        ("vp8enc multipass-mode=first-pass", "statistics file"),
        (
            "theoraenc multipass_mode=second-pass",
            "multipass_mode=second-pass",
        ),
        ("av1enc enc-pass=third-pass", "keeps statistics"),
    ] {
        let message = refusal(text);
        assert!(message.contains(reason), "{text}: {message}");
    }
    accepted("x264enc pass=qual quantizer=23");
    accepted("avenc_mpeg4 pass=cbr");
    accepted("vp9enc multipass-mode=one-pass");
    accepted("theoraenc multipass-mode=single-pass");
}

#[test]
fn property_names_are_read_as_gstreamer_reads_them() {
    assert!(refusal("x264enc stats_file=/tmp/x").contains("'file'"));
    assert!(refusal("x264enc RC_LOOKAHEAD=250").contains("look-ahead"));
    assert!(refusal("x265enc log_level=full").contains("'log'"));
    assert_eq!(
        accepted("x264enc rc_lookahead=20").to_string(),
        "x264enc rc-lookahead=\"20\""
    );
}

#[test]
fn caps_tricks_do_not_get_past_the_frame_limits() {
    for (text, reason) in [
        (
            "video/x-raw,width=(uint)100000 ! x264enc",
            "width of 100000",
        ),
        ("video/x-raw,height=(i)5000 ! x264enc", "height of 5000"),
        (
            "video/x-raw,width=max ! x264enc",
            "width=max is not a whole number",
        ),
        ("video/x-raw,width=0x10000 ! x264enc", "not a whole number"),
        ("video/x-raw,height=-1 ! x264enc", "not a whole number"),
        ("video/x-raw,framerate=241/1 ! x264enc", "the limit is 240"),
        (
            "video/x-raw,framerate=(fraction)30/0 ! x264enc",
            "not a frame rate",
        ),
        ("video/x-raw,framerate=max ! x264enc", "not a frame rate"),
        (
            "video/x-raw,max-framerate=1000/1 ! x264enc",
            "max-framerate of 1000/1",
        ),
        (
            "video/x-raw,pixel-aspect-ratio=5/1 ! x264enc",
            "more than 4 times",
        ),
        (
            "video/x-raw,pixel-aspect-ratio=0/1 ! x264enc",
            "not a ratio",
        ),
        (
            "capsfilter caps=video/x-raw,width=9000 ! x264enc",
            "width of 9000",
        ),
        ("capsfilter caps=audio/x-raw ! x264enc", "not video caps"),
        (
            "video/x-raw,pixel-aspect-ratio=18446744073709551615/1 ! x264enc",
            "stretches frames",
        ),
    ] {
        let message = refusal(text);
        assert!(message.contains(reason), "{text}: {message}");
    }
    accepted(
        "videoscale ! video/x-raw,width=(int)7680,height=4320,framerate=(fraction)30000/1001,pixel-aspect-ratio=4/3 ! x264enc",
    );
    accepted("videorate ! video/x-raw,framerate=240/1 ! x264enc");
    accepted("video/x-raw,framerate=18446744073709551615/18446744073709551615 ! x264enc");
    accepted("videoscale ! capsfilter caps=video/x-raw,width=1280 ! x264enc");
}

#[test]
fn numbers_that_cost_memory_or_cpu_are_bounded() {
    for (text, reason) in [
        ("x264enc threads=65", "65 threads; the limit is 64"),
        ("openh264enc multi-thread=1000", "1000 threads"),
        (
            "x264enc sync-lookahead=61",
            "61 frames of look-ahead; the limit is 60",
        ),
        (
            "vp8enc keyframe-max-dist=1001",
            "frames between keyframes; the limit is 1000",
        ),
        ("avenc_mpeg4 gop-size=100000", "frames between keyframes"),
        ("queue max-size-bytes=0", "without bound"),
        ("queue max-size-bytes=16777217", "queued bytes"),
        ("queue max-size-buffers=1001", "queued buffers"),
        ("queue max-size-time=10000000001", "queued nanoseconds"),
        ("queue min-threshold-bytes=100000000", "queued bytes"),
        ("x264enc threads=max", "not a plain decimal number"),
        ("x264enc key-int-max=1e9", "not a plain decimal number"),
        (
            "vp9enc target-bitrate=0x7fffffff",
            "not a plain decimal number",
        ),
        ("openh264enc max-bitrate=300000000", "300000 kbit/s"),
        (
            "videobox left=-4000 right=-4000 ! x264enc",
            "borders of 8000 by 0",
        ),
        ("videobox top=min ! x264enc", "not a plain decimal number"),
        (
            "videobox left=-9223372036854775808 right=-9223372036854775808 ! x264enc",
            "borders of 18446744073709551615 by 0",
        ),
        (
            "videorate rate=2 ! x264enc",
            "changes the output's duration",
        ),
    ] {
        let message = refusal(text);
        assert!(message.contains(reason), "{text}: {message}");
    }
    accepted("x264enc threads=64 rc-lookahead=60 sync-lookahead=-1 key-int-max=250");
    accepted("avenc_mpeg4 threads=auto gop-size=12");
    accepted("queue max-size-bytes=10485760 max-size-buffers=0 max-size-time=0 ! x264enc");
    accepted("videobox left=-20 right=-20 top=16 bottom=-16 ! x264enc");
    accepted("videorate max-rate=30 ! x264enc");
}

#[test]
fn operators_can_extend_the_allowlist() {
    let allow = Allowlist::new(["myenc"]);
    assert!(Fragment::parse("videoconvert ! myenc", &allow).is_ok());
    assert!(parse("videoconvert ! myenc").is_err());
}

mod fuzz {
    //! Property tests of the validator (run briefly by `cargo test`;
    //! `PROPTEST_CASES=1000000 cargo test --lib fragment::tests::fuzz`
    //! for a long run).
    use super::*;
    use proptest::prelude::*;

    /// Pieces of launch syntax, hostile and benign, to assemble.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("!".to_string()),
            Just(" ".to_string()),
            Just("\"".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just(".".to_string()),
            Just("=".to_string()),
            Just("\\".to_string()),
            Just("videoconvert".to_string()),
            Just("x264enc".to_string()),
            Just("filesink".to_string()),
            Just("filesrc".to_string()),
            Just("location=/tmp/x".to_string()),
            Just("name=tw_mux".to_string()),
            Just("tw_mux.".to_string()),
            Just("video/x-raw,width=640".to_string()),
            Just("speed-preset=fast".to_string()),
            Just("option-string=a".to_string()),
            "[a-z0-9_/=,.:-]{0,12}",
            any::<char>().prop_map(String::from),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_on_any_text(text in ".{0,300}") {
            if let Ok(fragment) = Fragment::parse(&text, &Allowlist::default()) {
                let _ = fragment.check_limits(&limits());
            }
        }

        #[test]
        fn limits_never_panic_on_any_number(
            field in "(width|height|framerate|pixel-aspect-ratio)",
            property in "(threads|bitrate|rc-lookahead|max-size-bytes|left|top)",
            a in "-?[0-9]{1,25}",
            b in "[0-9]{1,25}",
        ) {
            let text = format!(
                "videobox {property}={a} ! video/x-raw,{field}={a}/{b} ! queue {property}={b}"
            );
            if let Ok(fragment) = Fragment::parse(&text, &Allowlist::default()) {
                let _ = fragment.check_limits(&limits());
            }
        }

        #[test]
        fn accepted_fragments_are_safe_and_canonical(tokens in prop::collection::vec(token(), 0..24)) {
            let text = tokens.concat();
            let allow = Allowlist::default();
            if let Ok(fragment) = Fragment::parse(&text, &allow) {
                for factory in fragment.factories() {
                    prop_assert!(allow.allows(factory), "{factory} from {text:?}");
                }
                let canonical = fragment.to_string();
                prop_assert!(!canonical.contains('(') || canonical.contains('/'), "{canonical:?}");
                prop_assert!(!canonical.contains('\\'), "{canonical:?}");
                for segment in canonical.split(" ! ") {
                    let mut words = segment.split(' ');
                    let first = words.next().unwrap_or_default();
                    if first.contains('/') {
                        // Caps: plain field=value text, no quotes or links.
                        prop_assert!(!segment.contains('"') && !segment.contains('!'), "{segment:?}");
                        continue;
                    }
                    prop_assert!(allow.allows(first), "{first} in {canonical:?}");
                    for word in words {
                        let (name, value) = word.split_once('=').expect("property=value");
                        let name = name.to_ascii_lowercase();
                        for (denied, _) in DENIED_PROPERTY_PARTS {
                            prop_assert!(!name.contains(denied), "{name} in {canonical:?}");
                        }
                        prop_assert!(value.starts_with('"') && value.ends_with('"') && value.len() >= 3);
                        prop_assert!(!value[1..value.len() - 1].contains('"'));
                    }
                }
                let again = Fragment::parse(&canonical, &allow).expect("canonical text parses");
                prop_assert_eq!(again.to_string(), canonical);
            }
        }
    }
}
