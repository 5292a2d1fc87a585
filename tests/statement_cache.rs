//! The per-connection statement cache: SQL text is prepared once per
//! connection, and a cached statement that no longer fits the database is
//! prepared again instead of failing forever. Without it
//! (`statement_cache(false)`), nothing is prepared by name, and parameter
//! types that no longer fit are looked up again.

mod common;

use common::fixtures::Db;
use common::server::TestServer;
use pgtx::{Error, ManagedConnection, SqlState};

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

// Without a statement cache (`Builder::statement_cache(false)`, for
// transaction poolers): nothing is named, and text still runs correctly.

fn unnamed(db: &Db) -> ManagedConnection {
    ManagedConnection::builder(&db.dsn)
        .statement_cache(false)
        .build()
        .expect("settings")
}

const COUNT_ANY_PREPARED: &str = "SELECT count(*) FROM pg_prepared_statements";

#[test]
fn without_a_statement_cache_nothing_is_prepared_by_name() {
    let db = Db::new("uncached_nothing_named");
    let manager = ManagedConnection::builder(&db.dsn)
        .statement_cache(false)
        .on_connect(|conn| {
            conn.execute(
                "SELECT set_config('application_name', $1, false)",
                &[&"uncached"],
            )?;
            Ok(())
        })
        .build()
        .expect("settings");
    let mut guard = manager.lock().expect("lock");
    for n in 0..3_i32 {
        let row = guard
            .query_one("SELECT $1::int4 + 1", &[&n])
            .expect("select");
        assert_eq!(row.get::<_, i32>(0), n + 1);
    }
    assert_eq!(
        guard
            .query_one("SELECT current_setting('application_name')", &[])
            .expect("setting")
            .get::<_, String>(0),
        "uncached",
        "the hook's statement ran"
    );
    let mut tx = guard.begin().expect("begin");
    tx.execute("INSERT INTO items VALUES ($1, $2)", &[&1_i32, &"one"])
        .expect("insert");
    let mut sp = tx.savepoint().expect("savepoint");
    sp.execute("INSERT INTO items VALUES ($1, $2)", &[&2_i32, &"two"])
        .expect("insert in the savepoint");
    sp.release().expect("release");
    let mut sp = tx.savepoint().expect("savepoint");
    sp.execute("INSERT INTO items VALUES ($1, $2)", &[&3_i32, &"three"])
        .expect("insert in the savepoint");
    sp.rollback().expect("rollback to the savepoint");
    tx.commit().expect("commit").release();
    assert_eq!(db.item_ids(), [1, 2]);
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES ($1, $2)", &[&4_i32, &"four"])
        .expect("insert");
    tx.rollback().expect("rollback").release();
    assert_eq!(db.item_ids(), [1, 2]);
    let mut guard = manager.lock().expect("lock");
    let prepared: i64 = guard
        .query_one(COUNT_ANY_PREPARED, &[])
        .expect("count")
        .get(0);
    assert_eq!(
        prepared, 0,
        "no statement, BEGIN or COMMIT was left prepared"
    );
}

#[test]
fn without_a_statement_cache_prepare_is_refused_and_the_transaction_goes_on() {
    let db = Db::new("uncached_prepare");
    let manager = unnamed(&db);
    let mut guard = manager.lock().expect("lock");
    let err = guard.prepare("SELECT 1").expect_err("refused");
    assert!(matches!(err, Error::PreparedStatementsOff), "{err:?}");
    let mut tx = guard.begin().expect("begin");
    tx.execute("INSERT INTO items VALUES ($1, $2)", &[&1_i32, &"one"])
        .expect("insert");
    let err = tx.prepare("SELECT 1").expect_err("refused");
    assert!(matches!(err, Error::PreparedStatementsOff), "{err:?}");
    tx.commit().expect("the transaction goes on").release();
    assert_eq!(db.item_ids(), [1]);
}

#[test]
fn without_a_statement_cache_a_wrong_number_of_parameters_is_refused_before_sending() {
    let db = Db::new("uncached_param_count");
    let manager = unnamed(&db);
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let err = tx
        .query_one("SELECT $1::int4 + $2::int4", &[&1_i32])
        .expect_err("one parameter short");
    assert!(err.as_db_error().is_none(), "refused on this side: {err}");
    assert!(
        common::server::error_chain(&err).contains("expected 2 parameters but got 1"),
        "{}",
        common::server::error_chain(&err)
    );
    assert_eq!(tx.status(), pgtx::TransactionStatus::InTransaction);
    tx.execute("INSERT INTO items VALUES ($1, $2)", &[&1_i32, &"one"])
        .expect("the transaction is usable");
    assert!(
        db.item_ids().is_empty(),
        "the insert ran outside the transaction: its BEGIN was lost"
    );
    tx.commit().expect("commit").release();
    assert_eq!(db.item_ids(), [1]);
}

