//! Avro in Confluent framing: the schemas, writer-to-reader resolution compiled once per schema id,
//! and a datum reader that follows the compiled plan.
//!
//! apache-avro resolves a writer schema against a reader schema on every message, which costs
//! about 3x a plain decode (KAFKA_NOTES). Here the resolution is done when a writer schema is
//! registered: a [`Plan`] says, field by field, where each writer value goes in the reader's
//! record, which writer fields to skip and which defaults to fill in, so decoding a message is
//! one pass over its bytes with no name lookups. apache-avro parses the schemas and writes
//! datums; reading is ours, bounded by the record's size so garbage cannot ask for a huge
//! allocation.

use std::collections::BTreeMap;

use apache_avro::schema::{InnerDecimalSchema, NamesRef, ResolvedSchema, UuidSchema};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, Utc};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::CodecError;
use crate::event::validate::{RejectKind, Rejection, MAX_RECORD_BYTES};
use crate::event::{
    parse_quantile_key, quantile_key, Event, FeatureImportance, Forecast, ForecastLine, Outcome,
    Quantiles, Topic,
};

/// Schema id of the built-in Outcome schema (`schemas/outcome.avsc`).
pub const OUTCOME_SCHEMA_ID: u32 = 1;
/// Schema id of the built-in Forecast schema (`schemas/forecast.avsc`).
pub const FORECAST_SCHEMA_ID: u32 = 2;
/// Schema id of the built-in FeatureImportance schema (`schemas/feature_importance.avsc`).
pub const FEATURE_IMPORTANCE_SCHEMA_ID: u32 = 3;
/// Schema id of the built-in Alert schema (`schemas/alert.avsc`).
pub const ALERT_SCHEMA_ID: u32 = 4;

pub const OUTCOME_AVSC: &str = include_str!("../../schemas/outcome.avsc");
pub const FORECAST_AVSC: &str = include_str!("../../schemas/forecast.avsc");
pub const FEATURE_IMPORTANCE_AVSC: &str = include_str!("../../schemas/feature_importance.avsc");
pub const ALERT_AVSC: &str = include_str!("../../schemas/alert.avsc");

/// The Confluent wire format: magic byte 0, then the schema id as 4 bytes big-endian.
pub const FRAME_HEADER_BYTES: usize = 5;

// Field order of the reader schemas; the conversions below depend on it (a test checks it).
const OUTCOME_FIELDS: [&str; 8] = [
    "tenant",
    "date",
    "channel",
    "campaign_id",
    "spend",
    "revenue",
    "source",
    "observed_at",
];
const FORECAST_FIELDS: [&str; 5] = ["tenant", "plan_id", "model_version", "issued_at", "lines"];
const LINE_FIELDS: [&str; 5] = ["date", "channel", "campaign_id", "spend", "revenue"];
const IMPORTANCE_FIELDS: [&str; 6] = [
    "tenant",
    "model_version",
    "computed_at",
    "method",
    "importances",
    "samples",
];

/// The project's reader schemas and the writer schemas known by id.
///
/// [`AvroSchemas::builtin`] registers the four schemas of `schemas/` as writer schemas under
/// fixed ids: 1 outcome, 2 forecast, 3 feature_importance, 4 alert (the `*_SCHEMA_ID`
/// constants). A deployment with a Confluent schema registry starts from [`AvroSchemas::new`]
/// instead and registers the registry's ids, which may well be 1 to 4 too.
pub struct AvroSchemas {
    /// Reader schemas, indexed by [`slot`].
    readers: [Schema; 3],
    alert: Schema,
    writers: FxHashMap<u32, Writer>,
}

/// A registered writer schema with its resolution against each input topic's reader schema.
struct Writer {
    schema: Schema,
    canonical: String,
    name: String,
    /// Indexed by [`slot`]: how to read this writer's datums as that topic's payload, or why not.
    plans: [Result<Plan, String>; 3],
    /// Indexed by [`slot`]: the writer schema is that topic's reader schema.
    is_reader: [bool; 3],
}

impl AvroSchemas {
    /// The reader schemas only; no writer schema id is known yet.
    pub fn new() -> Self {
        AvroSchemas {
            readers: [
                builtin_schema(OUTCOME_AVSC),
                builtin_schema(FORECAST_AVSC),
                builtin_schema(FEATURE_IMPORTANCE_AVSC),
            ],
            alert: builtin_schema(ALERT_AVSC),
            writers: FxHashMap::default(),
        }
    }

    /// The reader schemas, with the built-in schemas registered under ids 1 to 4.
    pub fn builtin() -> Self {
        let mut avro = AvroSchemas::new();
        let builtins = [
            (OUTCOME_SCHEMA_ID, avro.readers[0].clone()),
            (FORECAST_SCHEMA_ID, avro.readers[1].clone()),
            (FEATURE_IMPORTANCE_SCHEMA_ID, avro.readers[2].clone()),
            (ALERT_SCHEMA_ID, avro.alert.clone()),
        ];
        for (id, schema) in builtins {
            avro.insert(id, schema)
                .expect("the built-in schemas register under distinct ids (tested)");
        }
        avro
    }

