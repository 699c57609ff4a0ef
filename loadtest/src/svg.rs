//! Small inline SVG charts for the reports: line charts (linear or log x) and stacked bars.
//! No scripts, no external fonts or styles: each chart is one self-contained `<svg>`.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// Index into the palette (so a theory line can share its mode's colour).
    pub color: usize,
}

pub struct Axis {
    pub label: String,
    pub log: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Tick values: powers of ten (and 2, 5 between) on a log axis, round steps on a linear one.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let mut out = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v >= lo * 0.9999 && v <= hi * 1.0001 {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        return out;
    }
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    (first..)
        .map(|k| (k as f64 * step * 1e9).round() / 1e9)
        .take_while(|v| *v <= hi + step * 1e-9)
        .collect()
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e6 {
        format!("{:.0}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_owned()
    }
}

/// A line chart; a log axis drops non-positive values.
pub fn lines(title: &str, x: &Axis, y: &Axis, series: &[Series]) -> String {
    let keep = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&(a, b)| keep(a, x.log) && keep(b, y.log))
        .collect();
    let range = |vals: Vec<f64>, log: bool| {
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        match (lo.is_finite(), log) {
            (false, _) => (if log { 1.0 } else { 0.0 }, 10.0),
            (true, true) => (
                10f64.powf(lo.log10().floor()),
                10f64.powf(hi.log10().ceil()).max(lo * 10.0),
            ),
            (true, false) => (lo.min(0.0), if hi > lo.min(0.0) { hi * 1.05 } else { 1.0 }),
        }
    };
    let (x0, x1) = range(pts.iter().map(|p| p.0).collect(), x.log);
    let (y0, y1) = range(pts.iter().map(|p| p.1).collect(), y.log);
    let tx = |v: f64| {
        let f = if x.log {
            (v.log10() - x0.log10()) / (x1.log10() - x0.log10())
        } else {
            (v - x0) / (x1 - x0)
        };
        LEFT + f * (W - LEFT - RIGHT)
    };
    let ty = |v: f64| {
        let f = if y.log {
            (v.log10() - y0.log10()) / (y1.log10() - y0.log10())
        } else {
            (v - y0) / (y1 - y0)
        };
        H - BOTTOM - f * (H - TOP - BOTTOM)
    };
    let mut s = header(title);
    for t in ticks(x0, x1, x.log) {
        let px = tx(t);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e6e6e6"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0,
            fmt_tick(t)
        );
    }
    for t in ticks(y0, y1, y.log) {
        let py = ty(t);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            fmt_tick(t)
        );
    }
    axes(&mut s, &x.label, &y.label);
    for (i, ser) in series.iter().enumerate() {
        let path: Vec<String> = ser
            .points
            .iter()
            .filter(|&&(a, b)| keep(a, x.log) && keep(b, y.log))
            .map(|&(a, b)| format!("{:.1},{:.1}", tx(a), ty(b)))
            .collect();
        let dash = if ser.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        if !path.is_empty() {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.8"{dash} points="{}"/>"#,
                color(ser.color),
                path.join(" ")
            );
        }
        let ly = TOP + 8.0 + i as f64 * 18.0;
        let lx = W - RIGHT + 12.0;
        let _ = write!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.0}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{:.0}" y="{:.0}">{}</text>"#,
            lx + 22.0,
            color(ser.color),
            lx + 28.0,
            ly + 4.0,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// Horizontal stacked bars: one row per label, one segment per (part, value).
