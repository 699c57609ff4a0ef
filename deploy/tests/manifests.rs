//! Static checks with the real tools: kustomize renders and every object passes the Kubernetes
//! schema; the compose file passes the compose-spec schema; `nginx -t` accepts the config;
//! `promtool` checks and unit-tests the alert rules; dashboards are valid Grafana JSON.

use std::collections::HashSet;
use std::process::{Command, Output};

use herald_deploy::{alert_queries, dashboards, nginx_config, root, tool};

fn ok(out: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

fn run(cmd: &mut Command, what: &str) -> String {
    ok(&cmd.output().unwrap_or_else(|e| panic!("{what}: {e}")), what)
}

/// Splits a rendered multi-document YAML stream.
fn documents(yaml: &str) -> Vec<String> {
    yaml.split("\n---\n")
        .map(|d| d.trim_start_matches("---\n").to_owned())
        .filter(|d| !d.trim().is_empty())
        .collect()
}

fn kind(doc: &str) -> &str {
    doc.lines().find_map(|l| l.strip_prefix("kind: ")).unwrap_or_default()
}

#[test]
fn kustomize_renders_the_base_and_the_example_and_every_object_passes_the_kubernetes_schema() {
    let kubectl = tool("kubectl");
    let base = run(
        Command::new(&kubectl)
            .arg("kustomize")
            .arg(root().join("deploy/k8s/base")),
        "kubectl kustomize base",
    );
    let example = run(
        Command::new(&kubectl)
            .arg("kustomize")
            .arg(root().join("deploy/k8s/overlays/example")),
        "kubectl kustomize overlays/example",
    );
    let docs = documents(&example);
    let kinds: Vec<&str> = docs.iter().map(|d| kind(d)).collect();
    for want in [
        "Namespace",
        "ConfigMap",
        "Secret",
        "StatefulSet",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Ingress",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(&want), "the example renders a {want}: {kinds:?}");
    }
    assert_eq!(
        kinds.iter().filter(|k| **k == "Deployment").count(),
        2,
        "gateway and fanout"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "PodDisruptionBudget").count(), 3);
    assert!(documents(&base).len() >= 12);

    // Core objects: the schema of Kubernetes 1.32, strictly (unknown fields are errors).
    let (crds, core): (Vec<&String>, Vec<&String>) = docs
        .iter()
        .partition(|d| d.contains("apiVersion: monitoring.coreos.com/"));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("core.yaml");
    std::fs::write(
        &file,
        core.iter().map(|d| d.as_str()).collect::<Vec<_>>().join("\n---\n"),
    )
    .expect("write");
    let out = run(
        Command::new(tool("kubernetes-validate"))
            .args(["-k", "1.32.0", "--strict"])
            .arg(&file),
        "kubernetes-validate",
    );
    assert_eq!(out.matches(" passed for resource ").count(), core.len(), "{out}");
    assert!(!out.contains("ERROR") && !out.contains("WARN"), "{out}");

    // ServiceMonitors (a CRD the schema set does not carry): the fields the operator needs.
    assert_eq!(crds.len(), 3);
    for d in crds {
        assert!(d.contains("kind: ServiceMonitor"), "{d}");
        assert!(
            d.contains("endpoints:") && d.contains("port: metrics") && d.contains("matchLabels:"),
            "{d}"
        );
        assert!(d.contains("namespace: herald"), "{d}");
    }

    // The gateway's drain fits in its grace period, and readiness is /readyz.
    let gateway = docs
        .iter()
        .find(|d| kind(d) == "Deployment" && d.contains("name: herald-gateway\n"))
        .expect("gateway Deployment");
    let grace: u64 = gateway
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .and_then(|v| v.parse().ok())
        .expect("grace period");
    assert!(gateway.contains("value: 30s"), "HERALD_DRAIN_TIMEOUT 30s");
    assert!(gateway.contains("preStop:") && gateway.contains("seconds: 5"));
    assert!(grace > 30 + 5, "grace {grace} s must exceed preStop 5 s + drain 30 s");
    assert!(gateway.contains("path: /readyz") && gateway.contains("podAntiAffinity"));

    // NATS runs with the users of nats-auth.conf (tests/nats_permissions.rs), and gateway and
    // fanout connect as theirs.
    let nats_config = docs
        .iter()
        .find(|d| kind(d) == "ConfigMap" && d.contains("name: nats-config"))
        .expect("the NATS ConfigMap");
    assert!(nats_config.contains("include \"auth.conf\"") && nats_config.contains("user: herald-backend"));
    for (name, user) in [("herald-gateway", "herald-gateway"), ("herald-fanout", "herald-fanout")] {
        let d = docs
            .iter()
            .find(|d| kind(d) == "Deployment" && d.contains(&format!("name: {name}\n")))
            .expect("Deployment");
        assert!(
            d.contains(&format!("nats://{user}:$(HERALD_NATS_PASSWORD)@nats:4222")),
            "{name}"
        );
    }
}

