//! Codec tests: round trips through both formats, and realistic bad records for each reject kind.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use chrono::{NaiveDate, TimeZone, Utc};

use super::*;
use crate::event::{FeatureImportance, Forecast, ForecastLine, Outcome, Quantiles};

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn outcome() -> Outcome {
    Outcome {
        tenant: "acme".into(),
        date: day(2026, 11, 20),
        channel: "meta".into(),
        campaign_id: "cmp-1".into(),
        spend: 120.5,
        revenue: 480.0,
        source: "meta_ads".into(),
        observed_at: Some(Utc.with_ymd_and_hms(2026, 11, 21, 3, 0, 0).unwrap()),
    }
}

fn forecast() -> Forecast {
    Forecast {
        tenant: "acme".into(),
        plan_id: "plan-2026-11-15".into(),
        model_version: Some("mmm-v12".into()),
        issued_at: Utc
            .with_ymd_and_hms(2026, 11, 15, 0, 0, 0)
            .unwrap()
            .fixed_offset(),
        lines: vec![
            ForecastLine {
                date: day(2026, 11, 20),
                channel: "meta".into(),
                campaign_id: "cmp-1".into(),
                spend: Some(100.0),
                revenue: Quantiles::from_pairs([(10, 300.0), (50, 420.0), (90, 560.0)]),
            },
            ForecastLine {
                date: day(2026, 11, 15),
                channel: "google".into(),
                campaign_id: Default::default(),
                spend: None,
                // Crossing quantiles are accepted.
                revenue: Quantiles::from_pairs([(5, 0.1 + 0.2), (50, 1e-300), (95, 0.0)]),
            },
        ],
    }
}

fn importance() -> FeatureImportance {
    FeatureImportance {
        tenant: "acme".into(),
        model_version: Some("mmm-v12".into()),
        computed_at: Utc.timestamp_opt(1_763_164_800, 123_456_789).unwrap(),
        method: Some("shap".into()),
        importances: BTreeMap::from([
            ("meta_spend".into(), 0.41),
            ("google_spend".into(), 0.33),
            ("seasonality".into(), -0.12),
        ]),
        samples: BTreeMap::from([("meta_spend".into(), vec![120.0, 98.5, 143.2])]),
    }
}

fn events() -> [Event; 3] {
    [
        Event::Outcome(outcome()),
        Event::Forecast(forecast()),
        Event::FeatureImportance(importance()),
    ]
}

fn json_decode(topic: Topic, json: &str) -> Result<Event, Rejection> {
    decode(topic, json.as_bytes(), &AvroSchemas::builtin())
}

/// Asserts the kind of a rejection, a part of its message and the tenant it is counted against.
#[track_caller]
fn assert_rejected(
    result: Result<Event, Rejection>,
    kind: RejectKind,
    needle: &str,
    tenant: Option<&str>,
) {
    let r = result.expect_err("expected a rejection");
    assert_eq!(r.kind, kind, "{r}");
    assert!(
        r.message.contains(needle),
        "message {:?} lacks {needle:?}",
        r.message
    );
    assert_eq!(r.tenant.as_deref(), tenant, "{r}");
}

/// A Confluent frame of `value` written with `schema`.
fn frame(id: u32, schema: &Schema, value: &Value) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_ref(&mut out, value)
        .unwrap();
    out
}

const OUTCOME_JSON: &str = r#"{"tenant": "acme", "date": "2026-11-20", "channel": "meta", "campaign_id": "cmp-1",
 "spend": 120.5, "revenue": 480.0, "source": "meta_ads", "observed_at": "2026-11-21T03:00:00Z"}"#;

const FORECAST_JSON: &str = r#"{"tenant": "acme", "plan_id": "plan-2026-11-15", "model_version": "mmm-v12",
 "issued_at": "2026-11-15T00:00:00Z",
 "lines": [{"date": "2026-11-20", "channel": "meta", "campaign_id": "cmp-1",
            "spend": 100.0, "revenue": {"p10": 300, "p50": 420, "p90": 560}}]}"#;

const IMPORTANCE_JSON: &str = r#"{"tenant": "acme", "model_version": "mmm-v12", "computed_at": "2026-11-15T00:00:00Z",
 "method": "shap",
 "importances": {"meta_spend": 0.41, "google_spend": 0.33, "seasonality": 0.12},
 "samples": {"meta_spend": [120.0, 98.5, 143.2]}}"#;

#[test]
fn the_spec_examples_decode() {
    assert_eq!(
        json_decode(Topic::Outcomes, OUTCOME_JSON),
        Ok(Event::Outcome(outcome()))
    );
    let mut expected = self::forecast();
    expected.lines.truncate(1);
    assert_eq!(
        json_decode(Topic::Forecasts, FORECAST_JSON),
        Ok(Event::Forecast(expected))
    );
    let Ok(Event::FeatureImportance(fi)) = json_decode(Topic::FeatureImportances, IMPORTANCE_JSON)
    else {
        panic!("the SPEC example does not decode");
    };
    assert_eq!(fi.importances["seasonality"], 0.12);
    assert_eq!(fi.samples["meta_spend"], vec![120.0, 98.5, 143.2]);
}

#[test]
fn optional_fields_take_their_defaults() {
    let json =
        r#"{"revenue": 1, "spend": 2, "channel": "meta", "date": "2026-11-20", "tenant": "acme"}"#;
    let Ok(Event::Outcome(o)) = json_decode(Topic::Outcomes, json) else {
        panic!("a minimal outcome does not decode");
    };
    assert_eq!(o.campaign_id, "");
    assert_eq!(o.source, "default");
    assert_eq!(o.observed_at, None);
}

#[test]
fn each_payload_round_trips_through_json() {
    let avro = AvroSchemas::builtin();
    for event in events() {
        let bytes = encode_json(&event);
        assert_ne!(bytes.first(), Some(&0));
        assert_eq!(decode(event.topic(), &bytes, &avro), Ok(event));
    }
}

#[test]
fn each_payload_round_trips_through_avro() {
    let avro = AvroSchemas::builtin();
    for event in events() {
        let id = AvroSchemas::builtin_id(event.topic());
        let bytes = encode_avro(&event, id, &avro).unwrap();
        assert_eq!(bytes[0], 0);
        assert_eq!(bytes[1..5], id.to_be_bytes());
        assert_eq!(decode(event.topic(), &bytes, &avro), Ok(event));
    }
}

