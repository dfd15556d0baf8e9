//! Record bytes to validated events, and events to bytes: the wire edge of SPEC 2 and 3.
//!
//! Input topics carry JSON by default and Avro in Confluent framing (magic byte 0, 4-byte
//! big-endian schema id, Avro binary); [`decode`] tells them apart by the first byte, since JSON
//! never starts with a zero byte. Every failure is a [`Rejection`] for the DLQ, never a panic:
//!
//! - `too_large`: more than [`MAX_RECORD_BYTES`], refused before parsing;
//! - `malformed`: not UTF-8, not JSON (syntax, truncation), or not a readable Avro frame
//!   (short header, unknown schema id, truncated or garbage datum, trailing bytes);
//! - `schema_mismatch`: well-formed, but not the topic's payload shape: a missing, unknown or
//!   wrongly typed field (`"spend": "NaN"` included), a JSON value that is not an object, an
//!   unparsable date, a bad quantile key, an Avro writer schema of another topic;
//! - `invalid_field`: the right shape but a value breaks a rule of [`validate`], or a JSON
//!   number too large for a double (it would be infinite).
//!
//! A rejection carries the record's tenant whenever a valid one can be read from it. On Kafka,
//! [`crate::kafka::routing`] adds `wrong_partition` for valid events keyed or partitioned
//! against SPEC 2.

mod avro;
mod fast;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use thiserror::Error;

pub use avro::{
    AvroSchemas, ALERT_AVSC, ALERT_SCHEMA_ID, FEATURE_IMPORTANCE_AVSC,
    FEATURE_IMPORTANCE_SCHEMA_ID, FORECAST_AVSC, FORECAST_SCHEMA_ID, FRAME_HEADER_BYTES,
    OUTCOME_AVSC, OUTCOME_SCHEMA_ID,
};

use crate::event::validate::{valid_tenant, validate, RejectKind, Rejection, MAX_RECORD_BYTES};
use crate::event::{Event, ObjectOnly, Topic};

/// How much of a record's head is read to find its tenant once it is rejected.
const PROBE_BYTES: usize = 64 * 1024;

/// Rejection messages longer than this are cut.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// Why an event could not be encoded, or a schema not registered.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error("no Avro schema is registered under id {0}")]
    UnknownSchemaId(u32),
    #[error("Avro schema id {0} is already registered with a different schema")]
    SchemaIdTaken(u32),
    #[error("Avro schema id {id} does not parse: {source}")]
    InvalidSchema {
        id: u32,
        #[source]
        source: apache_avro::Error,
    },
    #[error("Avro schema id {id} is not a schema of topic {topic}: {reason}")]
    WrongTopic {
        id: u32,
        topic: &'static str,
        reason: String,
    },
    #[error("cannot encode with Avro schema id {id}: {source}")]
    Encode {
        id: u32,
        #[source]
        source: apache_avro::Error,
    },
}

/// Decodes and validates one record value of an input topic.
pub fn decode(topic: Topic, bytes: &[u8], avro: &AvroSchemas) -> Result<Event, Rejection> {
    let is_avro = bytes.first() == Some(&0);
    if bytes.len() > MAX_RECORD_BYTES {
        let tenant = if is_avro {
            avro.tenant_hint(topic, bytes)
        } else {
            json_tenant(bytes)
        };
        return Err(Rejection::new(
            RejectKind::TooLarge,
            format!(
                "{} bytes, more than the {MAX_RECORD_BYTES} allowed",
                bytes.len()
            ),
        )
        .with_tenant(tenant.as_deref()));
    }
    let event = if is_avro {
        avro.decode(topic, bytes)
    } else {
        decode_json(topic, bytes)
    };
    event
        .and_then(|event| validate(&event).map(|()| event))
        .map_err(cap_message)
}

/// Parser messages quote offending values whole; a DLQ header needs no more than a glimpse.
fn cap_message(mut r: Rejection) -> Rejection {
    if r.message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !r.message.is_char_boundary(cut) {
            cut -= 1;
        }
        r.message.truncate(cut);
        r.message.push_str("...");
    }
    r
}

/// The JSON of an event, as producers write it (optional fields that are absent are left out).
pub fn encode_json(event: &Event) -> Vec<u8> {
    let encoded = match event {
        Event::Outcome(o) => serde_json::to_vec(o),
        Event::Forecast(f) => serde_json::to_vec(f),
        Event::FeatureImportance(f) => serde_json::to_vec(f),
    };
    // Writing to a Vec fails only for non-string map keys or a failing Serialize impl; the
    // payload types have neither.
    encoded.expect("payload types always serialize to JSON")
}