    /// Registers a writer schema (Avro schema JSON) under `id`, resolving it against the three
    /// input reader schemas now so that decoding never has to. Registering the same schema
    /// twice is a no-op; another schema under a taken id is refused, as in a schema registry.
    ///
    /// Resolution follows the Avro rules (fields matched by name or reader alias, missing ones
    /// take the reader's default, int/long/float promote to double, bytes read as string), except
    /// that record names are not compared: a registry's `com.acme.Outcome` reads as an Outcome.
    /// A schema that fits no input topic still registers; its frames are schema mismatches.
    pub fn register(&mut self, id: u32, writer_schema_json: &str) -> Result<(), CodecError> {
        let schema = Schema::parse_str(writer_schema_json)
            .map_err(|source| CodecError::InvalidSchema { id, source })?;
        self.insert(id, schema)
    }

    fn insert(&mut self, id: u32, schema: Schema) -> Result<(), CodecError> {
        let canonical = schema.canonical_form();
        if let Some(existing) = self.writers.get(&id) {
            return if existing.canonical == canonical {
                Ok(())
            } else {
                Err(CodecError::SchemaIdTaken(id))
            };
        }
        let resolved = ResolvedSchema::new(&schema)
            .map_err(|source| CodecError::InvalidSchema { id, source })?;
        let names = resolved.get_names();
        let plans =
            [0, 1, 2].map(|i| Compiler { names }.compile(&schema, &self.readers[i], None, 0));
        let is_reader = [0, 1, 2].map(|i| self.readers[i].canonical_form() == canonical);
        let name = schema
            .name()
            .map_or_else(|| "an unnamed schema".to_owned(), |n| n.fullname(None));
        self.writers.insert(
            id,
            Writer {
                schema,
                canonical,
                name,
                plans,
                is_reader,
            },
        );
        Ok(())
    }

    /// The reader schema of an input topic: the shape the typed payloads mirror.
    pub fn reader_schema(&self, topic: Topic) -> &Schema {
        &self.readers[slot(topic)]
    }

    /// The schema of alert events (`schemas/alert.avsc`).
    pub fn alert_schema(&self) -> &Schema {
        &self.alert
    }

    /// The writer schema registered under `id`.
    pub fn writer_schema(&self, id: u32) -> Option<&Schema> {
        self.writers.get(&id).map(|w| &w.schema)
    }

    /// The id under which [`AvroSchemas::builtin`] registers a topic's schema.
    pub fn builtin_id(topic: Topic) -> u32 {
        match topic {
            Topic::Outcomes => OUTCOME_SCHEMA_ID,
            Topic::Forecasts => FORECAST_SCHEMA_ID,
            Topic::FeatureImportances => FEATURE_IMPORTANCE_SCHEMA_ID,
        }
    }

    /// Decodes a Confluent-framed Avro value of `topic` (not validated yet).
    pub(crate) fn decode(&self, topic: Topic, frame: &[u8]) -> Result<Event, Rejection> {
        let (plan, datum) = self.plan(topic, frame)?;
        let mut input = Input::new(datum);
        let mut fields = read_top(plan, &mut input)
            .map_err(|(bad, tenant)| bad.into_rejection().with_tenant(tenant.as_deref()))?;
        // Field 0 is the reader's `tenant`, a string; validation refuses an empty one.
        let mut tenant = match fields.first_mut() {
            Some(Datum::Str(t)) => std::mem::take(t),
            _ => String::new(),
        };
        if !input.rest.is_empty() {
            return Err(malformed(format!(
                "{} bytes after the end of the datum",
                input.rest.len()
            ))
            .with_tenant(Some(&tenant)));
        }
        convert(topic, &mut tenant, fields).map_err(|m| mismatch(m).with_tenant(Some(&tenant)))
    }

    /// The tenant of a frame as far as its first bytes tell, for counting a rejection.
    pub(crate) fn tenant_hint(&self, topic: Topic, frame: &[u8]) -> Option<String> {
        let head = &frame[..frame.len().min(super::PROBE_BYTES)];
        let (plan, datum) = self.plan(topic, head).ok()?;
        match read_top(plan, &mut Input::new(datum)) {
            Ok(fields) => match fields.into_iter().next() {
                Some(Datum::Str(t)) => Some(t),
                _ => None,
            },
            Err((_, tenant)) => tenant,
        }
    }