#[test]
fn absent_optionals_round_trip_through_both_formats() {
    let avro = AvroSchemas::builtin();
    let mut o = outcome();
    o.observed_at = None;
    o.campaign_id = Default::default();
    let mut f = importance();
    f.model_version = None;
    f.method = None;
    f.samples.clear();
    for event in [Event::Outcome(o), Event::FeatureImportance(f)] {
        let id = AvroSchemas::builtin_id(event.topic());
        let avro_bytes = encode_avro(&event, id, &avro).unwrap();
        assert_eq!(
            decode(event.topic(), &avro_bytes, &avro).as_ref(),
            Ok(&event)
        );
        assert_eq!(
            decode(event.topic(), &encode_json(&event), &avro),
            Ok(event)
        );
    }
}

/// xorshift64*: deterministic, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A finite double: arbitrary bits, ordinary money, or an awkward decimal.
    fn double(&mut self) -> f64 {
        let v = match self.below(4) {
            0 => f64::from_bits(self.next()),
            1 => self.below(100_000_000) as f64 / 100.0,
            2 => self.next() as f64 / u64::MAX as f64 * 1e6,
            _ => [0.1 + 0.2, 1e-300, 5e-324, 1e15, 0.0, 1.0 / 3.0][self.below(6) as usize],
        };
        // Validation caps amounts at 1e15; larger bit patterns fold back below it.
        if v.is_finite() {
            v.abs() % 1e15
        } else {
            1.5
        }
    }

    fn text(&mut self, alphabet: &[&str], max: u64) -> String {
        (0..self.below(max + 1))
            .map(|_| alphabet[self.below(alphabet.len() as u64) as usize])
            .collect()
    }

    fn name(&mut self) -> String {
        let s = self.text(&["a", "Z", "0", "_", ".", "-"], 20);
        if s.is_empty() {
            "x".into()
        } else {
            s
        }
    }

    fn timestamp(&mut self) -> chrono::DateTime<Utc> {
        let secs = 1_700_000_000 + self.below(200_000_000) as i64;
        let nanos = [0, 1_000_000 * self.below(1000), self.below(1_000_000_000)]
            [self.below(3) as usize] as u32;
        Utc.timestamp_opt(secs, nanos).unwrap()
    }
}

const FREE_TEXT: [&str; 8] = ["a", "Z", " ", "\"", "\\", "/", "é", "漢"];

/// Free text that JSON writes without escapes.
const PLAIN_TEXT: [&str; 6] = ["a", "Z", " ", "/", "é", "漢"];

fn random_event(rng: &mut Rng) -> Event {
    random_event_of(rng, &FREE_TEXT)
}

/// A random event whose free-text fields are made of `text`.
fn random_event_of(rng: &mut Rng, text: &[&str]) -> Event {
    let tenant = format!("t{}", rng.below(1000));
    match rng.below(3) {
        0 => Event::Outcome(Outcome {
            tenant: tenant.into(),
            date: day(2026, 1, 1) + chrono::Days::new(rng.below(700)),
            channel: rng.name().into(),
            campaign_id: rng.text(text, 30).into(),
            spend: rng.double(),
            revenue: rng.double(),
            source: rng.name().into(),
            observed_at: (rng.below(2) == 0).then(|| rng.timestamp()),
        }),
        1 => {
            let issued_at = rng.timestamp().fixed_offset();
            let lines =
                (0..1 + rng.below(20))
                    .map(|_| ForecastLine {
                        date: issued_at.date_naive() + chrono::Days::new(rng.below(90)),
                        channel: rng.name().into(),
                        campaign_id: rng.text(text, 10).into(),
                        spend: (rng.below(2) == 0).then(|| rng.double()),
                        revenue: Quantiles::from_pairs(std::iter::once((50, rng.double())).chain(
                            (0..rng.below(5)).map(|_| (1 + rng.below(99) as u8, rng.double())),
                        )),
                    })
                    .collect();
            Event::Forecast(Forecast {
                tenant: tenant.into(),
                plan_id: format!("plan-{}", rng.text(text, 10)).into(),
                model_version: (rng.below(2) == 0).then(|| rng.text(text, 10)),
                issued_at,
                lines,
            })
        }
        _ => Event::FeatureImportance(FeatureImportance {
            tenant: tenant.into(),
            model_version: (rng.below(2) == 0).then(|| rng.text(text, 10)),
            computed_at: rng.timestamp(),
            method: (rng.below(2) == 0).then(|| "shap".into()),
            importances: {
                let mut m: BTreeMap<String, f64> = (0..1 + rng.below(30))
                    .map(|i| (format!("f{i} {}", rng.text(text, 5)), -rng.double()))
                    .collect();
                // All zero is refused (shares undefined); keep the event valid.
                if m.values().all(|&v| v == 0.0) {
                    m.insert("nonzero".into(), 1.0);
                }
                m
            },
            samples: (0..rng.below(4))
                .map(|i| {
                    let n = 1 + rng.below(50);
                    (format!("f{i}"), (0..n).map(|_| rng.double()).collect())
                })
                .collect(),
        }),
    }
}

#[test]
fn decoding_what_the_encoders_wrote_gives_back_the_same_event() {
    let avro = AvroSchemas::builtin();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..3000 {
        let event = random_event(&mut rng);
        let topic = event.topic();
        assert_eq!(
            decode(topic, &encode_json(&event), &avro).as_ref(),
            Ok(&event),
            "json, event {i}"
        );
        let bytes = encode_avro(&event, AvroSchemas::builtin_id(topic), &avro).unwrap();
        assert_eq!(decode(topic, &bytes, &avro), Ok(event), "avro, event {i}");
    }
}

// JSON rejections

#[test]
fn bad_json_is_malformed_and_counted_against_its_tenant() {
    let cut = &OUTCOME_JSON[..60];
    assert_rejected(
        json_decode(Topic::Outcomes, cut),
        RejectKind::Malformed,
        "json: EOF while parsing",
        Some("acme"),
    );
    let broken = OUTCOME_JSON.replace("\"spend\": 120.5,", "\"spend\": 120.5 ");
    assert_rejected(
        json_decode(Topic::Outcomes, &broken),
        RejectKind::Malformed,
        "expected `,` or `}`",
        Some("acme"),
    );
    assert_rejected(
        json_decode(Topic::Outcomes, &format!("{OUTCOME_JSON} {{}}")),
        RejectKind::Malformed,
        "trailing characters",
        Some("acme"),
    );
    assert_rejected(
        json_decode(Topic::Outcomes, ""),
        RejectKind::Malformed,
        "EOF",
        None,
    );
    let bare_nan = OUTCOME_JSON.replace("120.5", "NaN");
    assert_rejected(
        json_decode(Topic::Outcomes, &bare_nan),
        RejectKind::Malformed,
        "expected value",
        Some("acme"),
    );
}

