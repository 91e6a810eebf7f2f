//! TLS on every connection: clients pin the federation's own CA, a client with another CA or
//! speaking plain HTTP gets nowhere, and a coordinator that requires client certificates
//! (mutual TLS) refuses a client without one.

use coordinator::grpc::ServeConfig;
use coordinator::grpc::client::OperatorClient;
use coordinator::local::LocalFederation;
use coordinator::tls::{self, ClientTls};
use yosegi_tests::sandbox::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pin_the_federation_ca() {
    let sb = Sandbox::start().await;
    assert!(sb.url.starts_with("https://"), "{}", sb.url);
    let key = shared_model::keys::read_private(&sb.data_dir.join(coordinator::state::OPERATOR_KEY))
        .unwrap();
    // The right CA: calls go through.
    let mut op = OperatorClient::connect_with(&sb.url, &sb.client_tls(), key.clone())
        .await
        .unwrap();
    assert!(op.tasks().await.unwrap().is_empty());

    // Another federation's CA (a man in the middle would present such a certificate).
    let other = tempfile::tempdir().unwrap();
    tls::create(other.path(), &[]).unwrap();
    let stranger = ClientTls {
        ca: Some(tls::dir(other.path()).join(tls::CA_CERT)),
        identity: None,
    };
    let refused = match OperatorClient::connect_with(&sb.url, &stranger, key.clone()).await {
        Err(e) => format!("{e:#}"),
        Ok(mut c) => format!("{:#}", c.tasks().await.unwrap_err()),
    };
    assert!(
        refused.contains("unreachable") || refused.to_lowercase().contains("certificate"),
        "{refused}"
    );

    // Plain HTTP to the TLS port.
    let plain = sb.url.replace("https://", "http://");
    let refused = match OperatorClient::connect(&plain, key.clone()).await {
        Err(e) => format!("{e:#}"),
        Ok(mut c) => format!("{:#}", c.tasks().await.unwrap_err()),
    };
    // The TLS port does not speak plain HTTP/2: the connection fails below the application
    // (not a refusal by call authentication, which would mean the call got through).
    assert!(transport_failure(&refused), "{refused}");

    // https:// without a CA to pin is a usage error that says what to give.
    let e = OperatorClient::connect_with(&sb.url, &ClientTls::default(), key)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--ca"), "{e}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("coordinator");
    tls::create(&data_dir, &[]).unwrap();
    let ca = tls::dir(&data_dir).join(tls::CA_CERT);
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], yosegi_tests::free_port()));
    let config = ServeConfig {
        tls: Some(tls::ServerTls::from_data_dir(&data_dir, Some(&ca)).unwrap()),
        metrics: Some(metrics),
        ..Default::default()
    };
    let fed = LocalFederation::start(root.path(), config).await.unwrap();
    let key =
        shared_model::keys::read_private(&data_dir.join(coordinator::state::OPERATOR_KEY)).unwrap();
    // CA pinned, but no client certificate: the handshake or the first call fails.
    let failed = match OperatorClient::connect_with(&fed.url, &fed.client_tls(), key.clone()).await
    {
        Err(e) => format!("{e:#}"),
        Ok(mut c) => match c.tasks().await {
            Err(e) => format!("{e:#}"),
            Ok(_) => String::new(),
        },
    };
    // The handshake refuses it: a transport failure, never a call that reached the service.
    assert!(
        transport_failure(&failed),
        "a client without a certificate got through or failed for another reason: {failed:?}"
    );
    // With a certificate the CA issued: accepted.
    let (cert, cert_key) =
        tls::issue_client(&data_dir, "operator-laptop", &root.path().join("certs")).unwrap();
    let with_cert = ClientTls {
        ca: Some(ca),
        identity: Some((cert, cert_key)),
    };
    let mut op = OperatorClient::connect_with(&fed.url, &with_cert, key)
        .await
        .unwrap();
    assert!(op.tasks().await.unwrap().is_empty());

    // The metrics endpoint asks the same: no certificate, no scrape; the CA's, a scrape.
    let (c, k) = with_cert.identity.clone().unwrap();
    let ca = with_cert.ca.clone().unwrap();
    let scrape = tokio::task::spawn_blocking(move || {
        let without = coordinator::metrics::get(metrics, "/metrics", Some(&ca));
        let with = coordinator::metrics::get_as(metrics, "/metrics", Some(&ca), Some((&c, &k)));
        (without, with)
    })
    .await
    .unwrap();
    match scrape.0 {
        Err(_) => {}
        Ok((status, body)) => assert!(
            status.is_empty() && body.is_empty(),
            "a scrape without a client certificate got {status:?}"
        ),
    }
    let (status, body) = scrape.1.expect("a scrape with the CA's client certificate");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("yosegi_connections_open"), "{body}");
    fed.stop().await.unwrap();
}

/// Whether a failed call failed below the application — the connection or its TLS handshake
/// (tonic words it in several ways, depending on when the peer gives up) — and not because the
/// service refused an authenticated call, which would mean the connection got through.
fn transport_failure(message: &str) -> bool {
    let m = message.to_lowercase();
    let below = [
        "transport error",
        "operation was canceled",
        "h2 protocol error",
        "connection",
        "broken pipe",
        "unreachable",
        "certificate",
        "handshake",
        "tls",
    ];
    below.iter().any(|w| m.contains(w))
        && !["unauthenticated", "permission denied", "signature"]
            .iter()
            .any(|w| m.contains(w))
}
