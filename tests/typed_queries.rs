//! `query_typed`, `execute_typed` and `simple_query` on a guard, a
//! transaction and a savepoint: the parameter types given are the ones
//! the server uses, a typed statement costs one round trip (BEGIN riding
//! with it), transaction control is refused before anything is sent, and
//! what they do inside a transaction is undone by its rollback, as seen
//! from a second connection.

mod common;

use common::fixtures::Db;
use pgtx::types::Type;
use pgtx::{Error, SimpleQueryMessage};

#[test]
fn query_typed_uses_the_types_given_where_the_server_would_infer_others() {
    let db = Db::new("typed_types");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    // Untyped, `$1 || $2` would make the server guess; typed, a bigint
    // and a text it is.
    let rows = guard
        .query_typed(
            "SELECT pg_typeof($1)::text, pg_typeof($2)::text, $1 + 1",
            &[(&41_i64, Type::INT8), (&"word", Type::TEXT)],
        )
        .expect("typed");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "bigint");
    assert_eq!(rows[0].get::<_, String>(1), "text");
    assert_eq!(rows[0].get::<_, i64>(2), 42);
    // A value that cannot be sent as its type is refused before sending.
    let err = guard
        .query_typed("SELECT $1", &[(&"not a number", Type::INT4)])
        .expect_err("a str is no int4");
    assert!(matches!(err, Error::Db(_)), "{err:?}");
    assert_eq!(
        guard
            .query_one("SELECT 1", &[])
            .expect("usable")
            .get::<_, i32>(0),
        1
    );
}

#[test]
fn typed_statements_in_a_transaction_commit_or_roll_back_with_it_in_one_round_trip_each() {
    let db = Db::new("typed_tx");
    let (proxy, manager) = db.manager_via_proxy();
    // Warm up: the connection is open and idle.
    manager
        .lock()
        .expect("lock")
        .batch_execute("SELECT 1")
        .expect("warm");

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let before = proxy.client_chunks();
    let inserted = tx
        .execute_typed(
            "INSERT INTO items VALUES ($1, $2)",
            &[(&1_i32, Type::INT4), (&"typed", Type::TEXT)],
        )
        .expect("insert");
    assert_eq!(inserted, 1);
    assert_eq!(
        proxy.client_chunks() - before,
        1,
        "BEGIN and the typed statement go in one write"
    );
    assert!(db.item_ids().is_empty(), "not visible before commit");
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), [1]);

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute_typed(
        "INSERT INTO items VALUES ($1, $2)",
        &[(&2_i32, Type::INT4), (&"rolled back", Type::TEXT)],
    )
    .expect("insert");
    let seen = tx
        .query_typed(
            "SELECT count(*) FROM items WHERE id = $1",
            &[(&2_i32, Type::INT4)],
        )
        .expect("count");
    assert_eq!(seen[0].get::<_, i64>(0), 1, "visible inside");
    tx.rollback().expect("rollback");
    assert_eq!(db.item_ids(), [1], "the rollback undid it");
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn simple_query_returns_text_rows_and_command_tags() {
    let db = Db::new("typed_simple");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let messages = tx
        .simple_query(
            "INSERT INTO items VALUES (1, 'a'), (2, 'b'); SELECT id, note FROM items ORDER BY id",
        )
        .expect("simple");
    let tags: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(tags, [2, 2], "two rows inserted, two selected");
    let rows: Vec<(String, String)> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((
                row.get(0).expect("id").to_owned(),
                row.get(1).expect("note").to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("1".to_owned(), "a".to_owned()),
            ("2".to_owned(), "b".to_owned())
        ]
    );
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), [1, 2]);
}

#[test]
fn transaction_control_is_refused_by_every_new_method_before_anything_is_sent() {
    let db = Db::new("typed_control");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute(
        "INSERT INTO items VALUES (1, 'kept until the rollback')",
        &[],
    )
    .expect("insert");
    let refusals = [
        tx.simple_query("COMMIT").map(drop),
        tx.simple_query("SELECT 1; ROLLBACK").map(drop),
        tx.query_typed("COMMIT", &[]).map(drop),
        tx.execute_typed("BEGIN", &[]).map(drop),
    ];
    for refused in refusals {
        assert!(
            matches!(refused, Err(Error::TransactionControl(_))),
            "{refused:?}"
        );
    }
    // Nothing was sent: the transaction is open and has its row; rolling
    // it back leaves nothing.
    assert!(db.item_ids().is_empty());
    assert_eq!(
        tx.query_one("SELECT count(*) FROM items", &[])
            .expect("still open")
            .get::<_, i64>(0),
        1
    );
    tx.rollback().expect("rollback");
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn inside_a_savepoint_a_typed_statement_is_undone_by_the_savepoint_s_rollback_only() {
    let db = Db::new("typed_savepoint");
    let manager = db.manager();
    manager
        .transaction(|mut tx| {
            tx.execute_typed(
                "INSERT INTO items VALUES ($1, 'outer')",
                &[(&1_i32, Type::INT4)],
            )?;
            let mut sp = tx.savepoint()?;
            sp.execute_typed(
                "INSERT INTO items VALUES ($1, 'inner')",
                &[(&2_i32, Type::INT4)],
            )?;
            let inside = sp.simple_query("SELECT count(*) FROM items")?;
            assert!(inside.iter().any(|m| matches!(
                m,
                SimpleQueryMessage::Row(row) if row.get(0) == Some("2")
            )));
            sp.rollback()?;
            let after = tx.query_typed("SELECT count(*) FROM items", &[])?;
            assert_eq!(after[0].get::<_, i64>(0), 1);
            tx.commit()
        })
        .expect("transaction");
    assert_eq!(db.item_ids(), [1]);
}
