//! Validation of decoded payloads (SPEC 3, "Validation"): a record is accepted or rejected whole.

use std::fmt;

use serde::Serialize;

use super::{Event, FeatureImportance, Forecast, Outcome};

/// A record larger than this is refused before it is parsed.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Why a record was refused, as the machine-readable `error.kind` of the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// Larger than [`MAX_RECORD_BYTES`].
    TooLarge,
    /// Not JSON, not UTF-8, or not a well-formed Avro frame.
    Malformed,
    /// Parsed, but not the shape of the topic's payload: a missing field, a wrong type, an unknown field.
    SchemaMismatch,
    /// The right shape, but a value breaks a rule: a bad tenant name, a negative spend, a non-finite number.
    InvalidField,
    /// A record from a topic the processor does not read.
    UnknownTopic,
}

impl RejectKind {
    pub const ALL: [RejectKind; 5] = [
        RejectKind::TooLarge,
        RejectKind::Malformed,
        RejectKind::SchemaMismatch,
        RejectKind::InvalidField,
        RejectKind::UnknownTopic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::TooLarge => "too_large",
            RejectKind::Malformed => "malformed",
            RejectKind::SchemaMismatch => "schema_mismatch",
            RejectKind::InvalidField => "invalid_field",
            RejectKind::UnknownTopic => "unknown_topic",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused record: what kind of failure, a message for a person, and the tenant when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub kind: RejectKind,
    pub message: String,
    /// The record's tenant, when the payload named a valid one (so it can be counted against it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Rejection {
    pub fn new(kind: RejectKind, message: impl Into<String>) -> Self {
        Rejection { kind, message: message.into(), tenant: None }
    }

    pub fn with_tenant(mut self, tenant: Option<&str>) -> Self {
        self.tenant = tenant.filter(|t| valid_tenant(t)).map(str::to_owned);
        self
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Rejection {}

/// `^[a-z0-9][a-z0-9_-]{0,63}$`: the tenant becomes a file name, so nothing else gets through.
pub fn valid_tenant(tenant: &str) -> bool {
    let b = tenant.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..].iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

pub fn validate(event: &Event) -> Result<(), Rejection> {
    match event {
        Event::Outcome(o) => validate_outcome(o),
        Event::Forecast(f) => validate_forecast(f),
        Event::FeatureImportance(f) => validate_feature_importance(f),
    }
}

pub fn validate_outcome(_o: &Outcome) -> Result<(), Rejection> {
    todo!("filled in by the validation work")
}

pub fn validate_forecast(_f: &Forecast) -> Result<(), Rejection> {
    todo!("filled in by the validation work")
}

pub fn validate_feature_importance(_f: &FeatureImportance) -> Result<(), Rejection> {
    todo!("filled in by the validation work")
}
