//! `feedback produce --topic T FILE`: validates a file of JSONL payloads exactly as the processor
//! would, and produces them keyed by tenant only if every one passes; the way a connector without
//! a Kafka client feeds the processor.
//!
//! All or nothing: a file with a refused line is refused whole, before anything is produced, so a
//! fixed file can be produced again without duplicating the part that went through.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::codec::{decode, AvroSchemas};
use crate::config::TopicNames;
use crate::event::RejectKind;
use crate::kafka::produce::InputProducer;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("topic {topic:?} is not an input topic; the input topics are {inputs} (names from --config)")]
    NotAnInput { topic: String, inputs: String },
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} changed while it was being produced (line {line} no longer passes); {sent} records were sent")]
    Changed { path: PathBuf, line: u64, sent: u64 },
    #[error("cannot create the Kafka producer: {0}")]
    Client(rdkafka::error::KafkaError),
    #[error(transparent)]
    Topic(#[from] crate::kafka::produce::TopicCheckError),
    #[error("producing to {topic}: {source}")]
    Send {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("not every record was delivered to {topic} within {timeout:?}: {source}")]
    Deliver {
        topic: String,
        timeout: Duration,
        source: rdkafka::error::KafkaError,
    },
}

/// What `produce` was asked to do.
#[derive(Debug, Clone)]
pub struct ProduceJob {
    pub file: PathBuf,
    pub topic: String,
    pub brokers: String,
    pub topics: TopicNames,
    /// librdkafka properties over the defaults.
    pub kafka_config: Vec<(String, String)>,
    /// How long to wait for every record to be delivered.
    pub timeout: Duration,
}

/// A line that validation refused.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedLine {
    pub line: u64,
    pub kind: RejectKind,
    pub message: String,
}

/// What `produce` did; `--json` prints it as it is.
#[derive(Debug, Clone, Serialize)]
pub struct ProduceReport {
    pub file: PathBuf,
    pub topic: String,
    /// Non-empty lines read.
    pub records: u64,
    /// Records produced and delivered: all of them, or none when a line was refused.
    pub produced: u64,
    /// Distinct tenants (record keys) among the records.
    pub tenants: u64,
    /// Every refused line, in file order; when there is one, nothing was produced (exit 1).
    pub refused: Vec<RefusedLine>,
}

impl ProduceReport {
    pub fn refused_any(&self) -> bool {
        !self.refused.is_empty()
    }
}

/// How many refused lines the text lists; `--json` lists them all.
const LISTED: usize = 50;

impl std::fmt::Display for ProduceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.file.display();
        if self.refused.is_empty() {
            return write!(
                f,
                "produced {} records of {} tenants from {file} to {}",
                self.produced, self.tenants, self.topic
            );
        }
        for r in self.refused.iter().take(LISTED) {
            writeln!(f, "{file}:{}: {}: {}", r.line, r.kind, r.message)?;
        }
        if self.refused.len() > LISTED {
            writeln!(
                f,
                "... and {} more (--json lists them all)",
                self.refused.len() - LISTED
            )?;
        }
        write!(
            f,
            "refused: {} of {} records of {file} do not pass validation for {}; nothing was produced",
            self.refused.len(),
            self.records,
            self.topic
        )?;
        if self
            .refused
            .iter()
            .any(|r| r.message.contains("unknown field `topic`"))
        {
            write!(
                f,
                "\nhint: these lines look like `fold`'s {{\"topic\", \"payload\"}} records; `produce` \
                 takes the payloads alone, one per line (`jq -rc 'select(.topic == \"{}\") | \
                 .payload'` extracts them)",
                self.topic
            )?;
        }
        Ok(())
    }
}

