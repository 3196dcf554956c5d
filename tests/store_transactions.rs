//! Store transactions under a concurrent writer: one that reads before it writes is not refused because another connection wrote in between.

mod common;

use common::store;

#[tokio::test]
async fn a_transaction_that_reads_then_writes_waits_for_another_writer_instead_of_failing() {
    let t = store().await;
    let mut tx = t.store.begin().await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cursors")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // Another connection writes while the transaction is open. On SQLite it waits for the
    // transaction's write lock (taken at BEGIN); a deferred transaction would let it commit
    // first, and its own write below would then be refused with "database is locked".
    let other = t.store.clone();
    let writer = tokio::spawn(async move { other.set_cursor("other", "1").await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    sqlx::query("INSERT INTO cursors (name, value) VALUES ('mine', '1')")
        .execute(&mut *tx)
        .await
        .expect("the transaction's own write");
    tx.commit().await.unwrap();
    writer.await.unwrap().expect("the other writer, after it");
    assert_eq!(t.store.cursor("mine").await.unwrap().as_deref(), Some("1"));
    assert_eq!(t.store.cursor("other").await.unwrap().as_deref(), Some("1"));
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cursors")
        .fetch_one(&t.store.pool)
        .await
        .unwrap();
    assert_eq!(after, before + 2);
}