#[test]
fn invalid_utf8_is_malformed() {
    let mut bytes = OUTCOME_JSON.as_bytes().to_vec();
    let at = OUTCOME_JSON.find("cmp-1").unwrap();
    bytes[at] = 0xff;
    assert_rejected(
        decode(Topic::Outcomes, &bytes, &AvroSchemas::builtin()),
        RejectKind::Malformed,
        "not UTF-8",
        Some("acme"),
    );
}

#[test]
fn wrong_types_are_schema_mismatches() {
    for (from, to, needle) in [
        (
            "120.5",
            "\"120.5\"",
            "json: spend: invalid type: string \"120.5\", expected f64",
        ),
        ("120.5", "\"NaN\"", "spend: invalid type: string \"NaN\""),
        ("\"meta\"", "[\"meta\"]", "channel: invalid type: sequence"),
        (
            "\"2026-11-20\"",
            "\"2026-13-40\"",
            "date: input is out of range",
        ),
        (
            "\"2026-11-21T03:00:00Z\"",
            "\"yesterday\"",
            "observed_at: input contains invalid characters",
        ),
    ] {
        let json = OUTCOME_JSON.replacen(from, to, 1);
        assert_rejected(
            json_decode(Topic::Outcomes, &json),
            RejectKind::SchemaMismatch,
            needle,
            Some("acme"),
        );
    }
}

/// serde_json's messages say only the column; the DLQ's message names the field, down to the
/// forecast line.
#[test]
fn a_value_of_the_wrong_form_is_named_by_its_path() {
    for (from, to, needle) in [
        (
            "\"2026-11-20\"",
            "\"2026-02-30\"",
            "json: lines[0].date: input is out of range",
        ),
        (
            "\"2026-11-15T00:00:00Z\"",
            "\"2026-11-15\"",
            "json: issued_at: premature end of input",
        ),
        (
            "\"p50\": 420",
            "\"p50\": \"420\"",
            "json: lines[0].revenue.p50: invalid type",
        ),
    ] {
        let json = FORECAST_JSON.replacen(from, to, 1);
        assert_ne!(json, FORECAST_JSON, "{from}");
        assert_rejected(
            json_decode(Topic::Forecasts, &json),
            RejectKind::SchemaMismatch,
            needle,
            Some("acme"),
        );
    }
}

/// A key in the path is shown escaped, and a long one cut, so the error itself still shows.
#[test]
fn a_path_through_a_strange_or_long_key_is_escaped_and_cut() {
    let json = IMPORTANCE_JSON.replacen("\"samples\": {", "\"samples\": {\"a\\nb\": \"oops\", ", 1);
    assert_ne!(json, IMPORTANCE_JSON);
    assert_rejected(
        json_decode(Topic::FeatureImportances, &json),
        RejectKind::SchemaMismatch,
        "json: samples.a\\nb: invalid type: string \"oops\"",
        Some("acme"),
    );
    let long = "k".repeat(600);
    let json = IMPORTANCE_JSON.replacen(
        "\"samples\": {",
        &format!("\"samples\": {{\"{long}\": 1, "),
        1,
    );
    let r = json_decode(Topic::FeatureImportances, &json).unwrap_err();
    assert!(r.message.starts_with("json: samples.kkk"), "{}", r.message);
    assert!(
        r.message.contains("...: invalid type: integer `1`"),
        "{}",
        r.message
    );
}

#[test]
fn messages_quoting_huge_values_are_cut() {
    let json = OUTCOME_JSON.replace("120.5", &format!("\"{}\"", "9".repeat(500_000)));
    let r = json_decode(Topic::Outcomes, &json).unwrap_err();
    assert_eq!(r.kind, RejectKind::SchemaMismatch);
    assert!(
        r.message
            .starts_with("json: spend: invalid type: string \"999"),
        "{}",
        r.message
    );
    assert!(
        r.message.len() <= MAX_MESSAGE_BYTES + 3,
        "{}",
        r.message.len()
    );
    assert!(r.message.ends_with("..."));
}

#[test]
fn missing_and_unknown_fields_are_schema_mismatches() {
    let missing = OUTCOME_JSON.replace("\"revenue\": 480.0,", "");
    assert_rejected(
        json_decode(Topic::Outcomes, &missing),
        RejectKind::SchemaMismatch,
        "missing field `revenue`",
        Some("acme"),
    );
    let unknown = OUTCOME_JSON.replace("\"spend\"", "\"currency\": \"EUR\", \"spend\"");
    assert_rejected(
        json_decode(Topic::Outcomes, &unknown),
        RejectKind::SchemaMismatch,
        "unknown field `currency`",
        Some("acme"),
    );
    // An outcome on the forecasts topic is the wrong schema.
    assert_rejected(
        json_decode(Topic::Forecasts, OUTCOME_JSON),
        RejectKind::SchemaMismatch,
        "unknown field `date`",
        Some("acme"),
    );
    let bad_key = r#"{"tenant": "acme", "plan_id": "p", "issued_at": "2026-11-15T00:00:00Z",
        "lines": [{"date": "2026-11-20", "channel": "meta", "revenue": {"median": 1}}]}"#;
    assert_rejected(
        json_decode(Topic::Forecasts, bad_key),
        RejectKind::SchemaMismatch,
        "quantile key `median` is not pNN",
        Some("acme"),
    );
}

#[test]
fn a_json_value_that_is_not_an_object_is_a_schema_mismatch() {
    for json in ["42", "[1, 2]", "\"acme\"", "null", "true", "[]"] {
        for topic in Topic::ALL {
            assert_rejected(
                json_decode(topic, json),
                RejectKind::SchemaMismatch,
                "invalid type",
                None,
            );
        }
    }
}

#[test]
fn structs_written_as_arrays_are_schema_mismatches() {
    let positional = r#"["acme", "2026-11-20", "meta", "cmp-1", 120.5, 480.0, "meta_ads", null]"#;
    assert_rejected(
        json_decode(Topic::Outcomes, positional),
        RejectKind::SchemaMismatch,
        "invalid type: sequence, expected a JSON object",
        None,
    );
    let positional_line = r#"{"tenant": "acme", "plan_id": "p", "issued_at": "2026-11-15T00:00:00Z",
        "lines": [["2026-11-20", "meta", "", null, {"p50": 1}]]}"#;
    assert_rejected(
        json_decode(Topic::Forecasts, positional_line),
        RejectKind::SchemaMismatch,
        "invalid type: sequence, expected a JSON object",
        Some("acme"),
    );
}

