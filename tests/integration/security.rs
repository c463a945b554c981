//! Untrusted job messages: a catalogue of hostile messages, each refused
//! with a specific reason and nothing written outside the job's scratch
//! folder, and every shipped preset run for real.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use transcode_worker::error::ErrorKind;
use transcode_worker::job::Phase;

use crate::common::farm::Farm;
use crate::common::{fixtures, random_name, wait_for};

const TIMEOUT: Duration = Duration::from_secs(180);

/// A job whose only hostile part is `fragment`.
fn fragment_job(id: &str, fragment: &str) -> Vec<u8> {
    json!({"job_id": id, "input_key": "in/good.mov", "output_key": format!("out/{id}.mp4"),
        "transcode_options": fragment})
    .to_string()
    .into_bytes()
}

fn job_with(id: &str, fields: serde_json::Value) -> Vec<u8> {
    let mut job =
        json!({"job_id": id, "input_key": "in/good.mov", "output_key": format!("out/{id}.mp4")});
    for (k, v) in fields.as_object().unwrap() {
        job[k] = v.clone();
    }
    job.to_string().into_bytes()
}

/// Hostile pipeline fragments in the catalogue, as SECURITY.md states
/// (at least 40 are required: one of each kind of attack and its variants).
const HOSTILE_FRAGMENTS: usize = 78;
/// Other hostile messages in the catalogue, as SECURITY.md states.
const OTHER_HOSTILE_MESSAGES: usize = 22;
const _: () = assert!(HOSTILE_FRAGMENTS >= 40);

