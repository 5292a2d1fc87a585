//! `Pipeline`: K statements and `COMMIT` in one write and one round trip,
//! all or nothing. Proven from the server's side: rows counted from a
//! second connection, `pg_stat_activity` (no session left in a block), and
//! a proxy counting the client's writes.

mod common;

use std::thread;
use std::time::Duration;

use common::eventually;
use common::fixtures::Db;
use pgtx::{Error, ManagedConnection, Pipeline, SqlState, TransactionStatus};

/// An insert of each of `ids`.
fn three_inserts<'p>(ids: &'p [i32; 3]) -> Pipeline<'p> {
    let mut pipeline = Pipeline::new();
    for id in ids {
        pipeline.execute("INSERT INTO items VALUES ($1, 'piped')", &[id]);
    }
    pipeline
}

/// Where `err` says the pipeline failed: (index, skipped).
fn failed_at(err: &Error) -> (usize, usize) {
    match err {
        Error::PipelineFailed { index, skipped, .. } => (*index, *skipped),
        other => panic!("not a pipeline failure: {other:?}"),
    }
}

fn idle(manager: &ManagedConnection) {
    let mut guard = manager.lock().expect("lock");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    let one: i32 = guard.query_one("SELECT 1", &[]).expect("reusable").get(0);
    assert_eq!(one, 1);
}

#[test]
fn a_pipeline_commits_every_statement_and_hands_back_each_result() {
    let db = Db::new("pipe_commit");
    let manager = db.manager();
    let tx = manager.lock().expect("lock").begin().expect("begin");
    let mut pipeline = Pipeline::new();
    let first = pipeline.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')", &[]);
    let note = "c".to_owned();
    let second = pipeline.execute("INSERT INTO items VALUES ($1, $2)", &[&3_i32, &note]);
    let counted = pipeline.query("SELECT count(*) FROM items", &[]);
    let updated = pipeline.execute("UPDATE items SET note = 'z' WHERE id > $1", &[&1_i32]);
    let (done, results) = tx.commit_pipeline(&pipeline).expect("committed");
    drop(done);
    assert_eq!(results.len(), 4);
    assert_eq!(results.get(first), Some(&2));
    assert_eq!(results.get(second), Some(&1));
    let rows = results.get(counted).expect("rows");
    assert_eq!(rows[0].get::<_, i64>(0), 3, "sees the rows before it");
    assert_eq!(results.get(updated), Some(&2));
    assert_eq!(db.item_ids(), vec![1, 2, 3]);
    assert_eq!(db.open_transactions(), 0);
    idle(&manager);
}

#[test]
fn a_failure_at_any_statement_commits_nothing_and_names_it() {
    let db = Db::new("pipe_fail");
    let manager = db.manager();
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (100, 'there')", &[])?;
            tx.commit()
        })
        .expect("setup");
    for failing in 0..3 {
        let mut ids = [1, 2, 3];
        ids[failing] = 100; // a duplicate key
        let pipeline = three_inserts(&ids);
        let tx = manager.lock().expect("lock").begin().expect("begin");
        let err = tx
            .commit_pipeline(&pipeline)
            .map(drop)
            .expect_err("duplicate");
        assert_eq!(failed_at(&err), (failing, 2 - failing), "{err}");
        assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
        assert_eq!(db.item_ids(), vec![100], "failing at {failing}");
        assert_eq!(db.open_transactions(), 0);
        idle(&manager);
    }
}

#[test]
fn a_commit_refused_by_a_deferred_constraint_commits_nothing() {
    let db = Db::new("pipe_deferred");
    db.admin()
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (parent int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
        )
        .expect("tables");
    let manager = db.manager();
    let tx = manager.lock().expect("lock").begin().expect("begin");
    let mut pipeline = Pipeline::new();
    pipeline.execute("INSERT INTO items VALUES (1, 'with an orphan')", &[]);
    let orphan = pipeline.execute("INSERT INTO child VALUES (42)", &[]);
    let err = tx.commit_pipeline(&pipeline).map(drop).expect_err("orphan");
    assert!(
        matches!(err, Error::Db(_)),
        "the COMMIT's own error: {err:?}"
    );
    assert_eq!(err.code(), Some(&SqlState::FOREIGN_KEY_VIOLATION));
    assert_eq!(orphan.index(), 1);
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
    idle(&manager);
}

