//! Behaviour tests of the embedded queue against real files in temporary directories.

use std::time::Duration;

use bytes::Bytes;
use tempfile::TempDir;

use super::{EmbeddedQueue, EmbeddedQueueOptions};
use crate::queue::{DeadLetterReason, Outgoing, Queue, QueueError};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn opts() -> EmbeddedQueueOptions {
    EmbeddedQueueOptions {
        ack_wait: Duration::from_secs(30),
        ..EmbeddedQueueOptions::default()
    }
}

fn open(dir: &TempDir, opts: EmbeddedQueueOptions) -> Result<EmbeddedQueue, QueueError> {
    EmbeddedQueue::open(&dir.path().join("queue.db"), opts)
}

fn msg(id: &str) -> Outgoing {
    Outgoing {
        msg_id: id.to_string(),
        trace_id: format!("trace-{id}"),
        payload: Bytes::from(format!("payload {id}")),
    }
}

/// Depth as the health endpoint computes it.
async fn depth(q: &EmbeddedQueue) -> Result<u64, QueueError> {
    Ok(q.stats().await?.depth())
}

/// Fetch with a long wait: returns as soon as something is available.
const WAIT: Duration = Duration::from_secs(10);

/// A published message is delivered once with its headers and disappears on ack.
#[tokio::test]
async fn publish_fetch_ack_removes_the_message() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    let p = q.publish(msg("a")).await?;
    assert!(!p.duplicate);
    let got = q.fetch(10, WAIT).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq, p.seq);
    assert_eq!(got[0].delivered, 1);
    assert_eq!(got[0].payload, Bytes::from("payload a"));
    assert_eq!(got[0].trace_id.as_deref(), Some("trace-a"));
    assert!(got[0].published_at.is_some());
    let stats = q.stats().await?;
    assert_eq!((stats.pending, stats.ack_pending), (0, 1));
    q.ack(got).await?;
    assert_eq!(depth(&q).await?, 0);
    assert!(q.fetch(10, Duration::ZERO).await?.is_empty());
    Ok(())
}

/// Messages come out in sequence order, at most `max` per fetch.
#[tokio::test]
async fn fetch_returns_oldest_first_up_to_max() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    let ids: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    let published = q.publish_many(ids.iter().map(|i| msg(i)).collect()).await;
    let seqs: Vec<u64> = published
        .into_iter()
        .map(|r| r.map(|p| p.seq))
        .collect::<Result<_, _>>()?;
    let first = q.fetch(3, WAIT).await?;
    let second = q.fetch(3, WAIT).await?;
    let got: Vec<u64> = first.iter().chain(&second).map(|d| d.seq).collect();
    assert_eq!(first.len(), 3);
    assert_eq!(got, seqs);
    Ok(())
}

/// A message nobody acknowledges comes back after the ack wait, counted as a redelivery.
#[tokio::test]
async fn unacked_message_is_redelivered_after_ack_wait() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(
        &dir,
        EmbeddedQueueOptions {
            ack_wait: Duration::from_millis(200),
            ..opts()
        },
    )?;
    q.publish(msg("a")).await?;
    let first = q.fetch(1, WAIT).await?;
    assert_eq!(first.len(), 1);
    // The waiting fetch wakes up when the lease expires.
    let again = q.fetch(1, WAIT).await?;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].seq, first[0].seq);
    assert_eq!(again[0].delivered, 2);
    // An ack from the stale first delivery still settles the message: it was processed.
    q.ack(first).await?;
    assert_eq!(depth(&q).await?, 0);
    Ok(())
}

/// NAK with a delay hides the message for that long, then it returns with its count kept.
#[tokio::test]
async fn nak_with_delay_hides_the_message_then_it_returns() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    q.publish(msg("a")).await?;
    let got = q.fetch(1, WAIT).await?;
    q.nak(got, Duration::from_secs(1)).await?;
    assert!(
        q.fetch(1, Duration::ZERO).await?.is_empty(),
        "hidden during the delay"
    );
    let stats = q.stats().await?;
    assert_eq!((stats.pending, stats.ack_pending), (0, 1));
    let back = q.fetch(1, WAIT).await?;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].delivered, 2);
    Ok(())
}

