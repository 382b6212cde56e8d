//! `lanes bench --plot FILE.png`: sequences/s against threads, one line per mode
//! and batch (colour: batch; solid thick line and filled dots: `lanes`; thin line
//! and hollow dots: `global-lock`). Threads are on a log₂ axis.
//!
//! plotters draws the lines; text is drawn from the public-domain 8×8 bitmap font
//! of `font8x8`, so no system font (fontconfig, freetype) is needed anywhere.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::figures::{Cell, Mode};

const W: u32 = 1100;
const H: u32 = 680;
const LEFT: i32 = 100;
const RIGHT: i32 = 250;
const TOP: i32 = 60;
const BOTTOM: i32 = 70;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotters: {e:?}")
}

/// Draws throughput vs threads for `cells` into the PNG at `path`.
pub fn throughput(path: &Path, cells: &[Cell]) -> Result<()> {
    if cells.is_empty() {
        bail!("no measurements to plot");
    }
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;

    let max_threads = cells.iter().map(|c| c.threads).max().unwrap_or(1).max(1);
    let min_threads = cells.iter().map(|c| c.threads).min().unwrap_or(1).max(1);
    let (x0, x1) = (
        (min_threads as f64).log2() - 0.25,
        (max_threads as f64).log2() + 0.25,
    );
    let y_top = cells.iter().map(|c| c.seq_per_s).fold(0.0, f64::max);
    let step = nice_step(y_top / 6.0);
    let y1 = ((y_top * 1.08) / step).ceil().max(1.0) * step;

    let area = root.margin(TOP as u32, BOTTOM as u32, LEFT as u32, RIGHT as u32);
    let mut chart = ChartBuilder::on(&area)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(err)?;
    let grid = RGBColor(225, 225, 225);
    let axis = RGBColor(60, 60, 60);

    // Grid, ticks and tick labels.
    let mut y = 0.0;
    while y <= y1 + step * 0.01 {
        chart
            .draw_series(LineSeries::new([(x0, y), (x1, y)], grid))
            .map_err(err)?;
        let (px, py) = chart.backend_coord(&(x0, y));
        let label = fmt_si(y);
        text(&root, px - 8 - width(&label, 1), py - 4, &label, 1, &axis)?;
        y += step;
    }
    let mut ticks: Vec<usize> = cells.iter().map(|c| c.threads).collect();
    ticks.sort_unstable();
    ticks.dedup();
    for &t in &ticks {
        let x = (t as f64).log2();
        chart
            .draw_series(LineSeries::new([(x, 0.0), (x, y1)], grid))
            .map_err(err)?;
        let (px, py) = chart.backend_coord(&(x, 0.0));
        let label = t.to_string();
        text(&root, px - width(&label, 1) / 2, py + 8, &label, 1, &axis)?;
    }
    chart
        .draw_series(LineSeries::new([(x0, 0.0), (x1, 0.0)], axis))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new([(x0, 0.0), (x0, y1)], axis))
        .map_err(err)?;

    // One line per (mode, batch, dtype); a color per (batch, dtype).
    let mut series: Vec<(usize, &str)> = cells.iter().map(|c| (c.batch, c.dtype)).collect();
    series.sort_unstable();
    series.dedup();
    let several_dtypes = series.iter().any(|s| s.1 != series[0].1);
    let mut legend = Vec::new();
    for mode in [Mode::Lanes, Mode::GlobalLock] {
        for (bi, &(batch, dtype)) in series.iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = cells
                .iter()
                .filter(|c| c.mode == mode && c.batch == batch && c.dtype == dtype)
                .map(|c| ((c.threads as f64).log2(), c.seq_per_s))
                .collect();
            if pts.is_empty() {
                continue;
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = PALETTE[bi % PALETTE.len()];
            let (stroke, filled) = match mode {
                Mode::Lanes => (3, true),
                Mode::GlobalLock => (1, false),
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(stroke)))
                .map_err(err)?;
            chart
                .draw_series(pts.iter().map(|&p| {
                    let style = if filled {
                        color.filled()
                    } else {
                        color.stroke_width(2)
                    };
                    Circle::new(p, 5, style)
                }))
                .map_err(err)?;
            let name = if several_dtypes {
                format!("{mode} batch {batch} {dtype}")
            } else {
                format!("{mode} batch {batch}")
            };
            legend.push((name, color, stroke, filled));
        }
    }

    // Title, axis names, legend.
    let device = &cells[0].device;
    let title = format!(
        "lanes bench: sequences/s vs threads ({device}, {} tokens)",
        cells[0].seq
    );
    text(&root, LEFT, 20, &title, 2, &BLACK)?;
    text(&root, LEFT - 90, TOP - 22, "seq/s", 1, &axis)?;
    let xl = "threads (log2 scale)";
    text(
        &root,
        LEFT + (W as i32 - LEFT - RIGHT) / 2 - width(xl, 1) / 2,
        H as i32 - BOTTOM + 34,
        xl,
        1,
        &axis,
    )?;
    let lx = W as i32 - RIGHT + 20;
    for (i, (label, color, stroke, filled)) in legend.iter().enumerate() {
        let ly = TOP + 10 + i as i32 * 22;
        root.draw(&PathElement::new(
            [(lx, ly + 4), (lx + 30, ly + 4)],
            color.stroke_width(*stroke),
        ))
        .map_err(err)?;
        let style = if *filled {
            color.filled()
        } else {
            color.stroke_width(2)
        };
        root.draw(&Circle::new((lx + 15, ly + 4), 5, style))
            .map_err(err)?;
        text(&root, lx + 40, ly, label, 1, &BLACK)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// 1, 2 or 5 × 10ⁿ, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= raw {
            return m * mag;
        }
    }
    10.0 * mag
}

