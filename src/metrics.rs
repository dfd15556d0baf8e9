//! The processor's Prometheus metrics (`/metrics`, SPEC 9 and issue 3).
//!
//! One [`Metrics`] per process, shared by the processor thread, the librdkafka callbacks and
//! the HTTP server. Every series a dashboard needs exists from the start (zero until it moves),
//! so a query never has to guess whether a label has been seen yet.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::alert::AlertType;
use crate::event::validate::RejectKind;

pub struct Metrics {
    registry: Registry,
    /// Records read from the input topics, by topic.
    pub consumed: IntCounterVec,
    /// Records refused and sent to the DLQ, by `error.kind`.
    pub rejected: IntCounterVec,
    /// Alerts published, by CloudEvents type.
    pub alerts: IntCounterVec,
    /// Records written to the state changelog (tombstones included).
    pub state_records: IntCounter,
    /// Consumer lag per input partition, from librdkafka's statistics.
    pub lag: IntGaugeVec,
    /// Time to commit one transaction (exactly-once) or one offset commit (at-least-once).
    pub commit_seconds: Histogram,
    /// Commits by result: `committed`, `aborted`, `retried`.
    pub commits: IntCounterVec,
    /// Tenants whose state this instance holds.
    pub tenants: IntGauge,
    /// Time to restore the assigned partitions' tenants from the changelog.
    pub restore_seconds: Histogram,
    /// Partitions restored at an assignment, by how: read from the `changelog`, or `kept`
    /// from before the rebalance (nothing written to them since).
    pub partitions_restored: IntCounterVec,
    /// Input records the topics' retention deleted before they were read: gone from the state.
    pub input_records_lost: IntCounter,
    /// Restores that read nothing for `--restore-stall` and were started again.
    pub restores_stalled: IntCounter,
    /// Tenants whose documents someone else changed after this instance wrote them, written
    /// again.
    pub documents_rewritten: IntCounter,
    /// Errors librdkafka reported (broker down, transport), by kind.
    pub client_errors: IntCounterVec,
    /// Times a client that librdkafka had cut off from every broker was given the bootstrap
    /// servers again (`kafka::BrokerWatch`), by client.
    pub rebootstraps: IntCounterVec,
    /// Storage documents written.
    pub documents: IntCounter,
    /// Entries of calibration histories written: copied from the file written before, or
    /// rendered (`storage::CalibrationCache`).
    pub calibration_entries: IntCounterVec,
    /// 1 when the instance has restored its partitions and processes records.
    pub ready: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let consumed = counter_vec(
            &registry,
            "feedback_records_consumed_total",
            "Records read from the input topics.",
            &["topic"],
        );
        let rejected = counter_vec(
            &registry,
            "feedback_records_rejected_total",
            "Records refused (sent to the DLQ), by error kind.",
            &["kind"],
        );
        for kind in RejectKind::ALL {
            rejected.with_label_values(&[kind.as_str()]);
        }
        let alerts = counter_vec(
            &registry,
            "feedback_alerts_published_total",
            "Alert events published, by CloudEvents type.",
            &["type"],
        );
        for kind in AlertType::ALL {
            alerts.with_label_values(&[kind.as_str()]);
        }
        let state_records = counter(
            &registry,
            "feedback_state_records_written_total",
            "Records written to the state changelog topic, tombstones included.",
        );
        let lag = IntGaugeVec::new(
            Opts::new(
                "feedback_consumer_lag",
                "Records behind the end of each assigned input partition (librdkafka statistics).",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(lag.clone()))
            .expect("metric registered once");
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "feedback_commit_seconds",
                "Time to commit one transaction (exactly-once) or one offset commit (at-least-once).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(commit_seconds.clone()))
            .expect("metric registered once");
        let commits = counter_vec(
            &registry,
            "feedback_commits_total",
            "Commits by result: committed, aborted (and rewound), retried (a transactional call tried again).",
            &["result"],
        );
        for r in ["committed", "aborted", "retried"] {
            commits.with_label_values(&[r]);
        }
        let tenants = IntGauge::new(
            "feedback_tenants_owned",
            "Tenants whose state this instance holds.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(tenants.clone()))
            .expect("metric registered once");
        let restore_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "feedback_restore_seconds",
                "Time to restore assigned partitions from the state changelog.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(restore_seconds.clone()))
            .expect("metric registered once");
        let partitions_restored = counter_vec(
            &registry,
            "feedback_partitions_restored_total",
            "Partitions whose state was restored at an assignment, by how: read from the \
             changelog, or kept from before the rebalance (nothing written to them since).",
            &["how"],
        );
        for how in ["changelog", "kept"] {
            partitions_restored.with_label_values(&[how]);
        }
        let input_records_lost = counter(
            &registry,
            "feedback_input_records_lost_total",
            "Input records the topics' retention deleted before they were read (an instance \
             down for longer than it): they are missing from the state.",
        );
        let restores_stalled = counter(
            &registry,
            "feedback_restores_stalled_total",
            "Restores that read nothing for --restore-stall and were started again with new \
             clients (their partitions stay paused meanwhile).",
        );
        let documents_rewritten = counter(
            &registry,
            "feedback_documents_rewritten_total",
            "Tenants whose documents were changed by someone else after this instance wrote \
             them (an instance that had lost the tenant writing late into a shared directory, a \
             hand edit, a deletion), written again.",
        );
        let client_errors = counter_vec(
            &registry,
            "feedback_kafka_client_errors_total",
            "Errors reported by librdkafka (a broker down, a transport failure), by kind.",
            &["kind"],
        );
        // The kinds an unreachable cluster gives, there at 0 from the start so that a first
        // outage shows in `rate()` and `increase()` (the label set is librdkafka's error codes,
        // too many to list; others appear when they first happen).
        for kind in ["AllBrokersDown", "BrokerTransportFailure"] {
            client_errors.with_label_values(&[kind]);
        }
        let rebootstraps = counter_vec(
            &registry,
            "feedback_kafka_rebootstraps_total",
            "Times a Kafka client that librdkafka had cut off from every broker was given the \
             bootstrap servers again, by client (consumer, producer).",
            &["client"],
        );
        for client in ["consumer", "producer"] {
            rebootstraps.with_label_values(&[client]);
        }
        let documents = counter(
            &registry,
            "feedback_documents_written_total",
            "Storage documents written (three per tenant write).",
        );
        let calibration_entries = counter_vec(
            &registry,
            "feedback_calibration_entries_total",
            "Entries of the calibration documents written, copied unchanged from the file \
             written before or rendered.",
            &["how"],
        );
        for how in ["copied", "rendered"] {
            calibration_entries.with_label_values(&[how]);
        }
        let ready = IntGauge::new(
            "feedback_ready",
            "1 once the assigned partitions are restored and records are processed.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(ready.clone()))
            .expect("metric registered once");
        Metrics {
            registry,
            consumed,
            rejected,
            alerts,
            state_records,
            lag,
            commit_seconds,
            commits,
            tenants,
            restore_seconds,
            partitions_restored,
            input_records_lost,
            restores_stalled,
            documents_rewritten,
            client_errors,
            rebootstraps,
            documents,
            calibration_entries,
            ready,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec does not fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_from_the_start() {
        let m = Metrics::new();
        let text = m.render();
        for needle in [
            "feedback_records_rejected_total{kind=\"malformed\"} 0",
            "feedback_alerts_published_total{type=\"model.calibration\"} 0",
            "feedback_commit_seconds_bucket",
            "feedback_tenants_owned 0",
            "feedback_ready 0",
            "feedback_kafka_client_errors_total{kind=\"AllBrokersDown\"} 0",
            "feedback_kafka_client_errors_total{kind=\"BrokerTransportFailure\"} 0",
            "feedback_calibration_entries_total{how=\"copied\"} 0",
            "feedback_calibration_entries_total{how=\"rendered\"} 0",
            "feedback_partitions_restored_total{how=\"changelog\"} 0",
            "feedback_partitions_restored_total{how=\"kept\"} 0",
            "feedback_input_records_lost_total 0",
            "feedback_restores_stalled_total 0",
            "feedback_documents_rewritten_total 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