#[test]
fn a_number_too_large_for_a_double_is_an_invalid_field() {
    let json = OUTCOME_JSON.replace("120.5", "1e400");
    assert_rejected(
        json_decode(Topic::Outcomes, &json),
        RejectKind::InvalidField,
        "number out of range",
        Some("acme"),
    );
}

#[test]
fn validation_runs_after_parsing() {
    let json = OUTCOME_JSON.replace("120.5", "-120.5");
    assert_rejected(
        json_decode(Topic::Outcomes, &json),
        RejectKind::InvalidField,
        "spend: -120.5 is negative",
        Some("acme"),
    );
    let json = OUTCOME_JSON.replace("\"acme\"", "\"../etc\"");
    assert_rejected(
        json_decode(Topic::Outcomes, &json),
        RejectKind::InvalidField,
        "tenant: \"../etc\" does not match",
        None,
    );
    let no_p50 = r#"{"tenant": "acme", "plan_id": "p", "issued_at": "2026-11-15T00:00:00Z",
        "lines": [{"date": "2026-11-20", "channel": "meta", "revenue": {"p50": 1}},
                  {"date": "2026-11-20", "channel": "meta", "revenue": {"p10": 1}}]}"#;
    assert_rejected(
        json_decode(Topic::Forecasts, no_p50),
        RejectKind::InvalidField,
        "lines[1].revenue: p50 is missing",
        Some("acme"),
    );
}

#[test]
fn a_bad_tenant_is_never_reported() {
    let json = OUTCOME_JSON
        .replace("\"acme\"", "\"../etc\"")
        .replace("120.5", "\"x\"");
    assert_rejected(
        json_decode(Topic::Outcomes, &json),
        RejectKind::SchemaMismatch,
        "invalid type",
        None,
    );
    let json = OUTCOME_JSON
        .replace("\"acme\"", "7")
        .replace("120.5", "\"x\"");
    assert_rejected(
        json_decode(Topic::Outcomes, &json),
        RejectKind::SchemaMismatch,
        "invalid type",
        None,
    );
}

#[test]
fn crossing_quantiles_are_accepted_in_both_formats() {
    let json = r#"{"tenant": "acme", "plan_id": "p", "issued_at": "2026-11-15T00:00:00Z",
        "lines": [{"date": "2026-11-20", "channel": "meta", "revenue": {"p10": 500, "p50": 420, "p90": 100}}]}"#;
    let Ok(event @ Event::Forecast(_)) = json_decode(Topic::Forecasts, json) else {
        panic!("crossing quantiles were rejected");
    };
    let Event::Forecast(f) = &event else {
        unreachable!()
    };
    assert!(f.lines[0].revenue.crosses());
    let avro = AvroSchemas::builtin();
    let bytes = encode_avro(&event, FORECAST_SCHEMA_ID, &avro).unwrap();
    assert_eq!(decode(Topic::Forecasts, &bytes, &avro), Ok(event));
}

#[test]
fn a_record_over_1_mib_is_too_large_in_either_format() {
    let avro = AvroSchemas::builtin();
    let padded = |n: usize| {
        let mut json = OUTCOME_JSON.to_owned();
        json.push_str(&" ".repeat(n - json.len()));
        json
    };
    assert!(json_decode(Topic::Outcomes, &padded(MAX_RECORD_BYTES)).is_ok());
    assert_rejected(
        json_decode(Topic::Outcomes, &padded(MAX_RECORD_BYTES + 1)),
        RejectKind::TooLarge,
        "1048577 bytes, more than the 1048576 allowed",
        Some("acme"),
    );
    let mut big = importance();
    big.samples
        .insert("big".into(), (0..140_000).map(f64::from).collect());
    let event = Event::FeatureImportance(big);
    for bytes in [
        encode_json(&event),
        encode_avro(&event, FEATURE_IMPORTANCE_SCHEMA_ID, &avro).unwrap(),
    ] {
        assert!(bytes.len() > MAX_RECORD_BYTES);
        assert_rejected(
            decode(Topic::FeatureImportances, &bytes, &avro),
            RejectKind::TooLarge,
            "more than the 1048576 allowed",
            Some("acme"),
        );
    }
}

// Avro rejections

fn outcome_frame() -> Vec<u8> {
    encode_avro(
        &Event::Outcome(outcome()),
        OUTCOME_SCHEMA_ID,
        &AvroSchemas::builtin(),
    )
    .unwrap()
}

#[test]
fn an_unknown_schema_id_is_malformed() {
    let mut bytes = outcome_frame();
    bytes[1..5].copy_from_slice(&99u32.to_be_bytes());
    assert_rejected(
        decode(Topic::Outcomes, &bytes, &AvroSchemas::builtin()),
        RejectKind::Malformed,
        "unknown schema id 99",
        None,
    );
    // Without the built-ins, even id 1 is unknown.
    assert_rejected(
        decode(Topic::Outcomes, &outcome_frame(), &AvroSchemas::new()),
        RejectKind::Malformed,
        "unknown schema id 1",
        None,
    );
}

#[test]
fn a_truncated_frame_is_malformed_at_every_length() {
    let avro = AvroSchemas::builtin();
    let bytes = outcome_frame();
    for len in 1..bytes.len() {
        let r = decode(Topic::Outcomes, &bytes[..len], &avro).expect_err("a cut frame decoded");
        assert_eq!(r.kind, RejectKind::Malformed, "cut at {len}: {r}");
        // Once the tenant (5 header bytes, 1 length byte, 4 bytes) is read, it is known.
        let expected = (len >= 10).then_some("acme");
        assert_eq!(r.tenant.as_deref(), expected, "cut at {len}: {r}");
    }
    assert_rejected(
        decode(Topic::Outcomes, &bytes[..3], &avro),
        RejectKind::Malformed,
        "shorter than the 5-byte Confluent header",
        None,
    );
    assert_rejected(
        decode(Topic::Outcomes, &bytes[..20], &avro),
        RejectKind::Malformed,
        "datum truncated",
        Some("acme"),
    );
}

#[test]
fn bytes_after_the_datum_are_malformed() {
    let mut bytes = outcome_frame();
    bytes.extend_from_slice(&[1, 2, 3]);
    assert_rejected(
        decode(Topic::Outcomes, &bytes, &AvroSchemas::builtin()),
        RejectKind::Malformed,
        "3 bytes after the end of the datum",
        Some("acme"),
    );
}