    fn plan<'a>(&self, topic: Topic, frame: &'a [u8]) -> Result<(&Plan, &'a [u8]), Rejection> {
        let Some((header, datum)) = frame.split_first_chunk::<FRAME_HEADER_BYTES>() else {
            return Err(malformed(format!(
                "a frame of {} bytes is shorter than the {FRAME_HEADER_BYTES}-byte Confluent header",
                frame.len()
            )));
        };
        let [magic, id @ ..] = *header;
        if magic != 0 {
            return Err(malformed(format!("magic byte {magic}, expected 0")));
        }
        let id = u32::from_be_bytes(id);
        let writer = self
            .writers
            .get(&id)
            .ok_or_else(|| malformed(format!("unknown schema id {id}")))?;
        match &writer.plans[slot(topic)] {
            Ok(plan) => Ok((plan, datum)),
            Err(why) => Err(mismatch(format!(
                "schema id {id} ({}) cannot be read as {}: {why}",
                writer.name,
                reader_name(topic)
            ))),
        }
    }

    /// Encodes `event` with the writer schema registered under `id`, framing included.
    pub(crate) fn encode(&self, event: &Event, id: u32) -> Result<Vec<u8>, CodecError> {
        let writer = self
            .writers
            .get(&id)
            .ok_or(CodecError::UnknownSchemaId(id))?;
        let topic = event.topic();
        if let Err(reason) = &writer.plans[slot(topic)] {
            return Err(CodecError::WrongTopic {
                id,
                topic: topic.default_name(),
                reason: reason.clone(),
            });
        }
        let mut value = to_value(event);
        if !writer.is_reader[slot(topic)] {
            value = value
                .resolve(&writer.schema)
                .map_err(|source| CodecError::Encode { id, source })?;
        }
        let mut out = Vec::with_capacity(128);
        out.push(0);
        out.extend_from_slice(&id.to_be_bytes());
        GenericDatumWriter::builder(&writer.schema)
            .build()
            .and_then(|w| w.write_value_ref(&mut out, &value))
            .map_err(|source| CodecError::Encode { id, source })?;
        Ok(out)
    }
}

/// The same as [`AvroSchemas::builtin`].
impl Default for AvroSchemas {
    fn default() -> Self {
        AvroSchemas::builtin()
    }
}

impl std::fmt::Debug for AvroSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.writers.iter().map(|(id, w)| (*id, &w.name)).collect();
        ids.sort();
        f.debug_struct("AvroSchemas")
            .field("writers", &ids)
            .finish()
    }
}

fn builtin_schema(avsc: &str) -> Schema {
    Schema::parse_str(avsc).expect("the schemas under schemas/ are valid Avro (tested)")
}

fn slot(topic: Topic) -> usize {
    match topic {
        Topic::Outcomes => 0,
        Topic::Forecasts => 1,
        Topic::FeatureImportances => 2,
    }
}

fn reader_name(topic: Topic) -> &'static str {
    match topic {
        Topic::Outcomes => "io.modelfeedback.Outcome",
        Topic::Forecasts => "io.modelfeedback.Forecast",
        Topic::FeatureImportances => "io.modelfeedback.FeatureImportance",
    }
}

fn malformed(message: String) -> Rejection {
    Rejection::new(RejectKind::Malformed, format!("avro: {message}"))
}

fn mismatch(message: String) -> Rejection {
    Rejection::new(RejectKind::SchemaMismatch, format!("avro: {message}"))
}

/// A value in the reader's shape. Records hold their fields in the reader's order; a reader
/// union `["null", T]` is either `Null` or the `T` itself.
#[derive(Debug, Clone, Default, PartialEq)]
enum Datum {
    #[default]
    Null,
    Double(f64),
    Str(String),
    Record(Vec<Datum>),
    Array(Vec<Datum>),
    Map(Vec<(String, Datum)>),
}

/// How to read one writer value and what it becomes in the reader's shape.
#[derive(Debug)]
enum Plan {
    Null,
    /// A writer int or long, promoted.
    VarIntToDouble,
    FloatToDouble,
    Double,
    /// A writer string or bytes, which must be UTF-8.
    Str,
    Record {
        /// In writer order.
        fields: Vec<FieldPlan>,
        /// Reader fields the writer lacks: (reader position, default).
        defaults: Vec<(usize, Datum)>,
        len: usize,
    },
    Array(Box<Plan>),
    Map(Box<Plan>),
    /// A writer union, branch by branch: how to read it, or why the reader cannot take it.
    Union(Vec<Result<Plan, String>>),
}

#[derive(Debug)]
enum FieldPlan {
    Read(usize, Plan),
    Skip(Skip),
}

/// How to step over a writer value the reader does not want.
#[derive(Debug)]
enum Skip {
    Nothing,
    Bool,
    VarInt,
    Float,
    Double,
    /// Length-prefixed: bytes and string.
    Bytes,
    Fixed(usize),
    Record(Vec<Skip>),
    Array(Box<Skip>),
    Map(Box<Skip>),
    Union(Vec<Skip>),
}

/// Deeper writer schemas are refused (and recursive ones would never end).
const MAX_SCHEMA_DEPTH: usize = 32;

struct Compiler<'a, 's> {
    names: &'a NamesRef<'s>,
}

impl Compiler<'_, '_> {
    fn deref<'w>(&'w self, schema: &'w Schema, ns: Option<&str>) -> Result<&'w Schema, String> {
        match schema {
            Schema::Ref { name } => self
                .names
                .get(name)
                .or_else(|| self.names.get(name.fully_qualified_name(ns).as_ref()))
                .copied()
                .ok_or_else(|| format!("unknown named type {}", name.fullname(ns))),
            other => Ok(other),
        }
    }

