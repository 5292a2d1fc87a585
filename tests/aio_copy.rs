//! COPY on the async front: `copy_in` → `CopyInWriter` (`AsyncWrite`,
//! `finish`), `copy_out` → `CopyOutReader` (`AsyncRead`). What is stored
//! is counted from another connection; an unfinished COPY stores nothing
//! and is reported.

mod common;

use common::aio::{begun, manager, outside};
use common::fixtures::Db;
use pgtx::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn lines(from: i32, to: i32) -> String {
    (from..=to).map(|id| format!("{id}\titem {id}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_copied_in_a_transaction_are_stored_once_it_commits_and_read_back_out() {
    let db = outside(|| Db::new("aio_copy_roundtrip"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    let mut writer = tx
        .copy_in("COPY items (id, note) FROM STDIN")
        .await
        .expect("started");
    // Many writes, past the 64 KiB a chunk holds.
    let data = lines(1, 20_000);
    for piece in data.as_bytes().chunks(1000) {
        writer.write_all(piece).await.expect("written");
    }
    assert_eq!(writer.finish().await.expect("finished"), 20_000);
    assert!(outside(|| db.item_ids()).is_empty(), "not before COMMIT");
    tx.commit().await.expect("commit");
    assert_eq!(outside(|| db.item_ids()).len(), 20_000);

    let mut guard = manager.lock().await.expect("lock");
    let mut reader = guard
        .copy_out("COPY (SELECT id, note FROM items ORDER BY id) TO STDOUT")
        .await
        .expect("started");
    let mut out = String::new();
    reader.read_to_string(&mut out).await.expect("read");
    assert_eq!(out, data, "what went in comes out");
    drop(reader);
    let n: i64 = guard
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("the guard goes on")
        .get(0);
    assert_eq!(n, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_dropped_before_finish_stores_nothing_aborts_its_transaction_and_is_reported() {
    let db = outside(|| Db::new("aio_copy_dropped"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (100, 'before')", &[])
        .await
        .expect("insert");
    {
        let mut writer = tx
            .copy_in("COPY items (id, note) FROM STDIN")
            .await
            .expect("started");
        writer
            .write_all(lines(1, 5000).as_bytes())
            .await
            .expect("written");
        writer.flush().await.expect("sent");
        // Dropped without finish.
    }
    let after = tx.execute("SELECT 1", &[]).await;
    assert!(
        after.is_err(),
        "the failed COPY aborted the transaction: {after:?}"
    );
    let commit = tx.commit().await.map(drop);
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(outside(|| db.item_ids()).is_empty());
    assert_eq!(
        manager.unfinished_transactions(),
        1,
        "the unfinished COPY is reported"
    );
    assert_eq!(outside(|| db.open_transactions()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_fails_finish_with_the_servers_error_and_nothing_is_stored() {
    let db = outside(|| Db::new("aio_copy_bad_row"));
    let manager = manager(&db);
    let mut guard = manager.lock().await.expect("lock");
    let mut writer = guard
        .copy_in("COPY items (id, note) FROM STDIN")
        .await
        .expect("started");
    writer
        .write_all(b"1\tone\nnot a number\ttwo\n3\tthree\n")
        .await
        .expect("buffered");
    let err = writer.finish().await.expect_err("a bad row");
    assert_eq!(
        err.code(),
        Some(&pgtx::SqlState::INVALID_TEXT_REPRESENTATION)
    );
    assert!(outside(|| db.item_ids()).is_empty(), "none of it stored");
    let refused = guard.copy_in("SELECT 1").await.map(drop);
    assert!(
        matches!(refused, Err(Error::NotACopy { .. })),
        "{refused:?}"
    );
    let refused = guard.copy_out("COPY items FROM STDIN").await.map(drop);
    assert!(
        matches!(refused, Err(Error::NotACopy { .. })),
        "{refused:?}"
    );
    // The guard goes on, and tokio's io::copy feeds a COPY.
    let mut writer = guard
        .copy_in("COPY items (id, note) FROM STDIN")
        .await
        .expect("started");
    let data = lines(7, 9);
    let copied = tokio::io::copy(&mut data.as_bytes(), &mut writer)
        .await
        .expect("copied");
    assert_eq!(copied, data.len() as u64);
    assert_eq!(writer.finish().await.expect("finished"), 3);
    assert_eq!(outside(|| db.item_ids()), [7, 8, 9]);
    assert_eq!(manager.unfinished_transactions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_rows_go_in_and_come_out_through_binary_copy() {
    use futures_util::TryStreamExt;
    use pgtx::aio::{BinaryCopyInWriter, BinaryCopyOutStream};
    use pgtx::types::Type;

    let db = outside(|| Db::new("aio_copy_binary"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    let writer = tx
        .copy_in("COPY items (id, note) FROM STDIN (FORMAT binary)")
        .await
        .expect("started");
    let mut rows = BinaryCopyInWriter::new(writer, &[Type::INT4, Type::TEXT]).expect("fresh");
    let wrong = rows.write(&[&1_i32]).await;
    assert!(
        matches!(
            wrong,
            Err(Error::WrongRowLength {
                expected: 2,
                got: 1
            })
        ),
        "{wrong:?}"
    );
    for id in 1..=5000_i32 {
        let note = format!("note {id}");
        rows.write(&[&id, &note]).await.expect("row");
    }
    rows.write(&[&5001_i32, &None::<String>])
        .await
        .expect("a NULL");
    assert_eq!(rows.finish().await.expect("finished"), 5001);
    tx.commit().await.expect("commit");
    assert_eq!(outside(|| db.item_ids()).len(), 5001);

    let mut guard = manager.lock().await.expect("lock");
    let reader = guard
        .copy_out("COPY (SELECT id, note FROM items ORDER BY id) TO STDOUT (FORMAT binary)")
        .await
        .expect("started");
    let stream = BinaryCopyOutStream::new(reader, &[Type::INT4, Type::TEXT]).expect("fresh");
    let read: Vec<(i32, Option<String>)> = stream
        .map_ok(|row| (row.get::<i32>(0), row.get::<Option<String>>(1)))
        .try_collect()
        .await
        .expect("rows");
    assert_eq!(read.len(), 5001);
    assert_eq!(read[0], (1, Some("note 1".to_owned())));
    assert_eq!(read[5000], (5001, None));

    // A writer something was written to cannot turn binary.
    let mut writer = guard
        .copy_in("COPY items (id, note) FROM STDIN (FORMAT binary)")
        .await
        .expect("started");
    writer.write_all(b"PGCOPY").await.expect("buffered");
    let refused = BinaryCopyInWriter::new(writer, &[Type::INT4, Type::TEXT]).map(drop);
    assert!(
        matches!(refused, Err(Error::CopyAlreadyUsed)),
        "{refused:?}"
    );
    let n: i64 = guard
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("the guard goes on; the refused COPY stored nothing")
        .get(0);
    assert_eq!(n, 5001);
}
