//! What a simulation reports: `report.json` (byte-identical for the same files and seed), `report.md`, and `timeline.svg` (plotters).

use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

use super::expect::Judged;
use super::scenario::Scenario;

/// The registry's health at one virtual instant (None where the stores were down).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub t_s: i64,
    /// Quarantined releases and packages.
    pub quarantined: Option<i64>,
    pub deprecated: Option<i64>,
    /// Mean quality-model score over every scored package.
    pub mean_quality: Option<f64>,
    /// Failed installs over all installs of the last hour.
    pub install_failure_ratio: Option<f64>,
    pub open_findings: Option<i64>,
    /// Executed remediations so far, by action.
    pub actions: Option<BTreeMap<String, i64>>,
}

/// A line of the timeline: its name, colour, stroke width and points (virtual hours, value).
type Series = (String, RGBColor, u32, Vec<(f64, f64)>);

/// Colours of the actions' lines, in the order their actions first appear.
const ACTION_COLOURS: [RGBColor; 6] = [
    GREEN,
    MAGENTA,
    CYAN,
    RGBColor(255, 140, 0),
    RGBColor(120, 60, 0),
    RGBColor(90, 90, 90),
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub file: String,
    pub seed: u64,
    pub duration_s: i64,
    pub tick_s: i64,
    pub cycles: u64,
    /// Cycles that ended early because a stage failed (an outage, say).
    pub failed_cycles: u64,
    pub passed: usize,
    pub failed: usize,
    pub expectations: Vec<Judged>,
    pub notes: Vec<String>,
    pub timeline: Vec<Sample>,
    /// The scenario's events (virtual seconds, label), marked on the timeline's chart; not in
    /// report.json, which the scenario file already describes.
    #[serde(skip)]
    pub markers: Vec<(i64, String)>,
}

impl Report {
    pub fn new(
        s: &Scenario,
        cycles: u64,
        failed_cycles: u64,
        expectations: Vec<Judged>,
        timeline: Vec<Sample>,
        notes: Vec<String>,
    ) -> Self {
        let passed = expectations.iter().filter(|j| j.pass).count();
        Self {
            scenario: s.name.clone(),
            file: s
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            seed: s.seed,
            duration_s: s.duration_ms / 1000,
            tick_s: s.tick_ms / 1000,
            cycles,
            failed_cycles,
            failed: expectations.len() - passed,
            passed,
            expectations,
            notes,
            timeline,
            markers: s
                .events
                .iter()
                .map(|e| (e.at_ms / 1000, e.kind.marker()))
                .collect(),
        }
    }

    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_markdown(&self) -> String {
        let mut md = format!(
            "# Simulation `{}`\n\n{} ({} s of virtual time, a cycle every {} s, seed {}): {} cycles, {} ended early.\n\n**{} passed, {} failed.**\n\n| | line | expectation | evidence |\n| --- | --- | --- | --- |\n",
            self.scenario,
            self.file,
            self.duration_s,
            self.tick_s,
            self.seed,
            self.cycles,
            self.failed_cycles,
            self.passed,
            self.failed
        );
        for j in &self.expectations {
            md.push_str(&format!(
                "| {} | {} | {} {} | {} |\n",
                if j.pass { "pass" } else { "**FAIL**" },
                j.line,
                j.kind,
                j.expectation.replace('|', "\\|"),
                j.evidence.replace('|', "\\|")
            ));
        }
        if !self.notes.is_empty() {
            md.push_str("\n## Notes\n\n");
            for n in &self.notes {
                md.push_str(&format!("- {n}\n"));
            }
        }
        md.push_str("\n![timeline](timeline.svg)\n");
        md
    }

