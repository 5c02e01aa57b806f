//! The operator's Prometheus metrics: reconciles, failures by error label, durations.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    reconciles: IntCounter,
    failures: IntCounterVec,
    duration: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("gemini_proxy_operator".into()), None).unwrap_or_default();
        let reconciles = IntCounter::new("reconciles_total", "Reconciles run")
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let failures = IntCounterVec::new(
            Opts::new("reconcile_failures_total", "Failed reconciles by error"),
            &["error"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let duration = Histogram::with_opts(
            HistogramOpts::new("reconcile_duration_seconds", "Time per reconcile").buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
        ] {
            let _ = registry.register(c);
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
        }
    }

    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, label: &str) {
        self.failures.with_label_values(&[label]).inc();
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