#[test]
fn garbage_datums_are_rejected_without_panicking_or_huge_allocations() {
    let avro = AvroSchemas::builtin();
    let mut rng = Rng(42);
    for i in 0..20_000 {
        let id = 1 + rng.below(4) as u32;
        let mut bytes = vec![0];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend((0..rng.below(64)).map(|_| rng.next() as u8));
        let topic = Topic::ALL[i % 3];
        if let Err(r) = decode(topic, &bytes, &avro) {
            assert_ne!(r.kind, RejectKind::TooLarge);
        }
    }
    // A map claiming a huge number of entries: refused before anything is allocated for them.
    let mut bytes = vec![0, 0, 0, 0, 3];
    bytes.extend_from_slice(&[8, b'a', b'c', b'm', b'e', 0, 8]);
    bytes.extend_from_slice(b"2026");
    bytes.extend_from_slice(&[0, 0xfe, 0xff, 0xff, 0xff, 0x0f]);
    assert_rejected(
        decode(Topic::FeatureImportances, &bytes, &avro),
        RejectKind::Malformed,
        "more than the record can hold",
        Some("acme"),
    );
}

#[test]
fn a_writer_schema_of_another_topic_is_a_schema_mismatch() {
    let avro = AvroSchemas::builtin();
    assert_rejected(
        decode(Topic::Forecasts, &outcome_frame(), &avro),
        RejectKind::SchemaMismatch,
        "schema id 1 (io.modelfeedback.Outcome) cannot be read as io.modelfeedback.Forecast",
        None,
    );
    let mut alert = vec![0, 0, 0, 0, 4];
    alert.push(0);
    assert_rejected(
        decode(Topic::Outcomes, &alert, &avro),
        RejectKind::SchemaMismatch,
        "schema id 4 (io.modelfeedback.Alert)",
        None,
    );
    let err = encode_avro(&Event::Outcome(outcome()), FORECAST_SCHEMA_ID, &avro).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::WrongTopic {
                id: 2,
                topic: "outcomes",
                ..
            }
        ),
        "{err}"
    );
    let err = encode_avro(&Event::Outcome(outcome()), 77, &avro).unwrap_err();
    assert!(matches!(err, CodecError::UnknownSchemaId(77)), "{err}");
}

#[test]
fn avro_values_are_validated_and_parsed_like_json() {
    let avro = AvroSchemas::builtin();
    let reader = avro.reader_schema(Topic::Outcomes);
    let with = |field: &str, value: Value| {
        let Value::Record(mut fields) = outcome_value() else {
            unreachable!()
        };
        for (name, v) in &mut fields {
            if name == field {
                *v = value.clone();
            }
        }
        frame(OUTCOME_SCHEMA_ID, reader, &Value::Record(fields))
    };
    assert_rejected(
        decode(Topic::Outcomes, &with("spend", Value::Double(-1.0)), &avro),
        RejectKind::InvalidField,
        "spend: -1 is negative",
        Some("acme"),
    );
    assert_rejected(
        decode(
            Topic::Outcomes,
            &with("spend", Value::Double(f64::NAN)),
            &avro,
        ),
        RejectKind::InvalidField,
        "spend: NaN is not a finite number",
        Some("acme"),
    );
    assert_rejected(
        decode(
            Topic::Outcomes,
            &with("date", Value::String("20/11/2026".into())),
            &avro,
        ),
        RejectKind::SchemaMismatch,
        "date: \"20/11/2026\" is not a date",
        Some("acme"),
    );
    assert_rejected(
        decode(
            Topic::Outcomes,
            &with("tenant", Value::String("../etc".into())),
            &avro,
        ),
        RejectKind::InvalidField,
        "tenant: ",
        None,
    );
}

fn outcome_value() -> Value {
    Value::Record(vec![
        ("tenant".into(), Value::String("acme".into())),
        ("date".into(), Value::String("2026-11-20".into())),
        ("channel".into(), Value::String("meta".into())),
        ("campaign_id".into(), Value::String("cmp-1".into())),
        ("spend".into(), Value::Double(120.5)),
        ("revenue".into(), Value::Double(480.0)),
        ("source".into(), Value::String("meta_ads".into())),
        (
            "observed_at".into(),
            Value::Union(1, Box::new(Value::String("2026-11-21T03:00:00Z".into()))),
        ),
    ])
}

// Schema evolution: writer schemas other than the reader's