    fn compile(
        &self,
        writer: &Schema,
        reader: &Schema,
        ns: Option<&str>,
        depth: usize,
    ) -> Result<Plan, String> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(format!("nested deeper than {MAX_SCHEMA_DEPTH} levels"));
        }
        let writer = self.deref(writer, ns)?;
        match (writer, reader) {
            (Schema::Union(w), _) => {
                let branches: Vec<_> = w
                    .variants()
                    .iter()
                    .map(|b| self.compile(b, reader, ns, depth + 1))
                    .collect();
                match branches.iter().find_map(|b| b.as_ref().err()) {
                    Some(e) if branches.iter().all(Result::is_err) => Err(e.clone()),
                    _ => Ok(Plan::Union(branches)),
                }
            }
            (_, Schema::Union(r)) => r
                .variants()
                .iter()
                .find_map(|branch| self.compile(writer, branch, ns, depth + 1).ok())
                .ok_or_else(|| format!("{} fits no branch of {}", kind(writer), kind(reader))),
            (Schema::Null, Schema::Null) => Ok(Plan::Null),
            (Schema::Int | Schema::Long, Schema::Double) => Ok(Plan::VarIntToDouble),
            (Schema::Float, Schema::Double) => Ok(Plan::FloatToDouble),
            (Schema::Double, Schema::Double) => Ok(Plan::Double),
            (Schema::String | Schema::Bytes | Schema::Uuid(UuidSchema::String), Schema::String) => {
                Ok(Plan::Str)
            }
            (Schema::Array(w), Schema::Array(r)) => Ok(Plan::Array(Box::new(self.compile(
                &w.items,
                &r.items,
                ns,
                depth + 1,
            )?))),
            (Schema::Map(w), Schema::Map(r)) => Ok(Plan::Map(Box::new(self.compile(
                &w.types,
                &r.types,
                ns,
                depth + 1,
            )?))),
            (Schema::Record(w), Schema::Record(r)) => {
                let ns = w.name.namespace().or(ns);
                let mut filled = vec![false; r.fields.len()];
                let mut fields = Vec::with_capacity(w.fields.len());
                for wf in &w.fields {
                    match r.lookup.get(&wf.name).copied() {
                        Some(i) if !filled[i] => {
                            let plan = self
                                .compile(&wf.schema, &r.fields[i].schema, ns, depth + 1)
                                .map_err(|e| format!("field `{}`: {e}", wf.name))?;
                            filled[i] = true;
                            fields.push(FieldPlan::Read(i, plan));
                        }
                        _ => fields.push(FieldPlan::Skip(self.skip(&wf.schema, ns, depth + 1)?)),
                    }
                }
                let mut defaults = Vec::new();
                for (i, rf) in r.fields.iter().enumerate().filter(|(i, _)| !filled[*i]) {
                    let default = rf.default.as_ref().ok_or_else(|| {
                        format!("field `{}` is missing and has no default", rf.name)
                    })?;
                    let datum = default_datum(default, &rf.schema)
                        .map_err(|e| format!("field `{}`: default {e}", rf.name))?;
                    defaults.push((i, datum));
                }
                Ok(Plan::Record {
                    fields,
                    defaults,
                    len: r.fields.len(),
                })
            }
            _ => Err(format!(
                "{} cannot be read as {}",
                kind(writer),
                kind(reader)
            )),
        }
    }

    fn skip(&self, writer: &Schema, ns: Option<&str>, depth: usize) -> Result<Skip, String> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(format!("nested deeper than {MAX_SCHEMA_DEPTH} levels"));
        }
        Ok(match self.deref(writer, ns)? {
            Schema::Null => Skip::Nothing,
            Schema::Boolean => Skip::Bool,
            Schema::Int
            | Schema::Long
            | Schema::Enum(_)
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Skip::VarInt,
            Schema::Float => Skip::Float,
            Schema::Double => Skip::Double,
            Schema::Bytes
            | Schema::String
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::String | UuidSchema::Bytes) => Skip::Bytes,
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => Skip::Bytes,
                InnerDecimalSchema::Fixed(f) => Skip::Fixed(f.size),
            },
            Schema::Fixed(f) | Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Duration(f) => {
                Skip::Fixed(f.size)
            }
            Schema::Array(a) => Skip::Array(Box::new(self.skip(&a.items, ns, depth + 1)?)),
            Schema::Map(m) => Skip::Map(Box::new(self.skip(&m.types, ns, depth + 1)?)),
            Schema::Union(u) => Skip::Union(
                u.variants()
                    .iter()
                    .map(|b| self.skip(b, ns, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Record(r) => {
                let ns = r.name.namespace().or(ns);
                Skip::Record(
                    r.fields
                        .iter()
                        .map(|f| self.skip(&f.schema, ns, depth + 1))
                        .collect::<Result<_, _>>()?,
                )
            }
            Schema::Ref { name } => {
                return Err(format!("unresolved named type {}", name.fullname(ns)))
            }
        })
    }
}

