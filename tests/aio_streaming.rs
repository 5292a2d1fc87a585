//! Streamed rows on the async front (`query_raw` → `RowStream`): rows as
//! they arrive, a `try_next` whose future is dropped loses nothing, a
//! stream dropped early leaves its handle usable, and a query that fails
//! mid-stream aborts its transaction. Proven from the server's side.

mod common;

use std::time::Duration;

use common::aio::{begun, manager, outside};
use common::fixtures::Db;
use futures_util::TryStreamExt;
use pgtx::Error;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stream_in_a_transaction_that_then_commits() {
    let db = outside(|| Db::new("aio_stream_commit"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'before the stream')", &[])
        .await
        .expect("insert");
    let (mut sum, mut count) = (0_i64, 0_u64);
    {
        let mut rows = tx
            .query_raw("SELECT n FROM generate_series(1, 100000) AS n", &[])
            .await
            .expect("started");
        assert_eq!(rows.rows_affected(), None, "not before the last row");
        while let Some(row) = rows.try_next().await.expect("row") {
            sum += i64::from(row.get::<_, i32>(0));
            count += 1;
        }
        assert_eq!(rows.rows_affected(), Some(100_000));
        assert!(
            rows.try_next().await.expect("ended").is_none(),
            "stays ended"
        );
    }
    assert_eq!((count, sum), (100_000, 100_000 * 100_001 / 2));
    tx.execute("INSERT INTO items VALUES (2, 'after the stream')", &[])
        .await
        .expect("the transaction goes on");
    tx.commit().await.expect("commit");
    assert_eq!(outside(|| db.item_ids()), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_next_whose_future_is_dropped_loses_no_row() {
    let db = outside(|| Db::new("aio_stream_dropped_next"));
    let manager = manager(&db);
    let mut guard = manager.lock().await.expect("lock");
    // Bursts of rows with pauses between them, so that some calls find
    // nothing arrived yet.
    let mut rows = guard
        .query_raw(
            "SELECT n FROM generate_series(1, 20000) AS n
             WHERE n % 2000 <> 0 OR pg_sleep(0.01) IS NOT NULL",
            &[],
        )
        .await
        .expect("started");
    let (mut expected, mut timeouts) = (1_i32, 0_u32);
    loop {
        // No time at all: whenever a fetch is under way, the call is
        // dropped and the fetch stays with the stream.
        match tokio::time::timeout(Duration::ZERO, rows.try_next()).await {
            Err(_) => timeouts += 1,
            Ok(Ok(Some(row))) => {
                assert_eq!(row.get::<_, i32>(0), expected, "in order, none lost");
                expected += 1;
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("{e}"),
        }
    }
    assert_eq!(expected, 20_001);
    assert!(timeouts > 0, "some fetch was cut short");
    drop(rows);
    let one: i32 = guard
        .query_one("SELECT 1", &[])
        .await
        .expect("usable")
        .get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_early_or_mid_fetch_leaves_its_handle_usable() {
    let db = outside(|| Db::new("aio_stream_dropped"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'kept')", &[])
        .await
        .expect("insert");
    {
        let mut rows = tx
            .query_raw("SELECT n FROM generate_series(1, 1000000) AS n", &[])
            .await
            .expect("started");
        rows.try_next().await.expect("a row").expect("some");
        // Dropped with most of a million rows unread.
    }
    {
        // Dropped while a fetch waits for a slow row. (The server sends
        // its output as its 8 KiB buffer fills: the rows before the slow
        // one arrive, but for the last few.)
        let mut rows = tx
            .query_raw(
                "SELECT repeat('x', 100), pg_sleep(CASE WHEN n = 1000 THEN 30 ELSE 0 END)
                 FROM generate_series(1, 1000) AS n",
                &[],
            )
            .await
            .expect("started");
        let mut read = 0;
        loop {
            match tokio::time::timeout(Duration::from_millis(200), rows.try_next()).await {
                Err(_) => break,
                Ok(Ok(Some(_))) => read += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!((1..1000).contains(&read), "{read} rows before the slow one");
    }
    // The interrupted read aborted the transaction (its holder cannot know
    // what ran): it can only roll back now.
    let after = tx.execute("SELECT 1", &[]).await;
    assert!(after.is_err(), "{after:?}");
    tx.rollback().await.expect("rollback");
    assert!(outside(|| db.item_ids()).is_empty());
    let mut guard = manager.lock().await.expect("lock");
    let mut rows = guard
        .query_raw("SELECT n FROM generate_series(1, 3) AS n", &[])
        .await
        .expect("started");
    let all: Vec<i32> = (&mut rows)
        .map_ok(|row| row.get::<_, i32>(0))
        .try_collect()
        .await
        .expect("rows");
    assert_eq!(all, [1, 2, 3], "a Stream for futures' combinators too");
    drop(rows);
    drop(guard);
    assert_eq!(outside(|| db.open_transactions()), 0);
    let running: i64 = outside(|| {
        db.admin()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND query LIKE '%pg_sleep(CASE%'
                   AND state = 'active'",
                &[],
            )
            .expect("activity")
            .get(0)
    });
    assert_eq!(running, 0, "the slow query was cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_failing_mid_stream_hands_its_rows_then_the_error_and_aborts_the_transaction() {
    let db = outside(|| Db::new("aio_stream_fails"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'doomed')", &[])
        .await
        .expect("insert");
    let mut seen = 0;
    let failure = {
        let mut rows = tx
            .query_raw(
                "SELECT 10 / (5000 - n) FROM generate_series(1, 10000) AS n",
                &[],
            )
            .await
            .expect("started");
        loop {
            match rows.try_next().await {
                Ok(Some(_)) => seen += 1,
                Ok(None) => panic!("the division by zero never came"),
                Err(e) => {
                    assert!(rows.try_next().await.expect("ended").is_none());
                    break e;
                }
            }
        }
    };
    assert!(seen < 5000, "{seen} rows before the failing one");
    assert_eq!(failure.code(), Some(&pgtx::SqlState::DIVISION_BY_ZERO));
    let commit = tx.commit().await.map(drop);
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(outside(|| db.item_ids()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_statements_take_their_parameter_types_and_refuse_transaction_control() {
    use pgtx::types::Type;
    let db = outside(|| Db::new("aio_typed"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    let inserted = tx
        .execute_typed(
            "INSERT INTO items VALUES ($1, $2)",
            &[(&7_i32, Type::INT4), (&"seven", Type::TEXT)],
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 1);
    let rows = tx
        .query_typed(
            "SELECT $1 || note FROM items WHERE id = $2",
            &[(&"#", Type::TEXT), (&7_i32, Type::INT4)],
        )
        .await
        .expect("rows");
    assert_eq!(rows[0].get::<_, String>(0), "#seven");
    let refused = tx.query_typed("COMMIT", &[]).await.map(drop);
    assert!(
        matches!(refused, Err(Error::TransactionControl(_))),
        "{refused:?}"
    );
    tx.commit().await.expect("commit");
    assert_eq!(outside(|| db.item_ids()), [7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_hands_its_rows_a_batch_at_a_time_and_closes_with_its_transaction() {
    let db = outside(|| Db::new("aio_portal"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    // In the select list: generate_series in FROM would be computed whole first.
    let portal = tx
        .bind("SELECT generate_series(1, $1::int4)", &[&10_i32])
        .await
        .expect("bound");
    let mut seen = Vec::new();
    loop {
        let batch = tx.query_portal(&portal, 3).await.expect("batch");
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 3);
        seen.extend(batch.iter().map(|row| row.get::<_, i32>(0)));
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    let refused = tx.bind("COMMIT", &[]).await.map(drop);
    assert!(
        matches!(refused, Err(Error::TransactionControl(_))),
        "{refused:?}"
    );
    tx.commit().await.expect("commit");
    let mut next = begun(&manager).await;
    let closed = next.query_portal(&portal, 1).await.map(drop);
    assert!(matches!(closed, Err(Error::PortalClosed)), "{closed:?}");
    next.rollback().await.expect("rollback");
}