/// `1500` → `1.5k`, `2000000` → `2M`.
fn fmt_si(v: f64) -> String {
    let (x, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = format!("{x:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s}{unit}")
}

/// Width in pixels of `s` at `scale`.
fn width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 8 * scale
}

/// Draws `s` with its top-left corner at (`x`, `y`), each font pixel a
/// `scale`×`scale` square. Characters outside ASCII are drawn as `?`.
fn text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    x: i32,
    y: i32,
    s: &str,
    scale: i32,
    color: &RGBColor,
) -> Result<()> {
    for (i, ch) in s.chars().enumerate() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let gx = x + i as i32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let px = gx + col * scale;
                    let py = y + row as i32 * scale;
                    if scale == 1 {
                        area.draw_pixel((px, py), color).map_err(err)?;
                    } else {
                        area.draw(&Rectangle::new(
                            [(px, py), (px + scale - 1, py + scale - 1)],
                            color.filled(),
                        ))
                        .map_err(err)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(420.0), 500.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn si_labels_are_short() {
        assert_eq!(fmt_si(0.0), "0");
        assert_eq!(fmt_si(1500.0), "1.5k");
        assert_eq!(fmt_si(2_000_000.0), "2M");
        assert_eq!(fmt_si(250.0), "250");
    }

    #[test]
    fn a_plot_is_written_as_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let cell = |mode, threads, batch, v| Cell {
            kind: "model",
            mode,
            dtype: "float32",
            device: "cpu".into(),
            threads,
            batch,
            seq: 8,
            seq_per_s: v,
            p50_ms: 1.0,
            p99_ms: 2.0,
            efficiency: None,
            calls: 1,
            seconds: 1.0,
            source: "test",
        };
        let cells = vec![
            cell(Mode::Lanes, 1, 1, 100.0),
            cell(Mode::Lanes, 2, 1, 190.0),
            cell(Mode::GlobalLock, 1, 1, 100.0),
            cell(Mode::GlobalLock, 2, 1, 101.0),
            cell(Mode::Lanes, 1, 8, 400.0),
            cell(Mode::Lanes, 2, 8, 700.0),
        ];
        throughput(&path, &cells).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