/// An older producer's Outcome: other field order, no source nor observed_at, spend a float,
/// revenue a long, campaign_id nullable, and a field the reader does not know.
const OLD_OUTCOME: &str = r#"{"type": "record", "name": "Outcome", "namespace": "com.acme",
  "fields": [
    {"name": "revenue", "type": "long"},
    {"name": "tenant", "type": "string"},
    {"name": "currency", "type": {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD"]}},
    {"name": "spend", "type": "float"},
    {"name": "notes", "type": {"type": "array", "items": {"type": "map", "values": ["null", "bytes", "Currency"]}}},
    {"name": "campaign_id", "type": ["null", "string"], "default": null},
    {"name": "date", "type": "string"},
    {"name": "channel", "type": "string"}
  ]}"#;

fn old_outcome_value(campaign: Option<&str>) -> Value {
    let notes = Value::Array(vec![Value::Map(
        [
            (
                "a".to_owned(),
                Value::Union(1, Box::new(Value::Bytes(vec![1, 2]))),
            ),
            (
                "b".to_owned(),
                Value::Union(2, Box::new(Value::Enum(1, "USD".into()))),
            ),
        ]
        .into(),
    )]);
    Value::Record(vec![
        ("revenue".into(), Value::Long(480)),
        ("tenant".into(), Value::String("acme".into())),
        ("currency".into(), Value::Enum(0, "EUR".into())),
        ("spend".into(), Value::Float(120.5)),
        ("notes".into(), notes),
        (
            "campaign_id".into(),
            match campaign {
                Some(c) => Value::Union(1, Box::new(Value::String(c.into()))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
        ("date".into(), Value::String("2026-11-20".into())),
        ("channel".into(), Value::String("meta".into())),
    ])
}

#[test]
fn an_older_writer_schema_is_resolved_to_the_reader_schema() {
    let mut avro = AvroSchemas::builtin();
    avro.register(100, OLD_OUTCOME).unwrap();
    let writer = Schema::parse_str(OLD_OUTCOME).unwrap();
    let bytes = frame(100, &writer, &old_outcome_value(Some("cmp-1")));
    let expected = Outcome {
        source: "default".into(),
        observed_at: None,
        ..outcome()
    };
    assert_eq!(
        decode(Topic::Outcomes, &bytes, &avro),
        Ok(Event::Outcome(expected.clone()))
    );

    // The same bytes resolved by apache-avro, message by message, agree.
    let reference = apache_avro::reader::datum::GenericDatumReader::builder(&writer)
        .reader_schema(avro.reader_schema(Topic::Outcomes))
        .build()
        .unwrap()
        .read_value(&mut &bytes[5..])
        .unwrap();
    let reference = frame(
        OUTCOME_SCHEMA_ID,
        avro.reader_schema(Topic::Outcomes),
        &reference,
    );
    assert_eq!(
        decode(Topic::Outcomes, &reference, &avro),
        Ok(Event::Outcome(expected))
    );

    // The writer's null branch has no place in the reader's string campaign_id.
    let bytes = frame(100, &writer, &old_outcome_value(None));
    assert_rejected(
        decode(Topic::Outcomes, &bytes, &avro),
        RejectKind::SchemaMismatch,
        "a union branch the reader cannot take",
        Some("acme"),
    );
}

#[test]
fn events_encode_with_a_registered_older_schema() {
    const V0: &str = r#"{"type": "record", "name": "FeatureImportance", "fields": [
        {"name": "tenant", "type": "string"},
        {"name": "computed_at", "type": "string"},
        {"name": "importances", "type": {"type": "map", "values": "double"}},
        {"name": "run", "type": "long", "default": 7}
    ]}"#;
    let mut avro = AvroSchemas::builtin();
    avro.register(200, V0).unwrap();
    let event = Event::FeatureImportance(importance());
    let bytes = encode_avro(&event, 200, &avro).unwrap();
    assert_eq!(bytes[1..5], 200u32.to_be_bytes());
    let expected = FeatureImportance {
        model_version: None,
        method: None,
        samples: BTreeMap::new(),
        ..importance()
    };
    assert_eq!(
        decode(Topic::FeatureImportances, &bytes, &avro),
        Ok(Event::FeatureImportance(expected))
    );
}

#[test]
fn named_types_referenced_by_name_are_resolved() {
    // The writer repeats its ForecastLine type by name in a field the reader skips.
    let writer = r#"{"type": "record", "name": "Forecast", "namespace": "io.modelfeedback", "fields": [
        {"name": "tenant", "type": "string"},
        {"name": "plan_id", "type": "string"},
        {"name": "issued_at", "type": "string"},
        {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "ForecastLine", "fields": [
            {"name": "date", "type": "string"},
            {"name": "channel", "type": "string"},
            {"name": "revenue", "type": {"type": "map", "values": "double"}}]}}},
        {"name": "previous", "type": ["null", "ForecastLine"], "default": null}
    ]}"#;
    let mut avro = AvroSchemas::builtin();
    avro.register(300, writer).unwrap();
    let line = Value::Record(vec![
        ("date".into(), Value::String("2026-11-20".into())),
        ("channel".into(), Value::String("meta".into())),
        (
            "revenue".into(),
            Value::Map([("p50".to_owned(), Value::Double(420.0))].into()),
        ),
    ]);
    let value = Value::Record(vec![
        ("tenant".into(), Value::String("acme".into())),
        ("plan_id".into(), Value::String("p1".into())),
        (
            "issued_at".into(),
            Value::String("2026-11-15T00:00:00Z".into()),
        ),
        ("lines".into(), Value::Array(vec![line.clone()])),
        ("previous".into(), Value::Union(1, Box::new(line))),
    ]);
    let bytes = frame(300, avro.writer_schema(300).unwrap(), &value);
    let Ok(Event::Forecast(f)) = decode(Topic::Forecasts, &bytes, &avro) else {
        panic!("a writer with a named reference does not decode");
    };
    assert_eq!(f.lines.len(), 1);
    assert_eq!(f.lines[0].revenue.p50(), Some(420.0));
    assert_eq!(f.lines[0].spend, None);
    assert_eq!(f.model_version, None);
}

#[test]
fn schema_ids_are_registered_once() {
    let mut avro = AvroSchemas::builtin();
    avro.register(OUTCOME_SCHEMA_ID, OUTCOME_AVSC).unwrap();
    let err = avro.register(OUTCOME_SCHEMA_ID, FORECAST_AVSC).unwrap_err();
    assert!(matches!(err, CodecError::SchemaIdTaken(1)), "{err}");
    let err = avro.register(9, "{\"type\": \"record\"").unwrap_err();
    assert!(
        matches!(err, CodecError::InvalidSchema { id: 9, .. }),
        "{err}"
    );
    // A schema that fits no topic registers; reading it as any topic is a schema mismatch.
    avro.register(10, "\"string\"").unwrap();
    assert_rejected(
        decode(Topic::Outcomes, &[0, 0, 0, 0, 10, 2, b'a'], &avro),
        RejectKind::SchemaMismatch,
        "schema id 10 (an unnamed schema) cannot be read",
        None,
    );
}

#[test]
fn the_avro_schemas_mirror_the_json_shapes() {
    let avro = AvroSchemas::builtin();
    let mut o = outcome();
    o.observed_at = Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
    let mut f = importance();
    f.samples.insert("x".into(), vec![1.0]);
    for (event, name) in [
        (Event::Outcome(o), "io.modelfeedback.Outcome"),
        (Event::Forecast(forecast()), "io.modelfeedback.Forecast"),
        (
            Event::FeatureImportance(f),
            "io.modelfeedback.FeatureImportance",
        ),
    ] {
        let json: serde_json::Value = serde_json::from_slice(&encode_json(&event)).unwrap();
        let serde_json::Value::Object(json) = json else {
            unreachable!()
        };
        let Schema::Record(schema) = avro.reader_schema(event.topic()) else {
            panic!("not a record");
        };
        assert_eq!(schema.name.fullname(None), name);
        let mut avro_fields: Vec<_> = schema.fields.iter().map(|f| f.name.as_str()).collect();
        let mut json_fields: Vec<_> = json.keys().map(String::as_str).collect();
        avro_fields.sort_unstable();
        json_fields.sort_unstable();
        assert_eq!(avro_fields, json_fields);
    }
    let Schema::Record(alert) = avro.alert_schema() else {
        panic!("not a record");
    };
    let names: Vec<_> = alert.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "data"
        ]
    );
    assert_eq!(
        avro.writer_schema(ALERT_SCHEMA_ID),
        Some(avro.alert_schema())
    );
}

// The JSON fast path

/// What serde_json alone makes of a payload, the authority the fast path must agree with.
fn serde_only(topic: Topic, text: &str) -> Result<Event, serde_json::Error> {
    match topic {
        Topic::Outcomes => serde_json::from_str(text).map(|ObjectOnly(o)| Event::Outcome(o)),
        Topic::Forecasts => serde_json::from_str(text).map(|ObjectOnly(f)| Event::Forecast(f)),
        Topic::FeatureImportances => {
            serde_json::from_str(text).map(|ObjectOnly(f)| Event::FeatureImportance(f))
        }
    }
}