    /// Draws the timeline: above, counts (quarantined, deprecated, open findings, executed
    /// actions by kind); below, shares in percent (mean quality, install failures).
    pub fn draw_timeline(&self, path: &Path) -> anyhow::Result<()> {
        let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
        // The registry's state is drawn wide, the actions narrow on top of it: where the count of
        // quarantined releases equals the quarantines executed, both lines still show.
        let mut counts: Vec<Series> = vec![
            (
                "quarantined".into(),
                RED,
                6,
                self.points(|s| s.quarantined.map(|v| v as f64)),
            ),
            (
                "deprecated".into(),
                BLACK,
                6,
                self.points(|s| s.deprecated.map(|v| v as f64)),
            ),
            (
                "open findings".into(),
                BLUE,
                2,
                self.points(|s| s.open_findings.map(|v| v as f64)),
            ),
        ];
        let kinds: std::collections::BTreeSet<&String> = self
            .timeline
            .iter()
            .filter_map(|s| s.actions.as_ref())
            .flat_map(|a| a.keys())
            .collect();
        for (i, kind) in kinds.into_iter().enumerate() {
            counts.push((
                format!("{kind} (executed)"),
                ACTION_COLOURS[i % ACTION_COLOURS.len()],
                2,
                self.points(|s| {
                    s.actions
                        .as_ref()
                        .map(|a| a.get(kind).copied().unwrap_or(0) as f64)
                }),
            ));
        }
        let shares: Vec<Series> = vec![
            (
                "mean quality".into(),
                GREEN,
                2,
                self.points(|s| s.mean_quality),
            ),
            (
                "install failures (%)".into(),
                RED,
                2,
                self.points(|s| s.install_failure_ratio.map(|r| r * 100.0)),
            ),
        ];
        let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let root = root
            .titled(
                &format!("{}: registry health over virtual time", self.scenario),
                ("sans-serif", 20),
            )
            .map_err(|x| e(&x))?;
        let (top, bottom) = root.split_vertically(360);
        // Counts are whole: the axis runs to a whole number and labels only whole numbers.
        let y_max = counts
            .iter()
            .flat_map(|(_, _, _, p)| p.iter().map(|(_, y)| *y))
            .fold(1.0f64, f64::max);
        let y_top = (y_max * 1.15).ceil().max(2.0);
        self.panel(&top, counts, 0.0..y_top, "count", true)?;
        self.panel(&bottom, shares, 0.0..105.0, "percent", false)?;
        root.present().map_err(|x| e(&x))?;
        Ok(())
    }

    fn panel(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        series: Vec<Series>,
        y: std::ops::Range<f64>,
        y_desc: &str,
        markers: bool,
    ) -> anyhow::Result<()> {
        let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
        let x_max = self
            .timeline
            .last()
            .map(|s| s.t_s as f64 / 3600.0)
            .unwrap_or(1.0)
            .max(0.01);
        let y_top = y.end;
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..x_max, y)
            .map_err(|x| e(&x))?;
        let whole = |v: &f64| {
            if v.fract().abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc("virtual hours")
            .y_desc(y_desc)
            .y_labels((y_top as usize + 1).clamp(2, 11))
            .y_label_formatter(&whole)
            .x_label_formatter(&|v| format!("{v}"))
            .draw()
            .map_err(|x| e(&x))?;
        if markers {
            self.draw_markers(&mut chart, y_top)?;
        }
        for (name, color, width, points) in series {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(width)))
                .map_err(|x| e(&x))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
        Ok(())
    }

    /// The scenario's events: a dashed grey line at each, labelled (events at one instant share
    /// a label, cut at 48 characters; labels step down so that neighbours do not overlap).
    fn draw_markers<DB: DrawingBackend>(
        &self,
        chart: &mut ChartContext<
            '_,
            DB,
            Cartesian2d<
                plotters::coord::types::RangedCoordf64,
                plotters::coord::types::RangedCoordf64,
            >,
        >,
        y_top: f64,
    ) -> anyhow::Result<()> {
        let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
        let mut at: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
        for (t, label) in &self.markers {
            at.entry(*t).or_default().push(label);
        }
        let grey = RGBColor(150, 150, 150);
        for (i, (t, labels)) in at.iter().enumerate() {
            let x = *t as f64 / 3600.0;
            let mut text = labels.join(", ");
            if text.chars().count() > 48 {
                text = text.chars().take(47).collect::<String>() + "…";
            }
            let steps = [0.97, 0.88, 0.79, 0.70];
            let y = y_top * steps[i % steps.len()];
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x, 0.0), (x, y_top)],
                    4,
                    3,
                    grey.stroke_width(1),
                ))
                .map_err(|x| e(&x))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (x, y),
                    ("sans-serif", 11).into_font().color(&RGBColor(80, 80, 80)),
                )))
                .map_err(|x| e(&x))?;
        }
        Ok(())
    }

    fn points(&self, value: impl Fn(&Sample) -> Option<f64>) -> Vec<(f64, f64)> {
        self.timeline
            .iter()
            .filter_map(|s| value(s).map(|v| (s.t_s as f64 / 3600.0, v)))
            .collect()
    }

    /// Writes report.json, report.md and timeline.svg into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), self.to_json())?;
        std::fs::write(dir.join("report.md"), self.to_markdown())?;
        self.draw_timeline(&dir.join("timeline.svg"))
    }
}
