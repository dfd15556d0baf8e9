//! The three input payloads of SPEC 3 as Rust types, shared by every edge (JSON, Avro, Kafka, files).
//!
//! Decoding and validation live in `crate::codec` and `validate`; the fold only ever sees values
//! that passed both, so it never has to defend against bad input.

pub mod validate;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use compact_str::CompactString;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

pub use validate::{RejectKind, Rejection};

/// The input topics, by role. Names are configurable; the role is what the fold cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    Outcomes,
    Forecasts,
    FeatureImportances,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Outcomes, Topic::Forecasts, Topic::FeatureImportances];

    /// The default topic name of SPEC 2.
    pub fn default_name(self) -> &'static str {
        match self {
            Topic::Outcomes => "outcomes",
            Topic::Forecasts => "forecasts",
            Topic::FeatureImportances => "feature-importances",
        }
    }
}

/// What spend and revenue really were for one (tenant, date, channel, campaign, source).
///
/// Names and ids are `CompactString`s: up to 24 bytes they live inline, so decoding a JSON
/// record (a plan has a channel and a campaign per line) allocates nothing for them (apache-avro
/// still hands over a `String`, which is then copied inline). Against `String`,
/// `feedback fold` spent 5 to 9% less CPU time (docs/PERFORMANCE.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub tenant: CompactString,
    #[serde(deserialize_with = "date")]
    pub date: NaiveDate,
    pub channel: CompactString,
    #[serde(default)]
    pub campaign_id: CompactString,
    pub spend: f64,
    pub revenue: f64,
    #[serde(default = "default_source")]
    pub source: CompactString,
    #[serde(
        default,
        deserialize_with = "optional_utc_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_at: Option<DateTime<Utc>>,
}

pub fn default_source() -> CompactString {
    CompactString::const_new("default")
}

/// One plan: many forecast lines issued together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forecast {
    pub tenant: CompactString,
    pub plan_id: CompactString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// When the plan was issued, with the offset it was written in: a line's horizon counts
    /// from this local date, so a plan issued at 22:00-05:00 on the 15th has its horizon 0 on
    /// the 15th, not on the UTC date.
    #[serde(deserialize_with = "offset_time")]
    pub issued_at: DateTime<FixedOffset>,
    #[serde(deserialize_with = "objects")]
    pub lines: Vec<ForecastLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastLine {
    #[serde(deserialize_with = "date")]
    pub date: NaiveDate,
    pub channel: CompactString,
    #[serde(default)]
    pub campaign_id: CompactString,
    /// Planned spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<f64>,
    pub revenue: Quantiles,
}

/// The model's feature importances, with optional samples of feature values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureImportance {
    pub tenant: CompactString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(deserialize_with = "utc_time")]
    pub computed_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub importances: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub samples: BTreeMap<String, Vec<f64>>,
}

/// A decoded, validated record of one of the input topics.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Outcome(Outcome),
    Forecast(Forecast),
    FeatureImportance(FeatureImportance),
}

impl Event {
    pub fn tenant(&self) -> &str {
        match self {
            Event::Outcome(o) => &o.tenant,
            Event::Forecast(f) => &f.tenant,
            Event::FeatureImportance(f) => &f.tenant,
        }
    }

    pub fn topic(&self) -> Topic {
        match self {
            Event::Outcome(_) => Topic::Outcomes,
            Event::Forecast(_) => Topic::Forecasts,
            Event::FeatureImportance(_) => Topic::FeatureImportances,
        }
    }
}

/// A payload read from a map only (a JSON object).
///
/// Derived `Deserialize` impls also accept a struct as a sequence of its fields in order, so
/// `["acme", "2026-11-20", ...]` would read as an Outcome; the wire shape of SPEC 3 is an
/// object, and anything else is a schema mismatch.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = ObjectOnly<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ObjectOnly<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }

        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// A `YYYY-MM-DD` date. chrono's own parser goes through its general format machinery, which
/// cost about a tenth of decoding a plan; this reads the ten bytes directly and hands anything
/// else to chrono, so every other input is accepted or refused exactly as chrono would.
fn date<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
    struct DateVisitor;

    impl Visitor<'_> for DateVisitor {
        type Value = NaiveDate;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a date as YYYY-MM-DD")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NaiveDate, E> {
            fast_date(v.as_bytes()).map_or_else(|| v.parse().map_err(E::custom), Ok)
        }
    }

    d.deserialize_str(DateVisitor)
}

pub(crate) fn fast_date(b: &[u8]) -> Option<NaiveDate> {
    let digits = |r| ascii_number(b, r);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    NaiveDate::from_ymd_opt(digits(0..4)? as i32, digits(5..7)?, digits(8..10)?)
}