/// Each non-empty line of the file, with its 1-based number, trimmed.
fn for_each_line(
    path: &Path,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), ProduceError>,
) -> Result<(), ProduceError> {
    let file = File::open(path).map_err(|source| ProduceError::Open {
        path: path.to_owned(),
        source,
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(ProduceError::Open {
            path: path.to_owned(),
            source: std::io::Error::other("it is a directory"),
        });
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| ProduceError::Read {
                path: path.to_owned(),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let trimmed = buf.trim_ascii();
        if !trimmed.is_empty() {
            f(line, trimmed)?;
        }
    }
}

/// Validates the whole file, then produces it if every line passed.
pub fn produce(job: &ProduceJob) -> Result<ProduceReport, ProduceError> {
    let topic = job
        .topics
        .input(&job.topic)
        .ok_or_else(|| ProduceError::NotAnInput {
            topic: job.topic.clone(),
            inputs: job.topics.inputs().join(", "),
        })?;
    let schemas = AvroSchemas::builtin();
    let mut report = ProduceReport {
        file: job.file.clone(),
        topic: job.topic.clone(),
        records: 0,
        produced: 0,
        tenants: 0,
        refused: Vec::new(),
    };
    let mut tenants = std::collections::BTreeSet::new();
    for_each_line(&job.file, |line, bytes| {
        report.records += 1;
        match decode(topic, bytes, &schemas) {
            Ok(event) => {
                if !tenants.contains(event.tenant()) {
                    tenants.insert(event.tenant().to_owned());
                }
            }
            Err(r) => report.refused.push(RefusedLine {
                line,
                kind: r.kind,
                message: r.message,
            }),
        }
        Ok(())
    })?;
    report.tenants = tenants.len() as u64;
    if report.refused_any() || report.records == 0 {
        return Ok(report);
    }

    let mut producer = InputProducer::with_overrides(&job.brokers, &job.kafka_config)
        .map_err(ProduceError::Client)?;
    producer.require_topic(&job.topic, &job.brokers)?;
    let mut sent = 0;
    for_each_line(&job.file, |line, bytes| {
        let event = decode(topic, bytes, &schemas).map_err(|_| ProduceError::Changed {
            path: job.file.clone(),
            line,
            sent,
        })?;
        // Keyed by tenant (SPEC 2), with Java's partitioner.
        producer
            .send(&job.topic, event.tenant().as_bytes(), bytes)
            .map_err(|source| ProduceError::Send {
                topic: job.topic.clone(),
                source,
            })?;
        sent += 1;
        Ok(())
    })?;
    report.produced = producer
        .flush(job.timeout)
        .map_err(|source| ProduceError::Deliver {
            topic: job.topic.clone(),
            timeout: job.timeout,
            source,
        })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job producing `file` to `outcomes` on an address where nothing listens: a connection
    /// attempt would fail the test with an error.
    fn unconnected_job(file: PathBuf) -> ProduceJob {
        ProduceJob {
            file,
            topic: "outcomes".into(),
            brokers: "127.0.0.1:1".into(),
            topics: TopicNames::default(),
            kafka_config: Vec::new(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_file_with_an_invalid_line_is_refused_whole_before_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("outcomes.jsonl");
        std::fs::write(
            &file,
            concat!(
                r#"{"tenant": "acme", "date": "2026-11-20", "channel": "meta", "spend": 1, "revenue": 2}"#,
                "\n\n",
                r#"{"tenant": "acme", "date": "2026-11-20", "channel": "meta", "spend": -1, "revenue": 2}"#,
                "\nnot json\n"
            ),
        )
        .unwrap();
        let job = unconnected_job(file);
        let report = produce(&job).unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(report.produced, 0);
        let lines: Vec<(u64, RejectKind)> =
            report.refused.iter().map(|r| (r.line, r.kind)).collect();
        assert_eq!(
            lines,
            [(3, RejectKind::InvalidField), (4, RejectKind::Malformed)]
        );
        let text = report.to_string();
        assert!(text.contains("outcomes.jsonl:3: invalid_field"), "{text}");
        assert!(text.ends_with("nothing was produced"), "{text}");

        let err = produce(&ProduceJob {
            topic: "alerts".into(),
            ..job
        })
        .unwrap_err();
        assert!(err.to_string().contains("not an input topic"), "{err}");
    }

    #[test]
    fn fold_records_given_to_produce_get_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("history.jsonl");
        std::fs::write(
            &file,
            r#"{"topic": "outcomes", "payload": {"tenant": "acme", "date": "2026-11-20", "channel": "meta", "spend": 1, "revenue": 2}}"#,
        )
        .unwrap();
        let report = produce(&unconnected_job(file)).unwrap();
        assert_eq!(report.produced, 0);
        let text = report.to_string();
        assert!(
            text.contains(r#"hint: these lines look like `fold`'s {"topic", "payload"} records"#)
                && text.contains(r#"jq -rc 'select(.topic == "outcomes") | .payload'"#),
            "{text}"
        );
    }
}