/// NAK without delay makes the message available at once.
#[tokio::test]
async fn nak_without_delay_redelivers_at_once() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    q.publish(msg("a")).await?;
    let got = q.fetch(1, WAIT).await?;
    q.nak(got, Duration::ZERO).await?;
    let back = q.fetch(1, Duration::ZERO).await?;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].delivered, 2);
    Ok(())
}

/// Progress and NAK from a delivery whose lease has passed to someone else change nothing.
#[tokio::test]
async fn a_stale_delivery_cannot_postpone_the_current_one() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(
        &dir,
        EmbeddedQueueOptions {
            ack_wait: Duration::from_millis(100),
            ..opts()
        },
    )?;
    q.publish(msg("a")).await?;
    let stale = q.fetch(1, WAIT).await?;
    let current = q.fetch(1, WAIT).await?;
    assert_eq!(current[0].delivered, 2);
    q.nak(stale, Duration::from_secs(3600)).await?;
    // The current lease still expires after 100 ms, not in an hour.
    let third = q.fetch(1, WAIT).await?;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].delivered, 3);
    Ok(())
}

/// `in_progress` keeps a message leased past its original ack wait.
#[tokio::test]
async fn in_progress_extends_the_lease() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(
        &dir,
        EmbeddedQueueOptions {
            ack_wait: Duration::from_secs(2),
            ..opts()
        },
    )?;
    q.publish(msg("a")).await?;
    let got = q.fetch(1, WAIT).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    q.in_progress(&got.iter().collect::<Vec<_>>()).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Past the original 2 s lease, inside the renewed one: still leased.
    assert!(q.fetch(1, Duration::ZERO).await?.is_empty());
    q.ack(got).await?;
    assert_eq!(depth(&q).await?, 0);
    Ok(())
}

/// A retried publish with the same id inside the window is stored once.
#[tokio::test]
async fn duplicate_msg_id_inside_the_window_is_stored_once() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    let first = q.publish(msg("same")).await?;
    let again = q.publish(msg("same")).await?;
    assert_eq!(again.seq, first.seq);
    assert!(again.duplicate);
    // Also within one group (one publish_many).
    let both = q.publish_many(vec![msg("x"), msg("x")]).await;
    let both: Vec<_> = both.into_iter().collect::<Result<_, _>>()?;
    assert!(!both[0].duplicate && both[1].duplicate);
    assert_eq!(both[0].seq, both[1].seq);
    assert_eq!(depth(&q).await?, 2);
    // Still a duplicate after the original was acknowledged, as with JetStream.
    let got = q.fetch(10, WAIT).await?;
    q.ack(got).await?;
    assert!(q.publish(msg("same")).await?.duplicate);
    assert_eq!(depth(&q).await?, 0);
    Ok(())
}

/// Past the duplicate window the same id is a new message.
#[tokio::test]
async fn the_same_id_after_the_window_is_a_new_message() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(
        &dir,
        EmbeddedQueueOptions {
            duplicate_window: Duration::from_millis(100),
            ..opts()
        },
    )?;
    let first = q.publish(msg("a")).await?;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = q.publish(msg("a")).await?;
    assert!(!second.duplicate);
    assert!(second.seq > first.seq);
    Ok(())
}

/// At the message limit a publish is refused with `Full` and nothing stored is dropped.
#[tokio::test]
async fn full_at_max_msgs_and_nothing_is_discarded() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(
        &dir,
        EmbeddedQueueOptions {
            max_msgs: 3,
            ..opts()
        },
    )?;
    let results = q
        .publish_many(vec![msg("1"), msg("2"), msg("3"), msg("4")])
        .await;
    assert!(results[..3].iter().all(Result::is_ok));
    assert!(matches!(results[3], Err(QueueError::Full)));
    assert!(matches!(q.publish(msg("5")).await, Err(QueueError::Full)));
    // A retry of a stored message is still answered as a duplicate, not Full.
    assert!(q.publish(msg("1")).await?.duplicate);
    let got = q.fetch(10, WAIT).await?;
    let payloads: Vec<_> = got.iter().map(|d| d.payload.clone()).collect();
    assert_eq!(
        payloads,
        ["payload 1", "payload 2", "payload 3"].map(Bytes::from)
    );
    // Room again once one is acknowledged.
    let mut got = got;
    q.ack(vec![got.remove(0)]).await?;
    q.publish(msg("6")).await?;
    Ok(())
}