/// The decimal number written by the ASCII digits `b[r]`; None if any is not a digit or the
/// range is out of `b`.
fn ascii_number(b: &[u8], r: std::ops::Range<usize>) -> Option<u32> {
    b.get(r)?.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// An RFC 3339 time as chrono's `Deserialize` reads it, with the common forms
/// (`YYYY-MM-DDTHH:MM:SS`, an optional fraction, `Z` or `+HH:MM`) read directly: chrono's
/// general parser took 300 to 600 ns a time, about as long as decoding the rest of an outcome.
/// Every other text goes to chrono, so it is accepted or refused exactly as before.
struct Rfc3339(DateTime<FixedOffset>);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TimeVisitor;

        impl Visitor<'_> for TimeVisitor {
            type Value = Rfc3339;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                // chrono's wording, so that a refusal reads as it did.
                f.write_str("an RFC 3339 formatted date and time string")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rfc3339, E> {
                fast_rfc3339(v.as_bytes())
                    .map_or_else(|| v.parse().map_err(E::custom), Ok)
                    .map(Rfc3339)
            }
        }

        d.deserialize_str(TimeVisitor)
    }
}

fn offset_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
    Rfc3339::deserialize(d).map(|t| t.0)
}

fn utc_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    Rfc3339::deserialize(d).map(|t| t.0.with_timezone(&Utc))
}

fn optional_utc_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::<Rfc3339>::deserialize(d).map(|t| t.map(|t| t.0.with_timezone(&Utc)))
}

/// `YYYY-MM-DDTHH:MM:SS[.F](Z|+HH:MM|-HH:MM)` with 1 to 9 fraction digits; None for anything
/// else, leap seconds included, which chrono then reads by its own rules.
pub(crate) fn fast_rfc3339(b: &[u8]) -> Option<DateTime<FixedOffset>> {
    let number = |r| ascii_number(b, r);
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = fast_date(&b[..10])?;
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if second > 59 {
        return None;
    }
    let mut at = 19;
    let mut nano = 0;
    if b[at] == b'.' {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        nano = number(at + 1..at + 1 + digits)? * 10u32.pow(9 - digits as u32);
        at += 1 + digits;
    }
    let offset = match &b[at..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (number(at + 1..at + 3)?, number(at + 4..at + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let seconds = (h * 3600 + m * 60) as i32;
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    let local = date.and_hms_nano_opt(hour, minute, second, nano)?;
    FixedOffset::east_opt(offset)?
        .from_local_datetime(&local)
        .single()
}

fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    let items = Vec::<ObjectOnly<T>>::deserialize(d)?;
    Ok(items.into_iter().map(|ObjectOnly(item)| item).collect())
}

/// Forecast quantiles keyed by level in percent (`p10` is level 10), sorted by level.
///
/// On the wire it is a map `{"p10": 300, "p50": 420, "p90": 560}`. Keys that are not `pNN` with
/// NN in 01..99 are a schema error; whether p50 is present is checked by validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quantiles(pub SmallVec<[(u8, f64); 3]>);

impl Quantiles {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u8, f64)>) -> Self {
        let mut v: SmallVec<[(u8, f64); 3]> = pairs.into_iter().collect();
        v.sort_by_key(|&(level, _)| level);
        v.dedup_by_key(|&mut (level, _)| level);
        Quantiles(v)
    }

    pub fn get(&self, level: u8) -> Option<f64> {
        self.0.iter().find(|&&(l, _)| l == level).map(|&(_, v)| v)
    }

    pub fn p50(&self) -> Option<f64> {
        self.get(50)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, f64)> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when some higher quantile is below a lower one (p10 > p50, say).
    pub fn crosses(&self) -> bool {
        self.0.windows(2).any(|w| w[0].1 > w[1].1)
    }
}

/// `p07` for level 7: the wire name of a quantile level.
pub fn quantile_key(level: u8) -> String {
    let mut key = String::with_capacity(3);
    push_quantile_key(&mut key, level);
    key
}

/// Appends [`quantile_key`] of `level` to `text`, without `fmt` (the storage documents name
/// every quantile of every day's calibration figures).
pub fn push_quantile_key(text: &mut String, level: u8) {
    text.push('p');
    if level >= 100 {
        text.push(char::from(b'0' + level / 100));
    }
    text.push(char::from(b'0' + level / 10 % 10));
    text.push(char::from(b'0' + level % 10));
}

