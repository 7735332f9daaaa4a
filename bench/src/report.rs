//! Results: one row per figure, vdisk next to its anchor, with the ratio and the bar.

use crate::qemu::Qemu;
use crate::Opts;
use serde::Serialize;

#[derive(Serialize)]
pub struct Row {
    pub what: String,
    pub unit: String,
    pub vdisk: f64,
    pub anchor_name: String,
    pub anchor: Option<f64>,
    /// vdisk relative to the anchor, oriented so > 1 means vdisk is better.
    pub ratio: Option<f64>,
    pub bar: String,
    pub verdict: Option<bool>,
}

#[derive(Serialize)]
pub struct Report {
    pub machine: String,
    pub qemu: String,
    pub quick: bool,
    pub image_bytes: u64,
    pub rows: Vec<Row>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{n} cores, {cpu}")
}

impl Report {
    pub fn new(opts: &Opts, q: &Qemu) -> Report {
        Report {
            machine: machine(),
            qemu: q.version.clone(),
            quick: opts.quick,
            image_bytes: opts.image_size(),
            rows: Vec::new(),
        }
    }

    /// A throughput-like figure (higher is better).
    #[allow(clippy::too_many_arguments)]
    pub fn higher(
        &mut self,
        what: &str,
        unit: &str,
        vdisk: f64,
        anchor_name: &str,
        anchor: Option<f64>,
        bar: &str,
        min_ratio: Option<f64>,
    ) {
        let ratio = anchor.map(|a| vdisk / a);
        self.push(
            what,
            unit,
            vdisk,
            anchor_name,
            anchor,
            ratio,
            bar,
            min_ratio,
        );
    }

    /// A latency-like figure (lower is better).
    #[allow(clippy::too_many_arguments)]
    pub fn lower(
        &mut self,
        what: &str,
        unit: &str,
        vdisk: f64,
        anchor_name: &str,
        anchor: Option<f64>,
        bar: &str,
        min_ratio: Option<f64>,
    ) {
        let ratio = anchor.map(|a| a / vdisk);
        self.push(
            what,
            unit,
            vdisk,
            anchor_name,
            anchor,
            ratio,
            bar,
            min_ratio,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        what: &str,
        unit: &str,
        vdisk: f64,
        anchor_name: &str,
        anchor: Option<f64>,
        ratio: Option<f64>,
        bar: &str,
        min_ratio: Option<f64>,
    ) {
        let verdict = match (ratio, min_ratio) {
            (Some(r), Some(m)) => Some(r >= m),
            _ => None,
        };
        let row = Row {
            what: what.into(),
            unit: unit.into(),
            vdisk,
            anchor_name: anchor_name.into(),
            anchor,
            ratio,
            bar: bar.into(),
            verdict,
        };
        eprintln!("  {}", fmt_row(&row));
        self.rows.push(row);
    }

    /// Record a check against an absolute bar (no anchor).
    pub fn absolute(&mut self, what: &str, unit: &str, vdisk: f64, bar: &str, ok: bool) {
        let row = Row {
            what: what.into(),
            unit: unit.into(),
            vdisk,
            anchor_name: String::new(),
            anchor: None,
            ratio: None,
            bar: bar.into(),
            verdict: Some(ok),
        };
        eprintln!("  {}", fmt_row(&row));
        self.rows.push(row);
    }

    pub fn print(&self) {
        println!();
        println!(
            "machine: {}; {}; image {} MiB{}",
            self.machine,
            self.qemu,
            self.image_bytes >> 20,
            if self.quick { " (--quick)" } else { "" }
        );
        println!();
        println!("| what | vdisk | anchor | ratio | bar | meets |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} {} | {} | {} | {} | {} |",
                r.what,
                fmt_num(r.vdisk),
                r.unit,
                r.anchor
                    .map(|a| format!("{}: {} {}", r.anchor_name, fmt_num(a), r.unit))
                    .unwrap_or_else(|| r.anchor_name.clone()),
                r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_default(),
                r.bar,
                match r.verdict {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                }
            );
        }
    }
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn fmt_row(r: &Row) -> String {
    format!(
        "{}: vdisk {} {}{}{}",
        r.what,
        fmt_num(r.vdisk),
        r.unit,
        r.anchor
            .map(|a| format!(", {} {} {}", r.anchor_name, fmt_num(a), r.unit))
            .unwrap_or_default(),
        r.ratio
            .map(|x| format!(", ratio {x:.2}"))
            .unwrap_or_default()
    )
}