#[test]
fn a_pipelined_transaction_is_one_write_and_one_round_trip() {
    let db = Db::new("pipe_round_trip");
    let (proxy, manager) = db.manager_via_proxy();
    let run = |base: i32| {
        let ids = [base + 1, base + 2, base + 3];
        let pipeline = three_inserts(&ids);
        let tx = manager.lock().expect("lock").begin().expect("begin");
        tx.commit_pipeline(&pipeline)
            .expect("committed")
            .0
            .release();
    };
    // The first run on a connection prepares the statement (once).
    run(0);
    for round in 1..=5 {
        let (before, syncs) = (proxy.client_chunks(), proxy.client_syncs());
        run(round * 10);
        assert_eq!(
            proxy.client_chunks() - before,
            1,
            "BEGIN, three statements and COMMIT in one write"
        );
        assert_eq!(
            proxy.client_syncs() - syncs,
            1,
            "one Sync group, COMMIT its last message"
        );
    }
    assert_eq!(db.item_ids().len(), 18);
}

#[test]
fn what_cannot_run_in_a_pipeline_is_refused_before_anything_is_sent() {
    let db = Db::new("pipe_refused");
    let (proxy, manager) = db.manager_via_proxy();
    for (sql, refused_is) in [
        ("COMMIT", "COMMIT"),
        ("VACUUM items", "VACUUM"),
        ("CREATE DATABASE pgtx_never", "DATABASE"),
        ("COPY items FROM STDIN", "COPY"),
    ] {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (1, 'kept')", &[])
            .expect("before");
        let mut pipeline = Pipeline::new();
        pipeline.execute("INSERT INTO items VALUES (2, 'never')", &[]);
        pipeline.execute(sql, &[]);
        let before = proxy.client_chunks();
        let err = tx.run_pipeline(&pipeline).expect_err("refused");
        assert_eq!(proxy.client_chunks(), before, "{sql}: nothing was sent");
        match &err {
            Error::PipelineFailed {
                index: 1, source, ..
            } => assert!(
                match &**source {
                    Error::TransactionControl(why) => why.contains(refused_is),
                    Error::NotInPipeline(command) => command.contains(refused_is),
                    _ => false,
                },
                "{err}"
            ),
            other => panic!("{sql}: {other:?}"),
        }
        // The transaction goes on: nothing of the pipeline ran.
        tx.commit().expect("commit").release();
        assert_eq!(db.item_ids(), vec![1], "{sql}");
        db.admin()
            .batch_execute("DELETE FROM items")
            .expect("clean");
    }
}