/// `string`, `record io.modelfeedback.Outcome`: a schema as messages name it.
fn kind(schema: &Schema) -> String {
    let kind = format!("{:?}", apache_avro::schema::SchemaKind::from(schema)).to_lowercase();
    match schema.name() {
        Some(name) => format!("{kind} {}", name.fullname(None)),
        None => kind,
    }
}

/// A reader field's JSON default as a datum (a union's default is of its first branch).
fn default_datum(json: &serde_json::Value, reader: &Schema) -> Result<Datum, String> {
    use serde_json::Value as J;
    match (reader, json) {
        (Schema::Union(u), _) => match u.variants().first() {
            Some(first) => default_datum(json, first),
            None => Err("of an empty union".to_owned()),
        },
        (Schema::Null, J::Null) => Ok(Datum::Null),
        (Schema::Double, J::Number(n)) => n
            .as_f64()
            .map(Datum::Double)
            .ok_or_else(|| format!("{n} is not a double")),
        (Schema::String, J::String(s)) => Ok(Datum::Str(s.clone())),
        (Schema::Array(a), J::Array(items)) => items
            .iter()
            .map(|v| default_datum(v, &a.items))
            .collect::<Result<_, _>>()
            .map(Datum::Array),
        (Schema::Map(m), J::Object(entries)) => entries
            .iter()
            .map(|(k, v)| Ok((k.clone(), default_datum(v, &m.types)?)))
            .collect::<Result<_, String>>()
            .map(Datum::Map),
        _ => Err(format!("{json} does not fit {}", kind(reader))),
    }
}

/// A datum that could not be read.
enum Bad {
    Malformed(String),
    Mismatch(String),
}

impl Bad {
    fn into_rejection(self) -> Rejection {
        match self {
            Bad::Malformed(m) => malformed(m),
            Bad::Mismatch(m) => mismatch(m),
        }
    }
}

fn truncated() -> Bad {
    Bad::Malformed("datum truncated".to_owned())
}

/// The bytes of a datum still to read, and how many more collection items it may claim.
struct Input<'a> {
    rest: &'a [u8],
    items_left: usize,
}

impl<'a> Input<'a> {
    fn new(datum: &'a [u8]) -> Self {
        // Every item of a collection the reader keeps takes at least a byte, so a record of at most
        // MAX_RECORD_BYTES cannot hold more; the bound also stops endless zero-byte items.
        Input {
            rest: datum,
            items_left: MAX_RECORD_BYTES,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.rest.len() {
            return Err(truncated());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Bad> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(truncated());
        };
        self.rest = rest;
        Ok(*head)
    }

    /// A zigzag varint, as Avro writes int and long.
    fn varint(&mut self) -> Result<i64, Bad> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let [b] = self.array::<1>()?;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(Bad::Malformed("varint longer than 10 bytes".to_owned()))
    }

    fn len(&mut self) -> Result<usize, Bad> {
        let n = self.varint()?;
        usize::try_from(n).map_err(|_| Bad::Malformed(format!("negative length {n}")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Bad> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, Bad> {
        let b = self.bytes()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(Bad::Malformed("a string is not UTF-8".to_owned())),
        }
    }

    /// The item count of the next block of an array or map; 0 ends the collection.
    fn block(&mut self) -> Result<usize, Bad> {
        let n = self.varint()?;
        if n < 0 {
            // A negative count is followed by the block's size in bytes.
            self.varint()?;
        }
        let n = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
        if n > self.items_left {
            return Err(Bad::Malformed(format!(
                "a block claims {n} items, more than the record can hold"
            )));
        }
        self.items_left -= n;
        Ok(n)
    }

    fn union_branch<'p, T>(&mut self, branches: &'p [T]) -> Result<&'p T, Bad> {
        let i = self.varint()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| branches.get(i))
            .ok_or_else(|| {
                Bad::Malformed(format!(
                    "union branch {i} out of range ({} branches)",
                    branches.len()
                ))
            })
    }
}

/// Reads the top-level record; on failure, also returns the tenant if it was read already.
fn read_top(plan: &Plan, input: &mut Input) -> Result<Vec<Datum>, (Bad, Option<String>)> {
    let Plan::Record {
        fields,
        defaults,
        len,
    } = plan
    else {
        // Reader schemas of the input topics are records, so a compiled top-level plan is one.
        return Err((
            Bad::Mismatch("the reader schema is not a record".to_owned()),
            None,
        ));
    };
    let mut out = vec![Datum::Null; *len];
    if let Err(e) = read_fields(fields, defaults, &mut out, input) {
        let tenant = match out.first_mut() {
            Some(Datum::Str(t)) => Some(std::mem::take(t)),
            _ => None,
        };
        return Err((e, tenant));
    }
    Ok(out)
}