#[test]
fn without_a_statement_cache_parameter_types_are_looked_up_again_when_a_column_changes_type() {
    let db = Db::new("uncached_stale_types");
    let manager = unnamed(&db);
    const INSERT: &str = "INSERT INTO items VALUES ($1, $2)";
    let mut guard = manager.lock().expect("lock");
    guard.execute(INSERT, &[&1_i32, &"one"]).expect("insert");
    db.admin()
        .batch_execute("ALTER TABLE items ALTER COLUMN id TYPE bigint")
        .expect("alter from another connection");
    // The remembered type (int4) does not take an i64: looked up again.
    guard
        .execute(INSERT, &[&2_i64, &"two"])
        .expect("described again in autocommit");
    drop(guard);

    db.admin()
        .batch_execute("ALTER TABLE items ALTER COLUMN id TYPE int")
        .expect("alter back");
    // Inside a transaction too: nothing was sent before the retry.
    manager
        .transaction(|mut tx| {
            tx.execute(INSERT, &[&3_i32, &"three"])?;
            tx.commit()
        })
        .expect("described again in a transaction");
    assert_eq!(db.item_ids(), [1, 2, 3]);
}

/// Runs `query` through a cursor, as a streaming helper would: `DECLARE`,
/// then `FETCH` the same text until it returns nothing.
fn stream(tx: &mut pgtx::Tx<'_, pgtx::Open>, query: &str) -> pgtx::Result<Vec<pgtx::Row>> {
    tx.batch_execute(&format!("DECLARE stream_cur CURSOR FOR {query}"))?;
    let mut rows = Vec::new();
    loop {
        let batch = tx.query("FETCH FORWARD 10000 FROM stream_cur", &[])?;
        if batch.is_empty() {
            break;
        }
        rows.extend(batch);
    }
    tx.batch_execute("CLOSE stream_cur")?;
    Ok(rows)
}

#[test]
fn a_fetch_whose_cursor_changes_shape_returns_the_new_shape_never_the_old_types() {
    let db = Db::new("cache_fetch_shape");
    let manager = db.manager();
    let ints = manager
        .transaction(|mut tx| {
            let rows = stream(&mut tx, "SELECT 7::int8")?;
            tx.commit_returning(rows)
        })
        .expect("int8 rows");
    assert_eq!(ints[0].get::<_, i64>(0), 7);

    let floats = manager
        .transaction(|mut tx| {
            let rows = stream(&mut tx, "SELECT 1.5::float8")?;
            tx.commit_returning(rows)
        })
        .expect("float8 rows");
    assert!(
        floats[0].try_get::<_, i64>(0).is_err(),
        "a float8 column read as int8: {:?}",
        floats[0].try_get::<_, i64>(0)
    );
    assert_eq!(floats[0].get::<_, f64>(0), 1.5);

    let wider = manager
        .transaction(|mut tx| {
            let rows = stream(&mut tx, "SELECT 2::int4, 'two'::text")?;
            tx.commit_returning(rows)
        })
        .expect("another column count works too");
    assert_eq!(wider[0].get::<_, i32>(0), 2);
    assert_eq!(wider[0].get::<_, &str>(1), "two");
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn execute_of_a_statement_prepared_again_in_sql_returns_its_new_shape() {
    let db = Db::new("cache_execute_shape");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .batch_execute("PREPARE shape AS SELECT 40::int8 + 2")
        .expect("prepare in SQL");
    let row = guard.query_one("EXECUTE shape", &[]).expect("execute");
    assert_eq!(row.get::<_, i64>(0), 42);
    guard
        .batch_execute(
            "DO $$ BEGIN
               EXECUTE 'DEALLOCATE shape';
               EXECUTE $q$PREPARE shape AS SELECT 'forty-two'::text, 2.5::float8$q$;
             END $$",
        )
        .expect("prepare again in SQL, where the tap cannot see it");
    let row = guard
        .query_one("EXECUTE shape", &[])
        .expect("execute again");
    assert!(row.try_get::<_, i64>(0).is_err(), "text read as int8");
    assert_eq!(row.get::<_, &str>(0), "forty-two");
    assert_eq!(row.get::<_, f64>(1), 2.5);
}

#[test]
fn statements_whose_shape_is_decided_at_run_time_cannot_be_prepared() {
    let db = Db::new("cache_fetch_prepare");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.batch_execute("DECLARE c CURSOR FOR SELECT 1")
        .expect("declare");
    for (sql, command) in [
        ("FETCH 1 FROM c", "FETCH"),
        ("/* hint */ execute shape", "EXECUTE"),
        ("CALL p()", "CALL"),
    ] {
        match tx.prepare(sql) {
            Err(Error::ShapeDecidedAtRunTime(found)) => assert_eq!(found, command),
            other => panic!("{sql}: {other:?}"),
        }
    }
    // Nothing was sent: the transaction is healthy and the cursor is there.
    let one: i32 = tx.query_one("FETCH 1 FROM c", &[]).expect("fetch").get(0);
    assert_eq!(one, 1);
    let named: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement ~* '^fetch'",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(named, 0, "FETCH text is never prepared by name");
    tx.commit().expect("commit");
}

#[test]
fn user_defined_types_are_still_looked_up_after_discard_all() {
    let db = Db::new("cache_discard_types");
    db.admin()
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('happy', 'sad');
             CREATE TYPE colour AS ENUM ('red', 'blue');
             CREATE TYPE size AS ENUM ('small', 'large');",
        )
        .expect("types");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    // tokio-postgres looks a user-defined type up with statements of its
    // own, prepared on first use.
    let row = guard.query_one("SELECT 'happy'::mood", &[]).expect("mood");
    assert_eq!(row.columns()[0].type_().name(), "mood");
    for reset in [
        "DISCARD ALL",
        "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$",
    ] {
        guard.batch_execute(reset).expect(reset);
        let (sql, name) = if reset.starts_with("DISCARD") {
            ("SELECT 'red'::colour", "colour")
        } else {
            ("SELECT 'small'::size", "size")
        };
        let row = guard
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("a new type after {reset}: {e}"));
        assert_eq!(row.columns()[0].type_().name(), name, "after {reset}");
    }
    drop(guard);
    manager
        .transaction(|mut tx| {
            let row = tx.query_one("SELECT 'blue'::colour, 'sad'::mood", &[])?;
            assert_eq!(row.columns()[1].type_().name(), "mood");
            tx.commit()
        })
        .expect("in a transaction too");
}