/// Parses `pNN` (NN in 01..99) into the level NN.
pub fn parse_quantile_key(key: &str) -> Option<u8> {
    let digits = key.strip_prefix('p')?;
    if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let level: u8 = digits.parse().ok()?;
    (1..=99).contains(&level).then_some(level)
}

impl Serialize for Quantiles {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for &(level, value) in &self.0 {
            map.serialize_entry(&quantile_key(level), &value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Quantiles {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantilesVisitor;

        impl<'de> Visitor<'de> for QuantilesVisitor {
            type Value = Quantiles;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of quantile keys pNN to numbers")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Quantiles, A::Error> {
                let mut pairs: SmallVec<[(u8, f64); 3]> = SmallVec::new();
                while let Some(QuantileLevel(level)) = map.next_key()? {
                    let value: f64 = map.next_value()?;
                    if pairs.iter().any(|&(l, _)| l == level) {
                        return Err(serde::de::Error::custom(format_args!(
                            "quantile `{}` given twice",
                            quantile_key(level)
                        )));
                    }
                    pairs.push((level, value));
                }
                pairs.sort_by_key(|&(level, _)| level);
                Ok(Quantiles(pairs))
            }
        }

        deserializer.deserialize_map(QuantilesVisitor)
    }
}

/// A `pNN` map key read as its level, without allocating the key (it is on the hot path).
struct QuantileLevel(u8);

impl<'de> Deserialize<'de> for QuantileLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = QuantileLevel;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quantile key pNN")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<QuantileLevel, E> {
                parse_quantile_key(key).map(QuantileLevel).ok_or_else(|| {
                    E::custom(format_args!(
                        "quantile key `{key}` is not pNN with NN in 01..99"
                    ))
                })
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_as_chrono_parses_them() {
        for text in [
            "2026-11-30",
            "2024-02-29",
            "2026-02-29",
            "2026-13-01",
            "2026-00-10",
            "0000-01-01",
            "9999-12-31",
            "2026-1-05",
            "2026-01-5x",
            "+2026-01-05",
            "2026/01/05",
            "26-01-05",
            "２０２６-01-05",
            "2026-01-05 ",
            "",
        ] {
            let json = serde_json::to_string(text).unwrap();
            let mine = date(&mut serde_json::Deserializer::from_str(&json)).ok();
            assert_eq!(mine, text.parse::<NaiveDate>().ok(), "{text}");
        }
    }

    /// The time fields read exactly what chrono's own `Deserialize` reads: the same value and
    /// offset, and the same refusal message.
    fn same_as_chrono(text: &str) {
        let json = serde_json::to_string(text).unwrap();
        let mine = offset_time(&mut serde_json::Deserializer::from_str(&json))
            .map(|t| (t, t.offset().local_minus_utc()))
            .map_err(|e| e.to_string());
        let chrono = serde_json::from_str::<DateTime<FixedOffset>>(&json)
            .map(|t| (t, t.offset().local_minus_utc()))
            .map_err(|e| e.to_string());
        assert_eq!(mine, chrono, "{text}");
        let mine =
            utc_time(&mut serde_json::Deserializer::from_str(&json)).map_err(|e| e.to_string());
        let chrono = serde_json::from_str::<DateTime<Utc>>(&json).map_err(|e| e.to_string());
        assert_eq!(mine, chrono, "{text}");
    }

    #[test]
    fn times_parse_as_chrono_parses_them() {
        for text in [
            "2026-08-02T03:00:00Z",
            "2026-08-02T03:00:00.5Z",
            "2026-08-02T03:00:00.123456789Z",
            "2026-08-02T03:00:00.1234567891Z",
            "2026-08-02T03:00:00.Z",
            "2026-08-02T22:00:00-05:00",
            "2026-08-02T22:00:00+05:30",
            "2026-08-02T22:00:00-00:00",
            "2026-08-02T22:00:00+23:59",
            "2026-08-02T22:00:00+24:00",
            "2026-08-02T22:00:00+05:60",
            "2026-08-02T22:00:00+0500",
            "2026-08-02T22:00:00+05",
            "2026-08-02t22:00:00z",
            "2026-08-02 22:00:00Z",
            "2026-08-02T24:00:00Z",
            "2026-08-02T23:60:00Z",
            "2026-12-31T23:59:60Z",
            "2026-12-31T23:59:60.5Z",
            "2026-02-30T00:00:00Z",
            "2026-08-02T03:00Z",
            "2026-08-02T03:00:00",
            "2026-08-02T03:00:00ZZ",
            "2026-08-02",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999-23:59",
            "",
        ] {
            same_as_chrono(text);
        }
        // The common forms take the direct path; leap seconds and the rest go to chrono.
        for text in [
            "2026-08-02T03:00:00Z",
            "2026-08-02T03:00:00.123Z",
            "2026-08-02T22:00:00-05:00",
        ] {
            assert!(fast_rfc3339(text.as_bytes()).is_some(), "{text}");
        }
        for text in [
            "2026-12-31T23:59:60Z",
            "2026-08-02t22:00:00z",
            "2026-08-02 22:00:00Z",
        ] {
            assert!(fast_rfc3339(text.as_bytes()).is_none(), "{text}");
        }
        // Not a string at all: the same refusal.
        let mine =
            offset_time(&mut serde_json::Deserializer::from_str("17")).map_err(|e| e.to_string());
        let chrono = serde_json::from_str::<DateTime<FixedOffset>>("17").map_err(|e| e.to_string());
        assert_eq!(mine.unwrap_err(), chrono.unwrap_err());
        let o: Outcome = serde_json::from_str(
            r#"{"tenant":"a","date":"2026-08-01","channel":"meta","spend":1,"revenue":2,"observed_at":null}"#,
        )
        .unwrap();
        assert_eq!(o.observed_at, None);
    }

