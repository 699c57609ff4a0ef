//! The shipped binaries are never built with the gateway's fail points: not by
//! `cargo build --release -p herald-gateway` (the Dockerfile's build), nor by a build of the
//! whole workspace, where a member that enabled them would reach the gateway by feature
//! unification. Each compiled-in fail point costs a registry lookup, one per write batch.
//!
//! `cargo tree` without dev edges resolves features the way a build without tests does.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root")
}

/// The features of the `fail` crate and who enables them, for a build of `packages`.
fn fail_features(packages: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--edges",
            "normal,build,features",
            "--invert",
            "fail",
        ])
        .args(packages)
        .current_dir(root())
        .output()
        .expect("cargo tree runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cargo tree {packages:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without this the check could pass because `fail` left the tree or the output changed.
    assert!(
        text.contains("fail feature \"default\"") && text.contains("herald-gateway v"),
        "cargo tree {packages:?} no longer shows the gateway's `fail` dependency:\n{text}"
    );
    text
}

#[test]
fn a_release_build_of_the_gateway_has_no_fail_points() {
    let tree = fail_features(&["-p", "herald-gateway"]);
    assert!(
        !tree.contains("\"failpoints\""),
        "`cargo build --release -p herald-gateway` would compile fail points in:\n{tree}"
    );
}

#[test]
fn a_build_of_the_whole_workspace_has_no_fail_points() {
    let tree = fail_features(&["--workspace"]);
    assert!(
        !tree.contains("\"failpoints\""),
        "`cargo build --release` at the workspace root would compile the gateway's fail points in:\n{tree}"
    );
}

#[test]
fn the_gateways_tests_still_get_fail_points() {
    // With dev edges, as `cargo test --workspace` builds: tests/faults.rs needs them.
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--edges",
            "all",
            "--invert",
            "fail",
            "-p",
            "herald-gateway",
        ])
        .current_dir(root())
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        tree.contains("fail feature \"failpoints\""),
        "the gateway's tests would run without fail points:\n{tree}"
    );
}
