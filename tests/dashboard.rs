//! The observability files under `docker/` only speak of what tokengate really exposes: every
//! metric name in the Grafana dashboard's and the alert rules' PromQL (and in the dashboard's
//! variable queries) is a series name a real scrape of the binary has (histograms as
//! `_bucket`/`_sum`/`_count`), every label they match or group on is one those series carry;
//! the dashboard is importable and provisionable (schema, datasource variable, the panels the
//! README promises); every alert has `for`, a severity and annotations; `promtool check config`,
//! `check rules` and `test rules` accept the Prometheus files (skipped with a note when promtool
//! is not installed: Debian package `prometheus`); the observability compose file mounts what
//! exists and points Prometheus and Grafana at the right ports; the README names every metric
//! and alert.
//!
//! No Docker engine runs here: the compose stack itself is not started.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prometheus_parse::LineInfo;
use serde_json::{json, Value};

use support::echo::Echo;
use support::gate::Gate;
use support::issuer::MockIssuer;

const DASHBOARD: &str = "docker/grafana/tokengate-dashboard.json";
const ALERTS: &str = "docker/prometheus/alerts.yaml";
const ALERT_TESTS: &str = "docker/prometheus/alerts.test.yaml";
const PROMETHEUS: &str = "docker/prometheus/prometheus.yml";
const COMPOSE: &str = "docker/compose.observability.yaml";
const DATASOURCE: &str = "docker/grafana/provisioning/datasources/prometheus.yaml";
const PROVIDER: &str = "docker/grafana/provisioning/dashboards/tokengate.yaml";

/// Series Prometheus makes itself for every target (not in tokengate's output).
const SYNTHETIC: [&str; 1] = ["up"];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// What the dashboard must show (issue: request rate and latency by route, auth failures by
/// reason, userinfo hit ratio, JWKS refresh errors by issuer, open connections, upstream
/// latency, 5xx ratio): each name must be used by at least one panel.
const DASHBOARD_MUST_USE: [&str; 7] = [
    "tokengate_requests_total",
    "tokengate_request_duration_seconds_bucket",
    "tokengate_auth_failures_total",
    "tokengate_userinfo_cache_total",
    "tokengate_jwks_refresh_total",
    "tokengate_open_connections",
    "tokengate_upstream_duration_seconds_bucket",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// PromQL: the metric and label names an expression uses
// ---------------------------------------------------------------------------------------------

/// PromQL's aggregation operators: a name followed by `by`/`without` or `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// PromQL's functions (Prometheus 2.x and 3.x).
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Keywords that take a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Keywords that are neither metrics nor functions.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// A vector selector: the metric name and the label names its matchers use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// What one expression uses.
#[derive(Debug, Default, PartialEq, Eq)]
struct Used {
    selectors: Vec<Selector>,
    /// Label names in `by`, `without`, `on`, `ignoring`, `group_left`, `group_right` lists.
    grouping: Vec<String>,
    /// Anything that is not PromQL this reader knows (an unknown function, a selector without
    /// a metric name): reported, never guessed at.
    problems: Vec<String>,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Reads the metric and label names of a PromQL expression: strings, range and subquery
/// brackets, numbers and durations, operators and Grafana's `$variables` are skipped;
/// functions and keywords are told apart from metric names by name and by what follows them.
fn promql_names(expr: &str) -> Used {
    let b = expr.as_bytes();
    let mut used = Used::default();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let ident_at = |i: usize| {
        let mut j = i;
        while j < b.len() && is_ident(b[j]) {
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(b, i);
        } else if c == b'[' {
            i = expr[i..].find(']').map_or(b.len(), |j| i + j + 1);
        } else if c == b'$' {
            // A Grafana variable: `$name`, `${name}` or `${name:format}`.
            i += 1;
            if b.get(i) == Some(&b'{') {
                i = expr[i..].find('}').map_or(b.len(), |j| i + j + 1);
            } else {
                i = ident_at(i);
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // A number or a duration: 0.99, 1e3, 5m, 1h30m.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c == b'{' {
            used.problems
                .push(format!("a selector without a metric name at byte {i}"));
            let (_, end) = matchers(expr, i);
            i = end;
        } else if is_ident_start(c) {
            let end = ident_at(i);
            let name = &expr[i..end];
            let next = skip_space(end);
            let lower = name.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if b.get(next) == Some(&b'(') {
                    let close = expr[next..].find(')').map_or(b.len(), |j| next + j);
                    used.grouping.extend(
                        expr[next + 1..close]
                            .split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                    i = close + 1;
                } else {
                    i = end;
                }
            } else if AGGREGATIONS.contains(&lower.as_str()) || KEYWORDS.contains(&lower.as_str()) {
                i = end;
            } else if b.get(next) == Some(&b'(') {
                if !FUNCTIONS.contains(&name) {
                    used.problems.push(format!("unknown function {name}"));
                }
                i = end;
            } else {
                let mut selector = Selector {
                    metric: name.to_owned(),
                    labels: Vec::new(),
                };
                i = end;
                if b.get(next) == Some(&b'{') {
                    let (labels, after) = matchers(expr, next);
                    selector.labels = labels;
                    i = after;
                }
                used.selectors.push(selector);
            }
        } else {
            i += 1;
        }
    }
    used
}

/// The end of the string literal starting at `start` (its quote), escapes honoured.
fn skip_string(b: &[u8], start: usize) -> usize {
    let quote = b[start];
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if quote != b'`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The label names of the matcher list `{…}` starting at `start`, and the index after `}`.
fn matchers(expr: &str, start: usize) -> (Vec<String>, usize) {
    let b = expr.as_bytes();
    let mut labels = Vec::new();
    let mut i = start + 1;
    while i < b.len() {
        let c = b[i];
        if c == b'}' {
            return (labels, i + 1);
        } else if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(b, i);
        } else if is_ident_start(c) {
            let mut j = i;
            while j < b.len() && is_ident(b[j]) {
                j += 1;
            }
            labels.push(expr[i..j].to_owned());
            i = j;
        } else {
            i += 1;
        }
    }
    (labels, b.len())
}

#[test]
fn promql_reader_finds_metrics_and_labels_and_nothing_else() {
    let used = promql_names(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{job=~"$job",x="b_total{y}"}[$__rate_interval])))
           > 3 * sum without(reason) (rate(c_total[1h] offset 5m)) and on(job) up == 1
           or vector(0) unless count(d:recorded{}) by (instance) / ${DS} + 1e3"#,
    );
    let names: Vec<&str> = used.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["a_bucket", "c_total", "up", "d:recorded"]);
    assert_eq!(used.selectors[0].labels, ["job", "x"]);
    assert_eq!(used.grouping, ["route", "le", "reason", "job", "instance"]);
    assert!(used.problems.is_empty(), "{:?}", used.problems);

    let odd = promql_names(r#"histogram_quantil(0.9, x) + {__name__="y"}"#);
    assert_eq!(odd.problems.len(), 2, "{:?}", odd.problems);
}

