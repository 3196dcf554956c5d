//! Store transactions under a concurrent writer: one that reads before it writes is not refused because another connection wrote in between; a deposed leader writes nothing; a paused leader's transaction is ended within half the lease.

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
        .fetch_one(t.store.raw_pool())
        .await
        .unwrap();
    assert_eq!(after, before + 2);
}

#[tokio::test]
async fn a_deposed_leader_cannot_write_anything_and_reads_run_only_reads() {
    use mapek::knowledge::lease::LEADER;
    use mapek::knowledge::StoreError;
    let t = store().await;
    let leader = t.store.fenced();
    let standby = t.store.fenced();
    let token = leader
        .try_acquire(LEADER, "a", common::NOW, 1_000)
        .await
        .unwrap()
        .expect("the lease is free");
    leader.set_fence(token);
    leader
        .set_cursor("by-a", "1")
        .await
        .expect("the leader writes");
    // Before holding a lease, a fenced handle writes nothing.
    assert!(matches!(
        standby.set_cursor("by-b", "1").await,
        Err(StoreError::Fenced(_))
    ));
    // The lease expires and the other replica takes it: the old leader's handle, still set to
    // its old token, is refused every write (on PostgreSQL, where the lease row is checked).
    let taken = standby
        .try_acquire(LEADER, "b", common::NOW + 5_000, 1_000)
        .await
        .unwrap()
        .expect("the expired lease is taken over");
    standby.set_fence(taken);
    if t.store.backend == mapek::knowledge::Backend::Postgres {
        assert!(matches!(
            leader.set_cursor("by-a", "2").await,
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            leader.replan_unmatched("digest").await,
            Err(StoreError::Fenced(_))
        ));
        assert_eq!(t.store.cursor("by-a").await.unwrap().as_deref(), Some("1"));
    }
    standby
        .set_cursor("by-b", "1")
        .await
        .expect("the new leader writes");
    // Reads run reads, and refuse anything else before it reaches the database.
    let refused = t
        .store
        .reads()
        .query("DELETE FROM cursors")
        .fetch_all()
        .await;
    assert!(refused.is_err());
    assert!(
        t.store.cursor("by-b").await.unwrap().is_some(),
        "nothing was deleted"
    );
}

#[tokio::test]
async fn a_paused_leaders_transaction_is_ended_within_half_the_lease() {
    use mapek::knowledge::lease::LEADER;
    let t = store().await;
    if t.store.backend != mapek::knowledge::Backend::Postgres {
        common::skip(
            "fenced transaction timeouts",
            "on SQLite (one writer at a time, no lease row to hold)",
        );
        return;
    }
    let leader = t
        .store
        .fenced()
        .with_lease_ttl(std::time::Duration::from_secs(2));
    let token = leader
        .try_acquire(LEADER, "a", common::NOW, 2_000)
        .await
        .unwrap()
        .expect("the lease is free");
    leader.set_fence(token);
    // The leader opens a transaction (it holds the lease row's share lock) and stops, as a
    // SIGSTOPped process would.
    let mut tx = leader.begin().await.expect("the leader's transaction");
    let started = std::time::Instant::now();
    // Another replica's takeover needs that row: it gets it once the server has ended the
    // idle transaction (1 s here), not after PostgreSQL's own default (none) or 15 s.
    let mut other = t.store.raw_pool().acquire().await.unwrap();
    sqlx::query("SET lock_timeout = 10000")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("SELECT token FROM lease WHERE name = $1 FOR UPDATE")
        .bind(LEADER)
        .fetch_optional(&mut *other)
        .await
        .expect("the row is free once the idle transaction is ended");
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(5),
        "the takeover waited {waited:?}"
    );
    // The paused leader, resumed, can write nothing with its ended transaction.
    let late = sqlx::query("INSERT INTO cursors (name, value) VALUES ('late', '1')")
        .execute(&mut *tx)
        .await;
    assert!(late.is_err() || tx.commit().await.is_err());
    assert_eq!(t.store.cursor("late").await.unwrap(), None);
}