/// Debug text tells -0.0 from 0.0, which `==` does not.
fn same(a: &Event, b: &Event) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn the_fast_path_reads_plain_events_as_serde_json_does() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for i in 0..3000 {
        let event = random_event_of(&mut rng, &PLAIN_TEXT);
        let topic = event.topic();
        let json = String::from_utf8(encode_json(&event)).unwrap();
        let expected = serde_only(topic, &json).unwrap();
        match fast::decode(topic, &json) {
            Some(got) => {
                assert!(same(&got, &expected), "event {i}: {json}");
            }
            None => panic!("event {i} left to serde_json: {json}"),
        }
    }
    for (topic, json) in [
        (Topic::Outcomes, OUTCOME_JSON),
        (Topic::Forecasts, FORECAST_JSON),
        (Topic::FeatureImportances, IMPORTANCE_JSON),
    ] {
        let got = fast::decode(topic, json).expect("the SPEC examples are plain");
        assert!(same(&got, &serde_only(topic, json).unwrap()));
    }
}

#[test]
fn the_fast_path_never_accepts_what_serde_json_refuses_or_reads_it_differently() {
    const SPLICE: [&str; 24] = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        " ",
        "\n",
        "\u{1}",
        "0",
        "7",
        "-",
        "+",
        ".",
        "e",
        "E",
        "null",
        "true",
        "\"tenant\"",
        "\"p50\"",
        "\"spend\":1,",
        "1e999",
    ];
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let (mut both, mut refused) = (0, 0);
    for i in 0..20_000 {
        let event = random_event_of(&mut rng, &PLAIN_TEXT);
        let topic = event.topic();
        let mut json = encode_json(&event);
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(json.len() as u64 + 1) as usize;
            match rng.below(4) {
                0 if at < json.len() => {
                    json.remove(at);
                }
                1 if at < json.len() => {
                    let end = (at + 1 + rng.below(12) as usize).min(json.len());
                    let piece = json[at..end].to_vec();
                    json.splice(at..at, piece);
                }
                _ => {
                    let piece = SPLICE[rng.below(SPLICE.len() as u64) as usize];
                    json.splice(at..at, piece.bytes());
                }
            }
        }
        let Ok(text) = std::str::from_utf8(&json) else {
            continue;
        };
        match (fast::decode(topic, text), serde_only(topic, text)) {
            (Some(got), Ok(expected)) => {
                assert!(same(&got, &expected), "mutation {i}: {text}");
                both += 1;
            }
            (Some(got), Err(e)) => {
                panic!("mutation {i}: fast path read {got:?}, serde_json: {e}; {text}")
            }
            (None, Err(_)) => refused += 1,
            (None, Ok(_)) => {}
        }
    }
    // Both outcomes occur often enough for the comparison to mean something.
    assert!(
        both > 2000 && refused > 5000,
        "{both} read by both, {refused} refused"
    );
}

