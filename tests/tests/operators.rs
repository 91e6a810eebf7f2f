//! More than one operator (#15): named operator keys with roles, each change logged with who
//! made it, a revoked operator key refused at once, and recovery with the data dir when the
//! admin keys are stolen — against the real `coordinator serve` binary, across restarts.

use coordinator::grpc::client::OperatorClient;
use coordinator::store::Store;
use shared_model::SigningKey;
use yosegi_round::Role;
use yosegi_tests::server::ServerProcess;
use yosegi_tests::{run, run_ok};

async fn as_operator(server: &ServerProcess, name: &str, key: &SigningKey) -> OperatorClient {
    OperatorClient::connect_with(&server.url, &server.tls(), key.clone())
        .await
        .unwrap()
        .named(name)
        .unwrap()
}

/// The `"by"` of the newest record of `kind` about `about` (its operator, task or party).
fn by_of(server: &ServerProcess, kind: &str, about: &str) -> Option<String> {
    let store = Store::open_read_only(&server.data_dir.join("yosegi.db")).unwrap();
    let records = store.audit_records(None, None).unwrap();
    records.iter().rev().find_map(|r| {
        let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
        let is_about = detail["operator"].as_str() == Some(about)
            || r.task.as_deref() == Some(about)
            || r.party.as_deref() == Some(about);
        (r.kind == kind && is_about).then(|| detail["by"].as_str().map(str::to_string))?
    })
}

