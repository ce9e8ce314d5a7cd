//! Restore's refusals: a target that holds data, and snapshot files that are truncated or
//! corrupted, leave the target untouched.

use super::*;

/// A snapshot file of a backend holding a format marker and one revision record.
fn snapshot_file(dir: &Path) -> PathBuf {
    let backend = crate::backend::MemBackend::new();
    format::check_or_init(&backend).unwrap();
    let (_, file) = snapshot::build(&backend, &dir.join("snap")).unwrap();
    file.path().to_path_buf()
}

#[test]
fn restore_refuses_a_target_that_holds_anything_but_lost_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let file = snapshot_file(dir.path());
    let target = dir.path().join("volume");
    std::fs::create_dir_all(target.join("lost+found")).unwrap();
    std::fs::write(target.join("member"), b"old data").unwrap();
    let err = restore(&file, &target).unwrap_err();
    assert!(matches!(&err, BackupError::TargetNotEmpty { entry, .. } if entry == "member"), "{err}");
    assert_eq!(std::fs::read(target.join("member")).unwrap(), b"old data");

    std::fs::remove_file(target.join("member")).unwrap();
    let summary = restore(&file, &target).expect("a volume root with lost+found is fine");
    assert_eq!(summary.keys, 0);
    assert!(target.join(DB_DIR).is_dir() && !target.join(RESTORING_DIR).exists());
}

#[test]
fn truncated_and_corrupted_files_are_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = snapshot_file(dir.path());
    let bytes = std::fs::read(&file).unwrap();

    let truncated = dir.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
    let target = dir.path().join("a");
    let err = restore(&truncated, &target).unwrap_err();
    assert!(matches!(err, BackupError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("is truncated"), "{err}");
    assert!(!target.exists(), "nothing written for a truncated file");
    assert!(matches!(inspect(&truncated).unwrap_err(), BackupError::Truncated { .. }));

    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let corrupted = dir.path().join("corrupted.snap");
    std::fs::write(&corrupted, &flipped).unwrap();
    let err = restore(&corrupted, &target).unwrap_err();
    assert!(matches!(err, BackupError::Corrupted { .. } | BackupError::Truncated { .. }), "{err}");
    assert!(!target.exists(), "nothing written for a corrupted file");

    let garbage = dir.path().join("garbage.snap");
    std::fs::write(&garbage, b"not a snapshot at all").unwrap();
    let err = inspect(&garbage).unwrap_err();
    assert!(err.to_string().contains("corrupted") && err.to_string().contains("bad magic"), "{err}");
}

#[test]
fn files_with_etcds_padding_and_sha256_trailer_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(snapshot_file(dir.path())).unwrap();
    bytes.resize(bytes.len() + snapshot::etcd_padding(bytes.len() as u64) as usize, 0);
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    bytes.extend_from_slice(digest.as_ref());
    assert_eq!(bytes.len() as u64 % snapshot::ETCD_PAGE, snapshot::ETCD_DIGEST as u64, "etcdctl's shape");
    let with_trailer = dir.path().join("etcdctl.snap");
    std::fs::write(&with_trailer, &bytes).unwrap();
    assert_eq!(inspect(&with_trailer).unwrap().keys, 0);

    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&with_trailer, &bytes).unwrap();
    let err = inspect(&with_trailer).unwrap_err();
    assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
}
