//! Topic creation (`feedback create-topics`, the demo, the tests) and the start-up check of
//! SPEC 2: the three inputs co-partitioned, every other topic there.

use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;

use crate::config::TopicNames;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot read the cluster's metadata from {brokers}: {source}")]
    Metadata {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "topic {0:?} does not exist; create the topics first, for example with \
         `feedback create-topics --brokers ... --partitions N`"
    )]
    Missing(String),
    #[error(
        "the input topics are not co-partitioned: {0}. A tenant's outcomes, forecasts and \
         feature importances must land on the same partition number, so the three topics need \
         the same partition count (SPEC 2)"
    )]
    NotCoPartitioned(String),
    #[error(
        "state topic {topic:?} has {has} partitions, fewer than the {needs} of the inputs: \
         partition p of the inputs keeps its state in partition p of the state topic"
    )]
    StateTooSmall {
        topic: String,
        has: usize,
        needs: usize,
    },
    #[error(
        "state topic {topic:?} has cleanup.policy={policy}: it must be compacted \
         (cleanup.policy=compact), or Kafka deletes day records past retention and a restore \
         silently loses state. Fix it with: kafka-configs.sh --bootstrap-server ... --alter \
         --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact"
    )]
    StateNotCompacted { topic: String, policy: String },
    #[error("cannot create topic {topic:?}: {reason}")]
    Create { topic: String, reason: String },
    #[error("cannot create the topics: cannot reach the Kafka cluster at {brokers} (waited up to 10 s): {reason}")]
    Unreachable { brokers: String, reason: String },
    #[error("cannot create the topics: {0}")]
    Client(String),
}

/// What a state topic's `cleanup.policy` means for the changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// `compact`: every key's latest record stays.
    Compacted,
    /// `compact,delete`: compacted, but segments older than retention go too, and with them
    /// the state of tenants that did not change for that long.
    CompactedAndDeleted,
    /// Anything else (`delete`): records vanish past retention.
    Not(String),
}

impl Compaction {
    pub fn of(policy: &str) -> Compaction {
        let parts: Vec<&str> = policy.split(',').map(str::trim).collect();
        match (parts.contains(&"compact"), parts.contains(&"delete")) {
            (true, false) => Compaction::Compacted,
            (true, true) => Compaction::CompactedAndDeleted,
            _ => Compaction::Not(policy.to_owned()),
        }
    }
}

/// Kafka's default `max.message.bytes` of a topic (the broker's `message.max.bytes`).
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// What `run` reads of its output topics' configuration at start, with one DescribeConfigs;
/// a None is what the cluster did not say (no permission to describe configs, say).
#[derive(Debug, Default)]
pub struct OutputSettings {
    /// The state topic's `cleanup.policy` (it must compact).
    pub state_cleanup_policy: Option<String>,
    /// The largest record batch the DLQ topic takes (`max.message.bytes`: its own setting or
    /// the broker's default).
    pub dlq_max_message_bytes: Option<usize>,
}

pub fn output_settings(
    config: &ClientConfig,
    state: &str,
    dlq: &str,
    timeout: Duration,
) -> OutputSettings {
    let described = (|| {
        let admin: AdminClient<DefaultClientContext> = config.create().ok()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let resources = [
            ResourceSpecifier::Topic(state),
            ResourceSpecifier::Topic(dlq),
        ];
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        rt.block_on(admin.describe_configs(&resources, &opts)).ok()
    })()
    .unwrap_or_default();
    let described: Vec<_> = described.into_iter().filter_map(Result::ok).collect();
    let value = |topic: &str, key: &str| {
        (described.iter())
            .find(|r| matches!(&r.specifier, OwnedResourceSpecifier::Topic(t) if t == topic))?
            .get(key)?
            .value
            .clone()
    };
    OutputSettings {
        state_cleanup_policy: value(state, "cleanup.policy"),
        dlq_max_message_bytes: value(dlq, "max.message.bytes").and_then(|v| v.parse().ok()),
    }
}

