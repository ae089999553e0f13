//! Rendering measurements: a text table, `docs/benchmarks.md` and an SVG chart.

use std::fmt::Write;
use std::time::Duration;

use crate::contenders::Contender;
use crate::workload::Workload;

/// Latencies of one contender on one workload at one round-trip time.
#[derive(Debug, Clone)]
pub struct Latency {
    /// The workload.
    pub workload: Workload,
    /// The nominal round-trip time the proxy adds.
    pub rtt: Duration,
    /// The contender.
    pub contender: Contender,
    /// Median latency per transaction.
    pub median: Duration,
    /// 99th-percentile latency per transaction.
    pub p99: Duration,
    /// Effective round trips: (median at this RTT - median at RTT 0) / measured RTT.
    pub round_trips: Option<f64>,
}

/// The hot-row measurement of one contender.
#[derive(Debug, Clone)]
pub struct HotRow {
    /// The contender.
    pub contender: Contender,
    /// Committed transactions per second.
    pub tps: f64,
    /// 99th-percentile latency, pool wait included.
    pub p99: Duration,
    /// Median latency, pool wait included.
    pub median: Duration,
    /// Transactions that failed.
    pub failed: usize,
}

/// Client-side CPU cost.
#[derive(Debug, Clone)]
pub struct Cpu {
    /// What was measured.
    pub what: &'static str,
    /// Nanoseconds of CPU per statement.
    pub nanos_per_statement: f64,
}

/// Everything one run of `compare` measured, and where.
#[derive(Debug, Clone)]
pub struct Report {
    /// `quick` or `full`.
    pub mode: &'static str,
    /// Samples per latency figure.
    pub samples: usize,
    /// The machine, versions and date, one line each.
    pub environment: Vec<String>,
    /// Measured round-trip time added by the proxy at each nominal RTT.
    pub measured_rtts: Vec<(Duration, Duration)>,
    /// Latency figures.
    pub latencies: Vec<Latency>,
    /// Hot-row figures, with the RTT they ran at.
    pub hot_row: (Duration, Duration, Vec<HotRow>),
    /// CPU figures.
    pub cpu: Vec<Cpu>,
    /// The single diesel-async query section, as markdown
    /// ([`single_query`](crate::single_query)).
    pub single_query: String,
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

impl Report {
    fn latency(&self, workload: Workload, rtt: Duration, contender: Contender) -> Option<&Latency> {
        self.latencies.iter().find(|l| l.workload == workload && l.rtt == rtt && l.contender == contender)
    }

    /// pgbatch's median over `contender`'s, for one workload and RTT.
    fn ratio(&self, workload: Workload, rtt: Duration, contender: Contender) -> String {
        match (self.latency(workload, rtt, Contender::Pgbatch), self.latency(workload, rtt, contender)) {
            (Some(ours), Some(theirs)) => format!("{:.2}", ours.median.as_secs_f64() / theirs.median.as_secs_f64()),
            _ => "-".to_owned(),
        }
    }

    fn rtts(&self) -> Vec<Duration> {
        let mut rtts: Vec<Duration> = self.latencies.iter().map(|l| l.rtt).collect();
        rtts.sort();
        rtts.dedup();
        rtts
    }

    /// The latency table, one row per workload, RTT and contender.
    pub fn latency_table(&self) -> String {
        let mut out = String::from(
            "| workload | RTT | contender | median ms | p99 ms | effective round trips | pgbatch / this |\n|---|---|---|---|---|---|---|\n",
        );
        for workload in Workload::ALL {
            for rtt in self.rtts() {
                for contender in Contender::ALL {
                    let Some(l) = self.latency(workload, rtt, contender) else { continue };
                    let trips = l.round_trips.map_or("-".into(), |t| format!("{t:.2}"));
                    let _ = writeln!(
                        out,
                        "| {} | {} ms | {} | {} | {} | {trips} | {} |",
                        workload.name(),
                        rtt.as_millis(),
                        contender.name(),
                        ms(l.median),
                        ms(l.p99),
                        self.ratio(workload, rtt, contender)
                    );
                }
            }
        }
        out
    }

    /// pgbatch's ratio to the hand-written pipeline and to each interactive contender, per
    /// workload and RTT.
    pub fn ratio_table(&self) -> String {
        let mut out = String::from(
            "| workload | RTT | pgbatch / hand-written pipeline | pgbatch / diesel-async | pgbatch / tokio-postgres |\n|---|---|---|---|---|\n",
        );
        for workload in Workload::ALL {
            for rtt in self.rtts() {
                if self.latency(workload, rtt, Contender::Pgbatch).is_none() {
                    continue;
                }
                let ratio = |contender| self.ratio(workload, rtt, contender);
                let _ = writeln!(
                    out,
                    "| {} | {} ms | {} | {} | {} |",
                    workload.name(),
                    rtt.as_millis(),
                    ratio(Contender::Pipeline),
                    ratio(Contender::DieselAsync),
                    ratio(Contender::TokioPostgres)
                );
            }
        }
        out
    }

