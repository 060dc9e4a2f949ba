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

/// The darker shade of a series' colour its companion series (scrape-reported, new addresses)
/// is drawn in: the same hue, told apart even where the two lines coincide.
fn shade(c: RGBColor) -> RGBColor {
    let dark = |v: u8| (u16::from(v) * 3 / 5) as u8;
    RGBColor(dark(c.0), dark(c.1), dark(c.2))
}

/// Markers per line series: a few, at x positions staggered between series so that series
/// lying on top of each other (two trackers giving the same peers, a label holding every
/// torrent) each still show their own.
const MARKERS_PER_SERIES: usize = 8;

/// Where the markers of series `slot` of `slots` go on the line through `points` (sorted by
/// x): evenly over `x_range`, each series shifted by its slot, on the line (interpolated
/// between its points), none beyond the line's ends.
fn marker_points(
    points: &[(f64, f64)],
    slot: usize,
    slots: usize,
    x_range: (f64, f64),
) -> Vec<(f64, f64)> {
    let step = (x_range.1 - x_range.0) / MARKERS_PER_SERIES as f64;
    (0..MARKERS_PER_SERIES)
        .filter_map(|k| {
            let x = x_range.0 + step * (k as f64 + (slot as f64 + 0.5) / slots.max(1) as f64);
            let after = points.iter().position(|p| p.0 >= x)?;
            let b = points[after];
            if after == 0 {
                return (b.0 == x).then_some(b);
            }
            let a = points[after - 1];
            let t = if b.0 > a.0 {
                (x - a.0) / (b.0 - a.0)
            } else {
                1.0
            };
            Some((x, a.1 + (b.1 - a.1) * t))
        })
        .collect()
}

/// One series of a line pair: its legend text and points (x ascending).
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

/// Draws a main series (solid, filled circles) and its companion (dashed, darker shade, hollow
/// squares) in colour `c`, markers in slots `2 * pair` and `2 * pair + 1` of `slots`, each
/// with a legend entry showing its line and marker.
fn draw_line_pair<
    'a,
    DB: DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate<From = (f64, f64)>,
>(
    chart: &mut ChartContext<'a, DB, CT>,
    main: Line,
    companion: Line,
    c: RGBColor,
    (pair, slots): (usize, usize),
    x_range: (f64, f64),
) -> DrawResult<DB> {
    let dark = shade(c);
    if !main.points.is_empty() {
        let markers = marker_points(&main.points, 2 * pair, slots, x_range);
        chart
            .draw_series(LineSeries::new(main.points, c.stroke_width(2)))?
            .label(main.label)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (20, 0)], c.stroke_width(2))
                    + Circle::new((10, 0), 4, c.filled())
            });
        chart.draw_series(
            markers
                .into_iter()
                .map(|p| EmptyElement::at(p) + Circle::new((0, 0), 4, c.filled())),
        )?;
    }
    if !companion.points.is_empty() {
        let markers = marker_points(&companion.points, 2 * pair + 1, slots, x_range);
        chart
            .draw_series(DashedLineSeries::new(
                companion.points,
                7,
                4,
                dark.stroke_width(2),
            ))?
            .label(companion.label)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (6, 0)], dark.stroke_width(2))
                    + PathElement::new(vec![(14, 0), (20, 0)], dark.stroke_width(2))
                    + Rectangle::new([(6, -4), (14, 4)], dark.stroke_width(2))
            });
        chart.draw_series(markers.into_iter().map(|p| {
            EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], dark.stroke_width(2))
        }))?;
    }
    Ok(())
}

/// The unit of a time axis: minutes for scans shorter than two hours, else hours.
#[derive(Clone, Copy)]
struct TimeUnit {
    ms: f64,
    name: &'static str,
}

impl TimeUnit {
    fn for_window(ms: i64) -> TimeUnit {
        if ms < 2 * 3_600_000 {
            TimeUnit {
                ms: 60_000.0,
                name: "minutes",
            }
        } else {
            TimeUnit {
                ms: 3_600_000.0,
                name: "hours",
            }
        }
    }

    fn axis(self) -> String {
        format!("{} since the scan started", self.name)
    }
}

/// Bars shown per bar chart.
const MAX_BARS: usize = 15;

/// A named series of points.
type Named<P> = (String, Vec<P>);
/// (time, received, new).
type SourcePoint = (f64, i64, i64);
/// (time, confirmed, reported).
type DownloadPoint = (f64, i64, Option<i64>);

