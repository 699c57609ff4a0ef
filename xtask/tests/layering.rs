//! The arrows between the workspace's crates and between the modules of a crate, as
//! `docs/ARCHITECTURE.md` lists them in its `layering` block: every normal dependency of one
//! workspace crate on another must be listed there, a `dev-only` crate may appear only among
//! dev-dependencies, and a module may only use modules of the layers below its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The rules: crate → the workspace crates it may depend on; the dev-only crates; and per
/// source directory, its modules in layers (top first).
struct Rules {
    allowed: BTreeMap<String, BTreeSet<String>>,
    dev_only: BTreeSet<String>,
    layers: BTreeMap<String, Vec<Vec<String>>>,
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
        layers: BTreeMap::new(),
    };
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(name) = line.strip_prefix("dev-only ") {
            rules.dev_only.insert(name.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("modules ") {
            let (dir, layers) = rest.split_once(':').unwrap_or_else(|| panic!("no `:` in {line:?}"));
            let layers = layers
                .split('|')
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
                .collect();
            rules.layers.insert(dir.trim().to_owned(), layers);
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

/// A module of a layered directory: its name (`mod` for the directory's `mod.rs`, the
/// directory's name for a subdirectory) and the non-test source of its files.
struct Module {
    name: String,
    source: String,
}

/// The modules of `dir` (the crate root `lib.rs` and `main.rs` are above every layer).
fn modules(dir: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("UTF-8 name")
            .to_owned();
        if path.is_dir() {
            let source = std::fs::read_dir(&path)
                .expect("subdirectory")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|x| x == "rs"))
                .map(|p| non_test(&p))
                .collect();
            out.push(Module { name, source });
        } else if path.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            out.push(Module {
                source: non_test(&path),
                name,
            });
        }
    }
    out
}

/// A file's code before its unit tests, without comment lines.
fn non_test(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segments after each `prefix` in `source` (`crate::` → the modules a file
/// uses), including each item of a `prefix{a, b::c}` group.
fn used_after(source: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut used = BTreeSet::new();
    for (i, _) in source.match_indices(prefix) {
        if source[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &source[i + prefix.len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                used.extend(group.split(',').map(|item| ident(item.trim())));
            }
            None => {
                used.insert(ident(rest));
            }
        }
    }
    used.retain(|n| !n.is_empty() && n != "self");
    used
}

/// What breaks a directory's layers: a module that uses one of its own layer or above, or
/// a module the rules do not place. In a subdirectory, `super::x` and `crate::<dir>::x`
/// name a sibling `x` (or the directory's `mod.rs` for anything else), and `mod.rs` uses a
/// child through `x::` paths.
fn layer_violations(dir: &str, layers: &[Vec<String>]) -> Vec<String> {
    let root = root().join(dir);
    let is_crate_src = root.join("lib.rs").exists();
    let layer_of = |m: &str| layers.iter().position(|l| l.iter().any(|n| n == m));
    let mods = modules(&root);
    let names: BTreeSet<String> = mods.iter().map(|m| m.name.clone()).collect();
    let mut bad = Vec::new();
    for m in &mods {
        let Some(own) = layer_of(&m.name) else {
            bad.push(format!("{dir}: module `{}` is in no layer", m.name));
            continue;
        };
        let mut used = BTreeSet::new();
        if is_crate_src {
            used.extend(used_after(&m.source, "crate::"));
        } else {
            let this = root.file_name().and_then(|n| n.to_str()).expect("directory name");
            for n in used_after(&m.source, "super::")
                .into_iter()
                .chain(used_after(&m.source, &format!("crate::{this}::")))
            {
                used.insert(if names.contains(&n) { n } else { "mod".to_owned() });
            }
            if m.name == "mod" {
                used.extend(
                    names
                        .iter()
                        .filter(|n| m.source.contains(&format!("use {n}::")))
                        .cloned(),
                );
            }
        }
        for u in used.iter().filter(|u| **u != m.name && names.contains(*u)) {
            match layer_of(u) {
                Some(l) if l > own => {}
                _ => bad.push(format!(
                    "{dir}: `{}` uses `{u}`, which is not in a layer below it",
                    m.name
                )),
            }
        }
    }
    bad
}

#[test]
fn modules_use_only_the_layers_below_their_own() {
    let rules = rules();
    assert!(
        rules.layers.contains_key("gateway/src"),
        "the gateway's layers are in the layering block"
    );
    let bad: Vec<String> = rules
        .layers
        .iter()
        .flat_map(|(dir, layers)| layer_violations(dir, layers))
        .collect();
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn an_upward_or_sideways_use_is_caught() {
    let layers = |s: &str| -> Vec<Vec<String>> {
        s.split('|')
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    // The gateway's transports swapped with the hub: every transport now uses a layer above.
    let bad = layer_violations(
        "gateway/src",
        &layers("server | state | presence | feeds hub | ws http | upstream | outbound auth tls limit | jwks | config metrics sync"),
    );
    assert!(bad.iter().any(|b| b.contains("`ws` uses `state`")), "{bad:?}");
    // Two transports in one layer may not use each other; a module left out is reported.
    let bad = layer_violations("gateway/src/http", &layers("poll sse publish presence | web mod"));
    assert!(bad.iter().any(|b| b.contains("`web` uses `mod`")), "{bad:?}");
    let bad = layer_violations("gateway/src/hub", &layers("mod"));
    assert!(
        bad.contains(&"gateway/src/hub: module `table` is in no layer".to_owned()),
        "{bad:?}"
    );
}
