//! One conformance suite for every [`Backend`]: each check runs against the in-memory and the RocksDB
//! implementation, so tests that use the fast in-memory backend say something about production.

use super::*;

fn put(backend: &dyn Backend, cf: Cf, pairs: &[(&[u8], &[u8])]) {
    let mut batch = WriteBatch::new();
    for (k, v) in pairs {
        batch.put(cf, *k, *v);
    }
    backend.write(batch, Durability::Synced).unwrap();
}

fn collect_forward(backend: &dyn Backend, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut cursor = backend.cursor(cf);
    cursor.seek_to_first();
    let mut out = Vec::new();
    while let Some((k, v)) = cursor.entry() {
        out.push((k.to_vec(), v.to_vec()));
        cursor.next();
    }
    cursor.status().unwrap();
    out
}

fn get_returns_what_was_put(backend: &dyn Backend) {
    assert_eq!(backend.get(Cf::Revs, b"a").unwrap(), None);
    put(backend, Cf::Revs, &[(b"a", b"1"), (b"b", b"2")]);
    assert_eq!(backend.get(Cf::Revs, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        backend.multi_get(Cf::Revs, &[b"b".to_vec(), b"zz".to_vec(), b"a".to_vec()]).unwrap(),
        vec![Some(b"2".to_vec()), None, Some(b"1".to_vec())]
    );
}

fn column_families_are_independent(backend: &dyn Backend) {
    put(backend, Cf::Revs, &[(b"k", b"revs")]);
    put(backend, Cf::Index, &[(b"k", b"index")]);
    assert_eq!(backend.get(Cf::Revs, b"k").unwrap(), Some(b"revs".to_vec()));
    assert_eq!(backend.get(Cf::Index, b"k").unwrap(), Some(b"index".to_vec()));
    assert_eq!(backend.get(Cf::Meta, b"k").unwrap(), None);
}

fn cursor_orders_keys_bytewise(backend: &dyn Backend) {
    put(backend, Cf::Index, &[(b"b", b""), (b"a\xff", b""), (b"a", b""), (b"\x00", b""), (b"a\x00", b"")]);
    let keys: Vec<Vec<u8>> = collect_forward(backend, Cf::Index).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"\x00".to_vec(), b"a".to_vec(), b"a\x00".to_vec(), b"a\xff".to_vec(), b"b".to_vec()]);
}

fn cursor_seeks_and_steps_both_ways(backend: &dyn Backend) {
    put(backend, Cf::Revs, &[(b"b", b"2"), (b"d", b"4"), (b"f", b"6")]);
    let mut cursor = backend.cursor(Cf::Revs);
    assert_eq!(cursor.entry(), None, "a fresh cursor is unpositioned");
    cursor.seek(b"c");
    assert_eq!(cursor.entry().map(|e| e.0.to_vec()), Some(b"d".to_vec()));
    cursor.next();
    assert_eq!(cursor.entry().map(|e| e.0.to_vec()), Some(b"f".to_vec()));
    cursor.next();
    assert_eq!(cursor.entry(), None);
    cursor.seek_for_prev(b"e");
    assert_eq!(cursor.entry().map(|e| e.0.to_vec()), Some(b"d".to_vec()));
    cursor.prev();
    assert_eq!(cursor.entry().map(|e| e.0.to_vec()), Some(b"b".to_vec()));
    cursor.prev();
    assert_eq!(cursor.entry(), None);
    cursor.seek_for_prev(b"a");
    assert_eq!(cursor.entry(), None);
    cursor.seek(b"g");
    assert_eq!(cursor.entry(), None);
    cursor.seek_to_last();
    assert_eq!(cursor.entry().map(|e| e.1.to_vec()), Some(b"6".to_vec()));
    cursor.seek(b"d");
    assert_eq!(cursor.entry().map(|e| e.0.to_vec()), Some(b"d".to_vec()), "seek is inclusive");
    cursor.seek_for_prev(b"d");
    assert_eq!(cursor.entry().map(|e| e.0.to_vec()), Some(b"d".to_vec()), "seek_for_prev is inclusive");
    cursor.status().unwrap();
}

fn batch_ops_apply_in_order(backend: &dyn Backend) {
    let mut batch = WriteBatch::new();
    batch.put(Cf::Revs, b"x".to_vec(), b"1".to_vec());
    batch.delete(Cf::Revs, b"x".to_vec());
    batch.put(Cf::Revs, b"y".to_vec(), b"1".to_vec());
    batch.put(Cf::Revs, b"y".to_vec(), b"2".to_vec());
    backend.write(batch, Durability::Buffered).unwrap();
    assert_eq!(backend.get(Cf::Revs, b"x").unwrap(), None);
    assert_eq!(backend.get(Cf::Revs, b"y").unwrap(), Some(b"2".to_vec()));
}