/// One figure's data, ready to draw.
enum Figure {
    /// Figure 5.1: (bucket start ms, contacts).
    Gaps(Vec<(i64, i64)>),
    /// Figure 5.3: per source, (time in `TimeUnit`s, received, new).
    Discovery(Vec<Named<SourcePoint>>, TimeUnit),
    /// Figure 5.4: per label, (time in `TimeUnit`s, confirmed, reported).
    Downloads(Vec<Named<DownloadPoint>>, TimeUnit),
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
    let unit = TimeUnit::for_window(report.window.end.unwrap_or(start) - start);
    let time = |at: i64| (at - start) as f64 / unit.ms;
    let labels: Vec<String> = report
        .study
        .labels
        .iter()
        .map(|l| l.label.clone())
        .collect();
    let group = main_group(&labels);

    let mut sources: Vec<Named<SourcePoint>> = Vec::new();
    for p in &data.discovery {
        let point = (time(p.at + data.bucket_ms / 2), p.count, p.new);
        match sources.iter_mut().find(|s| s.0 == p.key) {
            Some(s) => s.1.push(point),
            None => sources.push((p.key.clone(), vec![point])),
        }
    }
    let mut downloads: Vec<Named<DownloadPoint>> = Vec::new();
    for p in &data.downloads {
        let point = (time(p.at), p.confirmed, p.reported);
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
            figure: Figure::Discovery(sources, unit),
        },
        Plot {
            file: "fig5_4_downloads",
            title: "Confirmed and scrape-reported downloads per torrent set (fig. 5.4)".into(),
            figure: Figure::Downloads(downloads, unit),
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
    register_font()?;
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

fn register_font() -> Result<(), String> {
    // Registering twice is harmless (the first font stays); the bytes are DejaVu Sans.
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded font could not be read".to_string())
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
        Figure::Discovery(s, unit) => draw_discovery(&body, s, *unit),
        Figure::Downloads(s, unit) => draw_downloads(&body, s, *unit),
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
        // Above 100: the cumulative line reaches 100 % and stays there below the plot's top.
        .set_secondary_coord(0f64..x_max, 0f64..105f64);
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
        .y_label_formatter(&|v| {
            if *v > 100.0 {
                String::new()
            } else {
                format!("{v:.0}")
            }
        })
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
    let mut cdf: Vec<(f64, f64)> = shares
        .iter()
        .map(|(x, y)| {
            cumulative += y;
            (x + 0.1, cumulative)
        })
        .collect();
    // Flat to the axis' end: the share reached stays visible past the last bucket with data.
    cdf.push((x_max, cumulative));
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
    unit: TimeUnit,
) -> DrawResult<DB> {
    if sources.is_empty() {
        return draw_empty(area, "no discovery requests recorded");
    }
    let x_max = sources
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(0.01)
        * 1.02;
    let y_max = sources
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.4; // headroom for the legend
               // A little room below zero: a series at 0 is drawn above the x axis, not on it.
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, -y_max * 0.03..y_max)?;
    chart
        .configure_mesh()
        .x_desc(unit.axis())
        .y_desc("addresses per time bucket")
        .y_label_formatter(&|v| {
            if *v < 0.0 {
                String::new()
            } else {
                format!("{v:.0}")
            }
        })
        .label_style(label_font())
        .axis_desc_style(label_font())
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    for (i, (source, points)) in sources.iter().enumerate() {
        draw_line_pair(
            &mut chart,
            Line {
                label: format!("{source}: received"),
                points: points.iter().map(|p| (p.0, p.1 as f64)).collect(),
            },
            Line {
                label: format!("{source}: new"),
                points: points.iter().map(|p| (p.0, p.2 as f64)).collect(),
            },
            color(i),
            (i, 2 * sources.len()),
            (0.0, x_max),
        )?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

fn draw_downloads<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    labels: &[Named<DownloadPoint>],
    unit: TimeUnit,
) -> DrawResult<DB> {
    // The log axis starts at 1: counts of 0 are not drawn.
    let lines: Vec<(Line, Line)> = labels
        .iter()
        .map(|(label, points)| {
            (
                Line {
                    label: format!("{label}: confirmed"),
                    points: points
                        .iter()
                        .filter(|p| p.1 > 0)
                        .map(|p| (p.0, p.1 as f64))
                        .collect(),
                },
                Line {
                    label: format!("{label}: reported by scrape"),
                    points: points
                        .iter()
                        .filter_map(|p| p.2.filter(|r| *r > 0).map(|r| (p.0, r as f64)))
                        .collect(),
                },
            )
        })
        .collect();
    if lines
        .iter()
        .all(|l| l.0.points.is_empty() && l.1.points.is_empty())
    {
        return draw_empty(
            area,
            "no confirmed download yet, and no scrape-reported download since the first scrape",
        );
    }
    let x_max = labels
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(0.01)
        * 1.02;
    let y_max = lines
        .iter()
        .flat_map(|l| l.0.points.iter().chain(&l.1.points).map(|p| p.1))
        .fold(10.0, f64::max)
        * 1.5;
    // Reported counts are often ten times ours: a log axis shows both.
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, (1f64..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(unit.axis())
        .y_desc("downloads since the scan started (log)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(label_font())
        .axis_desc_style(label_font())
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    let slots = 2 * lines.len();
    for (i, (confirmed, reported)) in lines.into_iter().enumerate() {
        draw_line_pair(
            &mut chart,
            confirmed,
            reported,
            color(i),
            (i, slots),
            (0.0, x_max),
        )?;
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
    // The legend gets a row of its own above the bars: inside the plot it would cover the
    // longest bars and their values.
    let (legend_row, right) = right.split_vertically(LEGEND_ROW);
    draw_bar_legend(&legend_row, series)?;
    let mut chart = ChartBuilder::on(&right)
        .margin(20)
        .margin_top(4)
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
    for (s, (_, values)) in series.iter().enumerate() {
        let c = color(s);
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            let top = (n - i) as f64 - 0.12 - s as f64 * 0.38;
            Rectangle::new([(0.0, top - 0.36), (*v, top)], c.filled())
        }))?;
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
    Ok(())
}

/// Height of the bar charts' legend row, pixels.
const LEGEND_ROW: u32 = 30;

/// The bar charts' legend: a swatch and the name of each series, in one row from the left.
fn draw_bar_legend<DB: DrawingBackend>(
    row: &DrawingArea<DB, Shift>,
    series: &[(String, Vec<f64>); 2],
) -> DrawResult<DB> {
    let style = label_font().pos(Pos::new(HPos::Left, VPos::Center));
    let y = LEGEND_ROW as i32 / 2 + 4;
    let mut x = 26;
    for (s, (name, _)) in series.iter().enumerate() {
        row.draw(&Rectangle::new(
            [(x, y - 6), (x + 16, y + 6)],
            color(s).filled(),
        ))?;
        row.draw(&Text::new(name.clone(), (x + 22, y), style.clone()))?;
        let (width, _) = row.estimate_text_size(name, &style)?;
        x += 22 + width as i32 + 30;
    }
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
        // A little room below zero: points at 0 are drawn above the x axis, not on it.
        .build_cartesian_2d(89.5f64..100.5f64, -y_max * 0.03..y_max)?;
    chart
        .configure_mesh()
        .x_desc("threshold, % of pieces")
        .y_desc("confirmed downloads")
        .x_labels(11)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if *v < 0.0 {
                String::new()
            } else {
                format!("{v:.0}")
            }
        })
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
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (20, 0)], c.stroke_width(2))
                    + Circle::new((10, 0), 4, c.stroke_width(2))
            });
        // Rings, the first series' largest: series lying on each other (a label holding every
        // torrent and "(all)") each still show.
        let radius = 4 + 3 * (labels.len() - 1 - i) as i32;
        chart.draw_series(
            pts.iter()
                .map(|p| Circle::new(*p, radius, c.stroke_width(2))),
        )?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders `figure` as the PNG would be, and counts the pixels of each colour in the left
    /// half of the image (the legends sit on the right).
    fn pixels_left_half(figure: Figure, colours: &[RGBColor]) -> Vec<usize> {
        register_font().unwrap();
        let plot = Plot {
            file: "test",
            title: "test".into(),
            figure,
        };
        let (w, h) = SIZE;
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
            draw(&root, &plot).unwrap();
            root.present().unwrap();
        }
        colours
            .iter()
            .map(|c| {
                buf.chunks(3)
                    .enumerate()
                    .filter(|(i, px)| (*i as u32 % w) < w / 2 && **px == [c.0, c.1, c.2])
                    .count()
            })
            .collect()
    }

    fn svg(figure: Figure) -> String {
        register_font().unwrap();
        let plot = Plot {
            file: "test",
            title: "test".into(),
            figure,
        };
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
            draw(&root, &plot).unwrap();
            root.present().unwrap();
        }
        out
    }

    const MINUTES: TimeUnit = TimeUnit {
        ms: 60_000.0,
        name: "minutes",
    };

    #[test]
    fn every_download_series_shows_even_where_lines_coincide() {
        // Two torrent sets with the same numbers, and reported equal to confirmed: every line
        // lies on another. Each of the four series must still have pixels of its own colour.
        let points: Vec<DownloadPoint> = (0..200)
            .map(|i| (i as f64 * 0.1, 1 + i / 4, Some(1 + i / 4)))
            .collect();
        let figure = Figure::Downloads(
            vec![("a".into(), points.clone()), ("b".into(), points)],
            MINUTES,
        );
        let colours = [color(0), shade(color(0)), color(1), shade(color(1))];
        let counts = pixels_left_half(figure, &colours);
        for (c, n) in colours.iter().zip(&counts) {
            assert!(*n >= 40, "series colour {c:?}: {n} pixels ({counts:?})");
        }
    }

    #[test]
    fn download_legend_names_both_series_of_each_set() {
        let points: Vec<DownloadPoint> = (0..10).map(|i| (i as f64, i, Some(3 * i))).collect();
        let text = svg(Figure::Downloads(vec![("<1GB".into(), points)], MINUTES));
        assert!(text.contains("&lt;1GB: confirmed"), "{text}");
        assert!(text.contains("&lt;1GB: reported by scrape"));
        assert!(text.contains("minutes since the scan started"));
        // The reported series is dashed in the darker shade: many short polylines.
        let dark = format!(
            "stroke=\"#{:02X}{:02X}{:02X}\"",
            shade(color(0)).0,
            shade(color(0)).1,
            shade(color(0)).2
        );
        assert!(text.matches(&dark).count() > 20, "{text}");
    }

    #[test]
    fn downloads_without_any_count_say_so() {
        let points: Vec<DownloadPoint> = (0..10).map(|i| (i as f64, 0, None)).collect();
        let text = svg(Figure::Downloads(vec![("(none)".into(), points)], MINUTES));
        assert!(text.contains("no confirmed download yet"), "{text}");
    }

    #[test]
    fn sources_with_the_same_addresses_both_show() {
        // Two trackers of one swarm hand out the same addresses; the second tracker's lines
        // lie on the first's, and "new" is 0 along the x axis.
        let points: Vec<SourcePoint> = (0..6).map(|i| (i as f64, 120, 0)).collect();
        let figure = Figure::Discovery(
            vec![
                ("tracker_http".into(), points.clone()),
                ("tracker_udp".into(), points),
            ],
            MINUTES,
        );
        let colours = [color(0), shade(color(0)), color(1), shade(color(1))];
        let counts = pixels_left_half(figure, &colours);
        for (c, n) in colours.iter().zip(&counts) {
            assert!(*n >= 40, "series colour {c:?}: {n} pixels ({counts:?})");
        }
    }

    #[test]
    fn markers_are_staggered_and_on_the_line() {
        let line = [(0.0, 0.0), (10.0, 100.0)];
        let first = marker_points(&line, 0, 2, (0.0, 10.0));
        let second = marker_points(&line, 1, 2, (0.0, 10.0));
        assert_eq!(first.len(), MARKERS_PER_SERIES);
        assert_eq!(second.len(), MARKERS_PER_SERIES);
        for (a, b) in first.iter().zip(&second) {
            assert!(b.0 > a.0, "{first:?} {second:?}");
            assert!((a.1 - a.0 * 10.0).abs() < 1e-9 && (b.1 - b.0 * 10.0).abs() < 1e-9);
        }
        // None beyond the line's ends.
        assert!(marker_points(&[(4.0, 1.0), (5.0, 1.0)], 0, 1, (0.0, 10.0))
            .iter()
            .all(|p| (4.0..=5.0).contains(&p.0)));
        assert!(marker_points(&[], 0, 1, (0.0, 10.0)).is_empty());
    }

    #[test]
    fn time_axis_is_in_minutes_for_short_scans() {
        assert_eq!(TimeUnit::for_window(60_000).name, "minutes");
        assert_eq!(TimeUnit::for_window(3 * 3_600_000).name, "hours");
    }
}
