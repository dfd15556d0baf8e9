//! Poison records on a real broker (issue 3, "Poison"): every malformed record of a seeded
//! corpus lands in the DLQ once, with the right `error.kind`, its original bytes and key, and
//! the SPEC 3 headers; the valid records around it, a third of them in Avro, are all folded
//! (the documents equal `feedback fold` over the same records).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{assert_same_documents, Cluster};
use feedback::event::Topic;
use feedback::simulate::{generate, Scenario, SimConfig, SimPayload, SimRecord};
use rand::{Rng, SeedableRng};

/// (topic, payload, expected error.kind).
fn corpus() -> Vec<(Topic, String, &'static str)> {
    let outcome = |spend: &str| {
        format!(
            r#"{{"tenant":"healthy-000","date":"2026-08-20","channel":"meta","spend":{spend},"revenue":10}}"#
        )
    };
    let mut big = String::from(
        r#"{"tenant":"healthy-000","date":"2026-08-20","channel":"meta","spend":1,"revenue":1,"campaign_id":""#,
    );
    // Letters that lz4 cannot shrink much: the broker checks a batch's compressed size, and a
    // run of one letter would fit the DLQ's limit compressed.
    let mut x: u64 = 1;
    big.extend((0..1_100_000).map(|_| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        char::from(b'a' + (x >> 59) as u8 % 26)
    }));
    big.push_str(r#""}"#);
    vec![
        (Topic::Outcomes, r#"{"tenant":"healthy-000","date":"2026-08-2"#.into(), "malformed"),
        (Topic::Outcomes, "not json at all".into(), "malformed"),
        (Topic::Outcomes, outcome(r#""abc""#), "schema_mismatch"),
        (Topic::Outcomes, outcome(r#""NaN""#), "schema_mismatch"),
        (Topic::Outcomes, r#"{"tenant":"healthy-000","channel":"meta","spend":1,"revenue":2}"#.into(), "schema_mismatch"),
        (Topic::Outcomes, outcome("-5"), "invalid_field"),
        (Topic::Outcomes, r#"{"tenant":"../etc","date":"2026-08-20","channel":"meta","spend":1,"revenue":2}"#.into(), "invalid_field"),
        (Topic::Outcomes, big, "too_large"),
        // Confluent framing with a schema id nobody registered.
        (Topic::Outcomes, "\u{0}\u{0}\u{0}\u{0}\u{63}garbage".into(), "malformed"),
        (Topic::Forecasts, r#"{"tenant":"degraded-001","plan_id":"p","issued_at":"2026-08-01T00:00:00Z","lines":[]}"#.into(), "invalid_field"),
        (Topic::Forecasts, r#"[1,2,3]"#.into(), "schema_mismatch"),
        (Topic::FeatureImportances, r#"{"tenant":"drift-003","computed_at":"yesterday","importances":{"a":1}}"#.into(), "schema_mismatch"),
    ]
}

#[test]
fn every_poison_record_reaches_the_dlq_with_its_kind() {
    let Some(cluster) = Cluster::new("poison", 3) else {
        return;
    };
    let mut records = generate(&SimConfig {
        seed: 5,
        tenants: 4,
        days: 40,
        scenario: Scenario::Mixed,
        ..SimConfig::default()
    });
    // The DLQ takes what a topic takes by Kafka's default (1 MiB), less than the largest
    // poison record (1.1 MB, which its own topic takes): that one's copy must be cut to fit,
    // not fail its transaction again and again.
    cluster.set_topic_config(
        &cluster.topics.dlq,
        "max.message.bytes",
        &feedback::kafka::admin::KAFKA_DEFAULT_MAX_MESSAGE_BYTES.to_string(),
    );
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);

    let mut expected: BTreeMap<Vec<u8>, &str> = BTreeMap::new();
    for (topic, payload, kind) in corpus() {
        // Keyed by the tenant it names, as its producer would have keyed it, even where the
        // rest does not parse (a refusal is counted in that tenant only on its partition).
        let tenant = payload
            .split_once(r#""tenant":""#)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or_else(|| "unknown".to_owned(), |(t, _)| t.to_owned());
        expected.insert(payload.clone().into_bytes(), kind);
        let at = rng.gen_range(0..records.len());
        records.insert(
            at,
            SimRecord {
                topic,
                tenant,
                payload: SimPayload::Poison(payload),
            },
        );
    }
    // Every third valid record goes as Confluent-framed Avro, the rest as JSON: both formats
    // on one topic, and none of the Avro ones may be lost.
    let avro = feedback::codec::AvroSchemas::builtin();
    let mut producer = feedback::kafka::produce::InputProducer::new(&cluster.brokers).unwrap();
    let mut as_avro = 0;
    for (i, r) in records.iter().enumerate() {
        let bytes = match &r.payload {
            SimPayload::Event(e) if i % 3 == 0 => {
                as_avro += 1;
                let id = match r.topic {
                    Topic::Outcomes => feedback::codec::OUTCOME_SCHEMA_ID,
                    Topic::Forecasts => feedback::codec::FORECAST_SCHEMA_ID,
                    Topic::FeatureImportances => feedback::codec::FEATURE_IMPORTANCE_SCHEMA_ID,
                };
                feedback::codec::encode_avro(e, id, &avro).unwrap()
            }
            _ => r.payload_json().into_bytes(),
        };
        producer
            .send(cluster.topic_of(r), r.tenant.as_bytes(), &bytes)
            .unwrap();
    }
    // Valid events routed against SPEC 2: folded, each would start a second state of its
    // tenant on another partition.
    let misrouted = |day: u32| {
        format!(
            r#"{{"tenant":"healthy-000","date":"2026-08-{day:02}","channel":"meta","spend":1,"revenue":2,"source":"misrouted"}}"#
        )
    };
    let home = feedback::kafka::routing::partition_of(b"healthy-000", 3);
    let outcomes = cluster.topics.outcomes.clone();
    let (by_key, by_partition, no_key) = (misrouted(11), misrouted(12), misrouted(13));
    producer
        .send(&outcomes, b"zzz-other", by_key.as_bytes())
        .unwrap();
    producer
        .send_raw(
            rdkafka::producer::BaseRecord::to(&outcomes)
                .key(b"healthy-000".as_slice())
                .payload(by_partition.as_bytes())
                .partition((home + 1) % 3),
        )
        .unwrap();
    producer
        .send_raw(
            rdkafka::producer::BaseRecord::to(&outcomes)
                .payload(no_key.as_bytes())
                .partition(home),
        )
        .unwrap();
    for payload in [by_key, by_partition, no_key.clone()] {
        expected.insert(payload.into_bytes(), "wrong_partition");
    }
    // Refused for what it holds, on another partition than its tenant's: it must not be
    // counted in a state of that tenant there (which would write over its documents).
    let invalid =
        r#"{"tenant":"healthy-000","date":"2026-08-14","channel":"meta","spend":-3,"revenue":2}"#;
    producer
        .send_raw(
            rdkafka::producer::BaseRecord::to(&outcomes)
                .key(b"healthy-000".as_slice())
                .payload(invalid.as_bytes())
                .partition((home + 2) % 3),
        )
        .unwrap();
    expected.insert(invalid.as_bytes().to_vec(), "invalid_field");
    producer.flush(Duration::from_secs(60)).unwrap();
    assert!(as_avro > 300);
    let storage = cluster.dir.path().join("storage");
    let mut p = cluster.spawn("poison", &storage, &[]);
    cluster.wait_caught_up(Duration::from_secs(300), &mut [&mut p]);
    assert!(
        p.terminate(Duration::from_secs(60)).success(),
        "{}",
        p.log_tail()
    );

    let dlq = cluster.read_all(&cluster.topics.dlq);
    assert_eq!(dlq.len(), expected.len(), "DLQ holds {} records", dlq.len());
    let mut truncated = 0;
    for (key, headers, value) in &dlq {
        let value = match headers.get("error.payload.truncated_from") {
            Some(size) => {
                truncated += 1;
                let whole = expected
                    .keys()
                    .find(|k| k.starts_with(value) && k.len().to_string() == *size)
                    .unwrap_or_else(|| {
                        panic!("a cut DLQ record of {} bytes from {size}", value.len())
                    });
                assert!(value.len() < whole.len());
                whole
            }
            None => value,
        };
        let want = expected.get(value).unwrap_or_else(|| {
            panic!(
                "unexpected DLQ record {:?}",
                String::from_utf8_lossy(&value[..value.len().min(80)])
            )
        });
        assert_eq!(
            headers.get("error.kind").map(String::as_str),
            Some(*want),
            "{headers:?}"
        );
        assert!(!headers["error.message"].is_empty());
        let source = &headers["source.topic"];
        assert!([
            &cluster.topics.outcomes,
            &cluster.topics.forecasts,
            &cluster.topics.feature_importances
        ]
        .contains(&source));
        assert!(headers["source.partition"]
            .parse::<i32>()
            .is_ok_and(|p| (0..3).contains(&p)));
        assert!(headers["source.offset"].parse::<i64>().is_ok());
        if *value != no_key.as_bytes() {
            assert!(!key.is_empty(), "the original key is kept");
        }
    }

    assert_eq!(
        truncated, 1,
        "the 1.1 MB record's copy is cut to the DLQ's 1 MiB"
    );

    let (fold_storage, _) = cluster.fold(vec![cluster.write_jsonl(&records)]);
    assert_same_documents(&storage, &fold_storage);
}