    proptest::proptest! {
        #[test]
        fn random_times_parse_as_chrono_parses_them(
            (year, month, day) in (0u32..10_000, 0u32..14, 0u32..33),
            (hour, minute, second) in (0u32..26, 0u32..62, 0u32..62),
            fraction in proptest::collection::vec(0u8..10, 0..11),
            dot in proptest::bool::ANY,
            (offset, offset_hour, offset_minute) in (0usize..4, 0u32..26, 0u32..62),
        ) {
            let mut text =
                format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
            if dot {
                text.push('.');
                text.extend(fraction.iter().map(|&f| char::from(b'0' + f)));
            }
            match offset {
                0 => text.push('Z'),
                1 => text.push_str(&format!("+{offset_hour:02}:{offset_minute:02}")),
                2 => text.push_str(&format!("-{offset_hour:02}:{offset_minute:02}")),
                _ => {}
            }
            same_as_chrono(&text);
        }
    }

    #[test]
    fn quantile_keys_are_written_as_fmt_writes_them() {
        for level in 0..=u8::MAX {
            assert_eq!(quantile_key(level), format!("p{level:02}"));
        }
        for lo in 0..=100 {
            assert_eq!(
                crate::fold::stats::interval_key(lo),
                format!("p{lo:02}_p{:02}", 100 - lo)
            );
        }
    }

    #[test]
    fn quantile_keys_parse_only_two_digit_levels() {
        assert_eq!(parse_quantile_key("p10"), Some(10));
        assert_eq!(parse_quantile_key("p01"), Some(1));
        assert_eq!(parse_quantile_key("p99"), Some(99));
        assert_eq!(parse_quantile_key("p00"), None);
        assert_eq!(parse_quantile_key("p5"), None);
        assert_eq!(parse_quantile_key("p100"), None);
        assert_eq!(parse_quantile_key("q10"), None);
        assert_eq!(quantile_key(5), "p05");
    }

    #[test]
    fn quantiles_deserialize_sorted_and_detect_crossings() {
        let q: Quantiles = serde_json::from_str(r#"{"p90": 5, "p10": 7, "p50": 6}"#).unwrap();
        assert_eq!(
            q.iter().map(|(l, _)| l).collect::<Vec<_>>(),
            vec![10, 50, 90]
        );
        assert!(q.crosses());
        assert!(serde_json::from_str::<Quantiles>(r#"{"mean": 1}"#).is_err());
        assert!(serde_json::from_str::<Quantiles>(r#"{"p10": 1, "p10": 2}"#).is_err());
    }

    #[test]
    fn payloads_are_objects_never_positional_arrays() {
        let line = r#"{"date": "2026-11-20", "channel": "meta", "revenue": {"p50": 1}}"#;
        let ObjectOnly(parsed) = serde_json::from_str::<ObjectOnly<ForecastLine>>(line).unwrap();
        assert_eq!(parsed.revenue.p50(), Some(1.0));
        let positional = r#"["2026-11-20", "meta", "", null, {"p50": 1}]"#;
        assert!(serde_json::from_str::<ForecastLine>(positional).is_ok());
        assert!(serde_json::from_str::<ObjectOnly<ForecastLine>>(positional).is_err());
        let forecast = format!(
            r#"{{"tenant": "acme", "plan_id": "p", "issued_at": "2026-11-15T00:00:00Z", "lines": [{positional}]}}"#
        );
        assert!(serde_json::from_str::<Forecast>(&forecast).is_err());
    }
}
