//! Faults of the upload path: a full disk, a party killed mid-upload, a stalled upload.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_upload_unacknowledged_and_the_coordinator_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    server.ignore_sigxfsz = true;
    server.start();
    // ~4 MB updates against a 2 MiB file-size limit.
    let (mut op, spec, [(k0, mut c0), (k1, mut c1)]) = two_sites(&server, "disk").await;
    let a0 = next_work(&mut c0, |a| matches!(a.work, Work::Train { .. })).await;
    let (blob, env) = update_for(&mut c0, &a0, &spec, "site-0", &k0).await;
    const LIMIT: u64 = 2 << 20;
    assert!(blob.len() as u64 > LIMIT + LIMIT / 2);
    for f in ["yosegi.db", "yosegi.db-wal"] {
        let len = std::fs::metadata(server.data_dir.join(f)).map_or(0, |m| m.len());
        assert!(
            len < LIMIT / 2,
            "{f} is {len} bytes: the limit would hit it"
        );
    }
    let prlimit = |soft: &str| {
        let ok = Command::new("prlimit")
            .args([
                "--pid",
                &server.pid().to_string(),
                &format!("--fsize={soft}:"),
            ])
            .status()
            .expect("runs prlimit (util-linux)");
        assert!(ok.success(), "prlimit --fsize={soft}:");
    };
    prlimit(&LIMIT.to_string());
    let e = c0
        .upload(&a0.id, &env, blob.clone(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Unavailable")
            && e.contains("coordinator storage failed, nothing was stored")
            && e.contains("File too large"),
        "{e}"
    );
    // Nothing was acknowledged or kept; the coordinator still serves everyone.
    let rounds = op.status("disk").await.unwrap();
    assert_eq!(rounds[0].phase, "training");
    assert_eq!(state_of(&rounds[0], "site-0").0, "invited");
    let blobs = server.data_dir.join("blobs");
    assert!(!blobs.join(env.header.blob_sha256.to_string()).exists());
    assert_eq!(std::fs::read_dir(blobs.join("tmp")).unwrap().count(), 0);
    let a1 = next_work(&mut c1, |a| matches!(a.work, Work::Train { .. })).await;
    let (blob1, env1) = update_for(&mut c1, &a1, &spec, "site-1", &k1).await;

    // Space again: the same upload goes through, the round completes.
    prlimit("unlimited");
    assert_eq!(
        c0.upload(&a0.id, &env, blob, None).await.unwrap(),
        Ack::Accepted
    );
    assert_eq!(
        c1.upload(&a1.id, &env1, blob1, None).await.unwrap(),
        Ack::Accepted
    );
    let rounds = wait_rounds(&server, "disk", Duration::from_secs(60), |r| {
        r[0].phase == "published"
    })
    .await;
    assert_eq!(rounds[0].version, 1);
    assert!(
        server.log_tail().contains("File too large"),
        "the log names the storage failure"
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_killed_mid_upload_leaves_nothing_and_finishes_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    server.start();
    let (mut op, spec, [(k0, mut c0), (k1, mut c1)]) = two_sites(&server, "cut").await;
    let a0 = next_work(&mut c0, |a| matches!(a.work, Work::Train { .. })).await;
    let (blob, env) = update_for(&mut c0, &a0, &spec, "site-0", &k0).await;

    // site-0 "dies" after sending its envelope and the first two of four 1 MiB chunks: its
    // connection is dropped with the stream unfinished.
    let h = &env.header;
    let (tx, upload) = open_upload(&server, &k0, &a0.id, &env).await;
    for (i, c) in blob.chunks(1 << 20).take(2).enumerate() {
        tx.send(chunk(i << 20, c)).await.unwrap();
    }
    // Let the chunks arrive, then kill the sender mid-stream (its connection goes with it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    upload.abort();
    let _ = upload.await;
    drop(tx);

    let rounds = op.status("cut").await.unwrap();
    assert_eq!(state_of(&rounds[0], "site-0").0, "invited", "nothing acked");
    let blobs = server.data_dir.join("blobs");
    assert!(!blobs.join(h.blob_sha256.to_string()).exists());
    // The server notices the cut stream on its own time: wait (bounded) for nothing to be left.
    let tmp_files = || std::fs::read_dir(blobs.join("tmp")).unwrap().count();
    let waited = std::time::Instant::now();
    while tmp_files() > 0 && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tmp_files(), 0, "a temp file of the cut upload was left");

    // The restarted party (a new connection, same key) finishes its upload; the round merges
    // the whole update.
    let mut again = client(&server, "site-0", &k0).await;
    assert_eq!(
        again.upload(&a0.id, &env, blob, None).await.unwrap(),
        Ack::Accepted
    );
    let a1 = next_work(&mut c1, |a| matches!(a.work, Work::Train { .. })).await;
    let (blob1, env1) = update_for(&mut c1, &a1, &spec, "site-1", &k1).await;
    c1.upload(&a1.id, &env1, blob1, None).await.unwrap();
    let rounds = wait_rounds(&server, "cut", Duration::from_secs(60), |r| {
        r[0].phase == "published"
    })
    .await;
    assert_eq!(state_of(&rounds[0], "site-0").0, "accepted");
    server.terminate();
    // After a clean stop the blob dir holds the base model, two updates and the merge.
    let files = std::fs::read_dir(&blobs)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_file())
        .count();
    assert_eq!(files, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_dropped_after_the_idle_timeout_recorded_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    std::fs::write(&server.config, "tick_ms = 20\nupload_idle_secs = 1\n").unwrap();
    server.start();
    let (mut op, spec, key, mut c, a) = one_site(&server, "stall").await;
    let (blob, env) = update_for(&mut c, &a, &spec, "site-0", &key).await;
    // The envelope and one chunk, then silence with the stream still open (a dead link).
    let started = Instant::now();
    let (tx, upload) = open_upload(&server, &key, &a.id, &env).await;
    tx.send(chunk(0, &blob[..1 << 16])).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(30), upload)
        .await
        .expect("the coordinator drops the stalled stream")
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message()
            .contains("upload of site-0 sent nothing for 1 s after 65536 bytes; dropped"),
        "{}",
        e.message()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(tx);
    // The operator sees why: the stall is the party's last rejection, and it is logged.
    let rounds = op.status("stall").await.unwrap();
    let (state, reason) = state_of(&rounds[0], "site-0");
    assert_eq!(state, "invited");
    assert!(reason.contains("sent nothing for 1 s"), "{reason}");
    let logged: String = server
        .db()
        .query_row(
            "SELECT detail FROM audit_log WHERE kind = 'update_rejected' AND party = 'site-0'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(logged.contains("\"code\":\"stalled\""), "{logged}");
    let blobs = server.data_dir.join("blobs");
    assert!(!blobs.join(env.header.blob_sha256.to_string()).exists());
    // A whole upload afterwards goes through.
    assert_eq!(
        c.upload(&a.id, &env, blob, None).await.unwrap(),
        Ack::Accepted
    );
    wait_rounds(&server, "stall", Duration::from_secs(60), |r| {
        r[0].phase == "published"
    })
    .await;
    // The published model damaged on the coordinator's disk: a download is cut short with
    // DATA_LOSS before its last chunk, never delivered whole.
    damage(&server, "stall", 1);
    let e = c
        .download("stall", 1, max_model_blob_bytes(&spec))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("DataLoss") && e.contains("is damaged"), "{e}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_upload_is_dropped_when_it_falls_below_the_slowest_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    // Something every second is enough to stay under the idle limit; the whole blob must still
    // come in within 1 s plus its length at 10000 KiB/s.
    std::fs::write(
        &server.config,
        "tick_ms = 20\nupload_idle_secs = 1\nupload_min_kib_per_sec = 10000\n",
    )
    .unwrap();
    server.start();
    let (mut op, spec, key, mut c, a) = one_site(&server, "trickle").await;
    let (blob, env) = update_for(&mut c, &a, &spec, "site-0", &key).await;
    let limit = Duration::from_secs_f64(1.0 + blob.len() as f64 / (10_000.0 * 1024.0));
    let started = Instant::now();
    let (tx, upload) = open_upload(&server, &key, &a.id, &env).await;
    let trickle = {
        let blob = blob.clone();
        tokio::spawn(async move {
            for (i, part) in blob.chunks(1024).enumerate() {
                if tx.send(chunk(i * 1024, part)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let e = tokio::time::timeout(Duration::from_secs(30), upload)
        .await
        .expect("the coordinator drops the trickling stream")
        .unwrap()
        .unwrap_err();
    let took = started.elapsed();
    trickle.abort();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message()
            .contains("slower than upload_min_kib_per_sec allows"),
        "{}",
        e.message()
    );
    assert!(
        took >= limit && took < limit + Duration::from_secs(5),
        "{took:?} for a limit of {limit:?}"
    );
    let rounds = op.status("trickle").await.unwrap();
    let (state, reason) = state_of(&rounds[0], "site-0");
    assert_eq!(state, "invited");
    assert!(
        reason.contains("slower than upload_min_kib_per_sec"),
        "{reason}"
    );
    // A whole upload at full speed goes through.
    assert_eq!(
        c.upload(&a.id, &env, blob, None).await.unwrap(),
        Ack::Accepted
    );
    server.terminate();
}
