//! Async code written once against `pgtx::aio::GenericClient` runs on a
//! guard, a transaction and a savepoint with each one's own semantics
//! (proved from a second connection), and its futures are `Send` in
//! generic code (they run in `tokio::spawn`); code written against
//! `pgtx::aio::ConnectionSource` runs on a manager and on a pool. The
//! async handles' `prepare` refuses what the blocking one refuses.

mod common;

use common::aio::{begun, manager, outside};
use common::fixtures::Db;
use pgtx::Error;
use pgtx::aio::{ConnectionSource, GenericClient, Pool};
use pgtx::types::Type;
use pgtx::{RetryPolicy, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Compiles only if `future` is `Send`: called in generic code, it proves
/// that the trait promises it (a task or an axum handler needs it).
fn sent<F: Future + Send>(future: F) -> F {
    future
}

/// A repository function: knows nothing of which handle it was given.
async fn record(db: &mut impl GenericClient, id: i32, note: &str) -> pgtx::Result<i64> {
    sent(db.execute("INSERT INTO items VALUES ($1, $2)", &[&id, &note])).await?;
    sent(db.execute_typed(
        "UPDATE items SET note = note || $2 WHERE id = $1",
        &[(&id, Type::INT4), (&"!", Type::TEXT)],
    ))
    .await?;
    let typed = sent(db.query_typed("SELECT count(*) FROM items", &[])).await?;
    let simple = sent(db.simple_query("SELECT 1")).await?;
    assert!(!simple.is_empty());
    let counted: i64 = sent(db.query_one("SELECT count(*) FROM items", &[]))
        .await?
        .get(0);
    assert_eq!(typed[0].get::<_, i64>(0), counted);
    let statement = sent(db.prepare("SELECT note FROM items WHERE id = $1")).await?;
    let row: Option<Row> = sent(db.query_opt(&statement, &[&id])).await?;
    assert_eq!(
        row.map(|row| row.get::<_, String>(0)),
        Some(format!("{note}!"))
    );
    Ok(counted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_repository_function_runs_on_a_guard_a_transaction_and_a_savepoint() {
    let db = outside(|| Db::new("aio_generic_handles"));
    let manager = manager(&db);

    let mut guard = manager.lock().await.expect("lock");
    assert_eq!(record(&mut guard, 1, "guard").await.expect("guard"), 1);
    assert_eq!(
        outside(|| db.item_ids()),
        [1],
        "a guard's statement commits on its own"
    );

    let mut tx = guard.begin().await.expect("begin");
    assert_eq!(record(&mut tx, 2, "rolled back").await.expect("tx"), 2);
    tx.rollback().await.expect("rollback");
    assert_eq!(
        outside(|| db.item_ids()),
        [1],
        "the transaction's rollback undid it"
    );

    manager
        .transaction(async |mut tx| {
            record(&mut tx, 3, "kept").await?;
            let mut sp = tx.savepoint().await?;
            record(&mut sp, 4, "undone with its savepoint").await?;
            sp.rollback().await?;
            tx.commit().await
        })
        .await
        .expect("transaction");
    assert_eq!(outside(|| db.item_ids()), [1, 3]);
    let notes: Vec<String> = outside(|| {
        db.admin()
            .query("SELECT note FROM items ORDER BY id", &[])
            .expect("notes")
            .iter()
            .map(|r| r.get(0))
            .collect()
    });
    assert_eq!(notes, ["guard!", "kept!"]);
}

/// Bulk work written once: COPY in, stream the rows back, COPY out.
async fn load_and_read(db: &mut impl GenericClient, first: i32) -> pgtx::Result<(i64, String)> {
    let mut writer = sent(db.copy_in("COPY items (id, note) FROM STDIN")).await?;
    let data = format!("{first}\tcopied\n{}\tcopied\n", first + 1);
    writer.write_all(data.as_bytes()).await.expect("copy write");
    assert_eq!(writer.finish().await?, 2);
    let mut sum = 0_i64;
    {
        let mut rows =
            sent(db.query_raw("SELECT id FROM items WHERE note = 'copied'", &[])).await?;
        while let Some(row) = rows.try_next().await? {
            sum += i64::from(row.get::<_, i32>(0));
        }
    }
    let mut text = String::new();
    let mut reader = sent(db.copy_out("COPY (SELECT id FROM items ORDER BY id) TO STDOUT")).await?;
    reader.read_to_string(&mut text).await.expect("copy read");
    drop(reader);
    sent(db.batch_execute("SELECT 1")).await?;
    Ok((sum, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_streams_through_the_trait_run_in_a_spawned_task_and_roll_back_with_it() {
    let db = outside(|| Db::new("aio_generic_bulk"));
    let pool = std::sync::Arc::new(Pool::new(&db.dsn, 2).expect("pool"));
    let task_pool = pool.clone();
    let (sum, text) = tokio::spawn(async move {
        let mut tx = task_pool.lock().await?.begin().await?;
        let read = load_and_read(&mut tx, 10).await?;
        tx.rollback().await?;
        Ok::<_, Error>(read)
    })
    .await
    .expect("task")
    .expect("bulk work");
    assert_eq!(sum, 21);
    assert_eq!(text, "10\n11\n");
    assert!(
        outside(|| db.item_ids()).is_empty(),
        "the rollback undid the COPY"
    );

    let mut guard = pool.lock().await.expect("lock");
    let (sum, _) = load_and_read(&mut guard, 20).await.expect("on a guard");
    assert_eq!(sum, 41);
    drop(guard);
    assert_eq!(
        outside(|| db.item_ids()),
        [20, 21],
        "a guard's COPY commits on its own"
    );
    assert_eq!(outside(|| db.open_transactions()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_transaction_the_trait_refuses_transaction_control_as_the_handle_does() {
    let db = outside(|| Db::new("aio_generic_control"));
    let manager = manager(&db);
    async fn end_it(db: &mut impl GenericClient) -> pgtx::Result<()> {
        db.batch_execute("COMMIT").await
    }
    async fn prepare_end(db: &mut impl GenericClient) -> pgtx::Result<pgtx::Statement> {
        db.prepare("COMMIT").await
    }
    let mut tx = begun(&manager).await;
    tx.execute(
        "INSERT INTO items VALUES (1, 'not committed by the trait')",
        &[],
    )
    .await
    .expect("insert");
    let ended = end_it(&mut tx).await;
    assert!(
        matches!(ended, Err(Error::TransactionControl(_))),
        "{ended:?}"
    );
    let prepared = prepare_end(&mut tx).await;
    assert!(
        matches!(prepared, Err(Error::TransactionControl(_))),
        "{prepared:?}"
    );
    assert!(
        outside(|| db.item_ids()).is_empty(),
        "nothing was committed"
    );
    tx.rollback().await.expect("rollback");
    assert!(outside(|| db.item_ids()).is_empty());
    assert_eq!(outside(|| db.open_transactions()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_refuses_before_sending_what_a_prepared_statement_would_get_wrong() {
    let db = outside(|| Db::new("aio_generic_prepare"));
    let unnamed = pgtx::aio::ManagedConnection::builder(&db.dsn)
        .statement_cache(false)
        .build()
        .expect("settings");
    let mut guard = unnamed.lock().await.expect("lock");
    let off = guard.prepare("SELECT 1").await.map(drop);
    assert!(matches!(off, Err(Error::PreparedStatementsOff)), "{off:?}");

    let manager = manager(&db);
    let mut guard = manager.lock().await.expect("lock");
    let fetch = guard.prepare("FETCH 1 FROM nowhere").await.map(drop);
    assert!(
        matches!(fetch, Err(Error::ShapeDecidedAtRunTime(_))),
        "{fetch:?}"
    );
    let begin = guard.prepare("BEGIN").await.map(drop);
    assert!(
        matches!(begin, Err(Error::TransactionControl(_))),
        "{begin:?}"
    );
    let insert = guard
        .prepare("INSERT INTO items VALUES ($1, 'prepared')")
        .await
        .expect("prepare");
    for id in [1_i32, 2] {
        assert_eq!(guard.execute(&insert, &[&id]).await.expect("run"), 1);
    }
    assert_eq!(outside(|| db.item_ids()), [1, 2]);
}

/// Written once against `ConnectionSource`.
async fn add_and_count(source: &impl ConnectionSource, id: i32) -> pgtx::Result<i64> {
    source
        .transaction(async |mut tx| {
            tx.execute("INSERT INTO items VALUES ($1, 'source')", &[&id])
                .await?;
            tx.commit().await
        })
        .await?;
    let runs = source
        .transaction_retrying(&RetryPolicy::default(), async |tx| {
            let attempt = tx.attempt();
            tx.commit_returning(attempt).await
        })
        .await?;
    assert_eq!(runs, 1);
    let mut guard = sent(source.lock()).await?;
    Ok(guard
        .query_one("SELECT count(*) FROM items", &[])
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_function_runs_transactions_on_a_manager_and_on_a_pool() {
    let db = outside(|| Db::new("aio_generic_sources"));
    let manager = manager(&db);
    let pool = Pool::new(&db.dsn, 2).expect("pool");
    assert_eq!(add_and_count(&manager, 1).await.expect("manager"), 1);
    assert_eq!(add_and_count(&pool, 2).await.expect("pool"), 2);
    assert_eq!(outside(|| db.item_ids()), [1, 2]);
    assert!(
        ConnectionSource::try_lock(&pool).await.is_ok(),
        "nothing left held"
    );
}
