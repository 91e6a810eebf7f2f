//! Floods and broken streams from an outside attack run (issue #15): many concurrent uploads
//! of one party, streams that skip bytes, send too much or send bytes that are not protobuf,
//! and connections that never start a handshake.

use std::io::Read as _;
use std::net::TcpStream;

use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::*;

/// A codec that sends raw bytes as the message (what a hostile client can put on the wire)
/// and decodes the response as `R`.
struct RawCodec<R>(std::marker::PhantomData<R>);

struct RawEncoder;
struct RawDecoder<R>(std::marker::PhantomData<R>);

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut as _;
        buf.put_slice(&item);
        Ok(())
    }
}

impl<R: prost::Message + Default> Decoder for RawDecoder<R> {
    type Item = R;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<R>, tonic::Status> {
        R::decode(buf)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for RawCodec<R> {
    type Encode = Vec<u8>;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder<R>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder<R> {
        RawDecoder(std::marker::PhantomData)
    }
}

/// Sends `messages` (encoded protobuf or raw bytes) as one signed upload stream of `party`
/// and returns the coordinator's answer.
async fn raw_upload(
    server: &ServerProcess,
    party: &str,
    key: &SigningKey,
    messages: Vec<Vec<u8>>,
) -> Result<pb::UploadUpdateResponse, tonic::Status> {
    let channel = yosegi_proto::transport::channel(&server.url, &server.tls())
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let body = shared_model::auth::body_sha256(&messages[0]);
    let req = sign(
        tonic::Request::new(tokio_stream::iter(messages)),
        "UploadUpdate",
        party,
        key,
        now_ms(),
        body,
    );
    grpc.client_streaming(
        req,
        tonic::codegen::http::uri::PathAndQuery::from_static(
            "/yosegi.v1.PartyService/UploadUpdate",
        ),
        RawCodec::<pb::UploadUpdateResponse>(std::marker::PhantomData),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The metrics page of the coordinator whose CA is `ca`, scraped over TLS.
fn scrape(port: u16, ca: &std::path::Path) -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = yosegi_tests::sandbox::https_get(addr, "/metrics", ca);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The value of an unlabelled metric, scraped from the coordinator.
fn metric(port: u16, ca: &std::path::Path, name: &str) -> u64 {
    let text = scrape(port, ca);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    line[name.len() + 1..].parse().unwrap()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn rejections(server: &ServerProcess, task: &str) -> Vec<(String, String)> {
    let db = server.db();
    let mut q = db
        .prepare("SELECT party, detail FROM audit_log WHERE kind = 'update_rejected' AND task = ?1 ORDER BY seq")
        .unwrap();
    q.query_map([task], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_flood_of_one_party_is_refused_past_one_stream_per_assignment_and_held_on_disk_not_in_memory()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    server.start();
    let (mut op, spec, [(k0, mut c0), (k1, mut c1)]) = two_sites(&server, "flood").await;
    let a0 = next_work(&mut c0, |a| matches!(a.work, Work::Train { .. })).await;
    let (blob, env) = update_for(&mut c0, &a0, &spec, "site-0", &k0).await;
    let before = vm_rss_kib(server.pid());
    // 40 concurrent streams of the same assignment, each sending all but the last KiB of a
    // ~4 MB update and then holding the stream open.
    let held = blob.len() - 1024;
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..40 {
        let (tx, call) = open_upload(&server, &k0, &a0.id, &env).await;
        calls.push(call);
        let b = blob.clone();
        senders.push(tokio::spawn(async move {
            for (i, c) in b[..held].chunks(1 << 20).enumerate() {
                tx.send(chunk(i << 20, c)).await.ok()?;
            }
            // Hold the stream open until the test drops the task.
            tokio::time::sleep(Duration::from_secs(120)).await;
            Some(tx)
        }));
    }
    // All but one are refused at once, naming the limit; one stream is taken in.
    let mut refused = 0;
    let until = Instant::now() + Duration::from_secs(30);
    while refused < 39 {
        assert!(Instant::now() < until, "refusals: {refused}");
        // Taken out in one pass: a call that finishes between two looks is still counted.
        let (finished, open): (Vec<_>, Vec<_>) = calls.into_iter().partition(|c| c.is_finished());
        calls = open;
        for c in finished {
            let e = c.await.unwrap().unwrap_err();
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
            assert!(
                e.message()
                    .contains("already has an upload stream open for assignment flood/train/1"),
                "{}",
                e.message()
            );
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.len(), 1);
    // The stream that was taken in is on disk in blobs/tmp, not in memory.
    let tmp = server.data_dir.join("blobs").join("tmp");
    let staged = || -> u64 {
        std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let until = Instant::now() + Duration::from_secs(30);
    while staged() < held as u64 {
        assert!(Instant::now() < until, "staged {} of {held}", staged());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grown_mib = vm_rss_kib(server.pid()).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 32,
        "the coordinator grew by {grown_mib} MiB during the flood"
    );
    // The flood is gone: its stream ends, its temp file with it, and a whole upload of the
    // same party goes through.
    for s in &senders {
        s.abort();
    }
    let until = Instant::now() + Duration::from_secs(30);
    while staged() > 0 {
        assert!(Instant::now() < until, "a staged upload was left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        c0.upload(&a0.id, &env, blob, None).await.unwrap(),
        Ack::Accepted
    );
    let a1 = next_work(&mut c1, |a| matches!(a.work, Work::Train { .. })).await;
    let (blob1, env1) = update_for(&mut c1, &a1, &spec, "site-1", &k1).await;
    c1.upload(&a1.id, &env1, blob1, None).await.unwrap();
    wait_rounds(&server, "flood", Duration::from_secs(60), |r| {
        r[0].phase == "published"
    })
    .await;
    assert_eq!(op.status("flood").await.unwrap()[0].version, 1);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upload_streams_are_recorded_against_their_party_and_malformed_bytes_are_invalid_argument()
 {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    let metrics_port = yosegi_tests::free_port();
    std::fs::write(
        &server.config,
        format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .unwrap();
    server.start();
    let (_op, spec, [(k0, mut c0), _]) = two_sites(&server, "broken").await;
    let a0 = next_work(&mut c0, |a| matches!(a.work, Work::Train { .. })).await;
    let (blob, env) = update_for(&mut c0, &a0, &spec, "site-0", &k0).await;
    let start = upload_start(&a0.id, &env, None, None).encode_to_vec();
    let enc = |m: pb::UploadUpdateRequest| m.encode_to_vec();
    let cases: [(&str, Vec<Vec<u8>>, tonic::Code, &str); 4] = [
        (
            "chunk_gap",
            vec![
                start.clone(),
                enc(chunk(0, &blob[..10])),
                enc(chunk(20, &blob[20..30])),
            ],
            tonic::Code::InvalidArgument,
            "chunk at offset 20 does not follow byte 10",
        ),
        (
            "too_long",
            std::iter::once(start.clone())
                .chain(
                    blob.chunks(1 << 20)
                        .enumerate()
                        .map(|(i, c)| enc(chunk(i << 20, c))),
                )
                .chain([enc(chunk(blob.len(), b"more"))])
                .collect(),
            tonic::Code::InvalidArgument,
            "sends more than the",
        ),
        (
            "not_a_chunk",
            vec![start.clone(), start.clone()],
            tonic::Code::InvalidArgument,
            "only chunks may follow the envelope",
        ),
        (
            "malformed",
            vec![start.clone(), vec![0xff, 0xff, 0xff, 0xff, 0x0f]],
            tonic::Code::InvalidArgument,
            "malformed message",
        ),
    ];
    for (code, messages, status, says) in cases {
        let e = raw_upload(&server, "site-0", &k0, messages)
            .await
            .unwrap_err();
        assert_eq!(e.code(), status, "{code}: {e:?}");
        assert!(e.message().contains(says), "{code}: {}", e.message());
        // The operator sees it: the party's last rejection in round status, and the log.
        let rounds = wait_rounds(&server, "broken", Duration::from_secs(10), |_| true).await;
        let (state, reason) = state_of(&rounds[0], "site-0");
        assert_eq!(state, "invited", "{code}: the party may still upload");
        assert!(reason.contains(says), "{code}: {reason}");
        let logged = rejections(&server, "broken");
        let (party, detail) = logged.last().expect("a rejection is logged");
        assert_eq!(party, "site-0");
        assert!(
            detail.contains(&format!("\"code\":\"{code}\"")),
            "{code}: {detail}"
        );
    }
    assert_eq!(rejections(&server, "broken").len(), 4);
    // A first message that is not protobuf is INVALID_ARGUMENT too (never INTERNAL).
    let e = raw_upload(&server, "site-0", &k0, vec![vec![0x0a, 0xff, 0x01]])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Counted in metrics by how the stream broke.
    let text = scrape(metrics_port, &server.data_dir.join("tls/ca.pem"));
    for code in ["chunk_gap", "too_long", "not_a_chunk", "malformed"] {
        assert!(
            text.contains(&format!(
                "yosegi_uploads_total{{outcome=\"broken\",reason=\"{code}\"}} 1"
            )),
            "{code}: {text}"
        );
    }
    // The whole update still goes through.
    assert_eq!(
        c0.upload(&a0.id, &env, blob, None).await.unwrap(),
        Ack::Accepted
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_silent_streams_are_closed_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    let metrics_port = yosegi_tests::free_port();
    std::fs::write(
        &server.config,
        format!("handshake_timeout_secs = 1\nmax_connections = 8\nupload_idle_secs = 1\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .unwrap();
    server.start();
    let started = Instant::now();
    let socks: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    // Every one of them is closed by the coordinator: those over the limit at once, the rest
    // after the handshake timeout.
    let mut closed = 0;
    for mut s in socks {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            other => panic!("the idle connection stayed open or answered: {other:?}"),
        }
    }
    assert_eq!(closed, 20);
    assert!(started.elapsed() < Duration::from_secs(15));
    // A connection that finishes its TLS and HTTP/2 handshakes but makes no call is closed too.
    let idle = yosegi_proto::transport::channel(&server.url, &server.tls())
        .await
        .unwrap();
    assert!(
        metric(
            metrics_port,
            &server.data_dir.join("tls/ca.pem"),
            "yosegi_connections_open"
        ) >= 1
    );
    let until = Instant::now() + Duration::from_secs(10);
    while metric(
        metrics_port,
        &server.data_dir.join("tls/ca.pem"),
        "yosegi_connections_open",
    ) > 0
    {
        assert!(Instant::now() < until, "the idle connection stayed open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);
    // A stream that never sends its first message (which its proof covers, so its caller is
    // not yet known) is dropped after the idle limit too.
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::UploadUpdateRequest>(1);
    let channel = yosegi_proto::transport::channel(&server.url, &server.tls())
        .await
        .unwrap();
    let held = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        PartyServiceClient::new(channel).upload_update(tonic::Request::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )),
    )
    .await
    .expect("the coordinator drops the silent stream")
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("first message"), "{}", e.message());
    assert!(held.elapsed() < Duration::from_secs(10));
    // The coordinator still serves.
    let mut op = server.operator().await;
    op.enroll(
        "site-0",
        &shared_model::keys::generate().unwrap().verifying_key(),
    )
    .await
    .unwrap();
    server.terminate();
}

/// Whether the coordinator has closed `s` (or reset it) within `wait`; false if it is still
/// open and silent.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        other => panic!("unexpected read on an idle connection: {other:?}"),
    }
}

#[test]
fn connections_from_one_address_past_its_limit_are_closed_at_accept() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    let metrics_port = yosegi_tests::free_port();
    std::fs::write(
        &server.config,
        format!("handshake_timeout_secs = 30\nmax_connections_per_address = 3\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .unwrap();
    server.start();
    // The readiness probe of `start` is a connection too: wait until it is gone.
    let until = Instant::now() + Duration::from_secs(10);
    while metric(
        metrics_port,
        &server.data_dir.join("tls/ca.pem"),
        "yosegi_connections_open",
    ) > 0
    {
        assert!(Instant::now() < until, "the probe connection stayed open");
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect = || TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect()).collect();
    // The fourth from this address is closed at once (the handshake deadline is 30 s away).
    let started = Instant::now();
    let mut fourth = connect();
    assert!(closed_within(&mut fourth, Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_secs(5));
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(200)),
            "a connection under the limit was closed"
        );
    }
    assert!(
        metric(
            metrics_port,
            &server.data_dir.join("tls/ca.pem"),
            "yosegi_connections_refused_total"
        ) >= 1
    );
    // A place freed is a place taken again.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = connect();
    assert!(!closed_within(&mut again, Duration::from_millis(300)));
}
