// The async closure form compiles: the closure hands back its own finished
// `Tx`, with a value, and the whole future can be spawned on a
// multi-threaded runtime (it is `Send`).

async fn transfer(manager: &pgtx::aio::ManagedConnection) -> Result<i64, pgtx::Error> {
    manager
        .transaction(async |mut tx| {
            tx.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1", &[])
                .await?;
            let balance: i64 = tx
                .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
                .await?
                .get(0);
            tx.commit_returning(balance).await
        })
        .await
}

fn assert_send<T: Send>(_: &T) {}

fn main() {
    let manager: &'static pgtx::aio::ManagedConnection =
        Box::leak(Box::new(pgtx::aio::ManagedConnection::new("host=localhost").unwrap()));
    let future = transfer(manager);
    assert_send(&future);
    drop(future);
}
