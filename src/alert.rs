//! Alert events: CloudEvents 1.0 in structured JSON (SPEC 5), with deterministic ids.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

pub const SPEC_VERSION: &str = "1.0";
pub const SOURCE: &str = "model-feedback";

/// The `type` of an alert event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertType {
    #[serde(rename = "model.performance.degraded")]
    PerformanceDegraded,
    #[serde(rename = "model.calibration")]
    Calibration,
    #[serde(rename = "model.drift_detected")]
    DriftDetected,
    #[serde(rename = "model.retrain.summary")]
    RetrainSummary,
}

impl AlertType {
    pub const ALL: [AlertType; 4] = [
        AlertType::PerformanceDegraded,
        AlertType::Calibration,
        AlertType::DriftDetected,
        AlertType::RetrainSummary,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::PerformanceDegraded => "model.performance.degraded",
            AlertType::Calibration => "model.calibration",
            AlertType::DriftDetected => "model.drift_detected",
            AlertType::RetrainSummary => "model.retrain.summary",
        }
    }
}

impl fmt::Display for AlertType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CloudEvents 1.0 event as it is written to the `alerts` topic and to `--alerts-out`.
///
/// `data` is kept as the JSON text it will be written as: alerts are built on the fold's hot
/// path (a calibration report per tenant per day), and a tree of `serde_json::Value` for each
/// cost more than the rest of the record's fold. [`Alert::data_json`] parses it when needed.
/// The sinks write an alert with [`Alert::write_json`]: the same bytes as serializing it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alert {
    pub specversion: Cow<'static, str>,
    pub id: String,
    pub source: Cow<'static, str>,
    #[serde(rename = "type")]
    pub kind: AlertType,
    pub subject: String,
    pub time: String,
    pub datacontenttype: Cow<'static, str>,
    pub data: AlertData,
}

/// An alert's `data` as JSON text: made by serde_json ([`raw_data`]) or by a writer of this
/// crate tested to write what serde_json writes, so it is not parsed again to be checked (that
/// cost more than writing a daily report). It serializes as that text, verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertData(Box<str>);

impl AlertData {
    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// JSON text from a writer of this crate that writes what serde_json would (tested).
    pub(crate) fn written(json: String) -> AlertData {
        debug_assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(&json).is_ok(),
            "{json}"
        );
        AlertData(json.into_boxed_str())
    }
}

impl Serialize for AlertData {
    /// Through serde: checked as JSON first, which only the slow paths pay (tests, a
    /// `serde_json::Value` of an alert); the sinks use [`Alert::write_json`].
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.0.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AlertData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(AlertData(raw.get().into()))
    }
}

/// Appends `s` as a JSON string, as serde_json writes it (escaping only what needs it).
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    }
}

impl PartialEq for Alert {
    fn eq(&self, o: &Alert) -> bool {
        (
            &self.specversion,
            &self.id,
            &self.source,
            self.kind,
            &self.subject,
            &self.time,
        ) == (
            &o.specversion,
            &o.id,
            &o.source,
            o.kind,
            &o.subject,
            &o.time,
        ) && self.datacontenttype == o.datacontenttype
            && self.data.get() == o.data.get()
    }
}

/// The fields of `data` every alert type has.
#[derive(Deserialize)]
struct Probe {
    status: Option<String>,
    scope: Option<String>,
}

/// Serializes alert data to JSON text. The data types of this crate always serialize.
pub fn raw_data<T: Serialize>(data: &T) -> AlertData {
    AlertData(
        serde_json::to_string(data)
            .unwrap_or_else(|_| "null".to_owned())
            .into_boxed_str(),
    )
}

/// Namespace of the v5 UUIDs used as alert ids.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d0f_2a6e_5b1c_4c43_9f0e_8a8c_1e2d_7b31);