pub fn stacked_bars(title: &str, unit: &str, rows: &[(String, Vec<(String, f64)>)], log: bool) -> String {
    let totals: Vec<f64> = rows.iter().map(|r| r.1.iter().map(|p| p.1).sum()).collect();
    let max = totals.iter().copied().fold(0.0, f64::max).max(1.0);
    let lo = 1.0;
    let hi = if log {
        10f64.powf(max.log10().ceil())
    } else {
        max * 1.05
    };
    let h = TOP + BOTTOM + rows.len() as f64 * 34.0 + 10.0;
    let left = 150.0;
    let width = W - left - RIGHT;
    let scale = |v: f64| {
        if log {
            if v <= lo {
                0.0
            } else {
                (v.log10() - lo.log10()) / (hi.log10() - lo.log10()) * width
            }
        } else {
            v / hi * width
        }
    };
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {h:.0}" width="{W}" height="{h:.0}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="#fff"/><text x="{}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"##,
        W / 2.0,
        esc(title)
    );
    for t in ticks(if log { lo } else { 0.0 }, hi, log) {
        let px = left + scale(t);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e6e6e6"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            h - BOTTOM,
            h - BOTTOM + 16.0,
            fmt_tick(t)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.0}" y="{:.0}" text-anchor="middle">{}{}</text>"#,
        left + width / 2.0,
        h - 10.0,
        esc(unit),
        if log { " (log scale)" } else { "" }
    );
    let mut parts: Vec<String> = Vec::new();
    for (i, (label, segs)) in rows.iter().enumerate() {
        let y = TOP + 8.0 + i as f64 * 34.0;
        let _ = write!(
            s,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 17.0,
            esc(label)
        );
        // Segments are drawn cumulatively so a log axis still reads as the total.
        let mut acc = 0.0;
        for (name, v) in segs {
            let k = match parts.iter().position(|p| p == name) {
                Some(k) => k,
                None => {
                    parts.push(name.clone());
                    parts.len() - 1
                }
            };
            let (a, b) = (scale(acc), scale(acc + v));
            acc += v;
            if b > a {
                let _ = write!(
                    s,
                    r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="24" fill="{}"><title>{}: {v:.1} {}</title></rect>"#,
                    left + a,
                    b - a,
                    color(k),
                    esc(name),
                    esc(unit)
                );
            }
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.0}">{}</text>"#,
            left + scale(acc) + 4.0,
            y + 17.0,
            fmt_tick(acc)
        );
    }
    for (k, name) in parts.iter().enumerate() {
        let ly = TOP + 8.0 + k as f64 * 18.0;
        let lx = W - RIGHT + 40.0;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{:.0}" width="14" height="10" fill="{}"/><text x="{:.0}" y="{:.0}">{}</text>"#,
            ly - 5.0,
            color(k),
            lx + 20.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn header(title: &str) -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="#fff"/><text x="{}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"##,
        (W - RIGHT + LEFT) / 2.0,
        esc(title)
    )
}

fn axes(s: &mut String, x: &str, y: &str) {
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{:.0}" x2="{:.0}" y2="{:.0}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.0}" stroke="#333"/><text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text><text transform="translate(16 {:.0}) rotate(-90)" text-anchor="middle">{}</text>"##,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM,
        (W - RIGHT + LEFT) / 2.0,
        H - 8.0,
        esc(x),
        (H - BOTTOM + TOP) / 2.0,
        esc(y)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_are_1_2_5_per_decade() {
        assert_eq!(ticks(1.0, 100.0, true), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
    }

    #[test]
    fn linear_ticks_are_round() {
        assert_eq!(ticks(0.0, 1.0, false), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    }

    #[test]
    fn a_chart_is_one_svg_with_every_series_named() {
        let s = lines(
            "t",
            &Axis {
                label: "x".into(),
                log: true,
            },
            &Axis {
                label: "y".into(),
                log: false,
            },
            &[
                Series {
                    name: "ws".into(),
                    points: vec![(1.0, 0.0), (2.0, 1.0)],
                    dashed: false,
                    color: 0,
                },
                Series {
                    name: "a<b".into(),
                    points: vec![(0.0, 0.5)],
                    dashed: true,
                    color: 1,
                },
            ],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 1, "the second series has no positive x");
        assert!(s.contains(">ws<") && s.contains(">a&lt;b<"));
    }
}
