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
    pub data: Box<RawValue>,
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
pub fn raw_data<T: Serialize>(data: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(data).unwrap_or_else(|_| RawValue::NULL.to_owned())
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
        data: Box<RawValue>,
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
