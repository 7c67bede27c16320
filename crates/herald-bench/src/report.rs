//! The results: a table of medians and ratios on stdout, and the same as JSON.

use std::path::Path;

use serde::Serialize;

/// Everything one run measured, with the machine it ran on.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The command line that produced the report.
    pub command: String,
    /// Whether this was a `--quick` run (small sizes, a smoke test of the harness).
    pub quick: bool,
    /// The machine.
    pub machine: Machine,
    /// One entry per scenario run.
    pub scenarios: Vec<Scenario>,
}

/// The machine a report was measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// Logical cores available to the process.
    pub cores: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu: String,
    /// Total memory, MiB.
    pub memory_mib: u64,
}

impl Machine {
    /// Reads this machine's description.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu,
            memory_mib,
        }
    }
}

/// The results of one scenario.
#[derive(Debug, Serialize)]
pub struct Scenario {
    /// `B1 producer overhead`, …
    pub name: String,
    /// Whether every event the scenario sent was delivered (and nothing else went wrong).
    pub complete: bool,
    /// Measured figures.
    pub rows: Vec<Row>,
    /// Targets with their measured values.
    pub targets: Vec<Target>,
    /// Remarks (sizes, what a variant is).
    pub notes: Vec<String>,
}

impl Scenario {
    /// An empty scenario called `name`, complete until told otherwise.
    pub fn new(name: &str) -> Self {
        Scenario {
            name: name.to_owned(),
            complete: true,
            rows: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a figure: the median of `samples` (one per measured round).
    pub fn row(&mut self, label: impl Into<String>, unit: &str, samples: Vec<f64>) -> f64 {
        let value = median(&samples);
        self.rows.push(Row {
            label: label.into(),
            value,
            unit: unit.to_owned(),
            samples,
        });
        value
    }

    /// Adds a target: `measured` against `limit`, met when `met`.
    pub fn target(
        &mut self,
        what: impl Into<String>,
        measured: f64,
        unit: &str,
        limit: impl Into<String>,
        met: bool,
    ) {
        self.targets.push(Target {
            what: what.into(),
            measured,
            unit: unit.to_owned(),
            limit: limit.into(),
            met,
        });
    }

    /// Adds a remark.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
}

/// One measured figure.
#[derive(Debug, Serialize)]
pub struct Row {
    /// What was measured.
    pub label: String,
    /// The median over the measured rounds.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Every measured round (warm-up excluded).
    pub samples: Vec<f64>,
}

/// A target of the issue and the value measured for it.
#[derive(Debug, Serialize)]
pub struct Target {
    /// The target, in words.
    pub what: String,
    /// The measured value.
    pub measured: f64,
    /// Its unit.
    pub unit: String,
    /// The limit (`≤ 5 %`, `≥ 0.8`, …).
    pub limit: String,
    /// Whether the measured value meets it.
    pub met: bool,
}

/// The median of `samples` (0 when empty).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `q` quantile (0..=1) of `samples`, nearest rank (0 when empty).
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

impl Report {
    /// The report as a Markdown table (what the README shows).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        out.push_str(&format!(
            "machine: {} cores, {} MiB, {}{}\n\n",
            m.cores,
            m.memory_mib,
            m.cpu,
            if self.quick {
                " (quick mode: sizes too small for meaningful figures)"
            } else {
                ""
            }
        ));
        out.push_str("| scenario | measure | median | unit |\n| --- | --- | ---: | --- |\n");
        for s in &self.scenarios {
            for r in &s.rows {
                out.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    s.name,
                    r.label,
                    number(r.value),
                    r.unit
                ));
            }
        }
        out.push_str("\n| target | measured | limit | met |\n| --- | ---: | --- | --- |\n");
        for s in &self.scenarios {
            for t in &s.targets {
                out.push_str(&format!(
                    "| {}: {} | {} {} | {} | {} |\n",
                    s.name.split(' ').next().unwrap_or(""),
                    t.what,
                    number(t.measured),
                    t.unit,
                    t.limit,
                    if t.met { "yes" } else { "**no**" }
                ));
            }
        }
        for s in &self.scenarios {
            for n in &s.notes {
                out.push_str(&format!("\n- {}: {n}", s.name));
            }
            if !s.complete {
                out.push_str(&format!(
                    "\n- {}: INCOMPLETE (not every event was delivered)",
                    s.name
                ));
            }
        }
        out.push('\n');
        out
    }

    /// Writes the report as pretty JSON to `path` (creating its folder).
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn quantile_uses_the_nearest_rank() {
        let samples: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&samples, 0.5), 500.0);
        assert_eq!(quantile(&samples, 0.99), 990.0);
        assert_eq!(quantile(&samples, 0.999), 999.0);
        assert_eq!(quantile(&samples, 1.0), 1000.0);
    }

    #[test]
    fn the_table_flags_missed_targets_and_incomplete_scenarios() {
        let mut scenario = Scenario::new("B9 example");
        scenario.row("rate", "events/s", vec![1.0, 3.0, 2.0]);
        scenario.target("ratio", 0.4, "×", "≥ 0.5", false);
        scenario.complete = false;
        let report = Report {
            command: "herald-bench".into(),
            quick: false,
            machine: Machine {
                cores: 2,
                cpu: "test".into(),
                memory_mib: 1,
            },
            scenarios: vec![scenario],
        };
        let table = report.table();
        assert!(
            table.contains("| B9 example | rate | 2.00 | events/s |"),
            "{table}"
        );
        assert!(table.contains("**no**"), "{table}");
        assert!(table.contains("INCOMPLETE"), "{table}");
    }
}