fn denied(e: anyhow::Error, needle: &str) {
    let e = e.to_string();
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_have_roles_each_change_names_who_made_it_and_a_revoked_operator_is_refused_at_once()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    server.start();
    let mut admin = server.operator().await;
    // The data dir's key is the admin "operator" from the first start.
    let listed = admin.operators().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].role.as_str()),
        ("operator", "admin")
    );

    let keys: Vec<SigningKey> = (0..3)
        .map(|_| shared_model::keys::generate().unwrap())
        .collect();
    for ((name, role), key) in [
        ("vera", Role::Viewer),
        ("otto", Role::Operator),
        ("ada", Role::Admin),
    ]
    .into_iter()
    .zip(&keys)
    {
        admin
            .add_operator(name, &key.verifying_key(), role)
            .await
            .unwrap();
    }
    let mut vera = as_operator(&server, "vera", &keys[0]).await;
    let mut otto = as_operator(&server, "otto", &keys[1]).await;
    let mut ada = as_operator(&server, "ada", &keys[2]).await;

    // A viewer reads; it may not change anything.
    assert!(vera.tasks().await.unwrap().is_empty());
    assert_eq!(vera.operators().await.unwrap().len(), 4);
    let spec = std::fs::read_to_string(yosegi_tests::data("wdbc.toml")).unwrap();
    denied(
        vera.create_task("wdbc", &spec, &[]).await.unwrap_err(),
        "operator vera has role viewer; CreateTask needs role operator",
    );
    // An operator runs tasks but does not govern who takes part.
    let plant = shared_model::keys::generate().unwrap();
    denied(
        otto.enroll("plant-a", &plant.verifying_key())
            .await
            .unwrap_err(),
        "operator otto has role operator; EnrollParty needs role admin",
    );
    denied(
        otto.add_operator("mallory", &plant.verifying_key(), Role::Admin)
            .await
            .unwrap_err(),
        "AddOperator needs role admin",
    );
    // An admin enrols; then the operator creates the task over that plant.
    ada.enroll("plant-a", &plant.verifying_key()).await.unwrap();
    otto.create_task("wdbc", &spec, &[]).await.unwrap();
    // A signature with another operator's key under vera's name is refused.
    let mut forged = as_operator(&server, "vera", &keys[1]).await;
    denied(forged.tasks().await.unwrap_err(), "signature");

    // Names are one namespace with parties and never given twice; keys are not shared.
    let spare = shared_model::keys::generate().unwrap();
    denied(
        ada.add_operator("plant-a", &spare.verifying_key(), Role::Viewer)
            .await
            .unwrap_err(),
        "plant-a is the name of a party",
    );
    denied(
        ada.enroll("vera", &spare.verifying_key())
            .await
            .unwrap_err(),
        "vera is the name of an operator",
    );
    denied(
        ada.add_operator("otto", &spare.verifying_key(), Role::Viewer)
            .await
            .unwrap_err(),
        "operator otto exists (role operator)",
    );
    denied(
        ada.add_operator("olga", &keys[0].verifying_key(), Role::Viewer)
            .await
            .unwrap_err(),
        "already the key of operator vera",
    );

    // Each change names who made it; the coordinator's own records name nobody.
    assert_eq!(
        by_of(&server, "operator_added", "vera").as_deref(),
        Some("operator")
    );
    assert_eq!(
        by_of(&server, "party_enrolled", "plant-a").as_deref(),
        Some("ada")
    );
    assert_eq!(
        by_of(&server, "task_created", "wdbc").as_deref(),
        Some("otto")
    );

    // The data dir's key is stolen: another admin revokes it, and its open connection is
    // refused at its next call.
    ada.revoke_operator("operator").await.unwrap();
    denied(
        admin.tasks().await.unwrap_err(),
        "operator operator is revoked",
    );
    ada.revoke_operator("otto").await.unwrap();
    denied(otto.tasks().await.unwrap_err(), "operator otto is revoked");
    assert_eq!(
        by_of(&server, "operator_revoked", "otto").as_deref(),
        Some("ada")
    );
    // The last admin stays; a revoked name is not given again.
    denied(
        ada.revoke_operator("ada").await.unwrap_err(),
        "ada is the last admin",
    );
    denied(
        ada.add_operator("otto", &spare.verifying_key(), Role::Operator)
            .await
            .unwrap_err(),
        "operator otto was revoked: a revoked name is not given again",
    );

    // Durable: after a restart the table, not the data dir's key file, says who may call.
    server.terminate();
    server.start();
    let mut admin = server.operator().await;
    denied(
        admin.tasks().await.unwrap_err(),
        "operator operator is revoked",
    );
    let mut ada = as_operator(&server, "ada", &keys[2]).await;
    let listed = ada.operators().await.unwrap();
    let state: Vec<(&str, &str, bool)> = listed
        .iter()
        .map(|o| (o.name.as_str(), o.role.as_str(), o.revoked))
        .collect();
    assert_eq!(
        state,
        [
            ("ada", "admin", false),
            ("operator", "admin", true),
            ("otto", "operator", true),
            ("vera", "viewer", false)
        ]
    );
    let mut vera = as_operator(&server, "vera", &keys[0]).await;
    assert_eq!(vera.tasks().await.unwrap().len(), 1);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_admin_keys_are_recovered_with_the_data_dir_and_the_cli_signs_as_a_named_operator() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    server.start();
    let data = server.data_dir.to_str().unwrap().to_string();
    let new_key = dir.path().join("ada");
    let out = run_ok(
        "coordinator",
        &["operator", "keygen", "--out", new_key.to_str().unwrap()],
    );
    assert!(out.contains("ada.key.pem"), "{out}");
    let public = format!("{}.pub.pem", new_key.display());
    let private = format!("{}.key.pem", new_key.display());
    let recover = [
        "operator",
        "recover",
        "--data-dir",
        &data,
        "--name",
        "ada",
        "--public-key",
        &public,
        "--revoke",
        "operator",
    ];
    // Only with the coordinator stopped (it holds the data dir).
    let busy = run("coordinator", &recover);
    assert!(!busy.status.success());
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(stderr.contains("stop it first"), "{stderr}");

    server.terminate();
    let out = run_ok("coordinator", &recover);
    assert!(
        out.contains("added admin ada") && out.contains("revoked operator operator"),
        "{out}"
    );
    server.start();
    // The stolen key is refused; the new admin works through the CLI under its name.
    let mut stolen = server.operator().await;
    denied(
        stolen.parties().await.unwrap_err(),
        "operator operator is revoked",
    );
    let remote = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        a.extend([
            "--server".into(),
            server.url.clone(),
            "--ca".into(),
            format!("{data}/tls/ca.pem"),
            "--operator-key".into(),
            private.clone(),
            "--operator-name".into(),
            "ada".into(),
        ]);
        a
    };
    let viewer = dir.path().join("vera");
    run_ok(
        "coordinator",
        &["operator", "keygen", "--out", viewer.to_str().unwrap()],
    );
    let viewer_pub = format!("{}.pub.pem", viewer.display());
    let args = remote(&[
        "operator",
        "add",
        "--name",
        "vera",
        "--role",
        "viewer",
        "--public-key",
        &viewer_pub,
    ]);
    let out = run_ok(
        "coordinator",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        out.contains("added operator vera with role viewer"),
        "{out}"
    );
    let args = remote(&["operator", "list", "--json"]);
    let out = run_ok(
        "coordinator",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<(&str, bool)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["revoked"].as_bool().unwrap()))
        .collect();
    assert_eq!(names, [("ada", false), ("operator", true), ("vera", false)]);
    // A bad role is refused by the CLI, naming the roles.
    let args = remote(&[
        "operator",
        "add",
        "--name",
        "x",
        "--role",
        "root",
        "--public-key",
        &viewer_pub,
    ]);
    let bad = run(
        "coordinator",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("viewer, operator, admin"));
    // The recovery is in the governance log, by the data dir.
    assert_eq!(
        by_of(&server, "operator_added", "ada").as_deref(),
        Some("data-dir")
    );
    assert_eq!(
        by_of(&server, "operator_revoked", "operator").as_deref(),
        Some("data-dir")
    );
    assert_eq!(
        by_of(&server, "operator_added", "vera").as_deref(),
        Some("ada")
    );
    run_ok("coordinator", &["audit", "verify", "--data-dir", &data]);
    server.terminate();
}