#[test]
fn a_pipeline_inside_a_transaction_goes_on_or_aborts_it() {
    let db = Db::new("pipe_inside");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let results = tx.run_pipeline(&three_inserts(&[1, 2, 3])).expect("ran");
    assert_eq!(results.len(), 3);
    tx.execute("INSERT INTO items VALUES (4, 'after')", &[])
        .expect("goes on");
    tx.commit().expect("commit").release();
    assert_eq!(db.item_ids(), vec![1, 2, 3, 4]);

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (5, 'before')", &[])
        .expect("before");
    let err = tx
        .run_pipeline(&three_inserts(&[6, 1, 7]))
        .expect_err("dup");
    assert!(
        matches!(
            err,
            Error::PipelineFailed {
                index: 1,
                skipped: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let commit = tx.commit().map(drop);
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert_eq!(db.item_ids(), vec![1, 2, 3, 4]);
    assert_eq!(db.open_transactions(), 0);
    idle(&manager);
}

#[test]
fn parameters_that_do_not_encode_fail_the_pipeline_and_nothing_commits() {
    let db = Db::new("pipe_encode");
    let manager = db.manager();
    let tx = manager.lock().expect("lock").begin().expect("begin");
    let mut pipeline = Pipeline::new();
    pipeline.execute("INSERT INTO items VALUES (1, 'ok')", &[]);
    // An int4 column given text: refused while encoding, never sent.
    pipeline.execute("INSERT INTO items VALUES ($1, 'bad')", &[&"two"]);
    pipeline.execute("INSERT INTO items VALUES (3, 'ok')", &[]);
    let err = tx.commit_pipeline(&pipeline).map(drop).expect_err("bad");
    assert!(
        matches!(err, Error::PipelineFailed { index: 1, .. }),
        "{err:?}"
    );
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
    idle(&manager);

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let err = tx.run_pipeline(&pipeline).expect_err("bad");
    assert!(
        matches!(err, Error::PipelineFailed { index: 1, .. }),
        "{err:?}"
    );
    let commit = tx.commit().map(drop);
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(db.item_ids().is_empty(), "the others never commit");
    idle(&manager);
}

#[test]
fn a_pipeline_of_100000_statements_completes() {
    let db = Db::new("pipe_huge");
    let manager = db.manager();
    let ids: Vec<i32> = (0..100_000).collect();
    let mut pipeline = Pipeline::new();
    for id in &ids {
        pipeline.execute("INSERT INTO items VALUES ($1, 'many')", &[id]);
    }
    let tx = manager.lock().expect("lock").begin().expect("begin");
    let (_done, results) = tx.commit_pipeline(&pipeline).expect("committed");
    assert_eq!(results.len(), 100_000);
    let count: i64 = db
        .admin()
        .query_one("SELECT count(*) FROM items", &[])
        .expect("count")
        .get(0);
    assert_eq!(count, 100_000);
}

#[test]
fn without_a_statement_cache_a_pipeline_runs_on_the_unnamed_statement() {
    let db = Db::new("pipe_unnamed");
    let manager = ManagedConnection::builder(&db.dsn)
        .statement_cache(false)
        .build()
        .expect("settings");
    for round in 0..3 {
        let ids = [round * 10 + 1, round * 10 + 2, round * 10 + 3];
        let tx = manager.lock().expect("lock").begin().expect("begin");
        tx.commit_pipeline(&three_inserts(&ids)).expect("committed");
    }
    let failing = three_inserts(&[40, 1, 41]);
    let tx = manager.lock().expect("lock").begin().expect("begin");
    let err = tx.commit_pipeline(&failing).map(drop).expect_err("dup");
    assert!(
        matches!(err, Error::PipelineFailed { index: 1, .. }),
        "{err:?}"
    );
    assert_eq!(db.item_ids().len(), 9);
    let named: i64 = manager
        .lock()
        .expect("lock")
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .expect("count")
        .get(0);
    assert_eq!(named, 0, "nothing named left behind");
}

#[test]
fn a_cancel_stops_the_pipeline_running_now() {
    let db = Db::new("pipe_cancel");
    let manager = db.manager();
    let cancel = manager.cancel_handle();
    let dsn = db.dsn.clone();
    let canceller = thread::spawn(move || {
        // Once the sleep runs, cancel it.
        let mut admin = postgres::Client::connect(&dsn, postgres::NoTls).expect("admin");
        let sleeping = eventually(Duration::from_secs(20), || {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE state = 'active' AND query LIKE '%pg_sleep(30)%'
                       AND datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .is_ok_and(|row| row.get::<_, i64>(0) > 0)
        });
        assert!(sleeping, "the pipeline's sleep never ran");
        cancel.cancel()
    });
    let tx = manager.lock().expect("lock").begin().expect("begin");
    let mut pipeline = Pipeline::new();
    pipeline.execute("INSERT INTO items VALUES (1, 'before')", &[]);
    pipeline.execute("SELECT pg_sleep(30)", &[]);
    pipeline.execute("INSERT INTO items VALUES (2, 'after')", &[]);
    let err = tx
        .commit_pipeline(&pipeline)
        .map(drop)
        .expect_err("cancelled");
    canceller.join().expect("canceller").expect("cancel sent");
    assert!(
        matches!(&err, Error::PipelineFailed { index: 1, source, .. } if matches!(**source, Error::Cancelled(_))),
        "{err:?}"
    );
    assert!(db.item_ids().is_empty());
    assert!(eventually(Duration::from_secs(20), || db
        .open_transactions()
        == 0));
    idle(&manager);
}

#[test]
fn a_statement_gone_stale_is_prepared_again_and_the_pipeline_run_again() {
    let db = Db::new("pipe_stale");
    let manager = db.manager();
    let run = || {
        let tx = manager.lock().expect("lock").begin().expect("begin");
        let mut pipeline = Pipeline::new();
        pipeline.execute(
            "INSERT INTO items (id) SELECT count(*) + 10 FROM items",
            &[],
        );
        let rows = pipeline.query("SELECT * FROM items", &[]);
        tx.commit_pipeline(&pipeline)
            .map(|(_, results)| results.get(rows).map_or(0, |r| r[0].len()))
    };
    assert_eq!(run().expect("two columns"), 2);
    db.admin()
        .batch_execute("ALTER TABLE items ADD COLUMN extra int")
        .expect("alter");
    // The cached SELECT no longer fits: nothing of the transaction ran, so
    // it runs again, prepared afresh (the INSERT once).
    assert_eq!(run().expect("run again"), 3);
    assert_eq!(db.item_ids(), vec![10, 11]);
    idle(&manager);

    // Inside a transaction that ran something before, it fails instead.
    db.admin()
        .batch_execute("CREATE TABLE other (a int); INSERT INTO other VALUES (1)")
        .expect("table");
    let mut pipeline = Pipeline::new();
    pipeline.query("SELECT * FROM other", &[]);
    let tx = manager.lock().expect("lock").begin().expect("begin");
    tx.commit_pipeline(&pipeline).expect("cached");
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items (id) VALUES (50)", &[])
        .expect("before");
    db.admin()
        .batch_execute("ALTER TABLE other ADD COLUMN b int")
        .expect("alter");
    let stale = tx.commit_pipeline(&pipeline).map(drop);
    assert!(
        matches!(&stale, Err(Error::PipelineFailed { index: 0, .. })),
        "{stale:?}"
    );
    assert_eq!(db.item_ids(), vec![10, 11]);
    idle(&manager);
}

#[test]
fn an_empty_pipeline_commits_like_commit_and_runs_nothing() {
    let db = Db::new("pipe_empty");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'before')", &[])
        .expect("insert");
    let empty = Pipeline::new();
    assert!(tx.run_pipeline(&empty).expect("nothing to run").is_empty());
    let (done, results) = tx.commit_pipeline(&empty).expect("committed");
    drop(done);
    assert!(results.is_empty());
    assert_eq!(db.item_ids(), vec![1]);
    idle(&manager);
}

#[test]
fn a_backend_killed_during_a_pipeline_commits_nothing_and_the_next_holder_is_clean() {
    let db = Db::new("pipe_killed");
    let manager = db.manager();
    let dsn = db.dsn.clone();
    let killer = thread::spawn(move || {
        let mut admin = postgres::Client::connect(&dsn, postgres::NoTls).expect("admin");
        let killed = eventually(Duration::from_secs(20), || {
            admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE state = 'active' AND query LIKE '%pg_sleep(30)%'
                       AND datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .is_ok_and(|row| row.get::<_, i64>(0) > 0)
        });
        assert!(killed, "the pipeline's sleep never ran");
    });
    let tx = manager.lock().expect("lock").begin().expect("begin");
    let mut pipeline = Pipeline::new();
    pipeline.execute("INSERT INTO items VALUES (1, 'before')", &[]);
    pipeline.execute("SELECT pg_sleep(30)", &[]);
    pipeline.execute("INSERT INTO items VALUES (2, 'after')", &[]);
    let err = tx.commit_pipeline(&pipeline).map(drop).expect_err("killed");
    killer.join().expect("killer");
    // The server's own error for the sleeping statement: the COMMIT was
    // never reached, so the outcome is known.
    assert!(
        matches!(err, Error::PipelineFailed { index: 1, .. }),
        "{err:?}"
    );
    assert!(db.item_ids().is_empty());
    idle(&manager);
}

/// A prepared COPY could reach a pipeline where pgtx cannot see it is one:
/// `prepare` refuses COPY from or to the client.
#[test]
fn copy_cannot_be_prepared_so_no_pipeline_carries_one() {
    let db = Db::new("pipe_copy_prepared");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    for sql in ["COPY items FROM STDIN", "COPY items TO STDOUT"] {
        let refused = guard.prepare(sql).map(drop);
        assert!(
            matches!(refused, Err(Error::CopyNotPreparable)),
            "{sql}: {refused:?}"
        );
    }
    drop(guard);
    idle(&manager);
}

#[test]
fn the_new_texts_of_a_pipeline_are_prepared_together_in_one_round_trip() {
    let db = Db::new("pipe_prepare_together");
    let (proxy, manager) = db.manager_via_proxy();
    let four_texts = |base: i32| {
        let tx = manager.lock().expect("lock").begin().expect("begin");
        let before = proxy.client_chunks();
        let ids = [base + 1, base + 2, base + 3, base + 4];
        let mut pipeline = Pipeline::new();
        pipeline.execute("INSERT INTO items VALUES ($1, 'one')", &[&ids[0]]);
        pipeline.execute("INSERT INTO items VALUES ($1, 'two')", &[&ids[1]]);
        pipeline.execute(
            "INSERT INTO items (id, note) VALUES ($1, 'three')",
            &[&ids[2]],
        );
        let counted = pipeline.query("SELECT count(*) FROM items WHERE id > $1", &[&base]);
        pipeline.execute("INSERT INTO items VALUES ($1, 'one')", &[&ids[3]]);
        let (done, results) = tx.commit_pipeline(&pipeline).expect("committed");
        done.release();
        let rows = results.get(counted).expect("rows");
        assert_eq!(rows[0].get::<_, i64>(0), 3);
        proxy.client_chunks() - before
    };
    assert_eq!(
        four_texts(0),
        2,
        "four new texts prepared in one write, then the pipeline in one"
    );
    assert_eq!(four_texts(10), 1, "then prepared: the pipeline alone");
    assert_eq!(db.item_ids(), vec![1, 2, 3, 4, 11, 12, 13, 14]);
    idle(&manager);
}

#[test]
fn a_text_refused_among_new_ones_fails_the_pipeline_at_its_statement() {
    let db = Db::new("pipe_prepare_refused");
    let manager = db.manager();
    let run = |bad: &str| {
        let tx = manager.lock().expect("lock").begin().expect("begin");
        let mut pipeline = Pipeline::new();
        pipeline.execute("INSERT INTO items VALUES (1, 'first')", &[]);
        pipeline.execute("INSERT INTO items VALUES (2, 'second')", &[]);
        pipeline.execute(bad, &[]);
        pipeline.execute("INSERT INTO items VALUES (3, 'last')", &[]);
        tx.commit_pipeline(&pipeline)
            .map(|(done, _)| done.release())
    };
    let err = run("INSERT INTO no_such_table VALUES (1)").expect_err("refused");
    assert_eq!(failed_at(&err), (2, 1), "{err}");
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    assert!(db.item_ids().is_empty(), "nothing ran");
    assert_eq!(db.open_transactions(), 0);
    idle(&manager);
    // The texts the server accepted were prepared: with the bad one
    // mended, the pipeline runs.
    run("INSERT INTO items VALUES (4, 'mended')").expect("committed");
    assert_eq!(db.item_ids(), vec![1, 2, 3, 4]);
}

#[test]
fn a_call_refused_before_a_new_text_that_fails_too_is_the_one_named() {
    let db = Db::new("pipe_prepare_call");
    let manager = db.manager();
    let tx = manager.lock().expect("lock").begin().expect("begin");
    let mut pipeline = Pipeline::new();
    pipeline.execute("INSERT INTO items VALUES (1, 'before the call')", &[]);
    // A CALL is described, not prepared: its turn comes before the
    // SELECT's, which would fail too.
    pipeline.execute("CALL no_such_procedure($1)", &[&1_i32]);
    pipeline.query("SELECT * FROM no_such_table", &[]);
    let err = tx
        .commit_pipeline(&pipeline)
        .map(drop)
        .expect_err("refused");
    assert_eq!(failed_at(&err), (1, 1), "{err}");
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_FUNCTION));
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
    idle(&manager);
}
