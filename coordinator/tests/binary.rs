//! Smoke test of the built `coordinator` binary. Besides checking `--help` and `--version`,
//! having an integration test here makes `cargo test --workspace` build the binary, which the
//! workspace's integration tests (tests/) then run as a real process.

use std::process::Command;

#[test]
fn prints_help_and_version() {
    let bin = env!("CARGO_BIN_EXE_coordinator");
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: coordinator"));
    let version = Command::new(bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("coordinator "));
}