    /// The hot-row table.
    pub fn hot_row_table(&self) -> String {
        let (rtt, measured, rows) = &self.hot_row;
        let mut out = format!(
            "32 clients, pool of 8, {} ms nominal RTT ({} ms measured):\n\n| contender | tx/s | median ms | p99 ms | failed |\n|---|---|---|---|---|\n",
            rtt.as_millis(),
            ms(*measured)
        );
        for row in rows {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} |",
                row.contender.name(),
                row.tps,
                ms(row.median),
                ms(row.p99),
                row.failed
            );
        }
        out
    }

    /// The CPU table.
    pub fn cpu_table(&self) -> String {
        let mut out = String::from("| client-side work | ns per statement |\n|---|---|\n");
        for cpu in &self.cpu {
            let _ = writeln!(out, "| {} | {:.0} |", cpu.what, cpu.nanos_per_statement);
        }
        out
    }

    /// `docs/benchmarks.md`.
    pub fn markdown(&self) -> String {
        let rtts = self
            .measured_rtts
            .iter()
            .map(|(nominal, measured)| format!("{} ms nominal = {} ms measured", nominal.as_millis(), ms(*measured)))
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "# Benchmarks\n\n\
             Generated by `cargo run --release -p pgbatch-bench --bin compare{quick}` — do not edit by hand.\n\n\
             {env}\n\n\
             Every contender does exactly the same SQL work in one transaction, through a TCP proxy that adds a \
             round-trip time (RTT) between client and server. Contenders run in rotation, sample by sample, so that \
             they share the machine's noise. Medians and p99 over {samples} transactions each. Effective round trips \
             = (median at the RTT − median at RTT 0) / the RTT the proxy really added, measured with `SELECT 1` \
             ({rtts}).\n\n\
             The hand-written pipeline is the best tokio-postgres allows: `BEGIN`, every statement and `COMMIT` \
             queued at once, each request ending in its own `Sync`. pgbatch speaks the protocol itself and sends the \
             whole transaction as one unit with one `Sync`, which is also why it is faster without network delay: \
             the server flushes once, and the client wakes once. Against libpq's own pipeline mode on S1, see \
             `cargo run --release -p pgbatch-bench --bin pipeline`.\n\n\
             ![Median latency per transaction at 10 ms RTT](benchmarks.svg)\n\n\
             ## Latency\n\n{latency}\n\
             ## pgbatch against the others\n\n\
             Ratios of median latencies; below 1.00 pgbatch is faster.\n\n{ratios}\n\
             ## Hot row\n\n\
             Each transaction increments one shared silo counter and inserts a row (scenario C3's shape). An \
             interactive transaction holds the counter's row lock across its round trips; pgbatch holds it for one \
             server-side pass. Latency includes waiting for a pooled connection: with 32 clients on 8 connections, \
             bb8 hands connections out without strict fairness, so the p99 of both contenders is dominated by \
             check-out waits (measured separately: the batches themselves finished within 10 ms). The proxy keeps its \
             delays precise by spinning through the last millisecond, which takes CPU from the client and the server \
             on this machine; pgbatch, the faster contender, is the one that figure holds back.\n\n{hot}\n\
             ## Client CPU\n\n\
             Rendering and encoding one Diesel statement (an `INSERT ... RETURNING` of three values), measured in a \
             loop on one thread; and the whole client-side cost per statement of W3 over a direct connection \
             (CPU time of the thread that runs the client and its connection).\n\n{cpu}\n{single_query}",
            quick = if self.mode == "quick" { " -- --quick" } else { "" },
            env = self.environment.iter().map(|l| format!("- {l}")).collect::<Vec<_>>().join("\n"),
            samples = self.samples,
            latency = self.latency_table(),
            ratios = self.ratio_table(),
            hot = self.hot_row_table(),
            cpu = self.cpu_table(),
            single_query = self.single_query,
        )
    }

    /// A grouped bar chart of median latency per workload at the largest RTT.
    pub fn svg(&self) -> String {
        let rtt = self.rtts().into_iter().max().unwrap_or_default();
        let colors = ["#2f6fdf", "#d9822b", "#8c8c8c", "#3aa676"];
        let (width, height, left, top, bottom) = (760.0, 380.0, 70.0, 40.0, 60.0);
        let plot_h = height - top - bottom;
        let group_w = (width - left - 20.0) / Workload::ALL.len() as f64;
        let bar_w = group_w * 0.8 / Contender::ALL.len() as f64;
        let max =
            self.latencies.iter().filter(|l| l.rtt == rtt).map(|l| l.median.as_secs_f64() * 1e3).fold(1.0, f64::max);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"20\" font-size=\"14\">Median latency per transaction (ms) at {} ms RTT</text>\n\
             <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
            rtt.as_millis(),
            top + plot_h,
            width - 20.0,
            top + plot_h
        );
        for tick in 0..=4 {
            let value = max * f64::from(tick) / 4.0;
            let y = top + plot_h - plot_h * f64::from(tick) / 4.0;
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{value:.0}</text><line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>",
                left - 6.0,
                y + 4.0,
                width - 20.0
            );
        }
        for (g, workload) in Workload::ALL.iter().enumerate() {
            let x0 = left + group_w * g as f64 + group_w * 0.1;
            for (c, contender) in Contender::ALL.iter().enumerate() {
                let Some(l) = self.latency(*workload, rtt, *contender) else { continue };
                let value = l.median.as_secs_f64() * 1e3;
                let h = plot_h * value / max;
                let x = x0 + bar_w * c as f64;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{value:.0}</text>",
                    top + plot_h - h,
                    bar_w - 2.0,
                    colors[c],
                    x + bar_w / 2.0,
                    top + plot_h - h - 3.0
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x0 + group_w * 0.4,
                top + plot_h + 18.0,
                workload.name()
            );
        }
        for (c, contender) in Contender::ALL.iter().enumerate() {
            let x = left + 180.0 * c as f64;
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                height - 22.0,
                colors[c],
                x + 16.0,
                height - 12.0,
                contender.name()
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}