/// `Uuid::new_v5(&ID_NAMESPACE, name)`, hashed by the `sha1` crate, which uses the CPU's SHA
/// instructions where it has them (a third of the time of the `sha1_smol` that `uuid` hashes
/// with: an id per daily report adds up).
fn v5(name: &[u8]) -> Uuid {
    use sha1::{Digest, Sha1};
    let mut hash = Sha1::new();
    hash.update(ID_NAMESPACE.as_bytes());
    hash.update(name);
    let digest = hash.finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

impl Alert {
    /// Builds an alert whose id hashes (type, tenant, scope, time, status, occurrence).
    ///
    /// `occurrence` tells apart two alerts that would otherwise share the five fields of SPEC 5,
    /// such as firing, resolved and firing again while as_of stays the same: without it the
    /// third would repeat the first one's id and a deduplicating consumer would drop it.
    pub fn new(
        kind: AlertType,
        tenant: &str,
        scope: &str,
        time: String,
        status: &str,
        occurrence: u64,
        data: AlertData,
    ) -> Alert {
        // "{kind}\n{tenant}\n{scope}\n{time}\n{status}\n{occurrence}", written without `fmt`.
        let mut name = String::with_capacity(
            kind.as_str().len() + tenant.len() + scope.len() + time.len() + status.len() + 25,
        );
        for part in [kind.as_str(), tenant, scope, &time, status] {
            name.push_str(part);
            name.push('\n');
        }
        name.push_str(itoa::Buffer::new().format(occurrence));
        Alert {
            specversion: Cow::Borrowed(SPEC_VERSION),
            id: v5(name.as_bytes())
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .to_owned(),
            source: Cow::Borrowed(SOURCE),
            kind,
            subject: tenant.to_owned(),
            time,
            datacontenttype: Cow::Borrowed("application/json"),
            data,
        }
    }

    /// Appends the alert's JSON: the same bytes as `serde_json::to_writer(out, self)`
    /// (tested), without serde's escaping of every key or checking the data again.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let fields: [(&[u8], &str); 7] = [
            (b"{\"specversion\":", &self.specversion),
            (b",\"id\":", &self.id),
            (b",\"source\":", &self.source),
            (b",\"type\":", self.kind.as_str()),
            (b",\"subject\":", &self.subject),
            (b",\"time\":", &self.time),
            (b",\"datacontenttype\":", &self.datacontenttype),
        ];
        for (key, value) in fields {
            out.extend_from_slice(key);
            push_json_str(out, value);
        }
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(self.data.get().as_bytes());
        out.push(b'}');
    }

    /// The data as a JSON value.
    pub fn data_json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.get()).unwrap_or_default()
    }

    /// The `status` field of the data, when there is one.
    pub fn status(&self) -> Option<String> {
        serde_json::from_str::<Probe>(self.data.get())
            .ok()
            .and_then(|p| p.status)
    }

    /// The `scope` field of the data, when there is one.
    pub fn scope(&self) -> Option<String> {
        serde_json::from_str::<Probe>(self.data.get())
            .ok()
            .and_then(|p| p.scope)
    }

    /// The Kafka headers that mirror the envelope (`ce_specversion`, `ce_type`, ...).
    pub fn headers(&self) -> [(&'static str, &str); 6] {
        [
            ("ce_specversion", &self.specversion),
            ("ce_type", self.kind.as_str()),
            ("ce_id", &self.id),
            ("ce_source", &self.source),
            ("ce_subject", &self.subject),
            ("ce_time", &self.time),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_tell_occurrences_apart() {
        let a = || {
            Alert::new(
                AlertType::Calibration,
                "acme",
                "tenant",
                "2026-11-20T00:00:00Z".into(),
                "ok",
                0,
                raw_data(&serde_json::json!({})),
            )
        };
        assert_eq!(a().id, a().id);
        let b = Alert::new(
            AlertType::Calibration,
            "acme",
            "tenant",
            "2026-11-20T00:00:00Z".into(),
            "ok",
            1,
            raw_data(&serde_json::json!({})),
        );
        assert_ne!(a().id, b.id);
        // The id hashes the six fields joined by newlines, as earlier versions wrote it.
        let name = "model.calibration\nacme\ntenant\n2026-11-20T00:00:00Z\nok\n1";
        assert_eq!(
            b.id,
            Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
        );
        let json = serde_json::to_value(a()).unwrap();
        assert_eq!(json["type"], "model.calibration");
        assert_eq!(json["specversion"], "1.0");
    }

    /// What the sinks write is what serializing the alert writes, for envelopes whose strings
    /// need escaping or not; data made by serde_json reads back the same.
    #[test]
    fn write_json_is_what_serde_json_writes() {
        for subject in [
            "acme",
            "a\"b\\c",
            "tab\there\n",
            "é-ü",
            "",
            "\u{7f}\u{1}\u{1f}😀",
        ] {
            for data in [
                serde_json::json!({}),
                serde_json::json!({"status": "ok", "n": 3, "x": [0.5, null], "s": "\"q\""}),
                serde_json::json!(null),
            ] {
                let mut alert = Alert::new(
                    AlertType::DriftDetected,
                    subject,
                    "tenant",
                    format!("2026-11-20T00:00:00Z{subject}"),
                    "firing",
                    7,
                    raw_data(&data),
                );
                alert.source = Cow::Owned(format!("src{subject}"));
                let mut written = Vec::new();
                alert.write_json(&mut written);
                assert_eq!(
                    String::from_utf8(written.clone()).unwrap(),
                    serde_json::to_string(&alert).unwrap()
                );
                let back: Alert = serde_json::from_slice(&written).unwrap();
                assert_eq!(back, alert);
                assert_eq!(back.data_json(), data);
            }
        }
    }

    #[test]
    fn the_sha1_crate_gives_uuids_v5() {
        // Every length across SHA-1's 64-byte blocks and its 55/56-byte padding edge.
        for len in 0..200 {
            let name: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            assert_eq!(
                v5(&name),
                Uuid::new_v5(&ID_NAMESPACE, &name),
                "length {len}"
            );
        }
    }
}
