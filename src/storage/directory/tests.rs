//! Unit tests of `directory`.

use super::*;

#[tokio::test]
async fn keys_are_confined_to_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    for key in ["../x", "/etc/passwd", "a/../../x", "", ".", "a\0b"] {
        assert!(
            matches!(store.join(key), Err(StorageError::InvalidKey { .. })),
            "{key:?}"
        );
    }
    assert_eq!(store.join("./a/b.mp4").unwrap(), store.root.join("a/b.mp4"));
}

#[tokio::test]
async fn symlinks_leading_outside_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let err = store.fetch("escape/secret", 1).await.unwrap_err();
    assert!(matches!(err, StorageError::InvalidKey { .. }), "{err}");
    let src = dir.path().join("src");
    std::fs::write(&src, b"data").unwrap();
    let err = store
        .store(&src, "escape/out.mp4", &[], &Transferred::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidKey { .. }), "{err}");
    assert!(!outside.path().join("out.mp4").exists());
}

#[tokio::test]
async fn store_creates_folders_and_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, vec![7u8; 100_000]).unwrap();
    let counter = Transferred::default();
    store
        .store(&src, "out/a b/c.mp4", &[], &counter)
        .await
        .unwrap();
    assert_eq!(counter.get(), 100_000);
    let stored = dir.path().join("out/a b/c.mp4");
    assert_eq!(std::fs::read(&stored).unwrap().len(), 100_000);
    let names: Vec<_> = std::fs::read_dir(dir.path().join("out/a b"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["c.mp4"]);
    // With metadata, a sidecar keeps it.
    let meta = vec![("transcode-job-id".to_string(), "j1".to_string())];
    store
        .store(&src, "out/d.mp4", &meta, &counter)
        .await
        .unwrap();
    let info = store.head("out/d.mp4").await.unwrap().unwrap();
    assert_eq!(info.metadata, meta);
    let info = store.head("out/a b/c.mp4").await.unwrap().unwrap();
    assert_eq!(info.size, 100_000);
    assert!(store.head("missing").await.unwrap().is_none());
    assert!(matches!(
        store.fetch("missing", 0).await,
        Err(StorageError::NotFound { .. })
    ));
}

#[tokio::test]
async fn listing_walks_the_prefix_folder_and_leaves_out_hidden_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, b"12345").unwrap();
    let meta = vec![("transcode-job-id".to_string(), "j1".to_string())];
    for key in ["up/a b.mov", "up/sub/c.mov", "upper.mov", "other/d.mov"] {
        store
            .store(&src, key, &meta, &Transferred::default())
            .await
            .unwrap();
    }
    std::fs::write(dir.path().join("up/.hidden.mov"), b"x").unwrap();
    std::os::unix::fs::symlink("a b.mov", dir.path().join("up/link.mov")).unwrap();
    let keys = |mut listed: Vec<Listed>| {
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        listed.into_iter().map(|l| l.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(store.list("up/").await.unwrap()),
        ["up/a b.mov", "up/sub/c.mov"]
    );
    assert_eq!(
        keys(store.list("up").await.unwrap()),
        ["up/a b.mov", "up/sub/c.mov", "upper.mov"]
    );
    assert_eq!(
        keys(store.list("up/sub/c").await.unwrap()),
        ["up/sub/c.mov"]
    );
    assert!(store.list("nothing/").await.unwrap().is_empty());
    assert!(store.list("../").await.is_err());
    // The listing's version is the one a look-up gives, and a rewrite
    // changes it.
    let listed = store.list("up/a").await.unwrap().remove(0);
    assert_eq!(listed.size, 5);
    let info = store.head("up/a b.mov").await.unwrap().unwrap();
    assert_eq!(info.version, listed.version);
    std::fs::write(&src, b"123456").unwrap();
    store
        .store(&src, "up/a b.mov", &[], &Transferred::default())
        .await
        .unwrap();
    let info = store.head("up/a b.mov").await.unwrap().unwrap();
    assert_ne!(info.version, listed.version);
}

#[tokio::test]
async fn fetch_takes_the_size_it_is_given_and_checks_the_file_is_still_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/a.wmv"), b"12345").unwrap();
    let info = store.head("in/a.wmv").await.unwrap().unwrap();
    assert_eq!(info.size, 5);
    let input = store.fetch("in/a.wmv", info.size).await.unwrap();
    assert_eq!(input.path, store.root.join("in/a.wmv"));
    assert_eq!(input.size, 5);
    // The size comes from the caller's look-up, not from a second one.
    std::fs::write(dir.path().join("in/a.wmv"), b"1234567").unwrap();
    assert_eq!(store.fetch("in/a.wmv", 5).await.unwrap().size, 5);
    // Gone, or a folder now, since that look-up: not found, clearly.
    std::fs::remove_file(dir.path().join("in/a.wmv")).unwrap();
    let err = store.fetch("in/a.wmv", 5).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("in/a.wmv"), "{err}");
    std::fs::create_dir(dir.path().join("in/a.wmv")).unwrap();
    let err = store.fetch("in/a.wmv", 5).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    // A symbolic link to a file inside the root is read through.
    std::fs::write(dir.path().join("in/b.wmv"), b"xy").unwrap();
    std::os::unix::fs::symlink("b.wmv", dir.path().join("in/link.wmv")).unwrap();
    let input = store.fetch("in/link.wmv", 2).await.unwrap();
    assert_eq!(input.path, store.root.join("in/b.wmv"));
}
