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