// ---------------------------------------------------------------------------------------------
// What a real scrape exposes
// ---------------------------------------------------------------------------------------------

/// Series names as written in a scrape of the real binary, each with the label names it
/// carries (`le` included for buckets).
struct Exposed {
    names: BTreeMap<String, BTreeSet<String>>,
    /// The `tokengate_*` families (`# TYPE` names, histograms without suffix).
    families: BTreeSet<String>,
}

impl Exposed {
    fn labels_anywhere(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.names.values().flatten().cloned().collect();
        all.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
        all
    }

    /// Problems with one expression's names (empty when all is well).
    fn check(&self, expr: &str) -> Vec<String> {
        let used = promql_names(expr);
        let mut problems = used.problems;
        let anywhere = self.labels_anywhere();
        for selector in &used.selectors {
            let allowed: BTreeSet<String> = match self.names.get(&selector.metric) {
                Some(labels) => labels.clone(),
                None if SYNTHETIC.contains(&selector.metric.as_str()) => BTreeSet::new(),
                None => {
                    problems.push(format!("{} is not exposed by tokengate", selector.metric));
                    continue;
                }
            };
            for label in &selector.labels {
                if !allowed.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                    problems.push(format!("{} has no label {label}", selector.metric));
                }
            }
        }
        for label in &used.grouping {
            if !anywhere.contains(label) {
                problems.push(format!("no exposed series has the label {label}"));
            }
        }
        problems
    }
}

