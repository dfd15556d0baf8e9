//! SPEC 2's routing of an input record: keyed by its tenant, on the partition Java's murmur2
//! partitioner gives that key (librdkafka's `murmur2_random`). A processor folds a partition's
//! records into that partition's state, so a record routed otherwise would start a second,
//! partial state of its tenant on another partition, whose documents would replace the real
//! ones; it is refused instead (kind `wrong_partition`), and the DLQ says where it belongs.

use crate::event::validate::{RejectKind, Rejection};

/// The partition of `key` among `partitions`, as Kafka's Java client and librdkafka's
/// `murmur2_random` partitioner compute it for a record with a key.
pub fn partition_of(key: &[u8], partitions: usize) -> i32 {
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    (hash as u64 % partitions.max(1) as u64) as i32
}

/// Whether a valid event of `tenant` came keyed by its tenant and on its tenant's partition
/// among the topic's `partitions`.
pub fn check(
    tenant: &str,
    key: Option<&[u8]>,
    partition: i32,
    partitions: usize,
) -> Result<(), Rejection> {
    // Without the tenant: counted in the tenant's `rejected`, the refusal would create the very
    // second state of it, on this partition, that it is refused to prevent. The metrics and the
    // DLQ count it.
    let refuse = |message: String| Err(Rejection::new(RejectKind::WrongPartition, message));
    let Some(key) = key else {
        return refuse(format!(
            "the record has no key: inputs are keyed by their tenant, here {tenant:?} (SPEC 2)"
        ));
    };
    if key != tenant.as_bytes() {
        return refuse(format!(
            "the record's key {:?} is not its tenant {tenant:?}: inputs are keyed by their \
             tenant (SPEC 2)",
            String::from_utf8_lossy(key)
        ));
    }
    let belongs = partition_of(key, partitions);
    if belongs != partition {
        // librdkafka's default partitioner: what a producer of confluent-kafka (Python, Go,
        // .NET) or node-rdkafka uses unless told otherwise. Worth naming when it fits, though
        // with few partitions it also fits by chance.
        let hint = match consistent_partition_of(key, partitions) == partition {
            true => {
                " It is where librdkafka's default partitioner (consistent_random, CRC32) puts \
                 it, so likely a librdkafka producer (confluent-kafka, node-rdkafka), which \
                 needs partitioner=murmur2_random."
            }
            false => "",
        };
        return refuse(format!(
            "tenant {tenant:?} belongs on partition {belongs} of {partitions} (Java's murmur2 \
             partitioner, librdkafka's murmur2_random), not {partition}: another partitioner, \
             or partitions added since it was produced.{hint}"
        ));
    }
    Ok(())
}

/// The partition librdkafka's default partitioner (`consistent_random`, like `consistent` for
/// a record with a key) gives `key`: its CRC32 modulo the partition count.
pub fn consistent_partition_of(key: &[u8], partitions: usize) -> i32 {
    (u64::from(crc32fast::hash(key)) % partitions.max(1) as u64) as i32
}

