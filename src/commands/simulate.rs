//! `feedback simulate`: the seeded history of `crate::simulate` written as JSONL for `fold`, or
//! produced to the input topics of a Kafka cluster, keyed by tenant.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::config::TopicNames;
use crate::kafka::produce::InputProducer;
use crate::simulate::{SimConfig, SimPayload, Simulator};

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("--poison-rate must be between 0 and 1, got {0}")]
    PoisonRate(f64),
    #[error("cannot write the records: {0}")]
    Write(std::io::Error),
    #[error("cannot create the Kafka producer: {0}")]
    Client(rdkafka::error::KafkaError),
    #[error(transparent)]
    Topic(#[from] crate::kafka::produce::TopicCheckError),
    #[error("producing to {topic}: {source}")]
    Send {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("not every record was delivered within {timeout:?}: {source}")]
    Deliver {
        timeout: Duration,
        source: rdkafka::error::KafkaError,
    },
}

/// What was generated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimulateReport {
    pub records: u64,
    /// Of which poison records (`--poison-rate`).
    pub poison: u64,
}

fn check(sim: &SimConfig) -> Result<(), SimulateError> {
    if !(0.0..=1.0).contains(&sim.poison_rate) {
        return Err(SimulateError::PoisonRate(sim.poison_rate));
    }
    Ok(())
}

/// Writes the history as `{"topic", "payload"}` lines. A closed pipe (`| head`) ends it quietly.
pub fn write_jsonl(
    sim: &SimConfig,
    topics: &TopicNames,
    out: impl Write,
) -> Result<SimulateReport, SimulateError> {
    check(sim)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    let mut report = SimulateReport::default();
    let mut result = Ok(());
    for record in Simulator::new(sim) {
        report.records += 1;
        report.poison += u64::from(matches!(record.payload, SimPayload::Poison(_)));
        result = record
            .write_jsonl(&mut out, topics.name(record.topic))
            .and_then(|()| out.write_all(b"\n"));
        if result.is_err() {
            break;
        }
    }
    let result = result.and_then(|()| out.flush());
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(SimulateError::Write(e)),
        _ => Ok(report),
    }
}

/// Produces the history to the input topics, keyed by tenant, poison records included (the
/// processor sends those to its DLQ), and waits until every record is delivered.
pub fn produce(
    sim: &SimConfig,
    topics: &TopicNames,
    brokers: &str,
    kafka_config: &[(String, String)],
    timeout: Duration,
) -> Result<SimulateReport, SimulateError> {
    check(sim)?;
    let mut producer =
        InputProducer::with_overrides(brokers, kafka_config).map_err(SimulateError::Client)?;
    for topic in topics.inputs() {
        producer.require_topic(topic, brokers)?;
    }
    let mut report = SimulateReport::default();
    let mut payload = Vec::with_capacity(1 << 12);
    for record in Simulator::new(sim) {
        report.records += 1;
        report.poison += u64::from(matches!(record.payload, SimPayload::Poison(_)));
        payload.clear();
        record.write_payload(&mut payload);
        let topic = topics.name(record.topic);
        producer
            .send(topic, record.tenant.as_bytes(), &payload)
            .map_err(|source| SimulateError::Send {
                topic: topic.to_owned(),
                source,
            })?;
    }
    producer
        .flush(timeout)
        .map_err(|source| SimulateError::Deliver { timeout, source })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_is_what_the_records_say() {
        let sim = SimConfig {
            days: 15,
            tenants: 2,
            poison_rate: 0.05,
            ..SimConfig::default()
        };
        let mut out = Vec::new();
        let report = write_jsonl(&sim, &TopicNames::default(), &mut out).unwrap();
        let expected: String = crate::simulate::generate(&sim)
            .iter()
            .map(|r| r.jsonl(TopicNames::default().name(r.topic)) + "\n")
            .collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(report.records as usize, expected.lines().count());
        assert!(report.poison > 0);
    }
}