#[test]
fn the_compose_file_passes_the_compose_spec_schema() {
    let out = run(
        Command::new(tool("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(root().join("deploy/compose/compose.yaml")),
        "check-jsonschema",
    );
    assert!(out.contains("ok -- validation done"), "{out}");
    let compose = std::fs::read_to_string(root().join("deploy/compose/compose.yaml")).expect("compose");
    for service in [
        "nats:",
        "nats-exporter:",
        "fanout:",
        "gateway-a:",
        "gateway-b:",
        "nginx:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(compose.contains(&format!("\n  {service}")), "compose has {service}");
    }
    // No secret anyone could read here, and no anonymous clients unless the operator asks.
    assert!(
        compose.contains("HERALD_AUTH_HS256_SECRET: ${HERALD_AUTH_HS256_SECRET:?"),
        "the token secret must come from the operator"
    );
    assert!(compose.contains("HERALD_ALLOW_ANONYMOUS: ${HERALD_ALLOW_ANONYMOUS:-false}"));
    // NATS with the deploy's users; the services connect as theirs.
    assert!(compose.contains("../k8s/base/nats-auth.conf:/etc/nats/auth.conf:ro"));
    assert!(compose.contains("nats://herald-gateway:${HERALD_NATS_GATEWAY_PASSWORD:?}@nats:4222"));
    assert!(compose.contains("nats://herald-fanout:${HERALD_NATS_FANOUT_PASSWORD:?}@nats:4222"));
    // Grafana finds the dashboards where the provisioning file says, and the rules are mounted
    // where prometheus.yml loads them.
    let provider =
        std::fs::read_to_string(root().join("grafana/provisioning/dashboards/herald.yml")).expect("provider");
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(compose.contains("../../grafana/dashboards:/var/lib/grafana/dashboards:ro"));
    assert!(compose.contains("../../grafana/provisioning:/etc/grafana/provisioning:ro"));
    let prometheus = std::fs::read_to_string(root().join("deploy/compose/prometheus.yml")).expect("prometheus.yml");
    assert!(prometheus.contains("/etc/prometheus/rules/herald.rules.yml"));
    assert!(compose.contains("../../grafana/alerts:/etc/prometheus/rules:ro"));
    for dockerfile in ["gateway.Dockerfile", "fanout.Dockerfile"] {
        let text = std::fs::read_to_string(root().join("deploy/docker").join(dockerfile)).expect("Dockerfile");
        assert_eq!(
            text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")),
            2,
            "multi-stage"
        );
        assert!(text.contains("--locked"));
    }
}

#[test]
fn nginx_accepts_the_config() {
    let cert = herald_testkit::tls::TestCert::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_config(
            ["127.0.0.1:1", "127.0.0.1:2"],
            herald_testkit::free_port(),
            &cert.cert_path(),
            &cert.key_path(),
        ),
    )
    .expect("write");
    let out = run(
        Command::new(tool("nginx"))
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf),
        "nginx -t",
    );
    assert!(
        out.contains("syntax is ok") && out.contains("test is successful"),
        "{out}"
    );
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let alerts = root().join("grafana/alerts");
    let promtool = tool("promtool");
    let out = run(
        Command::new(&promtool)
            .args(["check", "rules", "herald.rules.yml"])
            .current_dir(&alerts),
        "promtool check rules",
    );
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let out = run(
        Command::new(&promtool)
            .args(["test", "rules", "herald.rules.test.yml"])
            .current_dir(&alerts),
        "promtool test rules",
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // The compose stack's Prometheus config, with the rules where this checkout has them.
    let config = std::fs::read_to_string(root().join("deploy/compose/prometheus.yml"))
        .expect("prometheus.yml")
        .replace(
            "/etc/prometheus/rules/herald.rules.yml",
            &alerts.join("herald.rules.yml").to_string_lossy(),
        );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("write");
    let out = run(
        Command::new(&promtool)
            .args(["check", "config", "prometheus.yml"])
            .current_dir(dir.path()),
        "promtool check config",
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let names: HashSet<String> = alert_queries().into_iter().map(|(a, _)| a).collect();
    let tests = std::fs::read_to_string(alerts.join("herald.rules.test.yml")).expect("tests");
    for alert in &names {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has a unit test"
        );
    }
    assert_eq!(names.len(), 7);
}

/// Metric names the code emits (`herald_*` string constants) and the NATS exporter's.
fn known_metric(name: &str, code: &str) -> bool {
    let base = name
        .strip_suffix("_bucket")
        .or_else(|| name.strip_suffix("_count"))
        .or_else(|| name.strip_suffix("_sum"))
        .unwrap_or(name);
    name == "up" || name.starts_with("gnatsd_varz_") || code.contains(&format!("\"{base}\""))
}

#[test]
fn dashboards_are_current_grafana_json_with_a_datasource_variable_and_a_query_in_every_panel() {
    let code: String = ["gateway/src/metrics.rs", "fanout/src/lib.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(root().join(f)).expect("source"))
        .collect();
    let all = dashboards();
    assert_eq!(all.len(), 3, "overview, presence, NATS");
    let mut uids = HashSet::new();
    for (file, d) in &all {
        let v = d["schemaVersion"].as_u64().expect("schemaVersion");
        assert!((39..=42).contains(&v), "{file}: schemaVersion {v}");
        assert!(
            uids.insert(d["uid"].as_str().expect("uid").to_owned()),
            "{file}: unique uid"
        );
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(d["annotations"]["list"].is_array() && d["time"]["from"].is_string());
        let vars = d["templating"]["list"].as_array().expect("templating");
        let ds: Vec<_> = vars.iter().filter(|v| v["type"] == "datasource").collect();
        assert_eq!(ds.len(), 1, "{file}: one datasource variable");
        assert_eq!(ds[0]["query"], "prometheus");
        let var = format!("${{{}}}", ds[0]["name"].as_str().expect("name"));

        let mut ids = HashSet::new();
        let panels = d["panels"].as_array().expect("panels");
        assert!(panels.len() >= 8, "{file}");
        for p in panels {
            let title = p["title"].as_str().expect("title");
            assert!(
                ids.insert(p["id"].as_u64().expect("id")),
                "{file}: duplicate id at {title}"
            );
            for k in ["h", "w", "x", "y"] {
                assert!(p["gridPos"][k].is_u64(), "{file}: {title} gridPos.{k}");
            }
            if p["type"] == "row" {
                continue;
            }
            assert!(
                ["timeseries", "stat", "heatmap", "gauge", "table", "bargauge"]
                    .contains(&p["type"].as_str().unwrap_or("")),
                "{file}: {title} type"
            );
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: {title} description"
            );
            assert!(p["fieldConfig"]["defaults"]["unit"].is_string(), "{file}: {title} unit");
            assert_eq!(
                p["datasource"]["uid"],
                var.as_str(),
                "{file}: {title} uses the variable"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}: {title} has no query");
            for t in targets {
                let expr = t["expr"].as_str().expect("expr");
                assert!(!expr.trim().is_empty(), "{file}: {title} empty expr");
                assert_eq!(t["datasource"]["uid"], var.as_str(), "{file}: {title}");
                for f in ["rate(", "increase("] {
                    if expr.contains(f) {
                        assert!(expr.contains("[$__rate_interval]"), "{file}: {title}: {expr}");
                    }
                }
                for name in metric_names(expr) {
                    assert!(known_metric(&name, &code), "{file}: {title}: unknown metric {name}");
                }
            }
        }
    }
}

/// Identifiers in a PromQL expression that look like metric names.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_braces = false;
    let mut in_quotes = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        match c {
            '"' => in_quotes = !in_quotes,
            '{' if !in_quotes => in_braces = true,
            '}' if !in_quotes => in_braces = false,
            _ => {}
        }
        if (c.is_ascii_alphanumeric() || c == '_') && !in_braces && !in_quotes {
            cur.push(c);
        } else {
            if cur.contains('_') && (cur.starts_with("herald_") || cur.starts_with("gnatsd_")) || cur == "up" {
                out.push(std::mem::take(&mut cur));
            }
            cur.clear();
        }
    }
    out
}
