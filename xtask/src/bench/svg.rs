//! A grouped bar chart as plain SVG text: one group per job, one bar per
//! system, bar height = that system's ratio to brd; a dashed line marks brd.

use std::fmt::Write;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 50.0;
const COLORS: &[&str] = &[
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f",
];

/// One bar group: its label and one value per series (None = not measured).
pub struct Group {
    pub label: String,
    pub values: Vec<Option<f64>>,
}

/// Axis top: at least 1.0 (the brd line), rounded up to a tick.
fn axis_max(groups: &[Group]) -> (f64, f64) {
    let max = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten())
        .fold(1.0_f64, |a, &b| a.max(b));
    let step = if max <= 1.25 {
        0.25
    } else if max <= 3.0 {
        0.5
    } else {
        (max / 5.0).ceil()
    };
    ((max / step).ceil() * step, step)
}

pub fn chart(title: &str, series: &[&str], groups: &[Group]) -> String {
    let (ymax, step) = axis_max(groups);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (1.0 - v / ymax);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Legend: one swatch per series, in a row under the title.
    let slot = plot_w / series.len().max(1) as f64;
    for (i, name) in series.iter().enumerate() {
        let x = LEFT + slot * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="34" width="12" height="12" fill="{}"/><text x="{:.1}" y="45">{}</text>"#,
            COLORS[i % COLORS.len()],
            x + 16.0,
            escape(name)
        );
    }

    // Y axis with grid lines.
    let mut v = 0.0;
    while v <= ymax + step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">ratio to brd (IOPS)</text>"#,
        TOP + plot_h / 2.0
    );

    // Bars.
    let group_w = plot_w / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (g, group) in groups.iter().enumerate() {
        let x0 = LEFT + group_w * g as f64 + group_w * 0.1;
        for (i, value) in group.values.iter().enumerate() {
            let Some(value) = value else { continue };
            let x = x0 + bar_w * i as f64;
            let top = y(*value);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {value:.3}</title></rect>"#,
                bar_w - 1.0,
                (TOP + plot_h - top).max(0.0),
                COLORS[i % COLORS.len()],
                escape(series.get(i).copied().unwrap_or("")),
                escape(&group.label)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                x + bar_w / 2.0,
                top - 3.0,
                short(*value)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + group_w * (g as f64 + 0.5),
            TOP + plot_h + 20.0,
            escape(&group.label)
        );
    }

    // The brd line and the axes last, over the bars.
    let one = y(1.0);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{one:.1}" x2="{:.1}" y2="{one:.1}" stroke="#333" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">brd = 1.0</text>"##,
        WIDTH - RIGHT,
        WIDTH - RIGHT,
        one - 4.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        TOP + plot_h,
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h
    );
    s.push_str("</svg>\n");
    s
}

/// A bar label: two significant digits are what a reader can compare.
fn short(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_measured_value() {
        let groups = vec![
            Group {
                label: "a".into(),
                values: vec![Some(0.5), None],
            },
            Group {
                label: "b".into(),
                values: vec![Some(1.2), Some(0.03)],
            },
        ];
        let svg = chart("t", &["x", "y"], &groups);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("<title>y b: 0.030</title>"));
        assert!(svg.contains("brd = 1.0"));
    }

    #[test]
    fn axis_covers_brd_and_the_tallest_bar() {
        let g = |v: f64| Group {
            label: String::new(),
            values: vec![Some(v)],
        };
        assert_eq!(axis_max(&[g(0.2)]), (1.0, 0.25));
        assert_eq!(axis_max(&[g(1.3)]), (1.5, 0.5));
        assert_eq!(axis_max(&[g(7.0)]), (8.0, 2.0));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(short(0.0312), "0.03");
        assert_eq!(short(2.345), "2.3");
        assert_eq!(short(12.6), "13");
    }
}
