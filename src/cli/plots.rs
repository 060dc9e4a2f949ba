//! `swarmscan report --plots DIR`: each figure as SVG and PNG.
//!
//! Text is laid out with DejaVu Sans compiled into the binary (the `dejavu` crate, through
//! plotters' `ab_glyph` renderer), never a system font: a server without fontconfig or
//! freetype renders the same bytes as a desktop. SVGs name the font family `sans-serif`.

use crate::store::report::Report;
use crate::store::study::{FigureData, KeyTable};
use crate::store::{ALL_LABELS, NO_LABEL};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// Pixel size of every figure.
pub const SIZE: (u32, u32) = (1000, 560);

/// Font family name registered for the embedded font.
pub(crate) const FONT: &str = "sans-serif";

/// Tableau 10: distinguishable, print-friendly.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

pub(crate) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Bars shown per bar chart.
const MAX_BARS: usize = 15;

/// A named series of points.
type Named<P> = (String, Vec<P>);
/// (hour, received, new).
type SourcePoint = (f64, i64, i64);
/// (hour, confirmed, reported).
type DownloadPoint = (f64, i64, Option<i64>);

/// One figure's data, ready to draw.
enum Figure {
    /// Figure 5.1: (bucket start ms, contacts).
    Gaps(Vec<(i64, i64)>),
    /// Figure 5.3: per source, (hour, received, new).
    Discovery(Vec<Named<SourcePoint>>),
    /// Figure 5.4: per label, (hour, confirmed, reported).
    Downloads(Vec<Named<DownloadPoint>>),
    /// Horizontal bars: two values per category (e.g. share of peers, share of confirmed).
    Bars {
        categories: Vec<String>,
        series: [(String, Vec<f64>); 2],
        unit: &'static str,
        note: Option<String>,
    },
    /// Threshold sensitivity: per label, (threshold %, confirmed).
    Threshold(Vec<(String, Vec<(f64, i64)>)>),
}

struct Plot {
    file: &'static str,
    title: String,
    figure: Figure,
}

/// The label group figures of one group show: "(all)" when labels exist, else "(none)".
fn main_group(labels: &[String]) -> &'static str {
    if labels.iter().any(|l| l == ALL_LABELS) {
        ALL_LABELS
    } else {
        NO_LABEL
    }
}

fn key_bars(table: &KeyTable, group: &str, with_detail: bool) -> Figure {
    let rows: Vec<_> = table
        .rows
        .iter()
        .filter(|r| r.label == group && !r.key.starts_with("(other"))
        .take(MAX_BARS)
        .collect();
    Figure::Bars {
        categories: rows
            .iter()
            .map(|r| match (&r.detail, with_detail) {
                (Some(d), true) => format!("{} {d}", r.key),
                _ => r.key.clone(),
            })
            .collect(),
        series: [
            (
                "share of peers".into(),
                rows.iter().map(|r| r.share_peers * 100.0).collect(),
            ),
            (
                "share of confirmed downloads".into(),
                rows.iter()
                    .map(|r| r.share_confirmed.unwrap_or(0.0) * 100.0)
                    .collect(),
            ),
        ],
        unit: "%",
        note: table.note.clone(),
    }
}

