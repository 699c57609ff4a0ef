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

/// Where values fall on one axis: `start` is the pixel of `lo`, `span` the pixels to `hi`
/// (negative upwards).
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    start: f64,
    span: f64,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        self.start + f * self.span
    }
}

/// The axis range of `vals`: whole decades on a log axis, from 0 (or below) on a linear one.
fn range(vals: impl Iterator<Item = f64> + Clone, log: bool) -> (f64, f64) {
    let lo = vals.clone().fold(f64::INFINITY, f64::min);
    let hi = vals.fold(f64::NEG_INFINITY, f64::max);
    match (lo.is_finite(), log) {
        (false, _) => (if log { 1.0 } else { 0.0 }, 10.0),
        (true, true) => (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()).max(lo * 10.0),
        ),
        (true, false) => (lo.min(0.0), if hi > lo.min(0.0) { hi * 1.05 } else { 1.0 }),
    }
}

/// A line chart; a log axis drops non-positive values.
pub fn lines(title: &str, x: &Axis, y: &Axis, series: &[Series]) -> String {
    let keep = |(a, b): (f64, f64)| {
        let ok = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
        ok(a, x.log) && ok(b, y.log)
    };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&p| keep(p))
        .collect();
    let (x0, x1) = range(pts.iter().map(|p| p.0), x.log);
    let (y0, y1) = range(pts.iter().map(|p| p.1), y.log);
    let sx = Scale {
        lo: x0,
        hi: x1,
        log: x.log,
        start: LEFT,
        span: W - LEFT - RIGHT,
    };
    let sy = Scale {
        lo: y0,
        hi: y1,
        log: y.log,
        start: H - BOTTOM,
        span: -(H - TOP - BOTTOM),
    };
    let mut s = header(title);
    for t in ticks(x0, x1, x.log) {
        vertical_grid(&mut s, sx.at(t), H, t);
    }
    for t in ticks(y0, y1, y.log) {
        let py = sy.at(t);
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
            .filter(|&&p| keep(p))
            .map(|&(a, b)| format!("{:.1},{:.1}", sx.at(a), sy.at(b)))
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

/// A vertical grid line at `px` with the tick's label below the plot of height `h`.
fn vertical_grid(s: &mut String, px: f64, h: f64, t: f64) {
    let _ = write!(
        s,
        r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e6e6e6"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        h - BOTTOM,
        h - BOTTOM + 16.0,
        fmt_tick(t)
    );
}

/// Horizontal stacked bars: one row per label, one segment per (part, value).
pub fn stacked_bars(title: &str, unit: &str, rows: &[(String, Vec<(String, f64)>)], log: bool) -> String {
    let totals: Vec<f64> = rows.iter().map(|r| r.1.iter().map(|p| p.1).sum()).collect();
    let max = totals.iter().copied().fold(0.0, f64::max).max(1.0);
    let hi = if log {
        10f64.powf(max.log10().ceil())
    } else {
        max * 1.05
    };
    let h = TOP + BOTTOM + rows.len() as f64 * 34.0 + 10.0;
    let bars = Bars {
        left: 150.0,
        width: W - 150.0 - RIGHT,
        hi,
        log,
        unit,
    };
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {h:.0}" width="{W}" height="{h:.0}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="#fff"/><text x="{}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"##,
        W / 2.0,
        esc(title)
    );
    for t in ticks(if log { 1.0 } else { 0.0 }, hi, log) {
        vertical_grid(&mut s, bars.left + bars.scale(t), h, t);
    }
    let _ = write!(
        s,
        r#"<text x="{:.0}" y="{:.0}" text-anchor="middle">{}{}</text>"#,
        bars.left + bars.width / 2.0,
        h - 10.0,
        esc(unit),
        if log { " (log scale)" } else { "" }
    );
    let mut parts: Vec<String> = Vec::new();
    for (i, (label, segs)) in rows.iter().enumerate() {
        bars.row(&mut s, TOP + 8.0 + i as f64 * 34.0, label, segs, &mut parts);
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

/// The geometry of a stacked bar chart.
struct Bars<'a> {
    left: f64,
    width: f64,
    hi: f64,
    log: bool,
    unit: &'a str,
}

impl Bars<'_> {
    /// Pixels from the left edge for `v` (a log axis starts at 1).
    fn scale(&self, v: f64) -> f64 {
        match self.log {
            true if v <= 1.0 => 0.0,
            true => v.log10() / self.hi.log10() * self.width,
            false => v / self.hi * self.width,
        }
    }

    /// One row at `y`: its label, its segments (each part keeps its colour across rows:
    /// `parts` collects them in order of appearance) and its total.
    fn row(&self, s: &mut String, y: f64, label: &str, segs: &[(String, f64)], parts: &mut Vec<String>) {
        let _ = write!(
            s,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
            self.left - 8.0,
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
            let (a, b) = (self.scale(acc), self.scale(acc + v));
            acc += v;
            if b > a {
                let _ = write!(
                    s,
                    r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="24" fill="{}"><title>{}: {v:.1} {}</title></rect>"#,
                    self.left + a,
                    b - a,
                    color(k),
                    esc(name),
                    esc(self.unit)
                );
            }
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.0}">{}</text>"#,
            self.left + self.scale(acc) + 4.0,
            y + 17.0,
            fmt_tick(acc)
        );
    }
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
