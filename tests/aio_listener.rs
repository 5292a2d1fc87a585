//! The async `Listener`: notifications as a `Stream` (or `recv`), told to
//! observers, kept when a read's future is dropped; a terminated backend
//! is reconnected, every channel listened to again, and the gap announced
//! after what arrived before it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::aio::outside;
use common::fixtures::Db;
use futures_util::StreamExt;
use pgtx::aio::Listener;
use pgtx::{ListenEvent, ReconnectPolicy};

fn notify(db: &Db, channel: &str, payload: &str) {
    outside(|| {
        db.admin()
            .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .expect("notify")
    });
}

fn payload(event: &ListenEvent) -> &str {
    match event {
        ListenEvent::Notification(n) => n.payload(),
        other => panic!("expected a notification: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_arrive_as_a_stream_are_observed_and_survive_a_dropped_read() {
    let db = outside(|| Db::new("aio_listen_basics"));
    let mut listener = Listener::connect(&db.dsn).await.expect("listener");
    listener.listen("Jobs Queue").await.expect("listen");
    listener.listen("other").await.expect("listen");
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    listener.add_observer(Arc::new(move |_: &ListenEvent| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }));
    // A read whose future is dropped (nothing had come) loses nothing.
    assert!(
        listener
            .recv_timeout(Duration::from_millis(20))
            .await
            .expect("quiet")
            .is_none()
    );
    assert!(listener.try_recv().await.expect("quiet").is_none());
    notify(&db, "Jobs Queue", "one");
    notify(&db, "Jobs Queue", "two");
    let first = listener.recv().await.expect("event");
    assert_eq!(payload(&first), "one");
    let second = listener
        .next()
        .await
        .expect("a stream never ends")
        .expect("event");
    assert_eq!(payload(&second), "two");
    assert_eq!(seen.load(Ordering::SeqCst), 2, "observers told each");

    // Its own NOTIFY comes back too; unlisten drops what is queued.
    listener.notify("other", "mine").await.expect("notify");
    notify(&db, "Jobs Queue", "dropped");
    tokio::time::sleep(Duration::from_millis(50)).await;
    listener.unlisten("Jobs Queue").await.expect("unlisten");
    let mine = listener
        .recv_timeout(Duration::from_secs(10))
        .await
        .expect("event")
        .expect("arrived");
    assert_eq!(payload(&mine), "mine");
    assert!(
        listener
            .recv_timeout(Duration::from_millis(100))
            .await
            .expect("quiet")
            .is_none(),
        "the unlistened channel's notification was dropped"
    );
    assert_eq!(listener.channels().collect::<Vec<_>>(), ["other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_is_reconnected_listening_again_and_the_gap_announced() {
    let db = outside(|| Db::new("aio_listen_terminated"));
    let mut listener = Listener::connect(&db.dsn).await.expect("listener");
    listener.set_reconnect_policy(
        ReconnectPolicy::default()
            .initial_delay(Duration::from_millis(20))
            .max_delay(Duration::from_millis(20)),
    );
    listener.listen("jobs").await.expect("listen");
    let old_pid = listener.backend_pid().await.expect("pid");
    notify(&db, "jobs", "before");
    // Arrived before the break: read off the socket, not yet delivered.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let terminated: bool = outside(|| {
        db.admin()
            .query_one("SELECT pg_terminate_backend($1, 5000)", &[&old_pid])
            .expect("terminate")
            .get(0)
    });
    assert!(terminated);
    let before = listener.recv().await.expect("event");
    assert_eq!(payload(&before), "before", "what came before the gap first");
    let gap = tokio::time::timeout(Duration::from_secs(20), listener.recv())
        .await
        .expect("reconnected in time")
        .expect("event");
    assert!(
        matches!(gap, ListenEvent::Reconnected { attempts, .. } if attempts >= 1),
        "{gap:?}"
    );
    let new_pid = listener.backend_pid().await.expect("pid");
    assert_ne!(new_pid, old_pid);
    notify(&db, "jobs", "after");
    let after = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("listening again")
        .expect("event");
    assert_eq!(payload(&after), "after");
}
