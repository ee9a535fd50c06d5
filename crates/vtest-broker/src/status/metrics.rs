//! `vtestd metrics`: a status snapshot in the Prometheus text format
//! (0.0.4), written by `prometheus-client`, which escapes label values (a
//! listener's name is the operator's to choose) and help texts.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use vtest_control::SessionStats;

use super::{ExitCategory, ListenerStatus, Status};

impl Status {
    /// The counters and gauges as Prometheus text (counters' names end
    /// in `_total`, which the encoder adds).
    pub fn prometheus(&self) -> String {
        let mut registry = Registry::with_prefix("vtestd");
        registry.register_collector(Box::new(Snapshot(self.clone())));
        let mut out = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

#[derive(Debug)]
struct Snapshot(Status);

/// A listener's value of a per-listener gauge.
type OfListener = fn(&ListenerStatus) -> u32;

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let c = &s.counters;
        one(
            &mut e,
            "uptime_seconds",
            "Seconds since the broker started.",
            ConstGauge::new(s.uptime_secs),
        )?;
        one(
            &mut e,
            "clients_accepted",
            "Client connections accepted.",
            ConstCounter::new(c.clients_accepted),
        )?;
        let refused = c.clients_refused.iter().map(|(r, n)| (r.as_str(), *n));
        family(
            &mut e,
            (
                "clients_refused",
                "Client connections refused, by reason.",
                MetricType::Counter,
            ),
            "reason",
            refused.map(|(r, n)| (r, ConstCounter::new(n))),
        )?;
        one(
            &mut e,
            "clients_closed_before_first_byte",
            "Connections that closed without sending anything.",
            ConstCounter::new(c.closed_before_first_byte),
        )?;
        one(
            &mut e,
            "clients_waited_for_start",
            "Clients that waited for a worker to start (the pool did not keep up).",
            ConstCounter::new(c.clients_waited_for_start),
        )?;
        one(
            &mut e,
            "workers_started",
            "Worker processes started.",
            ConstCounter::new(c.workers_started),
        )?;
        let exits = ExitCategory::ALL.map(|cat| (cat.name(), c.worker_exits.get(&cat)));
        family(
            &mut e,
            (
                "worker_exits",
                "Worker ends, by category.",
                MetricType::Counter,
            ),
            "reason",
            exits.into_iter().map(|(r, n)| (r, ConstCounter::new(n))),
        )?;
        let per_listener: [(&str, &str, OfListener); 4] = [
            ("clients", "Clients being served.", |l| l.clients),
            (
                "clients_waiting",
                "Clients connected but silent (no worker yet).",
                |l| l.waiting,
            ),
            (
                "pool_ready",
                "Initialised workers waiting for a client.",
                |l| l.pool_ready,
            ),
            ("pool_starting", "Pool workers still initialising.", |l| {
                l.pool_starting
            }),
        ];
        for (name, help, value) in per_listener {
            let rows = s.listeners.iter();
            let rows = rows.map(|l| (l.name.as_str(), ConstGauge::new(value(l))));
            family(&mut e, (name, help, MetricType::Gauge), "listener", rows)?;
        }
        let sum = |f: fn(&SessionStats) -> u64| s.clients.iter().map(|c| f(&c.stats)).sum::<u64>();
        one(
            &mut e,
            "client_resources",
            "Live resources over all clients.",
            ConstGauge::new(sum(|s| s.live_resources)),
        )?;
        one(
            &mut e,
            "client_shm_bytes",
            "Shared memory over all clients.",
            ConstGauge::new(sum(|s| s.shm_bytes)),
        )
    }
}

