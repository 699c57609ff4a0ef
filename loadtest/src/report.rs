//! Every run's report: `report.md`, `report.json` and a self-contained `report.html`
//! (inline SVG, no scripts, no CDN), plus each chart as its own `.svg` file.

use std::fmt::Write;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};

pub struct Report {
    pub title: String,
    /// Run header: parameters, machine, versions.
    pub header: Vec<(String, String)>,
    pub sections: Vec<Section>,
    /// The machine-readable form (`report.json`).
    pub json: serde_json::Value,
}

#[derive(Default)]
pub struct Section {
    pub heading: String,
    pub text: Vec<String>,
    pub table: Option<Table>,
    /// (file stem, SVG document)
    pub charts: Vec<(String, String)>,
}

pub struct Table {
    pub head: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Section {
    /// A section whose table is `lines`, a name and a value each, with no header.
    pub fn key_values(heading: &str, lines: &[(String, String)]) -> Self {
        Self {
            heading: heading.into(),
            table: Some(Table {
                head: vec![String::new(), String::new()],
                rows: lines.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect(),
            }),
            ..Self::default()
        }
    }
}

impl Report {
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("report.html"), self.html())?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&self.json)? + "\n",
        )?;
        for section in &self.sections {
            for (stem, svg) in &section.charts {
                std::fs::write(dir.join(format!("{stem}.svg")), svg)?;
            }
        }
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("# {}\n\n", self.title);
        for (k, v) in &self.header {
            let _ = writeln!(s, "- **{k}**: {v}");
        }
        for section in &self.sections {
            let _ = write!(s, "\n## {}\n\n", section.heading);
            for p in &section.text {
                let _ = write!(s, "{p}\n\n");
            }
            if let Some(t) = &section.table {
                let _ = writeln!(s, "| {} |", t.head.join(" | "));
                let _ = writeln!(s, "|{}", "---|".repeat(t.head.len()));
                for row in &t.rows {
                    let _ = writeln!(s, "| {} |", row.join(" | "));
                }
                s.push('\n');
            }
            for (stem, _) in &section.charts {
                let _ = write!(s, "![{stem}]({stem}.svg)\n\n");
            }
        }
        s
    }

    pub fn html(&self) -> String {
        let e = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let mut s = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
             body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
             table{{border-collapse:collapse;font-size:13px;margin:1em 0}}\
             td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}\
             th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}\
             svg{{max-width:100%;height:auto;display:block;margin:1em 0}}dt{{font-weight:bold;float:left;clear:left;width:14em}}\
             dd{{margin-left:15em}}</style></head><body><h1>{}</h1><dl>",
            e(&self.title),
            e(&self.title)
        );
        for (k, v) in &self.header {
            let _ = write!(s, "<dt>{}</dt><dd>{}</dd>", e(k), e(v));
        }
        s.push_str("</dl>");
        for section in &self.sections {
            let _ = write!(s, "<h2>{}</h2>", e(&section.heading));
            for p in &section.text {
                let _ = write!(s, "<p>{}</p>", e(p));
            }
            if let Some(t) = &section.table {
                s.push_str("<table><tr>");
                for h in &t.head {
                    let _ = write!(s, "<th>{}</th>", e(h));
                }
                s.push_str("</tr>");
                for row in &t.rows {
                    s.push_str("<tr>");
                    for c in row {
                        let _ = write!(s, "<td>{}</td>", e(c));
                    }
                    s.push_str("</tr>");
                }
                s.push_str("</table>");
            }
            for (_, svg) in &section.charts {
                s.push_str(svg);
            }
        }
        s.push_str("</body></html>\n");
        s
    }
}

static REVISION: OnceLock<String> = OnceLock::new();

/// The revision of the work tree when the run started (`main` reads it first thing), with
/// `-dirty` when tracked files had changes: the build being measured, not whatever the tree
/// holds when the report is written.
pub fn run_revision() -> &'static str {
    REVISION.get_or_init(|| {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        let rev = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{rev}-dirty")
        } else {
            rev
        }
    })
}

/// The run header lines every report starts with.
pub fn machine_header() -> Vec<(String, String)> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    vec![
        ("loadtest".into(), env!("CARGO_PKG_VERSION").into()),
        ("revision".into(), run_revision().to_owned()),
        ("machine".into(), format!("{cores} cores, {mem}, Linux {kernel}")),
        ("date (UTC)".into(), utc_now()),
    ]
}

/// `YYYY-MM-DD HH:MM:SS` from the system clock (civil-from-days, no time-zone data needed).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A number with a sensible number of decimals for a table cell.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_carries_the_table_and_the_chart() {
        let r = Report {
            title: "T".into(),
            header: vec![("clients".into(), "10".into())],
            sections: vec![Section {
                heading: "Summary".into(),
                text: vec!["a < b".into()],
                table: Some(Table {
                    head: vec!["mode".into(), "p99".into()],
                    rows: vec![vec!["ws".into(), "1.0".into()]],
                }),
                charts: vec![("cdf".into(), "<svg></svg>".into())],
            }],
            json: serde_json::json!({"ok": true}),
        };
        let md = r.markdown();
        assert!(md.contains("| mode | p99 |\n|---|---|\n| ws | 1.0 |"), "{md}");
        assert!(md.contains("![cdf](cdf.svg)"));
        let html = r.html();
        assert!(html.contains("<td>ws</td><td>1.0</td>") && html.contains("<svg></svg>") && html.contains("a &lt; b"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "self-contained"
        );
    }

    #[test]
    fn utc_date_is_civil() {
        let s = utc_now();
        assert_eq!(s.len(), 19);
        assert!(s.starts_with("20"));
    }
}
