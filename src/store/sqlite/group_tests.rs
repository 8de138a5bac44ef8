//! Tests of the group commit (`group.rs`): batches that wait for the writer together
//! commit as one transaction, and each batch is still answered for itself.

use tempfile::TempDir;
use uuid::Uuid;

use super::SqliteStore;
use super::format_time;
use super::tests::{TestResult, at, demo_store, peek, row};
use crate::registry::demo_ids;
use crate::store::{Row, Store, StoreError};

/// Starts `batches` as concurrent upserts while the writer connection is held elsewhere,
/// waits until all of them queue for it, then lets go: the first to get the writer leads
/// ONE group holding them all. Returns each batch's result, in the order given.
async fn upsert_as_one_group(
    store: &SqliteStore,
    batches: Vec<Vec<Row>>,
) -> Result<Vec<Result<u64, StoreError>>, Box<dyn std::error::Error>> {
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let store = store.clone();
        std::thread::spawn(move || {
            let _writer = super::lock(&store.inner.writer);
            let _ = locked_tx.send(());
            let _ = release_rx.recv();
        })
    };
    locked_rx.recv()?;
    let n = batches.len();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|b| {
            let store = store.clone();
            tokio::spawn(async move { store.upsert(&b).await })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.inner.waiting.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} batches queued for the writer",
            store.inner.waiting.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    release_tx.send(())?;
    holder.join().map_err(|_| "writer holder panicked")?;
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await?);
    }
    Ok(results)
}

fn group_sizes(store: &SqliteStore) -> Vec<usize> {
    store
        .inner
        .waiting
        .group_sizes
        .lock()
        .map(|g| g.clone())
        .unwrap_or_default()
}

/// Batches that wait for the writer together are committed in one transaction, and a
/// refused batch among them rolls back alone: the others land, each with its own count,
/// and the refused batch's good row is not in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_batches_commit_as_one_group_and_a_refused_one_fails_alone() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let dev = demo_ids::DEVICE_01_1;
    let batches = vec![
        vec![
            row(dev, "voltage", at(0), 1.0),
            row(dev, "current", at(0), 1.0),
        ],
        vec![
            row(dev, "voltage", at(1), 2.0),
            row(Uuid::new_v4(), "voltage", at(1), 2.0),
        ],
        vec![row(dev, "voltage", at(2), 3.0)],
        vec![
            row(dev, "voltage", at(3), 4.0),
            row(dev, "current", at(3), 4.0),
            row(dev, "voltage", at(4), 4.0),
        ],
    ];
    let results = upsert_as_one_group(&store, batches).await?;
    assert_eq!(
        group_sizes(&store),
        vec![4],
        "one group of all four batches"
    );
    assert!(matches!(results[0], Ok(2)), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(StoreError::Data(r)) if r.code.as_deref() == Some("SQLite ConstraintViolation")),
        "{:?}",
        results[1]
    );
    assert!(matches!(results[2], Ok(1)), "{:?}", results[2]);
    assert!(matches!(results[3], Ok(3)), "{:?}", results[3]);
    assert_eq!(store.count_rows().await?, 6);
    let refused_good_row: i64 = peek(&dir)?.query_row(
        "SELECT count(*) FROM ingest_events WHERE time = ?1",
        [format_time(&at(1))],
        |r| r.get(0),
    )?;
    assert_eq!(refused_good_row, 0, "the refused batch rolled back whole");
    // Alone, a batch is a group of one.
    assert_eq!(store.upsert(&[row(dev, "voltage", at(9), 9.0)]).await?, 1);
    assert_eq!(group_sizes(&store), vec![4, 1]);
    Ok(())
}

/// When the group's COMMIT fails, no batch of it is answered Ok and none of its rows is
/// in the table. (Deferred foreign keys move the check of the bad row to the COMMIT.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_commit_fails_every_batch_of_it() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    super::lock(&store.inner.writer).execute_batch("PRAGMA defer_foreign_keys = ON")?;
    let dev = demo_ids::DEVICE_01_1;
    let batches = vec![
        vec![row(dev, "voltage", at(0), 1.0)],
        vec![row(Uuid::new_v4(), "voltage", at(1), 2.0)],
        vec![row(dev, "current", at(2), 3.0)],
    ];
    let results = upsert_as_one_group(&store, batches).await?;
    assert_eq!(group_sizes(&store), vec![3]);
    for r in &results {
        assert!(matches!(r, Err(StoreError::Data(_))), "{r:?}");
    }
    assert_eq!(store.count_rows().await?, 0);
    Ok(())
}

/// A full file in the middle of a group: whatever SQLite rolls back (the statement or the
/// whole transaction), every batch answered Ok is in the table and no row of a failed
/// batch is; the full file is infrastructure; once there is room again, writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_file_in_a_group_answers_each_batch_truthfully() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let pages: i64 = peek(&dir)?.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    super::lock(&store.inner.writer)
        .execute_batch(&format!("PRAGMA max_page_count = {}", pages + 2))?;
    let dev = demo_ids::DEVICE_01_1;
    let big: Vec<Row> = (0..3000i32)
        .map(|i| row(dev, "voltage", at(100 + i64::from(i)), f64::from(i)))
        .collect();
    let batches = vec![
        vec![row(dev, "voltage", at(0), 1.0)],
        big,
        vec![row(dev, "current", at(1), 2.0)],
    ];
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    let results = upsert_as_one_group(&store, batches).await?;
    let big_err = results[1]
        .as_ref()
        .err()
        .ok_or("3000 rows fit in 2 pages")?;
    assert!(big_err.is_transient(), "{big_err:?}");
    let landed: u64 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    let expected: u64 = results
        .iter()
        .zip(&sizes)
        .filter(|(r, _)| r.is_ok())
        .map(|(_, n)| *n as u64)
        .sum();
    assert_eq!(landed, expected);
    assert_eq!(store.count_rows().await?, landed);
    super::lock(&store.inner.writer).execute_batch("PRAGMA max_page_count = 1073741823")?;
    assert_eq!(store.upsert(&[row(dev, "voltage", at(5), 5.0)]).await?, 1);
    assert_eq!(store.count_rows().await?, landed + 1);
    Ok(())
}