/// Starts the binary with an issuer, two routes and the admin listener, sends one request (so
/// `tokengate_requests_total` has a series) and reads `/metrics`.
async fn exposed() -> Exposed {
    let (echo, issuer) = (Echo::start().await, MockIssuer::start().await);
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{}\"\n\n{}\n\
         [[route]]\nid = \"public\"\npath_prefix = \"/public\"\nauth = \"public\"\n\n\
         [[route]]\nid = \"api\"\npath_prefix = \"/api\"\n",
        echo.addr,
        issuer.config_toml("corp", &["api"])
    );
    let gate = Gate::start_ready(&toml).await;
    assert_eq!(support::get(&gate.url("/public/x"), &[]).await.status, 200);
    let admin = gate.admin.unwrap();
    let answer = support::get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8(answer.body.to_vec()).unwrap();

    let label_names = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)=""#).unwrap();
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Sample {
                metric_name,
                labels,
                ..
            } => {
                let entry = names.entry(metric_name.to_owned()).or_default();
                for caps in label_names.captures_iter(labels.unwrap_or("")) {
                    entry.insert(caps[1].to_owned());
                }
            }
            LineInfo::Type {
                metric_name,
                metric_alias,
                ..
            } => {
                let family = metric_alias.unwrap_or(metric_name);
                if family.starts_with("tokengate_") {
                    families.insert(family);
                }
            }
            _ => {}
        }
    }
    assert!(
        names.contains_key("tokengate_request_duration_seconds_bucket")
            && names.contains_key("tokengate_requests_total"),
        "an unexpected scrape:\n{text}"
    );
    Exposed { names, families }
}

// ---------------------------------------------------------------------------------------------
// The dashboard
// ---------------------------------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// (panel title, expression) of every query target.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            out.push((title.clone(), expr.to_owned()));
        }
    }
    out
}

/// `label_values(selector, label)`: the selector and the label name.
fn label_values(query: &str) -> Option<(&str, &str)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim(), label.trim()))
}

