//! Writes through a Patroni switchover and a failover, under load: a
//! real HA manager (Patroni with etcd) moves the primary; 16 threads write
//! through a pool, then through one manager, with
//! `target_session_attrs=read-write` listing both nodes. Every acknowledged write is on the new primary, none reported
//! failed is, writes resume, and once the old primary is back as a
//! standby no pooled connection stays on it.

mod common;

use std::time::{Duration, Instant};

use common::patroni::PatroniCluster;
use common::write_outcome::{Tally, Writers};
use pgtx::{ConnectionSource, ManagedConnection, Pool};

const APP: &str = "patroni_writers";

/// 16 threads write through `source` (a pool or a manager, whose
/// sessions are named [`APP`]) while `event` moves the primary (it returns
/// the node that was primary); returns once 200 more writes are
/// acknowledged after it. Checks that nothing acknowledged is missing and
/// nothing failed is present on the new primary, and that no connection of
/// `source` is left on the old one.
fn writes_through(
    cluster: &PatroniCluster,
    source: &(impl ConnectionSource + Sync),
    what: &str,
    first_id: i64,
    event: impl FnOnce() -> usize,
) {
    let writers = Writers::new(first_id);
    let wait_for = |what: &str, done: &dyn Fn(&Writers) -> bool| {
        let (timeout, poll) = (Duration::from_secs(120), Duration::from_millis(10));
        writers.wait_for(what, timeout, poll, done, || cluster.logs());
    };
    let (old, took) = std::thread::scope(|s| {
        let _stop = writers.start(s, source, 16, Duration::from_millis(20));
        wait_for("200 writes before", &|w| w.count(true) >= 200);
        let started = Instant::now();
        let old = event();
        let ok_before = writers.count(true);
        wait_for("200 writes after", &|w| w.count(true) >= ok_before + 200);
        (old, started.elapsed())
    });
    let new = 1 - old;
    assert_eq!(cluster.primary(), Some(new), "{}", cluster.logs());
    let Tally {
        counts,
        lost,
        phantom,
        ..
    } = writers.tally(&mut cluster.admin(new));
    eprintln!(
        "{what}: node{old} -> node{new}; 200 writes acknowledged on the new primary {took:?} \
         after it began; outcomes {counts:?}; lost {lost}, phantom {phantom}"
    );
    assert_eq!(
        lost, 0,
        "{what}: acknowledged writes missing on the new primary"
    );
    assert_eq!(
        phantom, 0,
        "{what}: writes reported failed found on the new primary"
    );
    // The old primary comes back as the new one's standby, with none of
    // the pool's connections.
    cluster.wait_healthy(new);
    let mut on_old: i64 = -1;
    let settled = common::eventually(Duration::from_secs(10), || {
        on_old = cluster
            .admin(old)
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&APP],
            )
            .expect("sessions")
            .get(0);
        on_old == 0
    });
    assert!(
        settled,
        "{what}: {on_old} connections stay on the old primary"
    );
}

#[test]
fn writes_through_a_pool_and_a_manager_go_through_patroni_switchovers_and_failovers_losing_nothing()
{
    let cluster = PatroniCluster::start();
    cluster
        .admin(0)
        .batch_execute("CREATE TABLE writes (id bigint PRIMARY KEY)")
        .expect("table");
    let pool = Pool::new(
        &cluster.dsn(&format!(
            "target_session_attrs=read-write application_name={APP}"
        )),
        8,
    )
    .expect("settings");
    writes_through(&cluster, &pool, "switchover", 1, || {
        let from = cluster.primary().expect("a primary");
        cluster.switchover();
        from
    });
    writes_through(
        &cluster,
        &pool,
        "failover (primary killed)",
        10_000_000,
        || cluster.kill_primary(),
    );
    drop(pool);
    // The same again, all 16 threads sharing one manager's connection.
    let manager = ManagedConnection::new(&cluster.dsn(&format!(
        "target_session_attrs=read-write application_name={APP}"
    )))
    .expect("settings");
    writes_through(
        &cluster,
        &manager,
        "switchover, one manager",
        20_000_000,
        || {
            let from = cluster.primary().expect("a primary");
            cluster.switchover();
            from
        },
    );
    writes_through(
        &cluster,
        &manager,
        "failover (primary killed), one manager",
        30_000_000,
        || cluster.kill_primary(),
    );
}
