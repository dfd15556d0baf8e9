//! Producing input records keyed by tenant: `feedback produce`, `simulate --brokers`, the demo
//! and the tests.
//! Java's partitioner (`murmur2_random`), so a tenant lands where a Java producer puts it.

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use super::Settings;

/// A topic the producer is about to write to is not there, or the cluster did not say.
#[derive(Debug, thiserror::Error)]
pub enum TopicCheckError {
    #[error("cannot read the topics of {brokers}: {source}")]
    Metadata { brokers: String, source: KafkaError },
    #[error(
        "topic {topic:?} does not exist on {brokers} (feedback create-topics makes the input topics)"
    )]
    NoSuchTopic { topic: String, brokers: String },
}

/// Counts records the cluster did not take.
#[derive(Default)]
struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.0.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "an input record was not delivered");
        }
    }
}

/// A producer of input records to `brokers`.
pub struct InputProducer {
    producer: BaseProducer<Failures>,
    sent: u64,
}

impl InputProducer {
    pub fn new(brokers: &str) -> Result<Self, KafkaError> {
        Self::with_overrides(brokers, &[])
    }

    /// A producer with librdkafka properties set over the defaults (`--kafka-config`).
    pub fn with_overrides(
        brokers: &str,
        overrides: &[(String, String)],
    ) -> Result<Self, KafkaError> {
        let mut config = Settings::plain_producer_config(brokers);
        for (k, v) in overrides {
            config.set(k, v);
        }
        Ok(InputProducer {
            producer: config.create_with_context(Failures::default())?,
            sent: 0,
        })
    }

    /// The partition count of `topic`, read from the cluster's metadata: None when the topic
    /// does not exist. An error when the cluster does not answer within `timeout`. Asks for
    /// every topic: asking for one by name can create it on a broker that auto-creates topics.
    pub fn partitions(&self, topic: &str, timeout: Duration) -> Result<Option<usize>, KafkaError> {
        let metadata = self.producer.client().fetch_metadata(None, timeout)?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|&n| n > 0))
    }

    /// Checks that `topic` exists on `brokers` before anything is sent to it.
    pub fn require_topic(&self, topic: &str, brokers: &str) -> Result<(), TopicCheckError> {
        match self.partitions(topic, Duration::from_secs(10)) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(TopicCheckError::NoSuchTopic {
                topic: topic.to_owned(),
                brokers: brokers.to_owned(),
            }),
            Err(source) => Err(TopicCheckError::Metadata {
                brokers: brokers.to_owned(),
                source,
            }),
        }
    }

    /// Queues one record, waiting for room when the queue is full.
    pub fn send(&mut self, topic: &str, key: &[u8], value: &[u8]) -> Result<(), KafkaError> {
        self.send_raw(BaseRecord::to(topic).key(key).payload(value))
    }

    /// Waits until everything queued is delivered; an error if any record was not.
    pub fn flush(&mut self, timeout: Duration) -> Result<u64, KafkaError> {
        self.producer.flush(timeout)?;
        self.delivered()
    }

    /// [`InputProducer::flush`] for a producer with `linger.ms=0`, which sends every record at
    /// once: it polls for the delivery reports every millisecond. rdkafka's flush polls in
    /// steps of a whole 100 ms, which the demo, flushing once per day of history, paid each
    /// day; but only that flush makes librdkafka send a record still lingering.
    pub fn flush_unlingered(&mut self, timeout: Duration) -> Result<u64, KafkaError> {
        let deadline = Instant::now() + timeout;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(1));
        }
        self.flush(deadline.saturating_duration_since(Instant::now()))
    }

    /// The count of records sent; an error if any was not delivered.
    fn delivered(&self) -> Result<u64, KafkaError> {
        if self.producer.context().0.load(Ordering::Relaxed) > 0 {
            return Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            ));
        }
        Ok(self.sent)
    }

    /// Queues a record with headers (the tests' poison corpus).
    pub fn send_raw(&mut self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}
