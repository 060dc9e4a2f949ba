//! `report --sink --plots DIR`: the sink's figures as SVG and PNG, drawn with the helpers
//! of `cli::plots` (the embedded DejaVu font, the palette, the legend, the "no data" note).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{CdfPoint, SinkReport, WEEKDAYS};
use crate::cli::plots::{color, draw_empty, draw_legend, label_font, DrawResult, FONT, SIZE};

/// One figure of the sink.
enum Figure {
    /// Vertical bars: (category, value).
    Bars {
        bars: Vec<(String, f64)>,
        x_desc: &'static str,
        y_desc: &'static str,
        empty: &'static str,
    },
    /// Step CDFs, one per named series.
    Cdf(Vec<(&'static str, Vec<CdfPoint>)>),
}

fn figures(report: &SinkReport) -> Vec<(&'static str, String, Figure)> {
    // Table I's order.
    let protocols = crate::proto::sink_classify::Protocol::ALL
        .iter()
        .map(|p| {
            let n = report.protocols.get(p.name()).copied().unwrap_or(0);
            (p.name().to_string(), n as f64)
        })
        .collect();
    let countries = report
        .countries
        .iter()
        .take(15)
        .map(|k| (k.key.clone(), k.requests as f64))
        .collect();
    let known = report.local_time_from.time_zone + report.local_time_from.longitude != 0;
    let hours = if known {
        (0..24)
            .map(|h| (h.to_string(), report.local_hour[h] as f64))
            .collect()
    } else {
        Vec::new()
    };
    let days = if known {
        (0..7)
            .map(|d| (WEEKDAYS[d].to_string(), report.local_weekday[d] as f64))
            .collect()
    } else {
        Vec::new()
    };
    vec![
        (
            "sink_protocols",
            format!("Requests by protocol ({} requests)", report.requests),
            Figure::Bars {
                bars: protocols,
                x_desc: "protocol",
                y_desc: "requests",
                empty: "no requests recorded",
            },
        ),
        (
            "sink_requests_cdf",
            format!(
                "Requests per source ({}) and per sink address",
                report.sources
            ),
            Figure::Cdf(vec![
                ("per source", report.requests_per_source.clone()),
                ("per sink address", report.requests_per_sink_address.clone()),
            ]),
        ),
        (
            "sink_countries",
            "Source countries".to_string(),
            Figure::Bars {
                bars: countries,
                x_desc: "country (? = unknown)",
                y_desc: "requests",
                empty: "no requests recorded",
            },
        ),
        (
            "sink_local_hour",
            "Requests by hour of the sender's local day".to_string(),
            Figure::Bars {
                bars: hours,
                x_desc: "local hour",
                y_desc: "requests",
                empty: "sender's local time unknown (set geo.city_db)",
            },
        ),
        (
            "sink_local_weekday",
            "Requests by day of the sender's local week".to_string(),
            Figure::Bars {
                bars: days,
                x_desc: "local weekday",
                y_desc: "requests",
                empty: "sender's local time unknown (set geo.city_db)",
            },
        ),
    ]
}

/// Writes every figure as `DIR/NAME.svg` and `DIR/NAME.png`; returns the files written.
pub fn write_plots(report: &SinkReport, dir: &Path) -> Result<Vec<PathBuf>, String> {
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded font could not be read".to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (file, title, figure) in figures(report) {
        let svg = dir.join(format!("{file}.svg"));
        {
            let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
            draw(&root, &title, &figure).map_err(|e| format!("{}: {e}", svg.display()))?;
            root.present()
                .map_err(|e| format!("{}: {e}", svg.display()))?;
        }
        written.push(svg);
        let png = dir.join(format!("{file}.png"));
        {
            let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
            draw(&root, &title, &figure).map_err(|e| format!("{}: {e}", png.display()))?;
            root.present()
                .map_err(|e| format!("{}: {e}", png.display()))?;
        }
        written.push(png);
    }
    Ok(written)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    figure: &Figure,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let body = root.titled(title, (FONT, 24).into_font().color(&BLACK))?;
    match figure {
        Figure::Bars {
            bars,
            x_desc,
            y_desc,
            empty,
        } => draw_bars(&body, bars, x_desc, y_desc, empty),
        Figure::Cdf(series) => draw_cdf(&body, series),
    }
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    bars: &[(String, f64)],
    x_desc: &str,
    y_desc: &str,
    empty: &str,
) -> DrawResult<DB> {
    if bars.iter().all(|b| b.1 == 0.0) {
        return draw_empty(area, empty);
    }
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max) * 1.1;
    let n = bars.len() as i32;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        // A segmented range has one segment per value, both ends included.
        .build_cartesian_2d((0..(n - 1).max(0)).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() + 1)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(label_font())
        .axis_desc_style(label_font())
        .light_line_style(RGBColor(0xf4, 0xf4, 0xf4))
        .draw()?;
    chart.draw_series(
        Histogram::vertical(&chart)
            .style(color(0).mix(0.85).filled())
            .margin(8)
            .data(bars.iter().enumerate().map(|(i, (_, v))| (i as i32, *v))),
    )?;
    Ok(())
}

fn draw_cdf<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[(&'static str, Vec<CdfPoint>)],
) -> DrawResult<DB> {
    if series.iter().all(|s| s.1.is_empty()) {
        return draw_empty(area, "no requests recorded");
    }
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.requests))
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..max * 1.5).log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("requests (log scale)")
        .y_desc("cumulative share, %")
        .label_style(label_font())
        .axis_desc_style(label_font())
        .light_line_style(RGBColor(0xf4, 0xf4, 0xf4))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        // A step function: flat until the next count, then up.
        let mut steps = vec![(1.0, 0.0)];
        let mut share = 0.0;
        for p in points {
            let x = p.requests.max(1) as f64;
            steps.push((x, share));
            share = p.share * 100.0;
            steps.push((x, share));
        }
        steps.push((max * 1.5, share));
        let c = color(i);
        chart
            .draw_series(LineSeries::new(steps, c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}