/// The partition count of each named topic, or which is missing.
fn partitions(metadata: &Metadata, topic: &str) -> Result<usize, TopicError> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|&n| n > 0)
        .ok_or_else(|| TopicError::Missing(topic.to_owned()))
}

/// Checks the topics `run` needs and returns the input partition count.
pub fn check_topics<C: ClientContext>(
    client: &Client<C>,
    brokers: &str,
    topics: &TopicNames,
    timeout: Duration,
) -> Result<usize, TopicError> {
    let metadata = client
        .fetch_metadata(None, timeout)
        .map_err(|source| TopicError::Metadata {
            brokers: brokers.to_owned(),
            source,
        })?;
    let counts = topics
        .inputs()
        .into_iter()
        .map(|t| partitions(&metadata, t).map(|n| (t, n)))
        .collect::<Result<Vec<_>, _>>()?;
    if counts.iter().any(|&(_, n)| n != counts[0].1) {
        let list = counts
            .iter()
            .map(|(t, n)| format!("{t} has {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(TopicError::NotCoPartitioned(list));
    }
    let needs = counts[0].1;
    partitions(&metadata, &topics.alerts)?;
    partitions(&metadata, &topics.dlq)?;
    let has = partitions(&metadata, &topics.state)?;
    if has < needs {
        return Err(TopicError::StateTooSmall {
            topic: topics.state.clone(),
            has,
            needs,
        });
    }
    Ok(needs)
}

/// Creates the six topics of SPEC 2 (inputs, alerts and DLQ with `partitions`, the state
/// changelog compacted with as many); a topic that exists is left as it is.
pub async fn create_topics(
    brokers: &str,
    topics: &TopicNames,
    partitions: i32,
    replication: i32,
    client_overrides: &[(String, String)],
) -> Result<Vec<String>, TopicError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in client_overrides {
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| TopicError::Client(e.to_string()))?;
    // A cluster that does not answer fails here within 10 s, as the other commands do, rather
    // than after the creation's own timeout.
    let reach = admin.inner().fetch_metadata(None, Duration::from_secs(10));
    reach.map_err(|e| TopicError::Unreachable {
        brokers: brokers.to_owned(),
        reason: e.to_string(),
    })?;
    // Records up to a little over the 1 MiB the validation allows, so an oversize record can
    // reach the processor and be refused with its reason instead of failing at the producer.
    let max_bytes = (4 * 1024 * 1024).to_string();
    fn plain<'a>(
        name: &'a str,
        partitions: i32,
        replication: i32,
        max_bytes: &'a str,
    ) -> NewTopic<'a> {
        NewTopic::new(name, partitions, TopicReplication::Fixed(replication))
            .set("max.message.bytes", max_bytes)
    }
    let list: Vec<NewTopic> = vec![
        plain(&topics.outcomes, partitions, replication, &max_bytes),
        plain(&topics.forecasts, partitions, replication, &max_bytes),
        plain(
            &topics.feature_importances,
            partitions,
            replication,
            &max_bytes,
        ),
        plain(&topics.alerts, partitions, replication, &max_bytes),
        plain(&topics.dlq, partitions, replication, &max_bytes),
        NewTopic::new(
            &topics.state,
            partitions,
            TopicReplication::Fixed(replication),
        )
        .set("cleanup.policy", "compact")
        .set("max.message.bytes", &max_bytes),
    ];
    let results = admin
        .create_topics(
            &list,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| TopicError::Client(e.to_string()))?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TopicError::Create {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::Compaction;

    #[test]
    fn only_a_compacted_state_topic_passes() {
        assert_eq!(Compaction::of("compact"), Compaction::Compacted);
        assert_eq!(
            Compaction::of("compact,delete"),
            Compaction::CompactedAndDeleted
        );
        assert_eq!(
            Compaction::of("delete, compact"),
            Compaction::CompactedAndDeleted
        );
        assert_eq!(Compaction::of("delete"), Compaction::Not("delete".into()));
    }
}
