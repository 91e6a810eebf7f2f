//! The README's "run a federation by hand", with the real binaries as separate processes: a
//! coordinator server, three `party-client run` daemons and the operator commands over TCP.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use yosegi_tests::{Procs, bin, data, run_ok};

#[test]
fn a_federation_run_by_hand_with_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let coord = d.join("coordinator-data");
    let init = run_ok("coordinator", &["init", "--data-dir", &s(&coord)]);
    assert!(init.contains("-----BEGIN PUBLIC KEY-----"), "{init}");
    let port = yosegi_tests::free_port();
    // TLS from `init`: the operator and the plants pin the CA certificate.
    assert!(init.contains("TLS: CA certificate"), "{init}");
    let url = format!("https://localhost:{port}");
    let op_key = s(&coord.join("operator.key.pem"));
    let ca = s(&coord.join("tls/ca.pem"));
    let remote = [
        "--server",
        url.as_str(),
        "--operator-key",
        op_key.as_str(),
        "--ca",
        ca.as_str(),
    ];
    let mut procs = Procs::default();
    procs.spawn(
        "coordinator",
        &[
            "serve",
            "--data-dir",
            &s(&coord),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        &d.join("serve.log"),
    );
    let split = d.join("split");
    let (spec, csv) = (s(&data("wdbc.toml")), s(&data("wdbc.csv")));
    run_ok(
        "coordinator",
        &[
            "data",
            "split",
            "--data",
            &csv,
            "--spec",
            &spec,
            "--parties",
            "3",
            "--out",
            &s(&split),
        ],
    );

    let plants = ["plant-a", "plant-b", "plant-c"];
    for p in plants {
        let pdir = d.join(p);
        run_ok("party-client", &["keygen", "--out", &s(&pdir)]);
        let pubkey = s(&pdir.join("party.pub.pem"));
        // the server may still be starting
        let started = Instant::now();
        loop {
            let out = Command::new(bin("coordinator"))
                .args(["party", "enroll", "--name", p, "--public-key", &pubkey])
                .args(remote)
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut args = vec!["task", "create", "--spec", spec.as_str(), "--name", "wdbc"];
    args.extend(remote);
    run_ok("coordinator", &args);
    for (i, p) in plants.iter().enumerate() {
        let pdir = d.join(p);
        procs.spawn(
            "party-client",
            &[
                "run",
                "--server",
                &url,
                "--name",
                p,
                "--key",
                &s(&pdir.join("party.key.pem")),
                "--coordinator-key",
                &s(&coord.join("coordinator.pub.pem")),
                "--ca",
                &ca,
                "--data",
                &s(&split.join(format!("party-{}.csv", i + 1))),
                "--state-dir",
                &s(&pdir.join("state")),
            ],
            &d.join(format!("{p}.log")),
        );
    }
    let mut args = vec![
        "round",
        "start",
        "--task",
        "wdbc",
        "--strategy",
        "fedavg",
        "--min-parties",
        "3",
        "--deadline",
        "2m",
        "--rounds",
        "2",
    ];
    args.extend(remote);
    run_ok("coordinator", &args);

    let mut status_args = vec!["round", "status", "--task", "wdbc", "--json"];
    status_args.extend(remote);
    let started = Instant::now();
    let rounds = loop {
        let v: serde_json::Value =
            serde_json::from_str(&run_ok("coordinator", &status_args)).unwrap();
        let rounds = v.as_array().unwrap().clone();
        if rounds.len() == 2
            && rounds
                .iter()
                .all(|r| r["phase"] == "published" || r["phase"] == "failed")
        {
            break rounds;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "rounds did not finish: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in &rounds {
        assert_eq!(r["phase"], "published", "{r:#}");
        assert_eq!(
            r["parties"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["state"] == "accepted")
                .count(),
            3
        );
    }
    let mut watch = vec!["round", "watch", "--task", "wdbc"];
    watch.extend(remote);
    assert!(run_ok("coordinator", &watch).contains("→ version 2"));

    let out = d.join("merged.safetensors");
    let mut pull = vec!["model", "pull", "--task", "wdbc", "--out"];
    let out_s = s(&out);
    let key_s = s(&coord.join("coordinator.pub.pem"));
    pull.extend([out_s.as_str(), "--coordinator-key", key_s.as_str()]);
    pull.extend(remote);
    assert!(run_ok("coordinator", &pull).contains("signature verified"));
    let spec = shared_model::spec::ModelSpec::from_file(&data("wdbc.toml")).unwrap();
    shared_model::blob::decode(
        &std::fs::read(&out).unwrap(),
        &spec,
        shared_model::blob::BlobRole::Merged,
    )
    .unwrap();
    // The manifest is kept in its signed form: checkable later against the pinned key.
    let signed = shared_model::manifest::SignedManifest::from_file_json(
        &std::fs::read_to_string(d.join("merged.safetensors.manifest.json")).unwrap(),
        "merged.safetensors.manifest.json",
    )
    .unwrap();
    let coordinator_key =
        shared_model::keys::read_public(&coord.join("coordinator.pub.pem")).unwrap();
    let manifest = signed.verify_signature(&coordinator_key).unwrap();
    assert_eq!(manifest.version.0, 2);
    manifest.check_blob(&std::fs::read(&out).unwrap()).unwrap();

    // The operator's report: both rounds, every plant's contribution and gain, a plot. Wait until
    // all three plants have evaluated version 2 (they do so after it is published).
    let started = Instant::now();
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&run_ok("coordinator", &status_args)).unwrap();
        if v[1]["evaluated_by"] == 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let report_dir = d.join("report");
    let report_s = s(&report_dir);
    let mut report = vec!["report", "--task", "wdbc", "--out", report_s.as_str()];
    report.extend(remote);
    assert!(run_ok("coordinator", &report).contains("2 round(s) published, 0 failed"));
    let md = std::fs::read_to_string(report_dir.join("README.md")).unwrap();
    for plant in ["plant-a", "plant-b", "plant-c"] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {plant} | 2 | 2 | 0 |")))
            .unwrap_or_else(|| panic!("no row of {plant} in\n{md}"));
        assert!(!row.ends_with("| — |"), "{plant} has a gain: {row}");
    }
    assert!(md.contains("| 2 | fedavg | published | 3 / 3 |"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap())
            .unwrap();
    assert!(json["bytes_moved"].as_u64().unwrap() > 0);
    assert!(
        std::fs::read_to_string(report_dir.join("metric-by-round.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    contribution_limits_from_the_command_line(d, &s(&data("wdbc.toml")), &remote);
    procs.terminate();
}

/// `task create --limits FILE`: a bad file is refused naming it and the field; the limits show
/// in `task list`; sums outside a declared feature range show in `round status` as the plants
/// declining the statistics step with the coordinator's reason.
fn contribution_limits_from_the_command_line(d: &Path, spec: &str, remote: &[&str]) {
    let bad = d.join("bad-limits.toml");
    std::fs::write(&bad, "max_share = 2.0\n").unwrap();
    let bad_s = bad.to_str().unwrap();
    let mut args = vec!["task", "create", "--spec", spec, "--name", "ranged"];
    args.extend(["--limits", bad_s]);
    args.extend(remote);
    let out = yosegi_tests::run("coordinator", &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad-limits.toml") && err.contains("`max_share`"),
        "{err}"
    );

    let limits = d.join("limits.toml");
    std::fs::write(
        &limits,
        "[party.plant-a]\nmax_share = 0.9\n[feature.mean_radius]\nmin = 0.0\nmax = 1.0\n",
    )
    .unwrap();
    let limits_s = limits.to_str().unwrap();
    let mut args = vec!["task", "create", "--spec", spec, "--name", "ranged"];
    args.extend(["--limits", limits_s]);
    args.extend(remote);
    run_ok("coordinator", &args);
    let mut list = vec!["task", "list"];
    list.extend(remote);
    let listed = run_ok("coordinator", &list);
    assert!(
        listed.contains("limits: max share 0.5, max weight none, own limits for plant-a, 1 declared feature ranges"),
        "{listed}"
    );
    let mut status = vec!["round", "status", "--task", "ranged"];
    status.extend(remote);
    let started = Instant::now();
    loop {
        let text = run_ok("coordinator", &status);
        let refused = text
            .lines()
            .filter(|l| {
                l.contains("declined the statistics step: its feature sums were refused")
                    && l.contains("\"mean_radius\"")
                    && l.contains("declared range [0, 1]")
            })
            .count();
        if refused == 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