/// The Confluent-framed Avro of an event, written with the schema registered under `schema_id`
/// (which must be a schema of the event's topic; the built-in ones are ids 1 to 3).
pub fn encode_avro(
    event: &Event,
    schema_id: u32,
    avro: &AvroSchemas,
) -> Result<Vec<u8>, CodecError> {
    avro.encode(event, schema_id)
}

fn decode_json(topic: Topic, bytes: &[u8]) -> Result<Event, Rejection> {
    // simdutf8 checks a valid payload several times faster than std; std tells where an
    // invalid one goes wrong.
    let checked = simdutf8::basic::from_utf8(bytes).ok();
    let text = checked
        .map_or_else(|| std::str::from_utf8(bytes), Ok)
        .map_err(|e| {
            Rejection::new(RejectKind::Malformed, format!("json: not UTF-8: {e}"))
                .with_tenant(json_tenant(&bytes[..e.valid_up_to()]).as_deref())
        })?;
    if let Some(event) = fast::decode(topic, text) {
        return Ok(event);
    }
    let parsed = match topic {
        Topic::Outcomes => serde_json_or_error(text).map(|ObjectOnly(o)| Event::Outcome(o)),
        Topic::Forecasts => serde_json_or_error(text).map(|ObjectOnly(f)| Event::Forecast(f)),
        Topic::FeatureImportances => {
            serde_json_or_error(text).map(|ObjectOnly(f)| Event::FeatureImportance(f))
        }
    };
    parsed.map_err(|r| r.with_tenant(json_tenant(bytes).as_deref()))
}

/// The longest field path a message shows whole.
const MAX_PATH_BYTES: usize = 120;

/// serde_json's reading of `text`; when it fails, the error names where, as a path
/// (`lines[3].date: input is out of range ...`): serde_json's own message says only the
/// column. The path is found by reading the record again, only when it failed.
fn serde_json_or_error<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Rejection> {
    serde_json::from_str(text).map_err(|e| {
        let mut again = serde_json::Deserializer::from_str(text);
        let path = match serde_path_to_error::deserialize::<_, T>(&mut again) {
            Err(e) => e.path().to_string(),
            Ok(_) => String::new(),
        };
        // Unknown segments (a syntax error between fields) say nothing; a key is shown escaped,
        // and a long one cut, so that the error itself still fits the message.
        let path = path.strip_suffix(".?").unwrap_or(&path);
        let message = match path {
            "" | "." | "?" => format!("json: {e}"),
            path if path.len() > MAX_PATH_BYTES => {
                let cut = (0..=MAX_PATH_BYTES)
                    .rev()
                    .find(|&i| path.is_char_boundary(i))
                    .unwrap_or(0);
                format!("json: {}...: {e}", path[..cut].escape_debug())
            }
            path => format!("json: {}: {e}", path.escape_debug()),
        };
        Rejection::new(json_error_kind(&e), message)
    })
}

fn json_error_kind(e: &serde_json::Error) -> RejectKind {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => RejectKind::SchemaMismatch,
        // serde_json has no accessor for its error code; a test pins this message.
        Category::Syntax if e.to_string().starts_with("number out of range") => {
            RejectKind::InvalidField
        }
        Category::Syntax | Category::Eof | Category::Io => RejectKind::Malformed,
    }
}

/// The top-level `tenant` of a JSON object, read from the record's head and no further, so
/// that even a record that breaks after its tenant is counted against it.
fn json_tenant(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(PROBE_BYTES)];
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).ok()?,
    };
    let mut tenant = None;
    // The probe stops with an error as soon as it has the tenant; the error is expected.
    let _ = TenantProbe(&mut tenant).deserialize(&mut serde_json::Deserializer::from_str(text));
    tenant.filter(|t| valid_tenant(t))
}

struct TenantProbe<'a>(&'a mut Option<String>);

impl<'de> DeserializeSeed<'de> for TenantProbe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TenantProbe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(IsTenant(is_tenant)) = map.next_key()? {
            if is_tenant {
                *self.0 = Some(map.next_value()?);
                return Err(serde::de::Error::custom("stop: tenant found"));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// An object key, only compared with `tenant` (no allocation).
struct IsTenant(bool);

impl<'de> Deserialize<'de> for IsTenant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = IsTenant;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsTenant, E> {
                Ok(IsTenant(key == "tenant"))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}