fn plots(report: &Report, data: &FigureData) -> Vec<Plot> {
    let start = report.window.start.unwrap_or(0);
    let hours = |at: i64| (at - start) as f64 / 3_600_000.0;
    let labels: Vec<String> = report
        .study
        .labels
        .iter()
        .map(|l| l.label.clone())
        .collect();
    let group = main_group(&labels);

    let mut sources: Vec<Named<SourcePoint>> = Vec::new();
    for p in &data.discovery {
        let point = (hours(p.at + data.bucket_ms / 2), p.count, p.new);
        match sources.iter_mut().find(|s| s.0 == p.key) {
            Some(s) => s.1.push(point),
            None => sources.push((p.key.clone(), vec![point])),
        }
    }
    let mut downloads: Vec<Named<DownloadPoint>> = Vec::new();
    for p in &data.downloads {
        let point = (hours(p.at), p.confirmed, p.reported);
        match downloads.iter_mut().find(|s| s.0 == p.label) {
            Some(s) => s.1.push(point),
            None => downloads.push((p.label.clone(), vec![point])),
        }
    }
    let speed: Vec<_> = report
        .study
        .speed_by_country
        .rows
        .iter()
        .filter(|r| r.label == group)
        .take(MAX_BARS)
        .collect();
    vec![
        Plot {
            file: "fig5_1_longest_gap",
            title: "Longest gap between two messages per contact (fig. 5.1)".into(),
            figure: Figure::Gaps(data.gaps.iter().map(|g| (g.from_ms, g.contacts)).collect()),
        },
        Plot {
            file: "fig5_3_addresses",
            title: "Addresses received and new per source (fig. 5.3)".into(),
            figure: Figure::Discovery(sources),
        },
        Plot {
            file: "fig5_4_downloads",
            title: "Confirmed and scrape-reported downloads per torrent set (fig. 5.4)".into(),
            figure: Figure::Downloads(downloads),
        },
        Plot {
            file: "clients",
            title: format!("Clients by peer-id, torrents {group}"),
            figure: key_bars(&report.study.clients, group, true),
        },
        Plot {
            file: "countries",
            title: format!("Peers and confirmed downloads by country, torrents {group}"),
            figure: key_bars(&report.study.countries, group, false),
        },
        Plot {
            file: "speed_by_country",
            title: format!("Download speed by country (highest per peer), torrents {group}"),
            figure: Figure::Bars {
                categories: speed
                    .iter()
                    .map(|r| format!("{} ({} peers)", r.country, r.peers))
                    .collect(),
                series: [
                    (
                        "median".into(),
                        speed.iter().map(|r| r.median_bps / 1e6).collect(),
                    ),
                    (
                        "mean".into(),
                        speed.iter().map(|r| r.mean_bps / 1e6).collect(),
                    ),
                ],
                unit: " MB/s",
                note: report.study.speed_by_country.note.clone(),
            },
        },
        Plot {
            file: "threshold_sensitivity",
            title: "Confirmed downloads as a function of the threshold".into(),
            figure: Figure::Threshold(
                report
                    .study
                    .threshold_sensitivity
                    .iter()
                    .map(|r| {
                        (
                            r.label.clone(),
                            r.points.iter().map(|(t, n)| (t * 100.0, *n)).collect(),
                        )
                    })
                    .collect(),
            ),
        },
    ]
}

/// Writes every figure as `DIR/NAME.svg` and `DIR/NAME.png`; returns the files written.
pub fn write_plots(report: &Report, data: &FigureData, dir: &Path) -> Result<Vec<PathBuf>, String> {
    // Registering twice is harmless (the first font stays); the bytes are DejaVu Sans.
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded font could not be read".to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for plot in plots(report, data) {
        let svg = dir.join(format!("{}.svg", plot.file));
        {
            let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
            draw(&root, &plot).map_err(|e| format!("{}: {e}", svg.display()))?;
            root.present()
                .map_err(|e| format!("{}: {e}", svg.display()))?;
        }
        written.push(svg);
        let png = dir.join(format!("{}.png", plot.file));
        {
            let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
            draw(&root, &plot).map_err(|e| format!("{}: {e}", png.display()))?;
            root.present()
                .map_err(|e| format!("{}: {e}", png.display()))?;
        }
        written.push(png);
    }
    Ok(written)
}

pub(crate) type DrawResult<DB> =
    Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// The legend every figure draws: the series' labels in a light box at `position`.
pub(crate) fn draw_legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .label_font(label_font())
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(0xbb, 0xbb, 0xbb))
        .position(position)
        .draw()
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, plot: &Plot) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let body = root.titled(&plot.title, (FONT, 24).into_font().color(&BLACK))?;
    match &plot.figure {
        Figure::Gaps(b) => draw_gaps(&body, b),
        Figure::Discovery(s) => draw_discovery(&body, s),
        Figure::Downloads(s) => draw_downloads(&body, s),
        Figure::Bars {
            categories,
            series,
            unit,
            note,
        } => draw_bars(&body, categories, series, unit, note.as_deref()),
        Figure::Threshold(s) => draw_threshold(&body, s),
    }
}