fn read_fields(
    fields: &[FieldPlan],
    defaults: &[(usize, Datum)],
    out: &mut [Datum],
    input: &mut Input,
) -> Result<(), Bad> {
    for field in fields {
        match field {
            FieldPlan::Read(i, plan) => out[*i] = read(plan, input)?,
            FieldPlan::Skip(skip) => skip_value(skip, input)?,
        }
    }
    for (i, default) in defaults {
        out[*i] = default.clone();
    }
    Ok(())
}

fn read(plan: &Plan, input: &mut Input) -> Result<Datum, Bad> {
    Ok(match plan {
        Plan::Null => Datum::Null,
        Plan::VarIntToDouble => Datum::Double(input.varint()? as f64),
        Plan::FloatToDouble => Datum::Double(f64::from(f32::from_le_bytes(input.array()?))),
        Plan::Double => Datum::Double(f64::from_le_bytes(input.array()?)),
        Plan::Str => Datum::Str(input.string()?),
        Plan::Record {
            fields,
            defaults,
            len,
        } => {
            let mut out = vec![Datum::Null; *len];
            read_fields(fields, defaults, &mut out, input)?;
            Datum::Record(out)
        }
        Plan::Array(item) => {
            let mut items = Vec::new();
            loop {
                let n = input.block()?;
                if n == 0 {
                    break Datum::Array(items);
                }
                items.reserve(n.min(input.rest.len()));
                for _ in 0..n {
                    items.push(read(item, input)?);
                }
            }
        }
        Plan::Map(value) => {
            let mut entries = Vec::new();
            loop {
                let n = input.block()?;
                if n == 0 {
                    break Datum::Map(entries);
                }
                entries.reserve(n.min(input.rest.len()));
                for _ in 0..n {
                    let key = input.string()?;
                    entries.push((key, read(value, input)?));
                }
            }
        }
        Plan::Union(branches) => match input.union_branch(branches)? {
            Ok(plan) => read(plan, input)?,
            Err(why) => {
                return Err(Bad::Mismatch(format!(
                    "a union branch the reader cannot take: {why}"
                )))
            }
        },
    })
}

fn skip_value(skip: &Skip, input: &mut Input) -> Result<(), Bad> {
    match skip {
        Skip::Nothing => {}
        Skip::Bool => {
            input.take(1)?;
        }
        Skip::VarInt => {
            input.varint()?;
        }
        Skip::Float => {
            input.take(4)?;
        }
        Skip::Double => {
            input.take(8)?;
        }
        Skip::Bytes => {
            input.bytes()?;
        }
        Skip::Fixed(n) => {
            input.take(*n)?;
        }
        Skip::Record(fields) => {
            for f in fields {
                skip_value(f, input)?;
            }
        }
        Skip::Array(item) => loop {
            let n = input.block()?;
            if n == 0 {
                break;
            }
            for _ in 0..n {
                skip_value(item, input)?;
            }
        },
        Skip::Map(value) => loop {
            let n = input.block()?;
            if n == 0 {
                break;
            }
            for _ in 0..n {
                input.bytes()?;
                skip_value(value, input)?;
            }
        },
        Skip::Union(branches) => {
            let branch = input.union_branch(branches)?;
            skip_value(branch, input)?;
        }
    }
    Ok(())
}

// Datum (reader shape) to typed payload. Errors are schema mismatches: the bytes were fine.
// The tenant (field 0 of every input record) is passed apart and taken only once nothing else
// can fail, so that a failed conversion can still name it without a copy on the happy path.

fn convert(topic: Topic, tenant: &mut String, fields: Vec<Datum>) -> Result<Event, String> {
    Ok(match topic {
        Topic::Outcomes => Event::Outcome(outcome(tenant, fields)?),
        Topic::Forecasts => Event::Forecast(forecast(tenant, fields)?),
        Topic::FeatureImportances => Event::FeatureImportance(feature_importance(tenant, fields)?),
    })
}

fn fields<const N: usize>(fields: Vec<Datum>) -> Result<[Datum; N], String> {
    let n = fields.len();
    <[Datum; N]>::try_from(fields).map_err(|_| format!("a record of {n} fields, expected {N}"))
}

fn outcome(tenant: &mut String, record: Vec<Datum>) -> Result<Outcome, String> {
    let [_, date, channel, campaign_id, spend, revenue, source, observed_at] = fields(record)?;
    let date = day(date, "date")?;
    let channel = string(channel, "channel")?;
    let campaign_id = string(campaign_id, "campaign_id")?;
    let spend = double(spend, "spend")?;
    let revenue = double(revenue, "revenue")?;
    let source = string(source, "source")?;
    let observed_at = optional(observed_at, |d| timestamp(d, "observed_at"))?;
    Ok(Outcome {
        tenant: std::mem::take(tenant).into(),
        date,
        channel: channel.into(),
        campaign_id: campaign_id.into(),
        spend,
        revenue,
        source: source.into(),
        observed_at,
    })
}