/// The byte limit counts payload bytes.
#[tokio::test]
async fn full_when_payload_bytes_would_exceed_max_bytes() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(
        &dir,
        EmbeddedQueueOptions {
            max_bytes: 20,
            ..opts()
        },
    )?;
    q.publish(msg("1")).await?; // 9 bytes
    q.publish(msg("2")).await?; // 18 bytes
    assert!(matches!(q.publish(msg("3")).await, Err(QueueError::Full)));
    assert_eq!(depth(&q).await?, 2);
    Ok(())
}

/// Dead-lettering moves the message with its reason; repeating it changes nothing.
#[tokio::test]
async fn dead_letter_moves_the_message_to_the_dlq_once() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    let p = q.publish(msg("bad")).await?;
    let mut got = q.fetch(1, WAIT).await?;
    let d = got.remove(0);
    let reason = DeadLetterReason {
        error_type: crate::metrics::ErrorType::DeviceNotFound,
        reason: "device_id: device x is not in the registry".into(),
    };
    let copy = crate::queue::Delivery {
        payload: d.payload.clone(),
        seq: d.seq,
        delivered: d.delivered,
        trace_id: d.trace_id.clone(),
        published_at: d.published_at,
        handle: d.handle,
    };
    let first = q.dead_letter(&d, &reason).await?;
    let again = q.dead_letter(&copy, &reason).await?;
    assert_eq!(
        first, again,
        "a retry gives the sequence stored the first time"
    );
    let stats = q.stats().await?;
    assert_eq!((stats.depth(), stats.dlq_depth), (0, 1));
    let list = q.dlq_list(0, 10).await?;
    assert_eq!(list.len(), 1);
    let dl = &list[0];
    assert_eq!(dl.seq, first, "dead_letter returns the DLQ's own sequence");
    assert_eq!(dl.original_seq, p.seq);
    assert_eq!(dl.error_type, "device_not_found");
    assert_eq!(dl.reason, reason.reason);
    assert_eq!(dl.delivered, 1);
    assert_eq!(dl.trace_id.as_deref(), Some("trace-bad"));
    assert_eq!(dl.payload, Bytes::from("payload bad"));
    assert!(dl.time.is_some());
    assert!(q.dlq_list(dl.seq + 1, 10).await?.is_empty());
    q.dlq_remove(dl.seq).await?;
    assert!(matches!(q.dlq_remove(dl.seq).await, Err(QueueError::NotFound(s)) if s == dl.seq));
    assert_eq!(q.stats().await?.dlq_depth, 0);
    Ok(())
}

/// pending + ack_pending is always the number of stored messages, whatever their state.
#[tokio::test]
async fn stats_pending_plus_ack_pending_is_what_is_stored() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    let ids: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    for r in q.publish_many(ids.iter().map(|i| msg(i)).collect()).await {
        r?;
    }
    let mut got = q.fetch(4, WAIT).await?;
    let naked = got.split_off(2);
    q.nak(naked, Duration::from_secs(60)).await?;
    let one = got.split_off(1);
    q.ack(one).await?;
    let s = q.stats().await?;
    assert_eq!(s.pending + s.ack_pending, 9);
    assert_eq!((s.pending, s.ack_pending, s.redelivered), (6, 3, 0));
    assert_eq!(s.waiting_pulls, 0);
    Ok(())
}

/// A fetch waiting on an empty queue is counted and returns as soon as a message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_wakes_up_on_publish() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.fetch(5, Duration::from_secs(30)).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while q.stats().await?.waiting_pulls == 0 {
        assert!(tokio::time::Instant::now() < deadline, "fetch never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    q.publish(msg("a")).await?;
    let got = tokio::time::timeout(Duration::from_secs(10), waiter).await???;
    assert_eq!(got.len(), 1);
    assert_eq!(q.stats().await?.waiting_pulls, 0);
    Ok(())
}

