//! The per-connection statement cache: SQL text is prepared once per
//! connection, and a cached statement that no longer fits the database is
//! prepared again instead of failing forever.

mod common;

use common::fixtures::Db;
use common::server::TestServer;
use pgtx::{Error, SqlState};

const COUNT_PREPARED: &str =
    "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int4 + 1'";

#[test]
fn repeated_sql_text_is_prepared_once_per_connection() {
    let db = Db::new("cache_once");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    for n in 0..5_i32 {
        let row = guard
            .query_one("SELECT $1::int4 + 1", &[&n])
            .expect("select");
        assert_eq!(row.get::<_, i32>(0), n + 1);
    }
    let prepared: i64 = guard.query_one(COUNT_PREPARED, &[]).expect("count").get(0);
    assert_eq!(prepared, 1, "the text was prepared exactly once and kept");
    drop(guard);

    manager
        .transaction(|mut tx| {
            assert_eq!(
                tx.query_one("SELECT $1::int4 + 1", &[&41_i32])?
                    .get::<_, i32>(0),
                42
            );
            let prepared: i64 = tx.query_one(COUNT_PREPARED, &[])?.get(0);
            assert_eq!(prepared, 1, "transactions share the connection's cache");
            tx.commit()
        })
        .expect("transaction");
}

#[test]
fn a_new_connection_prepares_again() {
    let db = Db::new("cache_reconnect");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .query_one("SELECT $1::int4 + 1", &[&1_i32])
        .expect("select");
    drop(guard);
    assert_eq!(TestServer::shared().terminate_backends(&db.name), 1);

    // Inside a transaction, where a stale statement is not retried: this
    // only works if the new connection's cache started empty.
    let three: i32 = manager
        .transaction(|mut tx| -> pgtx::Result<_> {
            let three = tx.query_one("SELECT $1::int4 + 1", &[&2_i32])?.get(0);
            Ok(tx.commit()?.returning(three))
        })
        .expect("prepared anew on the new connection");
    assert_eq!(three, 3);
}

#[test]
fn a_table_changed_under_a_cached_statement_is_prepared_again_in_autocommit() {
    let db = Db::new("cache_stale_autocommit");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .execute("INSERT INTO items VALUES ($1, $2)", &[&1_i32, &"one"])
        .expect("insert");
    let row = guard.query_one("SELECT * FROM items", &[]).expect("select");
    assert_eq!(row.columns().len(), 2);

    db.admin()
        .batch_execute("ALTER TABLE items ADD COLUMN extra int DEFAULT 7")
        .expect("alter from another connection");

    let row = guard
        .query_one("SELECT * FROM items", &[])
        .expect("prepared again and retried");
    assert_eq!(row.columns().len(), 3);
    assert_eq!(row.get::<_, Option<i32>>(2), Some(7));
}

#[test]
fn inside_a_transaction_a_stale_statement_aborts_it_and_the_next_one_works() {
    let db = Db::new("cache_stale_tx");
    let manager = db.manager();
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES ($1, $2)", &[&1_i32, &"one"])?;
            assert_eq!(tx.query_one("SELECT * FROM items", &[])?.columns().len(), 2);
            tx.commit()
        })
        .expect("first transaction");
    db.admin()
        .batch_execute("ALTER TABLE items ADD COLUMN extra int")
        .expect("alter from another connection");

    // The server refuses the old plan; inside a transaction that aborts it,
    // as any failed statement does, and nothing it wrote is kept.
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES ($1, $2)", &[&2_i32, &"two"])
        .expect("insert");
    let err = tx
        .query_one("SELECT * FROM items", &[])
        .expect_err("the cached plan no longer fits");
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    let err = tx.commit().expect_err("aborted");
    assert!(matches!(err, Error::TransactionAborted(_)), "{err:?}");
    assert_eq!(db.item_ids(), [1]);

    let columns = manager
        .transaction(|mut tx| {
            let n = tx.query_one("SELECT * FROM items", &[])?.columns().len();
            Ok::<_, Error>(tx.commit()?.returning(n))
        })
        .expect("prepared again");
    assert_eq!(columns, 3);
}

#[test]
fn statements_deallocated_by_the_user_are_prepared_again() {
    let db = Db::new("cache_deallocate");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .query_one("SELECT $1::int4 + 1", &[&1_i32])
        .expect("select");
    guard.batch_execute("DEALLOCATE ALL").expect("deallocate");
    drop(guard);
    // Inside a transaction, where a stale statement is not retried: this
    // only works if the DEALLOCATE emptied the cache.
    let three: i32 = manager
        .transaction(|mut tx| -> pgtx::Result<_> {
            let three = tx.query_one("SELECT $1::int4 + 1", &[&2_i32])?.get(0);
            Ok(tx.commit()?.returning(three))
        })
        .expect("prepared again");
    assert_eq!(three, 3);
}