fn forecast(tenant: &mut String, record: Vec<Datum>) -> Result<Forecast, String> {
    let [_, plan_id, model_version, issued_at, lines] = fields(record)?;
    let plan_id = string(plan_id, "plan_id")?;
    let model_version = optional(model_version, |d| string(d, "model_version"))?;
    let issued_at = timestamp_with_offset(issued_at, "issued_at")?;
    let Datum::Array(lines) = lines else {
        return Err(unexpected("lines", &lines));
    };
    let lines = lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| forecast_line(line).map_err(|e| format!("lines[{i}].{e}")))
        .collect::<Result<_, _>>()?;
    Ok(Forecast {
        tenant: std::mem::take(tenant).into(),
        plan_id: plan_id.into(),
        model_version,
        issued_at,
        lines,
    })
}

fn forecast_line(line: Datum) -> Result<ForecastLine, String> {
    let Datum::Record(line) = line else {
        return Err(unexpected("record", &line));
    };
    let [date, channel, campaign_id, spend, revenue] = fields(line)?;
    Ok(ForecastLine {
        date: day(date, "date")?,
        channel: string(channel, "channel")?.into(),
        campaign_id: string(campaign_id, "campaign_id")?.into(),
        spend: optional(spend, |d| double(d, "spend"))?,
        revenue: quantiles(revenue)?,
    })
}

fn quantiles(revenue: Datum) -> Result<Quantiles, String> {
    let Datum::Map(entries) = revenue else {
        return Err(unexpected("revenue", &revenue));
    };
    let mut pairs: SmallVec<[(u8, f64); 3]> = SmallVec::with_capacity(entries.len());
    for (key, value) in entries {
        let level = parse_quantile_key(&key)
            .ok_or_else(|| format!("revenue: quantile key `{key}` is not pNN with NN in 01..99"))?;
        if pairs.iter().any(|&(l, _)| l == level) {
            return Err(format!("revenue: quantile `{key}` given twice"));
        }
        pairs.push((level, double(value, "revenue")?));
    }
    pairs.sort_by_key(|&(level, _)| level);
    Ok(Quantiles(pairs))
}

fn feature_importance(
    tenant: &mut String,
    record: Vec<Datum>,
) -> Result<FeatureImportance, String> {
    let [_, model_version, computed_at, method, importances, samples] = fields(record)?;
    let model_version = optional(model_version, |d| string(d, "model_version"))?;
    let computed_at = timestamp(computed_at, "computed_at")?;
    let method = optional(method, |d| string(d, "method"))?;
    let Datum::Map(importances) = importances else {
        return Err(unexpected("importances", &importances));
    };
    let importances = importances
        .into_iter()
        .map(|(k, v)| Ok((k, double(v, "importances")?)))
        .collect::<Result<BTreeMap<_, _>, String>>()?;
    let Datum::Map(samples) = samples else {
        return Err(unexpected("samples", &samples));
    };
    let samples = samples
        .into_iter()
        .map(|(k, v)| match v {
            Datum::Array(xs) => Ok((
                k,
                xs.into_iter()
                    .map(|x| double(x, "samples"))
                    .collect::<Result<_, _>>()?,
            )),
            other => Err(unexpected("samples", &other)),
        })
        .collect::<Result<BTreeMap<_, _>, String>>()?;
    Ok(FeatureImportance {
        tenant: std::mem::take(tenant).into(),
        model_version,
        computed_at,
        method,
        importances,
        samples,
    })
}

fn unexpected(field: &str, datum: &Datum) -> String {
    format!("{field}: unexpected {datum:?}")
}

fn string(d: Datum, field: &str) -> Result<String, String> {
    match d {
        Datum::Str(s) => Ok(s),
        other => Err(unexpected(field, &other)),
    }
}

fn double(d: Datum, field: &str) -> Result<f64, String> {
    match d {
        Datum::Double(v) => Ok(v),
        other => Err(unexpected(field, &other)),
    }
}

fn optional<T>(d: Datum, f: impl FnOnce(Datum) -> Result<T, String>) -> Result<Option<T>, String> {
    match d {
        Datum::Null => Ok(None),
        other => f(other).map(Some),
    }
}

/// `YYYY-MM-DD`, parsed as the JSON path parses it.
fn day(d: Datum, field: &str) -> Result<NaiveDate, String> {
    let s = string(d, field)?;
    s.parse()
        .map_err(|e| format!("{field}: {s:?} is not a date YYYY-MM-DD ({e})"))
}

/// RFC 3339 keeping its offset, parsed as the JSON path parses it (chrono's serde).
fn timestamp_with_offset(d: Datum, field: &str) -> Result<DateTime<FixedOffset>, String> {
    let s = string(d, field)?;
    s.parse::<DateTime<FixedOffset>>()
        .map_err(|e| format!("{field}: {s:?} is not an RFC 3339 timestamp ({e})"))
}

/// RFC 3339, parsed as the JSON path parses it (chrono's serde).
fn timestamp(d: Datum, field: &str) -> Result<DateTime<Utc>, String> {
    let s = string(d, field)?;
    s.parse::<DateTime<FixedOffset>>()
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{field}: {s:?} is not an RFC 3339 timestamp ({e})"))
}