/// Hostile pipeline fragments: (job id, fragment, a part of the reason the
/// worker must give). `canary` is a path that must never be created.
fn hostile_fragments(canary: &str) -> Vec<(&'static str, String, &'static str)> {
    let c = canary;
    let f = |id, text: &str, reason| (id, text.to_string(), reason);
    let too_many = vec!["queue"; 33].join(" ! ");
    let too_long = format!("x264enc bitrate={}", "1".repeat(5000));
    vec![
        // Files read or written through an element or a property.
        f("filesink", &format!("filesink location={c}"), "element 'filesink' is not allowed"),
        f("filesrc", "videoconvert ! filesrc location=/root/.aws/credentials", "element 'filesrc' is not allowed"),
        f("multifilesink", &format!("videoconvert ! x264enc ! multifilesink location={c}%d"), "element 'multifilesink' is not allowed"),
        f("splitmuxsink", &format!("videoconvert ! x264enc ! splitmuxsink location={c}"), "element 'splitmuxsink' is not allowed"),
        f("fdsink", "videoconvert ! x264enc ! fdsink fd=1", "element 'fdsink' is not allowed"),
        f("stats-file", &format!("videoconvert ! x264enc stats-file={c}"), "property 'stats-file' on 'x264enc' is not allowed: it reads or writes a file (names containing 'file'"),
        f("cache-file", &format!("vp8enc multipass-cache-file={c}"), "property 'multipass-cache-file' on 'vp8enc' is not allowed: it reads or writes a file (names containing 'file'"),
        f("underscore", &format!("theoraenc multipass_cache_file={c}"), "property 'multipass_cache_file' on 'theoraenc' is not allowed: it reads or writes a file (names containing 'file'"),
        f("upper", &format!("x264enc LOCATION={c}"), "property 'LOCATION' on 'x264enc' is not allowed: it reads or writes a file (names containing 'location'"),
        f("location", &format!("videoconvert ! vp9enc location={c}"), "property 'location' on 'vp9enc' is not allowed: it reads or writes a file (names containing 'location'"),
        f("device", "x264enc device=/dev/sda", "property 'device' on 'x264enc' is not allowed: it opens a device"),
        f("option-string", &format!("videoconvert ! x264enc option-string=dump-yuv={c}"), "property 'option-string' on 'x264enc' is not allowed: it passes options straight to the encoder library"),
        f("x265-options", &format!("x265enc option-string=csv={c}"), "property 'option-string' on 'x265enc' is not allowed"),
        f("dump", "avenc_mpeg4 dump-separator=x", "property 'dump-separator' on 'avenc_mpeg4' is not allowed: it turns on dumps, logs or debug output (names containing 'dump'"),
        f("debug", "avenc_h263 debug=pict", "property 'debug' on 'avenc_h263' is not allowed: it turns on dumps, logs or debug output (names containing 'debug'"),
        f("log", "x265enc log-level=full", "property 'log-level' on 'x265enc' is not allowed: it turns on dumps, logs or debug output (names containing 'log'"),
        // Multi-pass modes keep statistics in files.
        f("pass1", "x264enc pass=pass1", "x264enc pass=pass1 is not allowed: multi-pass encoding reads and writes a statistics file"),
        f("pass-number", "x264enc pass=17", "x264enc pass=17 is not allowed"),
        f("avenc-pass2", "avenc_mpeg4 pass=pass2", "avenc_mpeg4 pass=pass2 is not allowed"),
        f("vpx-first-pass", "vp9enc multipass-mode=first-pass", "vp9enc multipass-mode=first-pass is not allowed"),
        f("theora-second-pass", "theoraenc multipass-mode=second-pass", "theoraenc multipass-mode=second-pass is not allowed"),
        f("av1-pass", "av1enc enc-pass=first-pass", "av1enc enc-pass=first-pass is not allowed"),
        // The network.
        f("tcp", "videoconvert ! x264enc ! tcpclientsink host=10.0.0.1 port=4444", "element 'tcpclientsink' is not allowed"),
        f("udp", "x264enc ! udpsink host=10.0.0.1", "element 'udpsink' is not allowed"),
        f("rtmp", "x264enc ! rtmpsink location=rtmp://10.0.0.1/live", "element 'rtmpsink' is not allowed"),
        f("http-src", "souphttpsrc location=http://169.254.169.254/latest/meta-data ! x264enc", "element 'souphttpsrc' is not allowed"),
        f("host", "x264enc host=10.0.0.1", "property 'host' on 'x264enc' is not allowed: it reaches the network"),
        // URIs.
        f("uridecodebin", "uridecodebin uri=file:///etc/shadow ! x264enc", "element 'uridecodebin' is not allowed"),
        f("bare-uri", "file:///etc/passwd ! x264enc", "the caps 'file:///etc/passwd' are not video caps"),
        f("uri-property", "x264enc uri=file:///etc/passwd", "property 'uri' on 'x264enc' is not allowed: it opens a URI"),
        f("giosink", &format!("x264enc ! giosink location=file://{c}"), "element 'giosink' is not allowed"),
        // Branches, names and references to other elements.
        f("tee", &format!("tee name=t ! queue ! x264enc t. ! queue ! filesink location={c}"), "element 'tee' is not allowed"),
        f("rename", "videoconvert ! x264enc name=tw_mux", "property 'name' on 'x264enc' is not allowed: it names elements"),
        f("reference", &format!("videoconvert ! x264enc t. ! filesink location={c}"), "'t.' after 'x264enc' is not a property=value pair"),
        f("into-muxer", "videoconvert ! tw_mux.", "'tw_mux.' is not an element name"),
        f("second-source", "x264enc mux. videotestsrc ! x264enc", "'mux.' after 'x264enc' is not a property=value pair"),
        f("parent", "queue parent=tw_mux", "property 'parent' on 'queue' is not allowed: it names elements"),
        // Elements that load other elements, and bins.
        f("playbin", "playbin uri=file:///etc/passwd", "element 'playbin' is not allowed"),
        f("autovideosink", "videoconvert ! autovideosink", "element 'autovideosink' is not allowed"),
        f("parsebin", "parsebin ! x264enc", "element 'parsebin' is not allowed"),
        f("decodebin", "decodebin ! autovideosink", "element 'decodebin' is not allowed"),
        f("encodebin", "encodebin profile=video/x-h264", "element 'encodebin' is not allowed"),
        f("bin", "( videoconvert ! x264enc )", "'(' is not an element name"),
        f("named-bin", "bin.( videoconvert ! x264enc )", "'bin.(' is not an element name"),
        // Launch syntax tricks.
        f("quote-trick", &format!("x264enc bitrate=\"1 ! filesink location={c}\""), "the value of 'bitrate' contains the character ' '"),
        f("backslash", &format!("x264enc bitrate=1\\ ! filesink location={c}"), "backslashes are not allowed"),
        f("quoted-name", &format!("x264enc \"location\"={c}"), "'\"location\"' on 'x264enc' is not a property name"),
        f("unclosed", "x264enc bitrate=\"2000", "unclosed quote"),
        f("preset-file", "x264enc @preset=evil", "'@preset' on 'x264enc' is not a property name"),
        f("child-proxy", "x264enc sink::caps=video/x-raw", "'sink::caps' on 'x264enc' is not a property name"),
        f("comment", &format!("videoconvert ! x264enc # ! filesink location={c}"), "'#' after 'x264enc' is not a property=value pair"),
        f("shell", &format!("x264enc bitrate=$(touch {c})"), "the value of 'bitrate' contains the character '$'"),
        f("dangling", "videoconvert !", "empty element"),
        f("nul", "videoconvert\u{0} ! x264enc", "control character"),
        f("audio-caps", "audio/x-raw ! x264enc", "the caps 'audio/x-raw' are not video caps"),
        f("caps-list", "video/x-raw;audio/x-raw ! x264enc", "contain the character ';'"),
        f("caps-only", "video/x-raw", "no element, only caps"),
        f("too-many", &too_many, "more than 32 elements"),
        f("too-long", &too_long, "longer than 4096 bytes"),
        // Resource exhaustion.
        f("huge-width", "videoscale ! video/x-raw,width=100000 ! x264enc", "the caps ask for a width of 100000; the limit is 7680"),
        f("typed-height", "videoscale ! video/x-raw,height=(uint)100000 ! x264enc", "the caps ask for a height of 100000; the limit is 4320"),
        f("max-width", "videoscale ! video/x-raw,width=max ! x264enc", "the caps field width=max is not a whole number of pixels"),
        f("hex-height", "videoscale ! video/x-raw,height=0x10000 ! x264enc", "the caps field height=0x10000 is not a whole number of pixels"),
        f("capsfilter", "videoscale ! capsfilter caps=video/x-raw,width=65536 ! x264enc", "the caps ask for a width of 65536"),
        f("framerate", "videorate ! video/x-raw,framerate=100000/1 ! x264enc", "framerate of 100000/1; the limit is 240 frames per second"),
        f("aspect", "videoscale ! video/x-raw,pixel-aspect-ratio=1/1000 ! x264enc", "pixel-aspect-ratio of 1/1000"),
        f("rate", "videorate rate=0.0001 ! x264enc", "property 'rate' on 'videorate' is not allowed"),
        f("bitrate", "x264enc bitrate=2048000", "x264enc bitrate=2048000 is 2048000 kbit/s; the limit is 200000 kbit/s"),
        f("max-bitrate", "vp8enc target-bitrate=max", "vp8enc target-bitrate=max is not a plain decimal number"),
        f("hex-bitrate", "x264enc bitrate=0x1F4000", "x264enc bitrate=0x1F4000 is not a plain decimal number"),
        f("threads", "x264enc threads=100000", "x264enc threads=100000 asks for 100000 threads; the limit is 64"),
        f("n-threads", "videoconvert n-threads=4096 ! x264enc", "videoconvert n-threads=4096 asks for 4096 threads"),
        f("lookahead", "x264enc rc-lookahead=250", "x264enc rc-lookahead=250 asks for 250 frames of look-ahead; the limit is 60"),
        f("lag", "av1enc lag-in-frames=100000", "av1enc lag-in-frames=100000 asks for 100000 frames of look-ahead"),
        f("key-int", "x264enc key-int-max=2147483647", "x264enc key-int-max=2147483647 asks for 2147483647 frames between keyframes"),
        f("unbounded-queue", "queue max-size-bytes=0 max-size-buffers=0 max-size-time=0 ! x264enc", "queue max-size-bytes=0 lets the queue grow without bound"),
        f("huge-queue", "queue max-size-bytes=4294967295 ! x264enc", "queue max-size-bytes=4294967295 asks for 4294967295 queued bytes"),
        f("borders", "videobox left=-100000 top=-100000 ! x264enc", "videobox adds borders of 100000 by 100000 pixels"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_refused_with_specific_reasons_and_write_nothing() {
    let farm = Farm::directory(&[]).await;
    let store = farm.store_dir.as_ref().unwrap().path().to_path_buf();
    farm.put_input("in/good.mov", &fixtures::mjpeg_mov(1)).await;
    // A secret outside the storage folder, and a link to it inside.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("credentials"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), store.join("in/link")).unwrap();
    let canary = format!("/tmp/{}", random_name("tw-pwned"));

    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!(
        r#"{{"job_id":"big","input_key":"{}","output_key":"o.mp4"}}"#,
        "a".repeat(10 << 20)
    );
    // (error kind, a part of the reason, message)
    let mut cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "invalid_job",
            "the message is not UTF-8 text",
            vec![0xff, 0xfe, 0x00, b'{'],
        ),
        (
            "invalid_job",
            "the message is not a valid job: expected value at line 1 column 1",
            b"rm -rf /".to_vec(),
        ),
        (
            "invalid_job",
            "the message is not a valid job: invalid type: integer `1`, expected a string",
            b"[1, 2, 3]".to_vec(),
        ),
        (
            "invalid_job",
            "the message is not a valid job: invalid type: sequence, expected a string",
            nested.into_bytes(),
        ),
        (
            "invalid_job",
            "the message is 10485812 bytes long; the limit is 65536",
            huge.into_bytes(),
        ),
        (
            "invalid_job",
            "the message is not a valid job: number out of range",
            br#"{"job_id": 1e400, "input_key": "a", "output_key": "b"}"#.to_vec(),
        ),
        (
            "invalid_job",
            "the message is not a valid job: invalid type: floating point",
            br#"{"job_id": 123456789012345678901234567890, "input_key": "a", "output_key": "b"}"#
                .to_vec(),
        ),
        (
            "invalid_job",
            "job_id may hold only letters, digits and . _ : - (found '\\0')",
            br#"{"job_id": "a\u0000b", "input_key": "in/good.mov", "output_key": "o.mp4"}"#
                .to_vec(),
        ),
        (
            "invalid_job",
            "job_id must be 1 to 128 characters long",
            job_with(&"x".repeat(1000), json!({})),
        ),
        (
            "invalid_job",
            "input_key contains a control character",
            job_with("nul-key", json!({"input_key": "in/good.mov\u{0}.txt"})),
        ),
        (
            "invalid_job",
            "output_key contains a control character",
            job_with("newline-key", json!({"output_key": "out/a\nb.mp4"})),
        ),
        (
            "invalid_job",
            "output_key is longer than 1024 bytes",
            job_with(
                "long-key",
                json!({"output_key": format!("out/{}.mp4", "a".repeat(1020))}),
            ),
        ),
        (
            "invalid_job",
            "input_key is empty",
            job_with("empty-key", json!({"input_key": ""})),
        ),
        (
            "invalid_job",
            "missing field `output_key`",
            br#"{"job_id": "no-output", "input_key": "in/good.mov"}"#.to_vec(),
        ),
        (
            "invalid_job",
            "give either transcode_options or preset, not both",
            job_with(
                "both",
                json!({"preset": "h264-mp4", "transcode_options": "x264enc"}),
            ),
        ),
        (
            "invalid_job",
            "there is no preset named \"../../etc/passwd\"",
            job_with("no-preset", json!({"preset": "../../etc/passwd"})),
        ),
        (
            "invalid_job",
            "output_key ends in .sh, which is not a container this worker writes",
            job_with("bad-ext", json!({"output_key": "out/run.sh"})),
        ),
        (
            "invalid_job",
            "key \"../../etc/passwd\" is not allowed: '..' is not allowed",
            job_with("dotdot-in", json!({"input_key": "../../etc/passwd"})),
        ),
        (
            "invalid_job",
            "key \"/etc/passwd\" is not allowed: absolute paths are not allowed",
            job_with("abs-in", json!({"input_key": "/etc/passwd"})),
        ),
        (
            "invalid_job",
            ".mp4\" is not allowed: absolute paths are not allowed",
            job_with("abs-out", json!({"output_key": format!("{canary}.mp4")})),
        ),
        (
            "invalid_job",
            "key \"../../escape.mp4\" is not allowed: '..' is not allowed",
            job_with("dotdot-out", json!({"output_key": "../../escape.mp4"})),
        ),
        (
            "invalid_job",
            "key \"in/link/credentials\" is not allowed: it leads outside the storage directory",
            job_with("symlink-in", json!({"input_key": "in/link/credentials"})),
        ),
    ];
    let others = cases.len();
    let fragments = hostile_fragments(&canary);
    for (id, fragment, reason) in &fragments {
        cases.push(("invalid_pipeline", reason, fragment_job(id, fragment)));
    }
    let mut watch = farm.watch_progress().await;
    let _worker = farm.spawn_worker(&[]);
    for (_, _, body) in &cases {
        farm.publish_raw(body).await;
    }
    farm.publish_job(
        json!({"job_id": "good", "input_key": "in/good.mov", "output_key": "out/good.mp4"}),
    )
    .await;
    let last = watch.until_final("good", TIMEOUT).await;
    assert_eq!(
        last.state,
        Phase::Completed,
        "the worker still serves good jobs"
    );

    let dead = std::sync::Mutex::new(Vec::new());
    wait_for(TIMEOUT, "every hostile message dead-lettered", || async {
        let got = farm.dead_letters().await;
        let mut dead = dead.lock().unwrap();
        dead.extend(got);
        dead.len() >= cases.len()
    })
    .await;
    let dead = dead.into_inner().unwrap();
    assert_eq!(dead.len(), cases.len());
    // Dead letters keep their order: each has the kind and the reason expected.
    let mut refused_fragments = 0;
    for (i, ((kind, expected, body), (dead_body, headers))) in cases.iter().zip(&dead).enumerate() {
        assert_eq!(body, dead_body, "dead letters hold the original body");
        let shown = String::from_utf8_lossy(&body[..body.len().min(160)]).to_string();
        assert_eq!(&headers["x-error-kind"], kind, "{shown}: {headers:#?}");
        let reason = &headers["x-error"];
        assert!(
            reason.contains(expected),
            "{shown}: the reason should contain {expected:?}: {reason}"
        );
        assert!(reason.len() < 2000, "{shown}: {reason}");
        assert_eq!(headers["x-attempts"], "1", "{shown}");
        if i >= others {
            refused_fragments += 1;
        }
    }
    // The figures in SECURITY.md: the messages that were run and refused
    // with the reason expected.
    assert_eq!(refused_fragments, HOSTILE_FRAGMENTS);
    assert_eq!(others, OTHER_HOSTILE_MESSAGES);
    // Each failure was also announced; every reason is its own.
    let failed: Vec<_> = watch
        .seen
        .iter()
        .filter(|e| e.state == Phase::Failed)
        .collect();
    assert!(
        failed.len() >= cases.len(),
        "{} failed events",
        failed.len()
    );
    let reasons: std::collections::BTreeSet<_> =
        dead.iter().map(|(_, h)| h["x-error"].clone()).collect();
    assert_eq!(
        reasons.len(),
        cases.len(),
        "reasons are specific: {reasons:#?}"
    );

    // Nothing was written anywhere but the outputs folder.
    assert!(!Path::new(&canary).exists());
    assert!(!Path::new(&format!("{canary}.mp4")).exists());
    assert!(!store.parent().unwrap().join("escape.mp4").exists());
    let mut outputs: Vec<_> = std::fs::read_dir(store.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    outputs.sort();
    // The good job's output and its metadata sidecar.
    assert_eq!(outputs, [".good.mp4.meta.json", "good.mp4"]);
    let scratch: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(scratch.is_empty(), "{scratch:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_preset_makes_what_it_promises() {
    // The hardware presets: no GPU here, so a job using one waits for a
    // worker with that encoder, and with none ends as no_capable_worker.
    const HARDWARE: &[(&str, &str)] = &[
        ("h264-nvenc", "nvh264enc"),
        ("hevc-nvenc", "nvh265enc"),
        ("h264-vaapi", "vaapih264enc"),
        ("hevc-vaapi", "vaapih265enc"),
        ("h264-qsv", "qsvh264enc"),
        ("hevc-qsv", "qsvh265enc"),
    ];
    let nobody = ("TRANSCODE_WORKER__NO_CAPABLE_WORKER_TIMEOUT", "3s");
    let farm = Farm::directory(&[nobody]).await;
    let input = fixtures::mjpeg_mov(1);
    farm.put_input("in/a.mov", &input).await;
    let mut watch = farm.watch_progress().await;
    let _worker = farm.spawn_worker(&[nobody]);
    // (preset, output key, container, video codec, audio codec, height)
    let cases = [
        (
            "h264-fast",
            "out/afast.mp4",
            "video/quicktime",
            "video/x-h264",
            "audio/mpeg",
            240,
        ),
        (
            "h264-mp4",
            "out/a.mp4",
            "video/quicktime",
            "video/x-h264",
            "audio/mpeg",
            240,
        ),
        // The height presets scale down only: on this 240-line input they
        // keep its 240 lines (tests/integration/renditions.rs scales down).
        (
            "h264-1080p",
            "out/a1080.mp4",
            "video/quicktime",
            "video/x-h264",
            "audio/mpeg",
            240,
        ),
        (
            "h264-720p",
            "out/a720.mp4",
            "video/quicktime",
            "video/x-h264",
            "audio/mpeg",
            240,
        ),
        (
            "h264-480p",
            "out/a480.mp4",
            "video/quicktime",
            "video/x-h264",
            "audio/mpeg",
            240,
        ),
        (
            "h264-360p",
            "out/a360.mp4",
            "video/quicktime",
            "video/x-h264",
            "audio/mpeg",
            240,
        ),
        (
            "hevc-mp4",
            "out/ahevc.mp4",
            "video/quicktime",
            "video/x-h265",
            "audio/mpeg",
            240,
        ),
        (
            "vp9-webm",
            "out/a.webm",
            "video/webm",
            "video/x-vp9",
            "audio/x-opus",
            240,
        ),
    ];
    for (preset, key, ..) in &cases {
        farm.publish_job(
            json!({"job_id": preset, "input_key": "in/a.mov", "output_key": key, "preset": preset}),
        )
        .await;
    }
    let inp = fixtures::probe(&input);
    let mut checked: Vec<&str> = cases.iter().map(|c| c.0).collect();
    for (preset, key, container, video, audio, height) in cases {
        let last = watch.until_final(preset, TIMEOUT).await;
        assert_eq!(last.state, Phase::Completed, "{preset}: {last:#?}");
        let out = fixtures::probe(&farm.get_output(key).await.expect(key));
        assert_eq!(
            out.container.as_deref(),
            Some(container),
            "{preset}: {out:#?}"
        );
        assert_eq!(out.video[0].media_type, video, "{preset}: {out:#?}");
        assert_eq!(out.video[0].height, height, "{preset}: {out:#?}");
        assert_eq!(
            out.video[0].width, inp.video[0].width,
            "{preset} keeps the size"
        );
        assert_eq!(out.audio.len(), 1, "{preset}: {out:#?}");
        assert_eq!(out.audio[0].media_type, audio, "{preset}: {out:#?}");
        let diff = out.duration.unwrap().abs_diff(inp.duration.unwrap());
        assert!(diff <= Duration::from_millis(500), "{preset}: {diff:?}");
    }
    // The ladder: on this 240-line input every rung is taller than the
    // source, so the package holds the shortest (360p) at 240 lines.
    farm.publish_job(json!({"job_id": "hls-ladder", "input_key": "in/a.mov",
        "output_key": "out/ladder/a.m3u8", "preset": "hls-ladder"}))
        .await;
    let last = watch.until_final("hls-ladder", TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "hls-ladder: {last:#?}");
    let master = farm.get_output("out/ladder/a.m3u8").await.expect("master");
    let master = std::fs::read_to_string(master).unwrap();
    assert_eq!(
        master.matches("#EXT-X-STREAM-INF").count(),
        1,
        "one variant: {master}"
    );
    let resolution = format!("RESOLUTION={}x240", inp.video[0].width);
    assert!(master.contains(&resolution), "{master}");
    assert!(master.contains("360p/index.m3u8"), "{master}");
    let segment = farm
        .get_output("out/ladder/360p/seg00000.ts")
        .await
        .expect("the first segment");
    let seg = fixtures::probe(&segment);
    assert_eq!(seg.video[0].media_type, "video/x-h264", "{seg:#?}");
    assert_eq!(seg.video[0].height, 240, "{seg:#?}");
    assert_eq!(seg.audio.len(), 1, "{seg:#?}");
    checked.push("hls-ladder");
    for (preset, element) in HARDWARE {
        let key = format!("out/{preset}.mp4");
        farm.publish_job(
            json!({"job_id": preset, "input_key": "in/a.mov", "output_key": key, "preset": preset}),
        )
        .await;
        let last = watch.until_final(preset, TIMEOUT).await;
        assert_eq!(
            last.error_kind,
            Some(ErrorKind::NoCapableWorker),
            "{preset}: {last:#?}"
        );
        let error = last.error.clone().unwrap_or_default();
        assert!(error.contains(element), "{preset}: {error}");
        assert!(!farm.output_exists(&key).await);
        let waited = watch.of(preset).iter().any(|e| e.state == Phase::Waiting);
        assert!(waited, "{preset} waited for a capable worker first");
    }
    // Every preset the worker ships is one of the above.
    checked.extend(HARDWARE.iter().map(|h| h.0));
    for shipped in farm.settings.presets.keys() {
        assert!(
            checked.contains(&shipped.as_str()),
            "preset {shipped} is not checked here"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_and_https_endpoints_work() {
    use crate::common::farm::Rabbit;
    use crate::common::services::{free_port, shared_s3, RabbitNode, RabbitOptions};
    use crate::common::tls::{tls_relay, TestCa};

    let ca = TestCa::new();
    let tls_port = free_port();
    let node = std::sync::Arc::new(RabbitNode::start(
        RabbitOptions::default()
            .conf(format!("listeners.ssl.default = {tls_port}"))
            .conf(format!(
                "ssl_options.cacertfile = {}",
                ca.ca_file().display()
            ))
            .conf(format!(
                "ssl_options.certfile = {}",
                ca.cert_file().display()
            ))
            .conf(format!("ssl_options.keyfile = {}", ca.key_file().display()))
            .conf("ssl_options.verify = verify_none")
            .conf("ssl_options.fail_if_no_peer_cert = false"),
    ));
    let s3 = shared_s3();
    let s3_port = s3.port();
    let https_port = tls_relay(&ca, s3_port).await.port();
    let farm = Farm::s3_on(Rabbit::Own(node.clone()), s3, &[]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let amqps = format!("amqps://guest:guest@localhost:{tls_port}/%2f");
    let https = format!("https://localhost:{https_port}");
    let ca_file = ca.ca_file().display().to_string();
    let worker = farm.spawn_worker(&[
        ("AMQP_URL", &amqps),
        ("AWS_S3_ENDPOINT_URL", &https),
        ("SSL_CERT_FILE", &ca_file),
    ]);
    farm.publish_job(json!({"job_id": "tls", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    let last = watch.until_final("tls", TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    let logs = worker.logs();
    assert!(
        logs.contains(&format!("amqps://guest@localhost:{tls_port}")),
        "{logs}"
    );
    assert!(logs.contains(&https), "{logs}");
    assert!(farm.output_exists("o/a.mp4").await);
}

/// A worker that does not trust the broker's certificate (signed by a CA
/// other than the one it trusts) never talks to the broker: every handshake
/// is refused with an error that names the certificate, nothing falls back
/// to plaintext, and the queued job stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_refused_on_amqps() {
    use crate::common::tls::{tls_relay, TestCa};

    let farm = Farm::s3(&[]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    farm.publish_job(json!({"job_id": "tls", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    // The broker's TLS endpoint presents a certificate of `server_ca`; the
    // worker trusts `other_ca` only.
    let server_ca = TestCa::new();
    let other_ca = TestCa::new();
    let relay = tls_relay(&server_ca, farm.rabbit.port()).await;
    let amqps = format!("amqps://guest:guest@localhost:{}/%2f", relay.port());
    let trusted = other_ca.ca_file().display().to_string();
    let mut worker = farm.spawn_worker(&[("AMQP_URL", &amqps), ("SSL_CERT_FILE", &trusted)]);
    wait_for(TIMEOUT, "three refused connection attempts", || async {
        relay.failed_handshakes() >= 3
            && worker.logs().matches("cannot reach the broker").count() >= 3
    })
    .await;
    let logs = worker.logs();
    assert_eq!(
        relay.handshakes(),
        0,
        "a TLS session was established: {logs}"
    );
    assert!(logs.contains("certificate verify failed"), "{logs}");
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker keeps waiting for a broker it can trust: {logs}"
    );
    // No plaintext fallback either: nobody consumes, and the job is still queued.
    assert_eq!(farm.queue_state().await, (1, 0));
    assert!(!farm.output_exists("o/a.mp4").await);
}

/// A worker that does not trust the S3 endpoint's certificate downloads
/// nothing: the job fails with `storage_unavailable` and a reason naming the
/// certificate, no TLS session is ever established and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_storage_certificate_is_refused_on_https() {
    use crate::common::services::shared_s3;
    use crate::common::tls::{tls_relay, TestCa};

    let once = [
        ("TRANSCODE_WORKER__MAX_ATTEMPTS", "1"),
        ("TRANSCODE_STORAGE__RETRY_FOR", "1s"),
    ];
    let farm = Farm::s3(&once).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let server_ca = TestCa::new();
    let other_ca = TestCa::new();
    let relay = tls_relay(&server_ca, shared_s3().port()).await;
    let https = format!("https://localhost:{}", relay.port());
    let trusted = other_ca.ca_file().display().to_string();
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[("AWS_S3_ENDPOINT_URL", &https), ("SSL_CERT_FILE", &trusted)]);
    farm.publish_job(json!({"job_id": "tls", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    let last = watch.until_final("tls", TIMEOUT).await;
    let logs = worker.logs();
    assert_eq!(last.state, Phase::Failed, "{last:#?}\n{logs}");
    assert_eq!(
        last.error_kind,
        Some(transcode_worker::error::ErrorKind::StorageUnavailable),
        "{last:#?}"
    );
    let error = last.error.clone().unwrap_or_default();
    assert!(error.contains("certificate verify failed"), "{error}");
    assert!(
        error.contains(&https),
        "the reason names the endpoint: {error}"
    );
    assert_eq!(relay.handshakes(), 0, "a TLS session was established");
    assert!(relay.failed_handshakes() >= 1);
    assert!(
        !watch
            .of("tls")
            .iter()
            .any(|e| e.state == Phase::Transcoding),
        "nothing was downloaded"
    );
    assert!(!farm.output_exists("o/a.mp4").await);
    let dead = farm.wait_dead_letters(TIMEOUT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1["x-error-kind"], "storage_unavailable");
}