/// "No data" with the reason, in the middle of the figure.
pub(crate) fn draw_empty<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    why: &str,
) -> DrawResult<DB> {
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 18).into_font())
        .color(&RGBColor(0x55, 0x55, 0x55))
        .pos(Pos::new(HPos::Center, VPos::Center));
    // Long notes are split at a word boundary near the middle.
    let mut lines = vec![why.to_string()];
    if why.len() > 80 {
        let mid = why.len() / 2;
        let cut = why[mid..].find(' ').map(|i| mid + i).unwrap_or(mid);
        if why.is_char_boundary(cut) {
            lines = vec![why[..cut].to_string(), why[cut..].trim().to_string()];
        }
    }
    for (i, line) in lines.iter().enumerate() {
        area.draw(&Text::new(
            line.clone(),
            (w as i32 / 2, h as i32 / 2 + i as i32 * 26),
            style.clone(),
        ))?;
    }
    Ok(())
}

pub(crate) fn label_font() -> TextStyle<'static> {
    (FONT, 15).into_font().into()
}

fn draw_gaps<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    buckets: &[(i64, i64)],
) -> DrawResult<DB> {
    let total: i64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return draw_empty(area, "no contact with a measured message gap");
    }
    // Show up to the 99th percentile of the gaps under 60 s (at least 10 s); the share beyond
    // goes into the legend.
    let finite: i64 = buckets.iter().filter(|b| b.0 < 60_000).map(|b| b.1).sum();
    let mut seen = 0;
    let mut last_ms = 10_000;
    for (from, n) in buckets.iter().filter(|b| b.0 < 60_000) {
        seen += n;
        if seen as f64 >= finite as f64 * 0.99 {
            last_ms = last_ms.max(from + 1000 - from % 1000);
            break;
        }
    }
    let last_ms = last_ms.min(60_000);
    let shares: Vec<(f64, f64)> = buckets
        .iter()
        .filter(|b| b.0 < last_ms)
        .map(|(from, n)| (*from as f64 / 1000.0, *n as f64 * 100.0 / total as f64))
        .collect();
    let beyond: i64 = buckets.iter().filter(|b| b.0 >= last_ms).map(|b| b.1).sum();
    let top = shares.iter().map(|s| s.1).fold(0.0, f64::max) * 1.1;
    let x_max = last_ms as f64 / 1000.0;
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..top.max(0.1))?
        .set_secondary_coord(0f64..x_max, 0f64..100f64);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("longest gap between two messages of a contact, s (100 ms buckets)")
        .y_desc("share of contacts, %")
        .label_style(label_font())
        .axis_desc_style(label_font())
        .light_line_style(RGBColor(0xf4, 0xf4, 0xf4))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("cumulative share, %")
        .label_style(label_font())
        .axis_desc_style(label_font())
        .draw()?;
    chart
        .draw_series(
            shares.iter().map(|(x, y)| {
                Rectangle::new([(*x, 0.0), (*x + 0.1, *y)], color(0).mix(0.8).filled())
            }),
        )?
        .label("share of contacts per bucket")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color(0).filled()));
    let mut cumulative = 0.0;
    let cdf: Vec<(f64, f64)> = shares
        .iter()
        .map(|(x, y)| {
            cumulative += y;
            (x + 0.1, cumulative)
        })
        .collect();
    chart
        .draw_secondary_series(LineSeries::new(cdf, color(2).stroke_width(2)))?
        .label(format!(
            "cumulative (beyond {:.1} s: {:.1} %)",
            x_max,
            beyond as f64 * 100.0 / total as f64
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color(2).stroke_width(2)));
    // The thesis' quiet timeout, which this figure justified.
    if x_max > 6.0 {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(6.0, 0.0), (6.0, top.max(0.1))],
                6,
                4,
                RGBColor(0x55, 0x55, 0x55).stroke_width(1),
            ))?
            .label("6 s: the thesis' quiet timeout")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], RGBColor(0x55, 0x55, 0x55))
            });
    }
    draw_legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    Ok(())
}

fn draw_discovery<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    sources: &[Named<SourcePoint>],
) -> DrawResult<DB> {
    if sources.is_empty() {
        return draw_empty(area, "no discovery requests recorded");
    }
    let x_max = sources
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(0.01);
    let y_max = sources
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.4; // headroom for the legend
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max * 1.02, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("hours since the scan started")
        .y_desc("addresses per time bucket")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(label_font())
        .axis_desc_style(label_font())
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    for (i, (source, points)) in sources.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1 as f64)),
                c.stroke_width(2),
            ))?
            .label(format!("{source}: received"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(
                points.iter().map(|p| (p.0, p.2 as f64)).collect::<Vec<_>>(),
                6,
                4,
                c.stroke_width(2),
            ))?
            .label(format!("{source}: new"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 6, y)], c.stroke_width(2)));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