// Typed payload to an Avro value of the reader schema, for producers and tests.

fn to_value(event: &Event) -> Value {
    match event {
        Event::Outcome(o) => record(
            OUTCOME_FIELDS,
            [
                Value::String(o.tenant.to_string()),
                Value::String(o.date.to_string()),
                Value::String(o.channel.to_string()),
                Value::String(o.campaign_id.to_string()),
                Value::Double(o.spend),
                Value::Double(o.revenue),
                Value::String(o.source.to_string()),
                nullable(o.observed_at.map(|t| Value::String(rfc3339(t)))),
            ],
        ),
        Event::Forecast(f) => record(
            FORECAST_FIELDS,
            [
                Value::String(f.tenant.to_string()),
                Value::String(f.plan_id.to_string()),
                nullable(f.model_version.clone().map(Value::String)),
                Value::String(rfc3339(f.issued_at)),
                Value::Array(f.lines.iter().map(line_value).collect()),
            ],
        ),
        Event::FeatureImportance(f) => record(
            IMPORTANCE_FIELDS,
            [
                Value::String(f.tenant.to_string()),
                nullable(f.model_version.clone().map(Value::String)),
                Value::String(rfc3339(f.computed_at)),
                nullable(f.method.clone().map(Value::String)),
                Value::Map(
                    f.importances
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::Double(*v)))
                        .collect(),
                ),
                Value::Map(
                    f.samples
                        .iter()
                        .map(|(k, xs)| {
                            (
                                k.clone(),
                                Value::Array(xs.iter().map(|x| Value::Double(*x)).collect()),
                            )
                        })
                        .collect(),
                ),
            ],
        ),
    }
}

fn line_value(line: &ForecastLine) -> Value {
    record(
        LINE_FIELDS,
        [
            Value::String(line.date.to_string()),
            Value::String(line.channel.to_string()),
            Value::String(line.campaign_id.to_string()),
            nullable(line.spend.map(Value::Double)),
            Value::Map(
                line.revenue
                    .iter()
                    .map(|(level, v)| (quantile_key(level), Value::Double(v)))
                    .collect(),
            ),
        ],
    )
}

fn record<const N: usize>(names: [&str; N], values: [Value; N]) -> Value {
    Value::Record(names.into_iter().map(str::to_owned).zip(values).collect())
}

/// A value of a `["null", T]` union.
fn nullable(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn rfc3339<Tz: chrono::TimeZone>(t: DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_names(schema: &Schema) -> Vec<&str> {
        match schema {
            Schema::Record(r) => r.fields.iter().map(|f| f.name.as_str()).collect(),
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn reader_field_order_matches_the_conversions() {
        let avro = AvroSchemas::new();
        assert_eq!(
            field_names(avro.reader_schema(Topic::Outcomes)),
            OUTCOME_FIELDS
        );
        assert_eq!(
            field_names(avro.reader_schema(Topic::Forecasts)),
            FORECAST_FIELDS
        );
        assert_eq!(
            field_names(avro.reader_schema(Topic::FeatureImportances)),
            IMPORTANCE_FIELDS
        );
        let Schema::Record(forecast) = avro.reader_schema(Topic::Forecasts) else {
            unreachable!()
        };
        let Schema::Array(lines) = &forecast.fields[4].schema else {
            panic!("lines is not an array");
        };
        assert_eq!(field_names(&lines.items), LINE_FIELDS);
        for topic in Topic::ALL {
            assert_eq!(
                reader_name(topic),
                avro.reader_schema(topic).name().unwrap().fullname(None)
            );
        }
    }

    #[test]
    fn builtin_ids_resolve_only_to_their_own_topic() {
        let avro = AvroSchemas::builtin();
        for (id, topic) in [
            (1, Topic::Outcomes),
            (2, Topic::Forecasts),
            (3, Topic::FeatureImportances),
        ] {
            assert_eq!(AvroSchemas::builtin_id(topic), id);
            let writer = &avro.writers[&id];
            for other in Topic::ALL {
                assert_eq!(
                    writer.plans[slot(other)].is_ok(),
                    other == topic,
                    "{id} as {other:?}"
                );
                assert_eq!(writer.is_reader[slot(other)], other == topic);
            }
        }
        assert!(avro.writers[&ALERT_SCHEMA_ID]
            .plans
            .iter()
            .all(Result::is_err));
    }

    #[test]
    fn zigzag_varints_decode() {
        for (bytes, value) in [
            (&[0x00][..], 0),
            (&[0x01], -1),
            (&[0x02], 1),
            (&[0x7f], -64),
            (&[0x80, 0x01], 64),
            (
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MAX,
            ),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MIN,
            ),
        ] {
            assert_eq!(Input::new(bytes).varint().ok(), Some(value), "{bytes:?}");
        }
        assert!(Input::new(&[0x80; 11]).varint().is_err());
        assert!(Input::new(&[0x80]).varint().is_err());
    }
}