fn delete_range_is_half_open(backend: &dyn Backend) {
    put(backend, Cf::RaftLog, &[(b"1", b""), (b"2", b""), (b"3", b""), (b"4", b"")]);
    let mut batch = WriteBatch::new();
    batch.delete_range(Cf::RaftLog, b"2".to_vec(), b"4".to_vec());
    // An empty or inverted range deletes nothing.
    batch.delete_range(Cf::RaftLog, b"4".to_vec(), b"1".to_vec());
    backend.write(batch, Durability::Synced).unwrap();
    let keys: Vec<Vec<u8>> = collect_forward(backend, Cf::RaftLog).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"1".to_vec(), b"4".to_vec()]);
}

fn export_sees_one_point_in_time(backend: &dyn Backend) {
    put(backend, Cf::Meta, &[(b"m", b"1")]);
    put(backend, Cf::Revs, &[(b"a", b"1"), (b"b", b"2")]);
    let mut seen = Vec::new();
    backend
        .export(&[Cf::Meta, Cf::Revs], &mut |cf, k, v| {
            // Writes during the export must not show up in it.
            let mut batch = WriteBatch::new();
            batch.put(Cf::Revs, b"zz".to_vec(), b"late".to_vec());
            backend.write(batch, Durability::Buffered)?;
            seen.push((cf, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        seen,
        vec![
            (Cf::Meta, b"m".to_vec(), b"1".to_vec()),
            (Cf::Revs, b"a".to_vec(), b"1".to_vec()),
            (Cf::Revs, b"b".to_vec(), b"2".to_vec()),
        ]
    );
    assert_eq!(backend.get(Cf::Revs, b"zz").unwrap(), Some(b"late".to_vec()));
}

fn checkpoint_export_sees_one_point_in_time_and_cleans_up(backend: &dyn Backend) {
    let scratch = tempfile::tempdir().unwrap();
    put(backend, Cf::Meta, &[(b"m", b"1")]);
    put(backend, Cf::Leases, &[(b"l", b"2")]);
    let mut seen = Vec::new();
    backend
        .export_checkpoint(scratch.path(), &[Cf::Meta, Cf::Leases], &mut |cf, k, v| {
            let mut batch = WriteBatch::new();
            batch.put(Cf::Leases, b"late".to_vec(), b"x".to_vec());
            backend.write(batch, Durability::Buffered)?;
            seen.push((cf, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, vec![(Cf::Meta, b"m".to_vec(), b"1".to_vec()), (Cf::Leases, b"l".to_vec(), b"2".to_vec())]);
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "the checkpoint is removed");
}

fn a_new_cursor_sees_every_completed_write(backend: &dyn Backend) {
    put(backend, Cf::Revs, &[(b"a", b"1")]);
    let mut batch = WriteBatch::new();
    batch.put(Cf::Revs, b"b".to_vec(), b"2".to_vec());
    batch.delete(Cf::Revs, b"a".to_vec());
    backend.write(batch, Durability::Buffered).unwrap();
    let mut cursor = backend.cursor(Cf::Revs);
    cursor.seek_to_first();
    assert_eq!(cursor.entry().map(|(k, v)| (k.to_vec(), v.to_vec())), Some((b"b".to_vec(), b"2".to_vec())));
    cursor.next();
    assert_eq!(cursor.entry(), None);
}

/// Values that compress no better than random data (the backend compresses with LZ4 and Zstd, so
/// repetitive values would hide how much space deleted data takes): xorshift64 output.
fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn everything(backend: &dyn Backend) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    backend
        .export(&Cf::ALL, &mut |cf, k, v| {
            all.push((cf, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
    all
}

fn defragment_changes_no_data(backend: &dyn Backend) {
    // Puts, overwrites, deletes and a range delete across several column families, so there is
    // garbage of every kind for the defragmentation to drop.
    for round in 0..3u64 {
        let mut batch = WriteBatch::new();
        for i in 0..500u64 {
            let key = format!("key/{i:05}").into_bytes();
            batch.put(Cf::Revs, key.clone(), incompressible(round * 1000 + i, 100));
            batch.put(Cf::Index, key, round.to_be_bytes().to_vec());
        }
        backend.write(batch, Durability::Buffered).unwrap();
    }
    let mut batch = WriteBatch::new();
    for i in (0..500u64).step_by(3) {
        batch.delete(Cf::Revs, format!("key/{i:05}").into_bytes());
    }
    batch.delete_range(Cf::Index, b"key/00100".to_vec(), b"key/00200".to_vec());
    batch.put(Cf::Meta, b"m".to_vec(), b"kept".to_vec());
    backend.write(batch, Durability::Synced).unwrap();
    let before = everything(backend);

    backend.defragment().unwrap();
    assert_eq!(everything(backend), before, "defragmenting changed the data");
    assert_eq!(collect_forward(backend, Cf::Revs).len(), 500 - 167);
    assert_eq!(backend.get(Cf::Index, b"key/00150").unwrap(), None);
    assert_eq!(backend.get(Cf::Meta, b"m").unwrap(), Some(b"kept".to_vec()));

    // The backend goes on working normally afterwards.
    put(backend, Cf::Revs, &[(b"after", b"1")]);
    assert_eq!(backend.get(Cf::Revs, b"after").unwrap(), Some(b"1".to_vec()));
    backend.defragment().unwrap();
    assert_eq!(backend.get(Cf::Revs, b"after").unwrap(), Some(b"1".to_vec()));
}

fn prefix_end_is_the_least_upper_bound() {
    assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
    assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
    assert_eq!(prefix_end(b""), None);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $name() {
                    let backend = super::MemBackend::new();
                    super::$name(&backend);
                }
            )*
        }
        mod rocksdb {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let backend = super::RocksBackend::open(dir.path(), &super::RocksOptions::default()).unwrap();
                    super::$name(&backend);
                }
            )*
        }
    };
}

conformance!(
    get_returns_what_was_put,
    column_families_are_independent,
    cursor_orders_keys_bytewise,
    cursor_seeks_and_steps_both_ways,
    batch_ops_apply_in_order,
    delete_range_is_half_open,
    export_sees_one_point_in_time,
    checkpoint_export_sees_one_point_in_time_and_cleans_up,
    a_new_cursor_sees_every_completed_write,
    defragment_changes_no_data,
);

#[test]
fn prefix_end_is_correct() {
    prefix_end_is_the_least_upper_bound();
}

#[test]
fn rocksdb_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = RocksBackend::open(dir.path(), &RocksOptions::default()).unwrap();
        put(&backend, Cf::RaftLog, &[(b"1", b"entry")]);
    }
    let backend = RocksBackend::open(dir.path(), &RocksOptions::default()).unwrap();
    assert_eq!(backend.get(Cf::RaftLog, b"1").unwrap(), Some(b"entry".to_vec()));
}

/// Keys written by [`fill_then_delete_nine_in_ten`], 2 KiB each.
const RECLAIM_KEYS: u64 = 4_000;

/// Writes `RECLAIM_KEYS` incompressible values to `Revs`, moves them into table files (as a long
/// life would, so later deletes shadow data on disk rather than in the memtable), then deletes
/// nine keys in ten. Returns the size the full data took.
fn fill_then_delete_nine_in_ten(backend: &RocksBackend) -> u64 {
    for chunk in 0..RECLAIM_KEYS / 500 {
        let mut batch = WriteBatch::new();
        for i in chunk * 500..(chunk + 1) * 500 {
            batch.put(Cf::Revs, i.to_be_bytes().to_vec(), incompressible(i, 2048));
        }
        backend.write(batch, Durability::Buffered).unwrap();
    }
    backend.defragment().unwrap();
    let full = backend.size_bytes();
    assert!(full > RECLAIM_KEYS * 2048 * 9 / 10, "the data takes its size on disk: {full} bytes");
    let mut batch = WriteBatch::new();
    for i in (0..RECLAIM_KEYS).filter(|i| i % 10 != 0) {
        batch.delete(Cf::Revs, i.to_be_bytes().to_vec());
    }
    backend.write(batch, Durability::Synced).unwrap();
    full
}

#[test]
fn rocksdb_defragment_reclaims_the_space_of_deleted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RocksBackend::open(dir.path(), &RocksOptions::default()).unwrap();
    let full = fill_then_delete_nine_in_ten(&backend);
    let deleted = backend.size_bytes();
    assert!(deleted >= full, "deleting alone reclaims nothing: {deleted} < {full}");

    backend.defragment().unwrap();
    let defragmented = backend.size_bytes();
    assert!(defragmented < full / 5, "defragmenting should leave about a tenth of {full} bytes, left {defragmented}");
    assert_eq!(collect_forward(&backend, Cf::Revs).len() as u64, RECLAIM_KEYS / 10);
    assert_eq!(backend.get(Cf::Revs, &10u64.to_be_bytes()).unwrap(), Some(incompressible(10, 2048)));
}

#[test]
fn rocksdb_reclaim_deleted_frees_the_space_of_deleted_keys_without_a_defragmentation() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RocksBackend::open(dir.path(), &RocksOptions::default()).unwrap();
    let full = fill_then_delete_nine_in_ten(&backend);
    backend.reclaim_deleted(&[Cf::Revs]).unwrap();

    // RocksDB compacts the marked file on its own threads: wait for it, boundedly.
    let mut reclaimed = backend.size_bytes();
    for _ in 0..600 {
        if reclaimed < full / 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        reclaimed = backend.size_bytes();
    }
    assert!(
        reclaimed < full / 5,
        "about a tenth of {full} bytes should be left without a defragmentation, left {reclaimed}"
    );
    assert_eq!(collect_forward(&backend, Cf::Revs).len() as u64, RECLAIM_KEYS / 10);
    assert_eq!(backend.get(Cf::Revs, &10u64.to_be_bytes()).unwrap(), Some(incompressible(10, 2048)));
}