/// Unacknowledged messages, dead letters and the dedupe memory survive a restart.
#[tokio::test]
async fn reopening_keeps_unacked_messages() -> TestResult {
    let dir = TempDir::new()?;
    let (seq, dl_seq) = {
        let q = open(&dir, opts())?;
        let p = q.publish(msg("keep")).await?;
        q.publish(msg("bad")).await?;
        q.publish(msg("done")).await?;
        let mut got = q.fetch(3, WAIT).await?;
        let done = got.pop().ok_or("no message")?;
        let bad = got.pop().ok_or("no message")?;
        q.ack(vec![done]).await?;
        let reason = DeadLetterReason {
            error_type: crate::metrics::ErrorType::ValidationError,
            reason: "x".into(),
        };
        q.dead_letter(&bad, &reason).await?;
        // `got` (the "keep" delivery) is never settled: the process "dies" here.
        let dl = q.dlq_list(0, 10).await?;
        (p.seq, dl[0].seq)
    };
    let q = open(
        &dir,
        EmbeddedQueueOptions {
            ack_wait: Duration::from_millis(100),
            ..opts()
        },
    )?;
    let s = q.stats().await?;
    assert_eq!((s.depth(), s.dlq_depth), (1, 1));
    // Still leased (30 s ack wait before the restart), still remembered for dedupe.
    assert!(q.publish(msg("keep")).await?.duplicate);
    assert_eq!(q.dlq_list(0, 10).await?[0].seq, dl_seq);
    // A new message gets a higher sequence than anything before.
    let fresh = q.publish(msg("new")).await?;
    assert!(fresh.seq > seq + 2);
    let got = q.fetch(10, WAIT).await?;
    assert_eq!(
        got.iter().map(|d| d.seq).collect::<Vec<_>>(),
        vec![fresh.seq]
    );
    Ok(())
}

/// A message left leased by a process that died is delivered again after its lease.
#[tokio::test]
async fn a_lease_taken_before_a_restart_expires_after_it() -> TestResult {
    let dir = TempDir::new()?;
    let short = EmbeddedQueueOptions {
        ack_wait: Duration::from_millis(200),
        ..opts()
    };
    let seq = {
        let q = open(&dir, short.clone())?;
        q.publish(msg("a")).await?;
        q.fetch(1, WAIT).await?[0].seq
    };
    let q = open(&dir, short)?;
    let got = q.fetch(1, WAIT).await?;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].seq, got[0].delivered), (seq, 2));
    Ok(())
}

/// Concurrent publishers share group commits; every one of them gets its own sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_publishes_all_succeed() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.publish(msg(&format!("c{i}"))).await })
        })
        .collect();
    let mut seqs = std::collections::HashSet::new();
    for t in tasks {
        let p = t.await??;
        assert!(!p.duplicate);
        seqs.insert(p.seq);
    }
    assert_eq!(seqs.len(), 1000);
    assert_eq!(depth(&q).await?, 1000);
    Ok(())
}

/// Garbage in place of the queue file is a setup error naming the file, not a panic.
#[test]
fn a_corrupt_file_is_a_setup_error() -> TestResult {
    let dir = TempDir::new()?;
    let path = dir.path().join("queue.db");
    std::fs::write(&path, vec![0xA5u8; 8192])?;
    match EmbeddedQueue::open(&path, opts()) {
        Err(QueueError::Setup(m)) => {
            assert!(m.contains("queue.db"), "{m}");
            assert!(m.contains("not a queue database"), "{m}");
        }
        other => return Err(format!("expected Setup, got {other:?}").into()),
    }
    Ok(())
}

/// A directory in place of the file is a setup error too.
#[test]
fn an_unopenable_path_is_a_setup_error() -> TestResult {
    let dir = TempDir::new()?;
    let path = dir.path().join("queue.db");
    std::fs::create_dir(&path)?;
    assert!(matches!(
        EmbeddedQueue::open(&path, opts()),
        Err(QueueError::Setup(m)) if m.contains("queue.db")
    ));
    Ok(())
}

