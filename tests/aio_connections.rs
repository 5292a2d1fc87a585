//! The async front's connections: the `on_connect` hook sets up every new
//! one before anyone gets it (a failing hook's connection is never used),
//! and under `reconnect(policy)` calls fail at once with `ConnectionDead`
//! while the server is down, one background task ends the outage, and
//! recovery handlers run once per recovery.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::aio::outside;
use common::fixtures::Db;
use common::server::TestServer;
use pgtx::aio::ManagedConnection;
use pgtx::{Error, ReconnectPolicy};

/// Waits until `cond` holds, at most `timeout`.
async fn eventually<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond().await
}

/// A quick schedule for tests: first attempt at once, then every 50 ms.
fn quick() -> ReconnectPolicy {
    ReconnectPolicy::default()
        .initial_delay(Duration::from_millis(50))
        .factor(1.0)
        .max_delay(Duration::from_millis(50))
}

async fn one(manager: &ManagedConnection) -> pgtx::Result<i32> {
    let mut guard = manager.lock().await?;
    Ok(guard.query_one("SELECT 1", &[]).await?.get(0))
}

async fn show(manager: &ManagedConnection, setting: &str) -> String {
    let mut guard = manager.lock().await.expect("lock");
    guard
        .query_one("SELECT current_setting($1)", &[&setting])
        .await
        .expect("show")
        .get(0)
}

/// A private server (the test stops it), and a builder whose `on_connect`
/// hook counts the sessions pgtx opened on it.
fn private_counted() -> (TestServer, Arc<AtomicUsize>, pgtx::aio::Builder) {
    let server = TestServer::start_private();
    let sessions = Arc::new(AtomicUsize::new(0));
    let counted = sessions.clone();
    let builder = ManagedConnection::builder(&(server.dsn() + " connect_timeout=2")).on_connect(
        move |_conn| {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        },
    );
    (server, sessions, builder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_sets_up_every_new_connection_before_anyone_uses_it() {
    let db = outside(|| Db::new("aio_hook_every"));
    outside(|| {
        db.admin()
            .batch_execute("CREATE SCHEMA app; CREATE TABLE app.things (n int)")
    })
    .expect("schema");
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let manager = ManagedConnection::builder(&db.dsn)
        .on_connect(move |conn| {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                conn.batch_execute("SET search_path = app, public").await?;
                conn.execute(
                    "SELECT set_config('application_name', $1, false)",
                    &[&"hooked"],
                )
                .await?;
                Ok(())
            })
        })
        .build()
        .expect("builder");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "building does not connect");

    manager
        .lock()
        .await
        .expect("lock")
        .execute("INSERT INTO things VALUES (1)", &[])
        .await
        .expect("app.things through the hook's search_path");
    assert_eq!(show(&manager, "application_name").await, "hooked");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one connection, one run");

    // A new session (the old one killed) is set up again.
    assert_eq!(
        outside(|| TestServer::shared().terminate_backends(&db.name)),
        1
    );
    assert_eq!(show(&manager, "search_path").await, "app, public");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_fails_or_leaves_a_block_open_fails_the_call_and_its_connection_is_never_used()
{
    let db = outside(|| Db::new("aio_hook_fails"));
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let manager = ManagedConnection::builder(&db.dsn)
        .on_connect(move |conn| {
            let call = counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match call {
                    0 => Err("not today".into()),
                    // Its insert must never be committed.
                    1 => Ok(conn
                        .batch_execute("BEGIN; INSERT INTO items VALUES (1, 'hook')")
                        .await?),
                    _ => Ok(()),
                }
            })
        })
        .build()
        .expect("builder");
    let first = one(&manager).await.expect_err("the hook failed");
    assert!(matches!(first, Error::OnConnect(_)), "{first:?}");
    let second = one(&manager).await.expect_err("the hook left a block open");
    assert!(matches!(second, Error::OnConnect(_)), "{second:?}");
    assert_eq!(
        one(&manager).await.expect("the third connection is fine"),
        1
    );
    assert!(
        outside(|| db.item_ids()).is_empty(),
        "nothing of the hook kept"
    );
    // The refused connections were closed: one session is left.
    assert!(
        eventually(Duration::from_secs(10), || async {
            outside(|| db.backends()).len() == 1
        })
        .await,
        "{:?}",
        outside(|| db.backends())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_server_is_down_calls_fail_fast_and_one_task_ends_the_outage() {
    let (server, sessions, builder) = outside(private_counted);
    let recoveries = Arc::new(AtomicUsize::new(0));
    let counted = recoveries.clone();
    let manager = builder
        .reconnect(quick())
        .on_reconnect(|_conn| Box::pin(async { Err("the first handler is broken".into()) }))
        .on_reconnect(move |conn| {
            let counted = counted.clone();
            Box::pin(async move {
                conn.query_one("SELECT 1", &[]).await?;
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        })
        .build()
        .expect("builder");
    assert_eq!(one(&manager).await.expect("connect"), 1);

    outside(|| server.stop());
    // The call that finds the connection dead makes the first attempt.
    let first = one(&manager).await.expect_err("the server is down");
    assert!(
        matches!(first, Error::Connect(_) | Error::ConnectionLost(_)),
        "{first:?}"
    );
    // Then every call, from every task, fails at once without connecting.
    let manager = Arc::new(manager);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let manager = manager.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let started = Instant::now();
                let err = one(&manager).await.expect_err("still down");
                let took = started.elapsed();
                assert!(matches!(err, Error::ConnectionDead { .. }), "{err:?}");
                assert!(err.is_transient());
                assert!(took < Duration::from_millis(10), "{took:?}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("no task panicked");
    }
    let err = manager
        .transaction(async |tx| tx.commit().await)
        .await
        .expect_err("down");
    assert!(
        matches!(err, Error::ConnectionDead { attempts, .. } if attempts >= 1),
        "{err:?}"
    );

    outside(|| server.start());
    assert!(
        eventually(Duration::from_secs(30), || async {
            one(&manager).await.is_ok()
        })
        .await,
        "the connection came back"
    );
    // Many callers saw the outage; one connection ended it, and the
    // working handler ran once.
    assert_eq!(sessions.load(Ordering::SeqCst), 2);
    assert_eq!(recoveries.load(Ordering::SeqCst), 1);
    assert_eq!(one(&manager).await.expect("stays up"), 1);
    assert_eq!(sessions.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_manager_during_an_outage_stops_the_reconnection() {
    let (server, sessions, builder) = outside(private_counted);
    let manager = builder.reconnect(quick()).build().expect("builder");
    assert_eq!(one(&manager).await.expect("connect"), 1);
    outside(|| server.stop());
    one(&manager).await.expect_err("down");
    assert!(matches!(
        one(&manager).await,
        Err(Error::ConnectionDead { .. })
    ));
    drop(manager);
    outside(|| server.start());
    // Nothing reconnects for a manager that is gone: give a task that was
    // not stopped many of its 50 ms periods to show itself.
    let connected = eventually(Duration::from_millis(500), || async {
        sessions.load(Ordering::SeqCst) > 1
    })
    .await;
    assert!(!connected, "a reconnection task outlived its manager");
}