/// A database with two user-defined types, `mood` and `colour`: looking
/// either up takes tokio-postgres' own type-lookup statements.
fn with_two_types(name: &str) -> Db {
    let db = Db::new(name);
    db.admin()
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('happy', 'sad');
             CREATE TYPE colour AS ENUM ('red', 'blue');",
        )
        .expect("types");
    db
}

#[test]
fn type_lookups_lost_inside_a_transaction_fail_it_and_the_next_one_gets_a_new_connection() {
    let db = with_two_types("cache_discard_types_tx");
    let manager = db.manager();
    let pid = |manager: &pgtx::ManagedConnection| -> i32 {
        manager
            .lock()
            .expect("lock")
            .query_one("SELECT pg_backend_pid()", &[])
            .expect("pid")
            .get(0)
    };
    let before = pid(&manager);
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.query_one("SELECT 'happy'::mood", &[]).expect("mood");
    tx.execute("INSERT INTO items VALUES (1, 'in the transaction')", &[])
        .expect("insert");
    tx.batch_execute("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
        .expect("DEALLOCATE ALL where the tap cannot see it");
    let lookup = tx.query_one("SELECT 'red'::colour", &[]).map(drop);
    assert!(
        lookup.is_err(),
        "the lookup's statement is gone: {lookup:?}"
    );
    assert!(
        matches!(tx.commit(), Err(Error::TransactionAborted(_))),
        "the failed lookup aborted the transaction"
    );
    assert!(db.item_ids().is_empty(), "nothing committed");
    let row = manager
        .transaction(|mut tx| {
            let row = tx.query_one("SELECT 'blue'::colour, 'sad'::mood", &[])?;
            tx.commit_returning(row)
        })
        .expect("the next transaction runs on a new connection");
    assert_eq!(row.columns()[0].type_().name(), "colour");
    assert_ne!(pid(&manager), before, "the connection was replaced");
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn type_lookups_lost_before_a_first_statement_with_no_new_connection_to_be_had_lose_the_transaction()
 {
    let db = with_two_types("cache_discard_types_down");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard.query_one("SELECT 'happy'::mood", &[]).expect("mood");
    guard
        .batch_execute("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
        .expect("DEALLOCATE ALL where the tap cannot see it");
    drop(guard);
    // The connection goes on; a new one is refused.
    db.allow_connections(false);
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let first = tx.query_one("SELECT 'red'::colour", &[]).map(drop);
    let later = tx
        .execute(
            "INSERT INTO items VALUES (1, 'must not run on its own')",
            &[],
        )
        .map(drop);
    let commit = tx.commit().map(drop);
    db.allow_connections(true);
    assert!(first.is_err(), "no connection for the lookup: {first:?}");
    assert!(
        matches!(later, Err(Error::ConnectionLost(_))),
        "the transaction is lost, not carried on in autocommit: {later:?}"
    );
    assert!(commit.is_err(), "nothing to commit: {commit:?}");
    assert!(db.item_ids().is_empty(), "nothing was committed");
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (2, 'next')", &[])?;
            tx.commit()
        })
        .expect("the next transaction reconnects");
    assert_eq!(db.item_ids(), [2]);
}
