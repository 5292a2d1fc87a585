//! Which server of a host list a new connection goes to: in the order
//! listed by default, spread at random with `load_balance_hosts=random`
//! (libpq 16). Two proxies in front of one server stand for two servers;
//! each counts the connections it was given.

mod common;

use common::proxy::Proxy;
use common::server::TestServer;
use pgtx::ManagedConnection;

/// Two proxies in front of the shared server, and a connection string
/// listing both (the first proxy first) with `extra` settings.
fn two_hosts(extra: &str) -> (Proxy, Proxy, String) {
    let server = TestServer::shared();
    let target = server.loopback_addr().expect("loopback");
    let (first, second) = (Proxy::start(target), Proxy::start(target));
    let one = server.dsn_via(first.addr());
    let ip = first.addr().ip().to_string();
    let both = one
        .replace(
            &format!("host={ip}"),
            &format!("host={ip},{}", second.addr().ip()),
        )
        .replace(
            &format!("port={}", first.addr().port()),
            &format!("port={},{}", first.addr().port(), second.addr().port()),
        );
    assert_ne!(both, one, "both hosts are listed: {both}");
    (first, second, format!("{both} {extra}"))
}

/// Opens `n` connections (one manager each), one after the other.
fn connect_times(dsn: &str, n: usize) {
    for _ in 0..n {
        let manager = ManagedConnection::new(dsn).expect("settings");
        let one: i32 = manager
            .lock()
            .expect("connect")
            .query_one("SELECT 1", &[])
            .expect("query")
            .get(0);
        assert_eq!(one, 1);
    }
}

#[test]
fn by_default_every_connection_goes_to_the_first_host_that_answers() {
    let (first, second, dsn) = two_hosts("");
    connect_times(&dsn, 20);
    assert_eq!(first.total_connections(), 20);
    assert_eq!(second.total_connections(), 0);
}

#[test]
fn load_balance_hosts_random_spreads_new_connections_over_the_hosts() {
    let (first, second, dsn) = two_hosts("load_balance_hosts=random");
    connect_times(&dsn, 40);
    let (a, b) = (first.total_connections(), second.total_connections());
    assert_eq!(a + b, 40, "one connection each, none refused");
    // Fair coins: fewer than 6 of 40 on one side happens about once in
    // ten million runs.
    assert!(a >= 6 && b >= 6, "first {a}, second {b}");
}
