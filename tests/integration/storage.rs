//! Storage against a real S3 server over HTTP: streamed multipart upload
//! with metadata, streamed download (in parts, of one version of the
//! object) checked against the object size, clear errors for missing
//! objects and an unreachable server.

use std::collections::HashMap;
use std::io::Write;

use transcode_worker::config::Settings;
use transcode_worker::storage::{LocalInput, ObjectInfo, Storage, StorageError, Transferred};

use crate::common::services::{shared_s3, S3Server};

fn settings_for(s3: &S3Server, bucket: &str, retry_for: &str) -> Settings {
    let env: HashMap<String, String> = [
        ("AWS_ACCESS_KEY_ID", s3.access_key()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key()),
        ("AWS_S3_ENDPOINT_URL", s3.endpoint()),
        ("AWS_REGION", s3.region()),
        ("S3_BUCKET_NAME", bucket),
        ("TRANSCODE_STORAGE__RETRY_FOR", retry_for),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Settings::from_env(None, &env).unwrap()
}

/// Writes 40 MiB plus 4 bytes to `path` (three 16 MiB parts, the last one
/// short), each byte depending on `seed`; returns the size.
fn write_big(path: &std::path::Path, seed: u8) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for i in 0..40u8 {
        block
            .iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = (j as u8) ^ i ^ seed);
        file.write_all(&block).unwrap();
    }
    file.write_all(b"tail").unwrap();
    drop(file);
    std::fs::metadata(path).unwrap().len()
}

/// `in/big.bin` of `storage` fetched into `scratch` as `info` describes it.
async fn fetch_as(
    storage: &Storage,
    info: &ObjectInfo,
    scratch: &std::path::Path,
) -> Result<LocalInput, StorageError> {
    let counter = Transferred::default();
    storage
        .fetch_known("in/big.bin", info, scratch, &counter)
        .await
}

/// A 40 MiB object comes down in three parts of 16 MiB (the last one
/// short), four at a time by default, each into its place in the file: the
/// file is the object, every byte counted once. The parts are all of one
/// version: a download sized by a HEAD made before the object was replaced
/// (by another of the same size) fails, saying so, where one request
/// (`download_concurrency = 1`) brings the object as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_is_downloaded_in_parts_all_of_one_version() {
    let s3 = shared_s3();
    let bucket = s3.random_bucket().await;
    let settings = settings_for(s3, &bucket.name(), "1s");
    assert_eq!(settings.storage.download_concurrency, 4);
    let storage = Storage::from_settings(&settings.storage).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first.bin"), dir.path().join("second.bin"));
    let size = write_big(&first, 0);
    assert_eq!(write_big(&second, 0x5a), size);
    let none = Transferred::default();
    storage
        .store(&first, "in/big.bin", &[], &none)
        .await
        .unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let got = Transferred::default();
    let input = storage
        .fetch("in/big.bin", scratch.path(), &got)
        .await
        .unwrap();
    assert_eq!((input.size, got.get()), (size, size));
    assert!(std::fs::read(&input.path).unwrap() == std::fs::read(&first).unwrap());

    let before = storage.head("in/big.bin").await.unwrap().unwrap();
    storage
        .store(&second, "in/big.bin", &[], &none)
        .await
        .unwrap();
    let err = fetch_as(&storage, &before, scratch.path())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    assert!(
        err.to_string().contains("changed while it was downloaded"),
        "{err}"
    );

    let mut one = settings.clone();
    one.storage.download_concurrency = 1;
    let one = Storage::from_settings(&one.storage).unwrap();
    let input = fetch_as(&one, &before, scratch.path()).await.unwrap();
    assert!(std::fs::read(&input.path).unwrap() == std::fs::read(&second).unwrap());
}