/// A metric without labels.
fn one(e: &mut DescriptorEncoder, name: &str, help: &str, m: impl EncodeMetric) -> fmt::Result {
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

/// A metric of `kind` with one label, `label`: one sample per row, in the
/// rows' order (none: the family is still described).
fn family<'a, M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    label: &str,
    rows: impl Iterator<Item = (&'a str, M)>,
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for (value, m) in rows {
        m.encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    /// Byte for byte what the hand-written text was before
    /// `prometheus-client` wrote it.
    #[test]
    fn the_text_is_unchanged() {
        let mut s = sample();
        s.listeners[0].name = "plain".into();
        let expected = concat!(
            "# HELP vtestd_uptime_seconds Seconds since the broker started.\n",
            "# TYPE vtestd_uptime_seconds gauge\n",
            "vtestd_uptime_seconds 9\n",
            "# HELP vtestd_clients_accepted_total Client connections accepted.\n",
            "# TYPE vtestd_clients_accepted_total counter\n",
            "vtestd_clients_accepted_total 5\n",
            "# HELP vtestd_clients_refused_total Client connections refused, by reason.\n",
            "# TYPE vtestd_clients_refused_total counter\n",
            "vtestd_clients_refused_total{reason=\"peer not allowed\"} 3\n",
            "# HELP vtestd_clients_closed_before_first_byte_total Connections that closed without sending anything.\n",
            "# TYPE vtestd_clients_closed_before_first_byte_total counter\n",
            "vtestd_clients_closed_before_first_byte_total 1\n",
            "# HELP vtestd_clients_waited_for_start_total Clients that waited for a worker to start (the pool did not keep up).\n",
            "# TYPE vtestd_clients_waited_for_start_total counter\n",
            "vtestd_clients_waited_for_start_total 0\n",
            "# HELP vtestd_workers_started_total Worker processes started.\n",
            "# TYPE vtestd_workers_started_total counter\n",
            "vtestd_workers_started_total 7\n",
            "# HELP vtestd_worker_exits_total Worker ends, by category.\n",
            "# TYPE vtestd_worker_exits_total counter\n",
            "vtestd_worker_exits_total{reason=\"clean\"} 2\n",
            "vtestd_worker_exits_total{reason=\"protocol_error\"} 1\n",
            "vtestd_worker_exits_total{reason=\"renderer_error\"} 0\n",
            "vtestd_worker_exits_total{reason=\"limit_exceeded\"} 0\n",
            "vtestd_worker_exits_total{reason=\"io_error\"} 0\n",
            "vtestd_worker_exits_total{reason=\"worker_exhausted\"} 0\n",
            "vtestd_worker_exits_total{reason=\"init_failed\"} 0\n",
            "vtestd_worker_exits_total{reason=\"seccomp_violation\"} 0\n",
            "vtestd_worker_exits_total{reason=\"hang\"} 0\n",
            "vtestd_worker_exits_total{reason=\"signal\"} 0\n",
            "vtestd_worker_exits_total{reason=\"shutdown\"} 0\n",
            "vtestd_worker_exits_total{reason=\"unknown\"} 0\n",
            "# HELP vtestd_clients Clients being served.\n",
            "# TYPE vtestd_clients gauge\n",
            "vtestd_clients{listener=\"plain\"} 1\n",
            "# HELP vtestd_clients_waiting Clients connected but silent (no worker yet).\n",
            "# TYPE vtestd_clients_waiting gauge\n",
            "vtestd_clients_waiting{listener=\"plain\"} 0\n",
            "# HELP vtestd_pool_ready Initialised workers waiting for a client.\n",
            "# TYPE vtestd_pool_ready gauge\n",
            "vtestd_pool_ready{listener=\"plain\"} 1\n",
            "# HELP vtestd_pool_starting Pool workers still initialising.\n",
            "# TYPE vtestd_pool_starting gauge\n",
            "vtestd_pool_starting{listener=\"plain\"} 1\n",
            "# HELP vtestd_client_resources Live resources over all clients.\n",
            "# TYPE vtestd_client_resources gauge\n",
            "vtestd_client_resources 3\n",
            "# HELP vtestd_client_shm_bytes Shared memory over all clients.\n",
            "# TYPE vtestd_client_shm_bytes gauge\n",
            "vtestd_client_shm_bytes 12288\n",
        );
        assert_eq!(s.prometheus(), expected);
    }

    #[test]
    fn label_values_are_escaped() {
        // The sample's listener is named `gpu "0"\` + line feed + `x`.
        let text = sample().prometheus();
        let line = "vtestd_pool_ready{listener=\"gpu \\\"0\\\"\\\\\\nx\"} 1";
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        // Each sample is one line: a name, labels, a value.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("vtestd_"), "{l:?} in:\n{text}");
            assert!(l.rsplit(' ').next().unwrap().parse::<f64>().is_ok(), "{l}");
        }
        let mut s = sample();
        s.counters.refused("odd \"reason\"", 1);
        let text = s.prometheus();
        assert!(
            text.contains("vtestd_clients_refused_total{reason=\"odd \\\"reason\\\"\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_status_still_lists_every_exit_category() {
        let text = Status::default().prometheus();
        assert_eq!(
            text.matches("vtestd_worker_exits_total{").count(),
            ExitCategory::ALL.len(),
            "{text}"
        );
        assert!(!text.contains("listener="), "{text}");
    }
}
