//! The operations files in `deploy/`: the Grafana dashboard imports (its JSON has the structure
//! Grafana needs) and names only metrics Herald emits; the Prometheus alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

use herald_consumer::metrics::names as consumer;
use herald_relay::metrics::names as relay;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

/// Every metric Herald emits.
fn known_metrics() -> HashSet<&'static str> {
    HashSet::from([
        relay::BATCHES,
        relay::CLAIMED,
        relay::PUBLISHED,
        relay::FAILED,
        relay::DEAD_LETTERED,
        relay::RELEASED,
        relay::ABANDONED,
        relay::ERRORS,
        relay::IN_FLIGHT,
        relay::BATCH_ROWS,
        relay::PUBLISH_DURATION,
        relay::OUTBOX_PENDING,
        relay::OUTBOX_IN_FLIGHT,
        relay::OUTBOX_DEAD_LETTERS,
        relay::OUTBOX_ARCHIVED,
        relay::OUTBOX_OLDEST_DUE_AGE,
        relay::OUTBOX_OLDEST_PENDING_AGE,
        relay::OUTBOX_SAMPLE_ERRORS,
        consumer::RECEIVED,
        consumer::ACKED,
        consumer::DUPLICATES,
        consumer::IMMEDIATE_RETRIES,
        consumer::REDELIVERIES,
        consumer::DEAD_LETTERED,
        consumer::UNHANDLED,
        consumer::DEFERRED,
        consumer::SETTLE_ERRORS,
        consumer::HANDLED,
        consumer::HANDLING_DURATION,
        consumer::LAG,
    ])
}

/// The `herald_…` metric names a PromQL expression uses (a histogram's `_bucket`, `_sum` and
/// `_count` series as the histogram's name).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("herald_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_grafana_dashboard_has_what_an_import_needs_and_names_only_emitted_metrics() {
    let text = std::fs::read_to_string(deploy("grafana/herald-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    for field in ["uid", "title"] {
        assert!(
            dashboard[field].as_str().is_some_and(|s| !s.is_empty()),
            "dashboard {field}"
        );
    }
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    assert!(
        dashboard["id"].is_null(),
        "an exported id would clash on import"
    );
    let datasource = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    let datasource_ref = format!("${{{}}}", datasource["name"].as_str().unwrap());

    let known = known_metrics();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "a panel per concern");
    let mut ids = HashSet::new();
    let mut used = HashSet::new();
    let mut cells = HashSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        assert!(panel["type"].as_str().is_some(), "{title}: type");
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().unwrap(),
            grid["y"].as_u64().unwrap(),
            grid["w"].as_u64().unwrap(),
            grid["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: grid {grid}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        assert_eq!(
            panel["datasource"]["uid"],
            datasource_ref.as_str(),
            "{title}"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = HashSet::new();
        for target in targets {
            assert!(refs.insert(target["refId"].as_str().unwrap()), "{title}");
            let expr = target["expr"].as_str().unwrap();
            let metrics = metrics_in(expr);
            assert!(!metrics.is_empty(), "{title}: {expr}");
            for metric in metrics {
                assert!(
                    known.contains(metric.as_str()),
                    "{title}: {metric} is not a metric Herald emits"
                );
                used.insert(metric);
            }
        }
    }
    for must in [
        relay::OUTBOX_OLDEST_DUE_AGE,
        relay::PUBLISHED,
        relay::PUBLISH_DURATION,
        relay::ERRORS,
        consumer::HANDLED,
        consumer::LAG,
    ] {
        assert!(used.contains(must), "the dashboard shows {must}");
    }
}

#[test]
fn the_alert_rules_name_only_emitted_metrics_and_pass_promtool() {
    let rules = std::fs::read_to_string(deploy("prometheus/herald-alerts.yml")).unwrap();
    let known = known_metrics();
    let exprs: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr: "))
        .collect();
    assert_eq!(exprs.len(), 5, "five rules");
    for expr in exprs {
        for metric in metrics_in(expr) {
            assert!(known.contains(metric.as_str()), "{metric} in {expr}");
        }
    }

    let dir = deploy("prometheus");
    let promtool = |args: &[&str]| {
        Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
    };
    let Ok(check) = promtool(&["check", "rules", "herald-alerts.yml"]) else {
        eprintln!("promtool not installed (Debian's `prometheus` package): rules not checked");
        return;
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(check.status.success(), "{}", text(&check));
    let test = promtool(&["test", "rules", "herald-alerts.test.yml"]).unwrap();
    assert!(test.status.success(), "{}", text(&test));
}