/// A server that answers a range request with the whole object (HTTP
/// 200) gets the download in one request instead: the file is the object,
/// every byte counted once (the whole object's answer to a range is not
/// read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_range_reads_gets_the_download_in_one_request() {
    let s3 = S3Server::start_ignoring_ranges();
    let bucket = s3.random_bucket().await;
    let settings = settings_for(&s3, &bucket.name(), "1s");
    let storage = Storage::from_settings(&settings.storage).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let size = write_big(&src, 7);
    storage
        .store(&src, "in/big.bin", &[], &Transferred::default())
        .await
        .unwrap();
    let got = Transferred::default();
    let input = storage.fetch("in/big.bin", dir.path(), &got).await.unwrap();
    assert_eq!((input.size, got.get()), (size, size));
    assert!(std::fs::read(&input.path).unwrap() == std::fs::read(&src).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_round_trips_through_multipart_upload_with_metadata() {
    let s3 = shared_s3();
    let bucket = s3.random_bucket().await;
    let storage = Storage::from_settings(&settings_for(s3, &bucket.name(), "5s").storage).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 40 MiB plus a bit: three 16 MiB parts, the last one short, each
    // streamed from the file.
    let src = dir.path().join("big.bin");
    let size = write_big(&src, 0);

    let sent = Transferred::default();
    let meta = vec![("transcode-job-id".to_string(), "j1".to_string())];
    storage
        .store(&src, "videos/out put.mp4", &meta, &sent)
        .await
        .unwrap();
    assert_eq!(sent.get(), size);
    let info = storage.head("videos/out put.mp4").await.unwrap().unwrap();
    assert_eq!(info.size, size);
    assert!(
        info.metadata
            .iter()
            .any(|(k, v)| k.ends_with("transcode-job-id") && v == "j1"),
        "{:?}",
        info.metadata
    );

    let scratch = tempfile::tempdir().unwrap();
    let got = Transferred::default();
    let input = storage
        .fetch("videos/out put.mp4", scratch.path(), &got)
        .await
        .unwrap();
    assert_eq!(input.size, size);
    assert_eq!(got.get(), size);
    assert!(std::fs::read(&input.path).unwrap() == std::fs::read(&src).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_and_unreachable_servers_give_specific_errors() {
    let s3 = shared_s3();
    let bucket = s3.random_bucket().await;
    let storage = Storage::from_settings(&settings_for(s3, &bucket.name(), "1s").storage).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let err = storage
        .fetch("no/such.wmv", scratch.path(), &Transferred::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no/such.wmv"), "{err}");

    let own = S3Server::start();
    let settings = settings_for(&own, "gone", "1s");
    own.stop();
    let storage = Storage::from_settings(&settings.storage).unwrap();
    let err = storage.head("x").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
}

/// The multipart upload a killed attempt left behind (initiated, a part
/// stored, never completed) is listed and aborted by the next upload of the
/// same key; uploads of other keys are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_uploads_of_earlier_attempts_are_aborted() {
    let s3 = shared_s3();
    let bucket = s3.random_bucket().await;
    // An upload a killed worker left behind: initiated, one part, never completed.
    let left = bucket
        .initiate_multipart_upload("v/out.mp4", "video/mp4")
        .await
        .unwrap();
    bucket
        .put_multipart_chunk(
            vec![1u8; 5 << 20],
            "v/out.mp4",
            1,
            &left.upload_id,
            "video/mp4",
        )
        .await
        .unwrap();
    let unfinished = |bucket: Box<s3::Bucket>| async move {
        bucket
            .list_multiparts_uploads(Some("v/"), None)
            .await
            .unwrap()
            .iter()
            .flat_map(|p| p.uploads.iter().map(|u| u.key.clone()))
            .collect::<std::collections::BTreeSet<_>>()
    };
    // Another key's upload, under the same prefix, must be left alone.
    bucket
        .initiate_multipart_upload("v/out.mp4.bak", "video/mp4")
        .await
        .unwrap();
    // In a set: Garage 2.5.0 lists `v/out.mp4.bak` first.
    assert_eq!(
        unfinished(bucket.clone()).await,
        ["v/out.mp4", "v/out.mp4.bak"].map(String::from).into()
    );

    let storage = Storage::from_settings(&settings_for(s3, &bucket.name(), "5s").storage).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("out.mp4");
    std::fs::write(&src, b"a finished output").unwrap();
    storage
        .store(&src, "v/out.mp4", &[], &Transferred::default())
        .await
        .unwrap();
    assert_eq!(
        unfinished(bucket.clone()).await,
        ["v/out.mp4.bak"].map(String::from).into()
    );
    assert_eq!(storage.head("v/out.mp4").await.unwrap().unwrap().size, 17);
}

/// A create-if-absent (`If-None-Match: *`, what the claims of segmented
/// jobs use) has one winner when many ask at once, as on S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_if_absent_has_one_winner_when_many_ask_at_once() {
    let s3 = shared_s3();
    let bucket = s3.random_bucket().await;
    let storage = Storage::from_settings(&settings_for(s3, &bucket.name(), "5s").storage).unwrap();
    for round in 0..5 {
        let key = format!("claims/{round}.json");
        let asks = (0..16).map(|i| {
            let (storage, key) = (&storage, &key);
            async move { storage.put_small_new(key, format!("{i}").as_bytes()).await }
        });
        let won: Vec<bool> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .map(|r| r.expect("a put"))
            .collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
    }
}

/// A worker finds out whether the storage settles a create-if-absent with
/// one winner before it relies on it: a server that honours
/// `If-None-Match: *` gives one winner of eight asking at once, one that
/// ignores it (as Garage 2.5.0 does) gives eight, one that refuses it
/// answers `NotImplemented`, one that fails it whatever is there gives
/// none; the object asked for is removed either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_that_ignores_create_if_absent_is_found_out() {
    let ignoring = S3Server::start_ignoring_conditional_writes();
    let refusing = S3Server::start_refusing_conditional_writes();
    let failing = S3Server::start_failing_conditional_writes();
    let cases = [
        (shared_s3(), None),
        (&ignoring, Some(["8 of 8 create-if-absent requests (If-None-Match: *) made at once for one key succeeded, so the storage ignores the condition", ""])),
        (&failing, Some(["none of 8 create-if-absent requests (If-None-Match: *) made at once for one new key succeeded, where one should", ""])),
        (&refusing, Some(["the storage refuses a create-if-absent (If-None-Match: *): ", "answered HTTP 501 (NotImplemented) to a PUT with If-None-Match"])),
    ];
    for (s3, flaw) in cases {
        let bucket = s3.random_bucket().await;
        let storage =
            Storage::from_settings(&settings_for(s3, &bucket.name(), "5s").storage).unwrap();
        let found = storage.create_if_absent_flaw("probe/1.json").await.unwrap();
        match (flaw, &found) {
            (None, None) => {}
            (Some([start, end]), Some(found))
                if found.starts_with(start) && found.ends_with(end) => {}
            _ => panic!("{}: found {found:?}, expected {flaw:?}", s3.endpoint()),
        }
        assert!(
            storage.list("").await.unwrap().is_empty(),
            "the probe is removed"
        );
    }
}
