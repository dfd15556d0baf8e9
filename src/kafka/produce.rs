//! Producing input records keyed by tenant: the demo's synthetic producer, and the tests'.
//! Java's partitioner (`murmur2_random`), so a tenant lands where a Java producer puts it.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::Settings;

/// A producer of input records to `brokers`.
pub struct InputProducer {
    producer: BaseProducer,
    sent: u64,
}

impl InputProducer {
    pub fn new(brokers: &str) -> Result<Self, KafkaError> {
        Ok(InputProducer {
            producer: Settings::plain_producer_config(brokers).create()?,
            sent: 0,
        })
    }

    /// Queues one record, waiting for room when the queue is full.
    pub fn send(&mut self, topic: &str, key: &[u8], value: &[u8]) -> Result<(), KafkaError> {
        let mut record = BaseRecord::to(topic).key(key).payload(value);
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

    /// Waits until everything queued is delivered.
    pub fn flush(&mut self, timeout: Duration) -> Result<u64, KafkaError> {
        self.producer.flush(timeout)?;
        Ok(self.sent)
    }
}
