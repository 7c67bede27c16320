//! What happened in a simulated run, line by line, and what it broke.

use std::fmt;

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// When, in ms of the simulated clock.
    pub at: u64,
    /// What it concerns (partition keys); empty for the world as a whole.
    pub tags: Vec<String>,
    /// What happened.
    pub text: String,
}

/// The lines of a run, in the order they happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    entries: Vec<TraceEntry>,
}

impl Trace {
    pub(crate) fn push(&mut self, entry: TraceEntry) {
        self.entries.push(entry);
    }

    /// Every line.
    pub fn entries(&self) -> &[TraceEntry] {
        &self.entries
    }

    /// The lines about `key`, and those about the world as a whole.
    pub fn about(&self, key: &str) -> String {
        self.render(|entry| entry.tags.is_empty() || entry.tags.iter().any(|t| t == key))
    }

    /// Every line, rendered.
    pub fn all(&self) -> String {
        self.render(|_| true)
    }

    fn render(&self, keep: impl Fn(&TraceEntry) -> bool) -> String {
        let mut out = String::new();
        for entry in self.entries.iter().filter(|e| keep(e)) {
            out.push_str(&format!("{:>9} ms  {}\n", entry.at, entry.text));
        }
        out
    }
}

/// An invariant a run broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (`order`, `loss`, `dead-letter`, `drain`, `exactly-once` …).
    pub invariant: &'static str,
    /// The partition key it concerns, if one.
    pub key: Option<String>,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "[{}] key `{key}`: {}", self.invariant, self.detail),
            None => write!(f, "[{}] {}", self.invariant, self.detail),
        }
    }
}

/// The result of one seed.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The seed.
    pub seed: u64,
    /// What the run broke (empty: it kept every invariant).
    pub violations: Vec<Violation>,
    /// What happened.
    pub trace: Trace,
    /// A one-line summary of the world the seed drew (sizes, fault rates).
    pub setup: String,
}

impl Verdict {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The seed, its violations and the trace of the first violating key (the whole trace
    /// when the violation concerns no key, or with `full`).
    pub fn report(&self, full: bool) -> String {
        let mut out = format!("seed {}: {}\n", self.seed, self.setup);
        for violation in &self.violations {
            out.push_str(&format!("  violation {violation}\n"));
        }
        match self.violations.first().and_then(|v| v.key.as_deref()) {
            Some(key) if !full => {
                out.push_str(&format!("trace of key `{key}` (and of the world):\n"));
                out.push_str(&self.trace.about(key));
            }
            _ => {
                out.push_str("trace:\n");
                out.push_str(&self.trace.all());
            }
        }
        out
    }

    /// Runs `run` twice for each of the seeds 0 to 24 and fails if a seed's two runs differ,
    /// in their traces or in their violations: a seed must replay exactly.
    pub fn assert_seeds_replay(mut run: impl FnMut(u64) -> Verdict) {
        for seed in 0..25 {
            let (first, second) = (run(seed), run(seed));
            assert_eq!(
                first.trace.entries(),
                second.trace.entries(),
                "seed {seed} ran differently twice"
            );
            assert_eq!(first.violations, second.violations);
        }
    }
}