#[test]
fn the_fast_path_reads_numbers_as_serde_json_does() {
    let mut rng = Rng(0x94D0_49BB_1331_11EB);
    let digits = |rng: &mut Rng, most: u64| -> String {
        let n = 1 + rng.below(most);
        (0..n)
            .map(|_| char::from(b'0' + rng.below(10) as u8))
            .collect()
    };
    let mut checked = 0;
    for _ in 0..50_000 {
        let text = match rng.below(5) {
            0 => format!("{}", f64::from_bits(rng.next())),
            1 => format!("{:e}", f64::from_bits(rng.next())),
            2 => format!("{}.{}", digits(&mut rng, 12), digits(&mut rng, 12)),
            3 => {
                let mantissa = digits(&mut rng, 20);
                let sign = ["", "-", "+"][rng.below(3) as usize];
                format!("-{mantissa}e{sign}{}", rng.below(400))
            }
            _ => digits(&mut rng, 22),
        };
        let json = format!(r#"{{"p50":{text}}}"#);
        let mut reader = fast::Json::new(&json);
        let fast = reader.quantiles().map(|q| q.get(50).unwrap().to_bits());
        let serde = serde_json::from_str::<BTreeMap<String, f64>>(&json)
            .ok()
            .map(|m| m["p50"].to_bits());
        if let Some(bits) = fast {
            assert_eq!(Some(bits), serde, "{text}");
            checked += 1;
        }
    }
    assert!(checked > 20_000, "{checked}");
}

/// Hand-picked payloads at the fast path's edges: each must either be read by the fast path
/// to serde_json's value (`true`) or be left to serde_json (`false`), whatever serde_json
/// then makes of it.
#[test]
fn the_fast_path_takes_exactly_the_plain_edge_cases() {
    const OUTCOME: &str = r#""date":"2026-11-20","channel":"meta","spend":1,"revenue":2"#;
    const LINE: &str = r#""date":"2026-11-20","channel":"meta","revenue":{"p50":3}"#;
    const PLAN: &str = r#""tenant":"a","plan_id":"p","issued_at":"2026-11-15T00:00:00Z""#;
    const IMPORTANCE: &str = r#""tenant":"a","computed_at":"2026-11-15T00:00:00Z""#;
    let outcome = |fields: &str| (Topic::Outcomes, format!(r#"{{{fields},{OUTCOME}}}"#));
    let number = |n: &str| {
        let fields = r#""tenant":"a","date":"2026-11-20","channel":"c","revenue":2"#;
        (Topic::Outcomes, format!(r#"{{{fields},"spend":{n}}}"#))
    };
    // An outcome with its keys in the usual order.
    let usual = |fields: &str| {
        let values = r#""spend":1,"revenue":2,"source":"s","observed_at":null"#;
        (Topic::Outcomes, format!("{{{fields}{values}}}"))
    };
    let line = |fields: &str| {
        let lines = format!(r#""lines":[{{{fields}{LINE}}}]"#);
        (Topic::Forecasts, format!("{{{PLAN},{lines}}}"))
    };
    let plan = |fields: &str| {
        let lines = format!(r#""lines":[{{{LINE}}}]"#);
        (Topic::Forecasts, format!("{{{fields}{PLAN},{lines}}}"))
    };
    let importance = |fields: &str| {
        let maps = r#""importances":{"x":0.5}"#;
        (
            Topic::FeatureImportances,
            format!("{{{fields}{IMPORTANCE},{maps}}}"),
        )
    };
    let cases: Vec<((Topic, String), bool)> = vec![
        // Optional fields: absent or null, read by the fast path.
        (outcome(r#""tenant":"a""#), true),
        (outcome(r#""tenant":"a","observed_at":null"#), true),
        (line(""), true),
        (line(r#""spend":null,"#), true),
        (line(r#""spend":null,"campaign_id":"k","#), true),
        (plan(r#""model_version":null,"#), true),
        (importance(r#""model_version":null,"method":null,"#), true),
        (importance(r#""samples":{},"#), true),
        // Null where a value is required: serde_json's to refuse.
        (outcome(r#""tenant":null"#), false),
        (outcome(r#""tenant":"a","campaign_id":null"#), false),
        (outcome(r#""tenant":"a","source":null"#), false),
        (line(r#""campaign_id":null,"#), false),
        (plan(r#""lines":null,"#), false),
        (importance(r#""samples":null,"#), false),
        // Every duplicated key is serde_json's: an error for fields, last-wins for maps.
        (outcome(r#""tenant":"a","tenant":"b""#), false),
        (outcome(r#""tenant":"a","date":"2026-11-21""#), false),
        (outcome(r#""tenant":"a","spend":1"#), false),
        (
            outcome(r#""tenant":"a","observed_at":null,"observed_at":null"#),
            false,
        ),
        (line(r#""date":"2026-11-21","#), false),
        (line(r#""revenue":{"p50":3},"#), false),
        (line(r#""campaign_id":"k","campaign_id":"k","#), false),
        (plan(r#""plan_id":"q","#), false),
        (plan(r#""issued_at":"2026-11-15T00:00:00Z","#), false),
        (plan(r#""lines":[],"#), false),
        (importance(r#""tenant":"b","#), false),
        (importance(r#""method":"a","method":"b","#), false),
        (importance(r#""samples":{"x":[1],"x":[2]},"#), false),
        (
            (
                Topic::FeatureImportances,
                format!(r#"{{{IMPORTANCE},"importances":{{"x":0.5,"x":0.7}}}}"#),
            ),
            false,
        ),
        (
            (
                Topic::Forecasts,
                line("").1.replace(r#""p50":3"#, r#""p50":3,"p50":4"#),
            ),
            false,
        ),
        // Keys one byte off the usual ones where the usual ones are due, in either of the words
        // that recognise them ...
        (
            usual(r#""tenant":"a","date":"2026-11-20","channel":"c","campaign_ie":"k","#),
            false,
        ),
        (
            usual(r#""tenant":"a","date":"2026-11-20","channel":"c","campaign_id":"k","#),
            true,
        ),
        (
            usual(r#""tenanu":"a","date":"2026-11-20","channel":"c","#),
            false,
        ),
        (
            usual(r#""tenant":"a","datf":"2026-11-20","channel":"c","#),
            false,
        ),
        // ... and with the closing quote one byte off, in a key of up to eight bytes and in one
        // past eight (its head and its tail word).
        (
            usual(r#""tenant!:"a","date":"2026-11-20","channel":"c","#),
            false,
        ),
        (
            usual(r#""tenant":"a","date!:"2026-11-20","channel":"c","#),
            false,
        ),
        (
            usual(r#""tenant":"a","date":"2026-11-20","channel":"c","campaign_id!:"k","#),
            false,
        ),
        // A usual key with whitespace before its colon (read as a string), or another byte
        // where the colon belongs.
        (
            usual(r#""tenant" :"a","date":"2026-11-20","channel":"c","#),
            true,
        ),
        (
            usual(r#""tenant":"a","date";"2026-11-20","channel":"c","#),
            false,
        ),
        (
            usual(r#""tenant":"a","date":"2026-11-20","channel":"c","campaign_id" :"k","#),
            true,
        ),
        // A usual key with a value one byte short.
        (
            usual(r#""tenant":"a","date":"2026-11-2","channel":"c","#),
            false,
        ),
        (
            (
                Topic::Forecasts,
                format!(
                    r#"{{"tenant":"a","plan_id":"p","model_versiom":null,{}}}"#,
                    r#""issued_at":"2026-11-15T00:00:00Z","lines":[]"#
                ),
            ),
            false,
        ),
        (
            (
                Topic::Forecasts,
                line("").1.replace(r#""p50":3"#, r#""p51":3"#),
            ),
            true,
        ),
        // JSON's four whitespace characters, and no other.
        (
            (
                Topic::Outcomes,
                format!("{{\t\"tenant\"\r:\r\n \"a\" ,\t{OUTCOME}\n}}\r\n"),
            ),
            true,
        ),
        (
            (
                Topic::Outcomes,
                format!("{{\u{b}\"tenant\":\"a\",{OUTCOME}}}"),
            ),
            false,
        ),
        (
            (
                Topic::Outcomes,
                format!("{{\"tenant\":\"a\",{OUTCOME}}}\u{c}"),
            ),
            false,
        ),
        // Numbers at the grammar's edges.
        (number("-0"), true),
        (number("-0.0"), true),
        (number("0e99999"), true),
        (number("1e00005"), true),
        (number("1E+2"), true),
        (number("12345678901234567890"), false),
        (number("1e-400"), false),
        (number("1e400"), false),
        (number("1e99999999999"), false),
        (number("+1"), false),
        (number("01"), false),
        (number("1."), false),
        (number(".5"), false),
        (number("1e"), false),
        (number("1e+"), false),
    ];
    for ((topic, json), plain) in cases {
        let serde = serde_only(topic, &json);
        match fast::decode(topic, &json) {
            Some(got) => {
                assert!(plain, "the fast path read {json:?}");
                let expected = serde.unwrap_or_else(|e| panic!("{json}: {e}"));
                assert!(same(&got, &expected), "{json}");
            }
            None => assert!(
                !plain,
                "the fast path left {json} to serde_json ({serde:?})"
            ),
        }
    }
}

#[test]
fn the_word_wise_string_scan_finds_what_a_byte_wise_one_finds() {
    // Bytes at and around each boundary the word-wise tests draw.
    const BYTES: [u8; 16] = [
        b'"', b'\\', 0x00, 0x01, 0x1F, 0x20, 0x21, 0x23, 0x5B, 0x5D, b'a', 0x7F, 0x80, 0xA2, 0xDC,
        0xFF,
    ];
    let mut rng = Rng(0x6A09_E667_F3BC_C908);
    for _ in 0..100_000 {
        let len = rng.below(40) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| match rng.below(4) {
                0 => BYTES[rng.below(BYTES.len() as u64) as usize],
                _ => b'a' + rng.below(26) as u8,
            })
            .collect();
        let expected = bytes
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        assert_eq!(fast::string_end(&bytes), expected, "{bytes:?}");
    }
}