#[test]
fn dashboard_is_importable_and_provisionable() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().expect("schemaVersion") >= 36,
        "schemaVersion"
    );
    assert_eq!(d["uid"], json!("tokengate"));
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    // No `__inputs`: those are resolved only by the UI's import dialog, never by
    // provisioning. The datasource is a variable instead, on the default Prometheus.
    assert!(d.get("__inputs").is_none(), "__inputs breaks provisioning");
    let variables = d["templating"]["list"].as_array().expect("templating");
    let ds = variables
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("a DS_PROMETHEUS variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let uses_variable = |v: &Value| v["uid"] == "${DS_PROMETHEUS}" && v["type"] == "prometheus";

    let mut ids = BTreeSet::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "id of {title} twice"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "gridPos of {title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(uses_variable(&panel["datasource"]), "datasource of {title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} queries nothing");
        for target in targets {
            assert!(
                uses_variable(&target["datasource"]),
                "target datasource of {title}"
            );
        }
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert!(
            uses_variable(&variable["datasource"]),
            "{}",
            variable["name"]
        );
    }

    let exprs = dashboard_exprs(&d);
    for name in DASHBOARD_MUST_USE {
        assert!(
            exprs
                .iter()
                .any(|(_, e)| promql_names(e).selectors.iter().any(|s| s.metric == name)),
            "no panel shows {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_use_only_names_a_real_scrape_exposes() {
    let exposed = exposed().await;
    let mut problems = Vec::new();

    let d = dashboard();
    for (title, expr) in dashboard_exprs(&d) {
        for p in exposed.check(&expr) {
            problems.push(format!("dashboard panel {title:?}: {p}\n    {expr}"));
        }
    }
    for variable in d["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .expect("a variable query");
        let (selector, label) = label_values(query).unwrap_or_else(|| {
            panic!(
                "variable {}: not label_values(…): {query}",
                variable["name"]
            )
        });
        for p in exposed.check(selector) {
            problems.push(format!("variable {}: {p}", variable["name"]));
        }
        let metric = &promql_names(selector).selectors[0].metric;
        let has = exposed.names.get(metric).is_some_and(|l| l.contains(label));
        if !has && !TARGET_LABELS.contains(&label) {
            problems.push(format!(
                "variable {}: {metric} has no label {label}",
                variable["name"]
            ));
        }
    }
    for rule in alert_rules(&read(ALERTS)) {
        for p in exposed.check(&rule.expr) {
            problems.push(format!("alert {}: {p}\n    {}", rule.name, rule.expr));
        }
    }
    let readme = read("README.md");
    let examples = readme_promql(&readme);
    assert!(
        examples.len() >= 4,
        "the README's example queries: {examples:?}"
    );
    for expr in examples {
        for p in exposed.check(&expr) {
            problems.push(format!("README example: {p}\n    {expr}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The README's metric table names every family the binary exports.
    for family in &exposed.families {
        assert!(
            readme.contains(family.as_str()),
            "README does not explain {family}"
        );
    }
}

/// The expressions of the README's ```promql blocks: `#` comments removed, an indented line
/// continuing the expression above it.
fn readme_promql(readme: &str) -> Vec<String> {
    let mut exprs: Vec<String> = Vec::new();
    for block in readme.split("```promql\n").skip(1) {
        let body = block.split("```").next().unwrap_or("");
        for line in body.lines() {
            let code = match line.find(" #") {
                Some(at) => &line[..at],
                None if line.trim_start().starts_with('#') => "",
                None => line,
            };
            if code.trim().is_empty() {
                continue;
            }
            match exprs.last_mut() {
                Some(last) if code.starts_with(char::is_whitespace) => {
                    last.push(' ');
                    last.push_str(code.trim());
                }
                _ => exprs.push(code.trim().to_owned()),
            }
        }
    }
    exprs
}

// ---------------------------------------------------------------------------------------------
// The alert rules
// ---------------------------------------------------------------------------------------------

/// One alerting rule of `alerts.yaml`, read line by line (the file is written in the block
/// style this reader knows; `promtool_accepts_the_prometheus_files` cross-checks the count).
#[derive(Debug)]
struct Rule {
    name: String,
    expr: String,
    /// The rule's lines, for presence checks.
    block: String,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn alert_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = lines[i].trim_start().strip_prefix("- alert:") else {
            i += 1;
            continue;
        };
        let dash = indent(lines[i]);
        let mut end = i + 1;
        while end < lines.len()
            && (lines[end].trim().is_empty()
                || indent(lines[end]) > dash
                || lines[end].trim_start().starts_with('#'))
        {
            end += 1;
        }
        let block = &lines[i..end];
        let expr_at = block
            .iter()
            .position(|l| l.trim_start().starts_with("expr:"))
            .unwrap_or_else(|| panic!("alert{name} has no expr"));
        let expr_line = block[expr_at];
        let value = expr_line.trim_start()["expr:".len()..].trim();
        let expr = if value.starts_with('|') || value.starts_with('>') {
            let key_indent = indent(expr_line);
            block[expr_at + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > key_indent)
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            value.trim_matches(|c| c == '"' || c == '\'').to_owned()
        };
        assert!(!expr.trim().is_empty(), "alert{name}: empty expr");
        rules.push(Rule {
            name: name.trim().to_owned(),
            expr,
            block: block.join("\n"),
        });
        i = end;
    }
    rules
}

#[test]
fn every_alert_waits_has_a_severity_and_explains_itself() {
    let rules = alert_rules(&read(ALERTS));
    let names: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), rules.len(), "alert names are unique");
    // The ones the README promises.
    for family in [
        "TokengateDown",
        "TokengateIssuerKeysNotLoaded",
        "TokengateJwksRefreshFailing",
        "Tokengate5xxRatioHigh",
        "TokengateAuthFailureSpike",
        "TokengateUserinfoErrors",
    ] {
        assert!(names.contains(family), "no alert {family}");
    }
    let severity = regex::Regex::new(r"(?m)^\s+severity: (critical|warning)$").unwrap();
    let readme = read("README.md");
    for rule in &rules {
        let name = &rule.name;
        for key in [
            "for:",
            "labels:",
            "annotations:",
            "summary:",
            "description:",
        ] {
            assert!(rule.block.contains(key), "alert {name} has no {key}");
        }
        assert!(severity.is_match(&rule.block), "alert {name}: severity");
        assert!(
            readme.contains(name.as_str()),
            "README does not explain alert {name}"
        );
        // Every alert is exercised by the promtool unit tests.
        assert!(
            read(ALERT_TESTS).contains(&format!("alertname: {name}")),
            "{ALERT_TESTS} does not test {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------------------------

/// `promtool ARGS` in the repository root; `None` (with a note) when promtool is not installed.
fn promtool(args: &[&str]) -> Option<Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!(
                "NOTE: promtool not runnable ({e}); skipping `promtool {}` \
                 (apt-get install prometheus provides it)",
                args.join(" ")
            );
            None
        }
    }
}

fn succeeded(out: &Output, what: &str) -> String {
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {what}: {:?}\n{said}",
        out.status
    );
    said
}

#[test]
fn promtool_accepts_the_prometheus_files() {
    let Some(config) = promtool(&["check", "config", PROMETHEUS]) else {
        return;
    };
    let said = succeeded(&config, "check config");
    assert!(said.contains("1 rule files found"), "{said}");

    let rules = promtool(&["check", "rules", ALERTS]).unwrap();
    let said = succeeded(&rules, "check rules");
    // promtool's count of rules equals what this file's reader found.
    let count = alert_rules(&read(ALERTS)).len();
    assert!(
        said.contains(&format!("SUCCESS: {count} rules found")),
        "promtool and the reader disagree on the number of rules ({count}):\n{said}"
    );

    let tests = promtool(&["test", "rules", ALERT_TESTS]).unwrap();
    succeeded(&tests, "test rules");
}

// ---------------------------------------------------------------------------------------------
// The compose stack and provisioning
// ---------------------------------------------------------------------------------------------

/// The `host:container` volume mounts of a compose file whose host side is a relative path.
fn bind_mounts(compose: &str) -> Vec<(String, String)> {
    compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./"))
        .map(|m| {
            let mut parts = m.split(':');
            let host = parts.next().unwrap().to_owned();
            let container = parts.next().expect("host:container").to_owned();
            (host, container)
        })
        .collect()
}

/// `[admin] listen`'s port in `docker/tokengate.toml`, the configuration compose.yaml mounts.
fn admin_port() -> u16 {
    let config: toml::Value = toml::from_str(&read("docker/tokengate.toml")).unwrap();
    let listen = config["admin"]["listen"].as_str().expect("[admin] listen");
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn observability_compose_mounts_what_exists_and_wires_the_ports() {
    let compose = read(COMPOSE);
    // tokengate, its upstream and issuer come from the sidecar example, unchanged.
    assert!(
        compose.contains("include:\n  - compose.yaml\n"),
        "includes compose.yaml"
    );
    let base = read("docker/compose.yaml");
    for service in ["tokengate", "orders"] {
        assert!(
            base.contains(&format!("\n  {service}:\n")),
            "compose.yaml has {service}"
        );
    }
    let mounts = bind_mounts(&compose);
    assert!(!mounts.is_empty());
    for (host, _) in &mounts {
        let path: PathBuf = root().join("docker").join(host);
        assert!(
            path.exists(),
            "{COMPOSE} mounts docker/{host}, which does not exist"
        );
    }
    let mounted = |host: &str| {
        mounts
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("{COMPOSE} does not mount ./{host}"))
    };
    assert_eq!(
        mounted("prometheus/prometheus.yml"),
        "/etc/prometheus/prometheus.yml"
    );
    // Rule files are found relative to the configuration file.
    assert_eq!(
        mounted("prometheus/alerts.yaml"),
        "/etc/prometheus/alerts.yaml"
    );
    assert!(read(PROMETHEUS).contains("rule_files:\n  - alerts.yaml\n"));
    assert_eq!(mounted("grafana/provisioning"), "/etc/grafana/provisioning");
    let dashboard_in_container = mounted("grafana/tokengate-dashboard.json");
    let provider = read(PROVIDER);
    let dir = dashboard_in_container.rsplit_once('/').unwrap().0;
    assert!(
        provider.contains(&format!("path: {dir}\n")),
        "the dashboard provider reads {dir}, where compose mounts the dashboard"
    );

    // Prometheus scrapes tokengate's admin listener, on the network both are on.
    let port = admin_port();
    assert!(
        read(PROMETHEUS).contains(&format!("targets: [\"tokengate:{port}\"]")),
        "prometheus.yml scrapes tokengate:{port} (the admin port of docker/tokengate.toml)"
    );
    assert!(
        base.contains("networks: [frontend, backend]"),
        "tokengate is on frontend"
    );
    assert_eq!(compose.matches("networks: [frontend]").count(), 2);
    // Grafana's datasource is that Prometheus, and the dashboard's default.
    assert!(compose.contains("\n  prometheus:\n") && compose.contains("\n  grafana:\n"));
    let datasource = read(DATASOURCE);
    assert!(datasource.contains("url: http://prometheus:9090\n"));
    assert!(datasource.contains("isDefault: true\n"));
    assert!(
        compose.contains("\"127.0.0.1:9090:9090\"") && compose.contains("\"127.0.0.1:3000:3000\"")
    );
}
