//! Prometheus metrics. Labels carry group names, routes, reasons and key ids, never keys.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::registry::Groups;

/// Handles cached per thread and metrics set; the cache starts over when it holds this many
/// (groups come and go, and each set of metrics in the process has its own entries).
const HOT_MAX: usize = 256;

#[derive(Default)]
struct Hot {
    /// (metrics set, group, route, status class) → counter
    requests: Vec<(u64, Box<str>, &'static str, &'static str, IntCounter)>,
    /// (metrics set, group) → upstream histogram and answer counters (see [`UPSTREAM_CODES`])
    upstream: Vec<(u64, Box<str>, Histogram, [IntCounter; 5])>,
}

thread_local! {
    static HOT: RefCell<Hot> = RefCell::new(Hot::default());
}

pub struct Metrics {
    /// Tells this set of metrics from others in the process, for the per-thread handle cache.
    id: u64,
    registry: Registry,
    /// Client requests by group, route (operation) and status class.
    pub requests: IntCounterVec,
    /// Time to the upstream's response headers, per attempt.
    pub upstream_seconds: HistogramVec,
    /// Time the proxy adds to a request: everything but waiting on the upstream and backoffs.
    pub added_seconds: Histogram,
    /// Attempts after the first, by the reason of the retry.
    pub retries: IntCounterVec,
    /// Cooldowns started, by reason (PerMinuteQuota, PerDayQuota, RateLimited).
    pub cooldowns: IntCounterVec,
    /// Keys retired, by reason.
    pub retirements: IntCounterVec,
    /// Requests refused because their client was over its allowance.
    pub client_limited: IntCounterVec,
    /// Requests refused because their estimated input was over `maxInputTokensPerRequest`.
    pub input_tokens_refused: IntCounterVec,
    /// Upstream attempts by group and answer (`429`, `2xx`, `4xx`, `5xx`, `error`).
    upstream_responses: IntCounterVec,
    /// Config file reloads by result (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// 1 when the last config reload (or the start) succeeded, 0 while a bad file is ignored.
    pub config_last_reload_ok: IntGauge,
    /// 1 for the state each key is in (Active, CoolingDown, Invalid, Disabled).
    key_state: IntGaugeVec,
    /// Health score of each key, 0 to 1.
    key_health: GaugeVec,
    /// Requests in flight on each key.
    key_in_flight: IntGaugeVec,
    group_refused: IntGaugeVec,
    /// 1 while the state store answers.
    store_up: IntGauge,
    /// 1 once groups are loaded (what `/readyz` answers), for alerts on unready proxies.
    ready: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are constants: a failure here is a programming error caught by tests.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("gemini_proxy".into()), None).unwrap_or_default();
        let requests = must(IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Client requests by group, route and status class",
            ),
            &["group", "route", "status"],
        ));
        let upstream_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time to the upstream's response headers, per attempt",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                300.0,
            ]),
            &["group"],
        ));
        let added_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "added_latency_seconds",
                "Latency the proxy adds to a request (excluding upstream time and backoffs)",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
        ));
        let retries = must(IntCounterVec::new(
            Opts::new(
                "retries_total",
                "Upstream attempts after the first, by reason",
            ),
            &["group", "reason"],
        ));
        let cooldowns = must(IntCounterVec::new(
            Opts::new("cooldowns_total", "Key cooldowns started, by reason"),
            &["group", "reason"],
        ));
        let retirements = must(IntCounterVec::new(
            Opts::new("key_retirements_total", "Keys retired as dead, by reason"),
            &["group", "reason"],
        ));
        let client_limited = must(IntCounterVec::new(
            Opts::new(
                "client_limited_total",
                "Requests refused with 429 because their client was over its allowance",
            ),
            &["group"],
        ));
        let input_tokens_refused = must(IntCounterVec::new(
            Opts::new(
                "input_tokens_refused_total",
                "Requests refused with 400 because their estimated input tokens were over limits.maxInputTokensPerRequest",
            ),
            &["group"],
        ));
        let upstream_responses = must(IntCounterVec::new(
            Opts::new(
                "upstream_responses_total",
                "Upstream attempts by answer: 429, 2xx, 4xx (other than 429), 5xx, or error (no answer)",
            ),
            &["group", "code"],
        ));
        let config_reloads = must(IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Reloads of the config file by result (ok, error)",
            ),
            &["result"],
        ));
        let config_last_reload_ok = must(IntGauge::new(
            "config_last_reload_successful",
            "1 when the last reload of the config file succeeded (or none was tried), 0 while a bad file is ignored",
        ));
        config_last_reload_ok.set(1);
        let key_state = must(IntGaugeVec::new(
            Opts::new(
                "key_state",
                "1 for the current state of each key (by key id)",
            ),
            &["group", "key_id", "state"],
        ));
        let key_health = must(GaugeVec::new(
            Opts::new("key_health", "Health score of each key (0 to 1)"),
            &["group", "key_id"],
        ));
        let key_in_flight = must(IntGaugeVec::new(
            Opts::new("key_in_flight", "Requests in flight on each key"),
            &["group", "key_id"],
        ));
        let group_refused = must(IntGaugeVec::new(
            Opts::new(
                "group_refused",
                "1 for each group this proxy does not serve, by reason (unauthenticated, open_not_allowed, upstream_not_allowed, bad_upstream)",
            ),
            &["group", "reason"],
        ));
        let store_up = must(IntGauge::new(
            "store_up",
            "1 while the key-state store answers, 0 during an outage",
        ));
        let ready = must(IntGauge::new(
            "ready",
            "1 when the proxy is ready (its groups are loaded), as /readyz answers",
        ));
        for c in [
            Box::new(store_up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ready.clone()),
            Box::new(requests.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(added_seconds.clone()),
            Box::new(retries.clone()),
            Box::new(cooldowns.clone()),
            Box::new(retirements.clone()),
            Box::new(client_limited.clone()),
            Box::new(input_tokens_refused.clone()),
            Box::new(upstream_responses.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_last_reload_ok.clone()),
            Box::new(key_state.clone()),
            Box::new(key_health.clone()),
            Box::new(key_in_flight.clone()),
            Box::new(group_refused.clone()),
        ] {
            must(registry.register(c));
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            upstream_seconds,
            added_seconds,
            retries,
            cooldowns,
            retirements,
            client_limited,
            input_tokens_refused,
            upstream_responses,
            config_reloads,
            config_last_reload_ok,
            key_state,
            key_health,
            key_in_flight,
            group_refused,
            store_up,
            ready,
        }
    }

    /// Counts a client request. The counter's handle comes from a per-thread cache: resolving
    /// labels (hashing them, a lock, a map) for every request cost more than counting.
    pub fn count_request(&self, group: &str, route: &'static str, status: u16) {
        let class = status_class(status);
        HOT.with(|hot| {
            let mut hot = hot.borrow_mut();
            let found = hot.requests.iter().find(|(id, g, r, c, _)| {
                *id == self.id && *r == route && *c == class && &**g == group
            });
            if let Some((.., counter)) = found {
                counter.inc();
                return;
            }
            let counter = self.requests.with_label_values(&[group, route, class]);
            counter.inc();
            if hot.requests.len() >= HOT_MAX {
                hot.requests.clear();
            }
            hot.requests
                .push((self.id, group.into(), route, class, counter));
        });
    }

    /// Records an attempt: its time to the upstream's response headers and its answer
    /// (`None`: no answer). Cached per thread like [`Self::count_request`].
    pub fn observe_upstream(&self, group: &str, seconds: f64, status: Option<u16>) {
        let code = match status {
            None => 4,
            Some(429) => 0,
            Some(200..=299) => 1,
            Some(400..=499) => 2,
            Some(_) => 3,
        };
        HOT.with(|hot| {
            let mut hot = hot.borrow_mut();
            let found = hot
                .upstream
                .iter()
                .find(|(id, g, ..)| *id == self.id && &**g == group);
            if let Some((_, _, h, counters)) = found {
                h.observe(seconds);
                counters[code].inc();
                return;
            }
            let h = self.upstream_seconds.with_label_values(&[group]);
            let counters =
                UPSTREAM_CODES.map(|c| self.upstream_responses.with_label_values(&[group, c]));
            h.observe(seconds);
            counters[code].inc();
            if hot.upstream.len() >= HOT_MAX {
                hot.upstream.clear();
            }
            hot.upstream.push((self.id, group.into(), h, counters));
        });
    }

    /// The text exposition, with key gauges read fresh from the pools.
    pub fn render(&self, groups: &Groups, store_up: bool, now_ms: u64) -> String {
        self.store_up.set(i64::from(store_up));
        self.ready.set(i64::from(groups.loaded));
        self.key_state.reset();
        self.key_health.reset();
        self.key_in_flight.reset();
        self.group_refused.reset();
        for r in &groups.refused {
            self.group_refused
                .with_label_values(&[r.group.as_str(), r.reason])
                .set(1);
        }
        for pool in groups.pools() {
            for m in &pool.members {
                let id = m.slot.id.as_str();
                let state = m.slot.status().state(m.disabled, now_ms);
                self.key_state
                    .with_label_values(&[pool.name(), id, state.name()])
                    .set(1);
                self.key_health
                    .with_label_values(&[pool.name(), id])
                    .set(m.slot.health());
                self.key_in_flight
                    .with_label_values(&[pool.name(), id])
                    .set(i64::from(m.slot.in_flight()));
            }
        }
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `code` label of `upstream_responses_total`, in the order of the per-thread cache.
const UPSTREAM_CODES: [&str; 5] = ["429", "2xx", "4xx", "5xx", "error"];

/// `2xx`, `4xx`, ... for a status code.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
