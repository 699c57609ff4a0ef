//! The arrows between the workspace's crates, as `docs/ARCHITECTURE.md` lists them in its
//! `layering` block: every normal dependency of one workspace crate on another must be
//! listed there, and a `dev-only` crate may appear only among dev-dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The rules: crate → the workspace crates it may depend on; and the dev-only crates.
struct Rules {
    allowed: BTreeMap<String, BTreeSet<String>>,
    dev_only: BTreeSet<String>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root")
}

fn rules() -> Rules {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let block = doc
        .split("```layering\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```layering block in docs/ARCHITECTURE.md");
    let mut rules = Rules {
        allowed: BTreeMap::new(),
        dev_only: BTreeSet::new(),
    };
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(name) = line.strip_prefix("dev-only ") {
            rules.dev_only.insert(name.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("crate ") {
            let (name, deps) = rest.split_once("->").unwrap_or_else(|| panic!("no `->` in {line:?}"));
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            rules.allowed.insert(name.trim().to_owned(), deps);
        } else {
            panic!("unknown layering rule {line:?}");
        }
    }
    rules
}

/// (crate, dependency, kind) for every dependency between workspace crates; kind is
/// `normal`, `dev` or `build`.
fn workspace_arrows() -> Vec<(String, String, String)> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let ours: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut arrows = Vec::new();
    for p in packages {
        let from = p["name"].as_str().expect("name");
        for d in p["dependencies"].as_array().expect("dependencies") {
            let to = d["name"].as_str().expect("dependency name");
            if ours.contains(to) {
                let kind = d["kind"].as_str().unwrap_or("normal");
                arrows.push((from.to_owned(), to.to_owned(), kind.to_owned()));
            }
        }
    }
    arrows
}

/// What breaks the rules, one line per arrow.
fn violations(rules: &Rules, arrows: &[(String, String, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (from, to, kind) in arrows {
        if kind == "dev" {
            continue;
        }
        if rules.dev_only.contains(to) {
            bad.push(format!("{from} → {to}: {to} may only be a dev-dependency"));
            continue;
        }
        match rules.allowed.get(from) {
            None => bad.push(format!("{from} is not in the layering block")),
            Some(allowed) if !allowed.contains(to) => {
                bad.push(format!("{from} → {to} ({kind}) is not an allowed arrow"))
            }
            Some(_) => {}
        }
    }
    bad
}

#[test]
fn workspace_crates_depend_only_along_the_documented_arrows() {
    let rules = rules();
    let arrows = workspace_arrows();
    assert!(
        arrows
            .iter()
            .any(|(f, t, _)| f == "herald-gateway" && t == "herald-proto"),
        "cargo metadata lists the workspace's arrows"
    );
    let bad = violations(&rules, &arrows);
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn an_arrow_against_the_rules_is_caught() {
    let rules = rules();
    let arrow = |f: &str, t: &str, k: &str| (f.to_owned(), t.to_owned(), k.to_owned());
    assert_eq!(
        violations(&rules, &[arrow("herald-fanout", "herald-gateway", "normal")]),
        ["herald-fanout → herald-gateway (normal) is not an allowed arrow"]
    );
    assert_eq!(
        violations(&rules, &[arrow("herald-proto", "herald-service", "normal")]).len(),
        1
    );
    assert_eq!(
        violations(&rules, &[arrow("herald-gateway", "herald-testkit", "normal")]),
        ["herald-gateway → herald-testkit: herald-testkit may only be a dev-dependency"]
    );
    assert!(violations(&rules, &[arrow("herald-fanout", "herald-gateway", "dev")]).is_empty());
}
