//! Unit tests of `objects`, on the directory backend.

use super::*;
use crate::storage::directory::DirStore;

fn plan() -> SegmentPlan {
    serde_json::from_value(serde_json::json!({
        "plan_id": "p1", "job_id": "job-1", "message": "{}", "queue": "q",
        "attempt": 1, "fingerprint": "f", "video": "x264enc", "audio": "a",
        "muxer": "matroskamux", "input_size": 10, "media": {},
        "frames": 100, "first_ns": 0, "end_ns": 4_000_000_000u64, "frame_ns": 40_000_000,
        "cuts": [], "split_by": "w", "created_at": "t"
    }))
    .unwrap()
}

#[tokio::test]
async fn claims_are_won_once_and_everything_goes_with_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::Directory(DirStore::new(dir.path()).unwrap());
    let objects = Objects::new(&storage, "_transcode/segments/");
    let plan = plan();
    objects.write_plan(&plan).await.unwrap();
    assert_eq!(objects.plan("job-1").await.unwrap(), Some(plan.clone()));
    assert_eq!(
        objects.part_key(&plan, Part::Video(2)),
        "_transcode/segments/job-1/p1/v0002.mkv"
    );
    let done = Done {
        part: "v0002".into(),
        worker: "w".into(),
        frames: 50,
        tracks: 0,
        first_ns: 0,
        end_ns: 2,
        size: 1,
        encode_ms: 3,
        at: "t".into(),
    };
    objects
        .write_done(&plan, Part::Video(2), &done)
        .await
        .unwrap();
    objects.write_done(&plan, Part::Audio, &done).await.unwrap();
    assert_eq!(
        objects.stored_parts(&plan).await.unwrap(),
        [Part::Video(2), Part::Audio]
    );
    let first = End::new(Part::Video(2), Ending::Join, None, "w1");
    let second = End::new(Part::Audio, Ending::Join, None, "w2");
    assert_eq!(objects.claim_end(&plan, &first).await.unwrap(), first);
    assert_eq!(objects.claim_end(&plan, &second).await.unwrap(), first);
    assert_eq!(objects.audio_claim(&plan).await.unwrap(), None);
    let carrier = AudioClaim::new(Part::Video(1), "w1");
    let late = AudioClaim::new(Part::Video(3), "w2");
    assert_eq!(objects.claim_audio(&plan, &carrier).await.unwrap(), carrier);
    assert_eq!(objects.claim_audio(&plan, &late).await.unwrap(), carrier);
    assert_eq!(objects.audio_claim(&plan).await.unwrap(), Some(carrier));
    assert!(objects
        .abandoned(Duration::from_secs(3600))
        .await
        .unwrap()
        .is_empty());
    let old = objects.abandoned(Duration::ZERO).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].plan.as_ref(), Some(&plan));
    let other = Objects::new(&storage, "_transcode/segments/");
    let mut plan2 = plan.clone();
    plan2.job_id = "job-2".into();
    other.write_plan(&plan2).await.unwrap();
    assert_eq!(objects.remove("job-1").await.unwrap(), 5);
    // The job's folders go with its objects; another job's stay.
    let segments = dir.path().join("_transcode/segments");
    assert!(!segments.join("job-1").exists());
    assert!(segments.join("job-2/plan.json").exists());
    other.remove("job-2").await.unwrap();
    assert!(!segments.join("job-2").exists());
    assert!(storage.list("_transcode/").await.unwrap().is_empty());
    assert_eq!(objects.plan("job-1").await.unwrap(), None);
}

#[tokio::test]
async fn the_directory_backend_settles_claims_and_its_probe_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::Directory(DirStore::new(dir.path()).unwrap());
    let objects = Objects::new(&storage, "_transcode/segments/");
    assert_eq!(objects.claims_flaw().await.unwrap(), None);
    assert!(storage.list("_transcode/").await.unwrap().is_empty());
    assert!(!dir.path().join("_transcode/segments/~probe").exists());
    // A probe left behind (its worker died) is an abandoned job's
    // leftovers: found and removed.
    storage
        .put_small("_transcode/segments/~probe/x.json", b"{}")
        .await
        .unwrap();
    let old = objects.abandoned(Duration::ZERO).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!((old[0].job_id.as_str(), &old[0].plan), ("~probe", &None));
    objects.remove("~probe").await.unwrap();
    assert!(storage.list("_transcode/").await.unwrap().is_empty());
}

#[test]
fn listing_times_of_both_backends_are_read() {
    let s3 = modified_at("2024-05-01T10:00:00.000Z").unwrap();
    let dir = modified_at("1714557600000000000").unwrap();
    assert_eq!(s3, dir);
    assert!(modified_at("yesterday").is_none());
}