/// A full disk refuses the publish with `Unavailable("disk full…")` and stores nothing.
#[tokio::test]
async fn a_full_disk_makes_publish_unavailable() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    q.publish(msg("before")).await?;
    // Cap the file at its current size: the next page SQLite needs fails with SQLITE_FULL.
    q.exec_sql("PRAGMA max_page_count = 1").await?;
    let big = Outgoing {
        payload: Bytes::from(vec![7u8; 64 * 1024]),
        ..msg("big")
    };
    match q.publish(big).await {
        Err(QueueError::Unavailable(m)) => assert!(m.starts_with("disk full"), "{m}"),
        other => return Err(format!("expected Unavailable, got {other:?}").into()),
    }
    // The failed group was rolled back and the totals with it.
    assert_eq!(depth(&q).await?, 1);
    q.exec_sql("PRAGMA max_page_count = 1073741823").await?;
    let p = q.publish(msg("big")).await?;
    assert!(!p.duplicate, "the refused publish left no dedupe entry");
    assert_eq!(depth(&q).await?, 2);
    Ok(())
}

/// A byte-capped fetch stops adding messages at the cap but always takes one; the DLQ is
/// counted by error type without reading payloads.
#[tokio::test]
async fn fetch_is_bounded_by_bytes_and_the_dlq_is_counted_by_type() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    for i in 0..6 {
        let mut m = msg(&format!("m{i}"));
        m.payload = Bytes::from(vec![b'x'; 1000]);
        q.publish(m).await?;
    }
    let two = q.fetch_bounded(10, 2500, WAIT).await?;
    assert_eq!(two.len(), 2, "1000 + 1000 fit 2500, a third does not");
    let one = q.fetch_bounded(10, 10, WAIT).await?;
    assert_eq!(
        one.len(),
        1,
        "a message larger than the cap still comes alone"
    );
    let rest = q.fetch_bounded(10, usize::MAX, WAIT).await?;
    assert_eq!(rest.len(), 3);
    let reason = |t| DeadLetterReason {
        error_type: t,
        reason: "r".into(),
    };
    use crate::metrics::ErrorType;
    q.dead_letter(&two[0], &reason(ErrorType::JsonDecode))
        .await?;
    q.dead_letter(&two[1], &reason(ErrorType::JsonDecode))
        .await?;
    q.dead_letter(&one[0], &reason(ErrorType::StoreRejected))
        .await?;
    let counts = q.dlq_counts(10).await?;
    assert!(counts.complete);
    assert_eq!(counts.counts.get("json_decode"), Some(&2));
    assert_eq!(counts.counts.get("store_rejected"), Some(&1));
    Ok(())
}

/// A publish whose commit does not come within the publish timeout answers Unavailable.
#[tokio::test]
async fn a_publish_is_bounded_by_the_publish_timeout() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(
        &dir,
        EmbeddedQueueOptions {
            publish_timeout: Duration::ZERO,
            ..opts()
        },
    )?;
    match q.publish(msg("late")).await {
        Err(QueueError::Unavailable(m)) => assert!(m.contains("PUBLISH_TIMEOUT"), "{m}"),
        // The thread may be fast enough to answer within a zero timeout's first poll.
        Ok(_) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Committed messages reach the queue file itself (not only its WAL) within moments, with
/// no further writes and far below the writer's own 8,192-page checkpoint: the background
/// checkpointer runs for the queue (which is also what fsyncs the WAL every 250 ms).
#[tokio::test]
async fn committed_messages_are_checkpointed_into_the_file_in_the_background() -> TestResult {
    let dir = TempDir::new()?;
    let q = open(&dir, opts())?;
    let file = dir.path().join("queue.db");
    let pages = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len() / 4096);
    let before = pages(&file)?;
    let batch: Vec<Outgoing> = (0..50)
        .map(|i| Outgoing {
            msg_id: format!("big-{i}"),
            trace_id: String::new(),
            payload: Bytes::from(vec![b'x'; 4000]),
        })
        .collect();
    for r in q.publish_many(batch).await {
        r?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pages(&file)? < before + 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "queue file still {} pages (was {before}): nothing checkpointed it",
            pages(&file)?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(depth(&q).await?, 50);
    Ok(())
}