fn draw_downloads<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    labels: &[Named<DownloadPoint>],
) -> DrawResult<DB> {
    if labels.is_empty() {
        return draw_empty(area, "no confirmed downloads and no scrapes yet");
    }
    let x_max = labels
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(0.01);
    let y_max = labels
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1.max(p.2.unwrap_or(0))))
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 1.5;
    // Reported counts are often ten times ours: a log axis shows both.
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max * 1.02, (1f64..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("hours since the scan started")
        .y_desc("downloads since the scan started (log)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(label_font())
        .axis_desc_style(label_font())
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    for (i, (label, points)) in labels.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                points.iter().filter(|p| p.1 > 0).map(|p| (p.0, p.1 as f64)),
                c.stroke_width(2),
            ))?
            .label(format!("{label}: confirmed"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        let reported: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|p| p.2.filter(|r| *r > 0).map(|r| (p.0, r as f64)))
            .collect();
        if !reported.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(reported, 6, 4, c.stroke_width(2)))?
                .label(format!("{label}: reported by scrape"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 6, y)], c.stroke_width(2))
                });
        }
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    categories: &[String],
    series: &[(String, Vec<f64>); 2],
    unit: &str,
    note: Option<&str>,
) -> DrawResult<DB> {
    if categories.is_empty() {
        return draw_empty(area, note.unwrap_or("no data"));
    }
    let n = categories.len();
    let x_max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.12;
    // Category names are drawn by hand at the bars' pixel rows: left of the plot, right-aligned.
    let name_width = 240;
    let (left, right) = area.split_horizontally(name_width);
    let mut chart = ChartBuilder::on(&right)
        .margin(20)
        .margin_left(6)
        .x_label_area_size(50)
        .y_label_area_size(0)
        .build_cartesian_2d(0f64..x_max, 0f64..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(format!(
            "{} / {}, {}",
            series[0].0,
            series[1].0,
            unit.trim()
        ))
        .x_label_formatter(&|v| format!("{v:.1}"))
        .label_style(label_font())
        .axis_desc_style(label_font())
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    // Category i occupies the band [n - i - 1, n - i) from the top; two bars in it.
    for (s, (name, values)) in series.iter().enumerate() {
        let c = color(s);
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let top = (n - i) as f64 - 0.12 - s as f64 * 0.38;
                Rectangle::new([(0.0, top - 0.36), (*v, top)], c.filled())
            }))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], c.filled()));
    }
    let value_style = TextStyle::from((FONT, 12).into_font())
        .color(&RGBColor(0x33, 0x33, 0x33))
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (s, (_, values)) in series.iter().enumerate() {
        for (i, v) in values.iter().enumerate() {
            let y = (n - i) as f64 - 0.12 - s as f64 * 0.38 - 0.18;
            // backend_coord is in whole-image pixels; areas draw relative to their base.
            let (px, py) = chart.backend_coord(&(*v, y));
            let (bx, by) = right.get_base_pixel();
            let decimals = if unit == "%" { 1 } else { 2 };
            right.draw(&Text::new(
                format!("{v:.decimals$}{unit}"),
                (px + 4 - bx, py - by),
                value_style.clone(),
            ))?;
        }
    }
    let name_style = TextStyle::from((FONT, 15).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (i, name) in categories.iter().enumerate() {
        let (_, py) = chart.backend_coord(&(0.0, (n - i) as f64 - 0.5));
        let (_, by) = left.get_base_pixel();
        let py = py - by;
        // Names longer than the column are cut with an ellipsis.
        let shown: String = if name.chars().count() > 28 {
            format!("{}…", name.chars().take(27).collect::<String>())
        } else {
            name.clone()
        };
        left.draw(&Text::new(shown, (name_width - 4, py), name_style.clone()))?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

fn draw_threshold<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    labels: &[(String, Vec<(f64, i64)>)],
) -> DrawResult<DB> {
    if labels.iter().all(|l| l.1.iter().all(|p| p.1 == 0)) {
        return draw_empty(area, "no peer with a known first progress");
    }
    let y_max = labels
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.45; // headroom for the legend
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(89.5f64..100.5f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("threshold, % of pieces")
        .y_desc("confirmed downloads")
        .x_labels(11)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(label_font())
        .axis_desc_style(label_font())
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    for (i, (label, points)) in labels.iter().enumerate() {
        let c = color(i);
        let pts: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1 as f64)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}