/// A refused record is counted in the `rejected` of the tenant it names, in its partition's
/// state; one routed against SPEC 2 loses its tenant instead, for the reason [`check`] gives.
pub fn attribute(
    mut rejection: Rejection,
    key: Option<&[u8]>,
    partition: i32,
    partitions: usize,
) -> Rejection {
    if let Some(tenant) = &rejection.tenant {
        if check(tenant, key, partition, partitions).is_err() {
            rejection.tenant = None;
        }
    }
    rejection
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature of librdkafka's built-in partitioners.
    type Partitioner = unsafe extern "C" fn(
        *const rdkafka::bindings::rd_kafka_topic_t,
        *const std::ffi::c_void,
        usize,
        i32,
        *mut std::ffi::c_void,
        *mut std::ffi::c_void,
    ) -> i32;

    /// One of librdkafka's own partitioners, the reference: they read neither the topic nor
    /// the opaques, so null ones do.
    fn librdkafka_with(partitioner: Partitioner, key: &[u8], partitions: i32) -> i32 {
        unsafe {
            partitioner(
                std::ptr::null(),
                key.as_ptr().cast(),
                key.len(),
                partitions,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        }
    }

    /// librdkafka's murmur2 partitioner.
    fn librdkafka(key: &[u8], partitions: i32) -> i32 {
        librdkafka_with(
            rdkafka::bindings::rd_kafka_msg_partitioner_murmur2,
            key,
            partitions,
        )
    }

    #[test]
    fn partitions_agree_with_librdkafka() {
        let mut keys: Vec<Vec<u8>> = (0..2000)
            .map(|i| format!("tenant-{i}").into_bytes())
            .collect();
        keys.extend((0..40).map(|n| (0..n).map(|i| (i * 37 + n) as u8).collect()));
        keys.push("healthy-000".into());
        for key in &keys {
            for partitions in [1, 2, 3, 6, 7, 12, 100] {
                assert_eq!(
                    partition_of(key, partitions as usize),
                    librdkafka(key, partitions),
                    "{key:?} over {partitions}"
                );
            }
        }
    }

    /// librdkafka's `consistent` partitioner (what `consistent_random` does with a key).
    fn librdkafka_consistent(key: &[u8], partitions: i32) -> i32 {
        librdkafka_with(
            rdkafka::bindings::rd_kafka_msg_partitioner_consistent,
            key,
            partitions,
        )
    }

    #[test]
    fn the_consistent_partition_agrees_with_librdkafka() {
        for i in 0..2000 {
            let key = format!("tenant-{i}").into_bytes();
            for partitions in [1, 2, 3, 6, 7, 12, 100] {
                assert_eq!(
                    consistent_partition_of(&key, partitions as usize),
                    librdkafka_consistent(&key, partitions),
                    "{key:?} over {partitions}"
                );
            }
        }
    }

    #[test]
    fn a_record_of_librdkafkas_default_partitioner_is_named_as_such() {
        // A tenant whose CRC32 partition differs from its murmur2 one among 12.
        let tenant = (0..)
            .map(|i| format!("tenant-{i}"))
            .find(|t| partition_of(t.as_bytes(), 12) != consistent_partition_of(t.as_bytes(), 12))
            .unwrap();
        let key = tenant.as_bytes();
        let crc = consistent_partition_of(key, 12);
        let refused = check(&tenant, Some(key), crc, 12).unwrap_err();
        assert!(
            refused.message.contains("partitioner=murmur2_random"),
            "{}",
            refused.message
        );
        let other = (0..12)
            .find(|&p| p != crc && p != partition_of(key, 12))
            .unwrap();
        let refused = check(&tenant, Some(key), other, 12).unwrap_err();
        assert!(
            !refused.message.contains("consistent_random"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn a_record_routed_otherwise_is_refused_with_where_it_belongs() {
        let right = partition_of(b"acme", 6);
        assert!(check("acme", Some(b"acme"), right, 6).is_ok());
        let wrong = check("acme", Some(b"acme"), (right + 1) % 6, 6).unwrap_err();
        assert_eq!(wrong.kind, RejectKind::WrongPartition);
        assert!(
            wrong
                .message
                .contains(&format!("belongs on partition {right} of 6")),
            "{}",
            wrong.message
        );
        assert_eq!(wrong.tenant, None, "counted in no tenant's state");
        let key = check("acme", Some(b"other"), right, 6).unwrap_err();
        assert!(
            key.message
                .contains("key \"other\" is not its tenant \"acme\""),
            "{}",
            key.message
        );
        let none = check("acme", None, right, 6).unwrap_err();
        assert!(none.message.contains("no key"), "{}", none.message);
        // A record refused for another reason keeps its tenant only where it belongs.
        let refused =
            || Rejection::new(RejectKind::InvalidField, "negative").with_tenant(Some("acme"));
        let kept = attribute(refused(), Some(b"acme"), right, 6);
        assert_eq!(kept.tenant.as_deref(), Some("acme"));
        let dropped = attribute(refused(), Some(b"acme"), (right + 1) % 6, 6);
        assert_eq!(
            (dropped.tenant, dropped.kind),
            (None, RejectKind::InvalidField)
        );
    }
}
