//! Validation of decoded payloads (SPEC 3, "Validation"): a record is accepted or rejected whole.

use std::fmt;

use serde::Serialize;

use super::{Event, FeatureImportance, Forecast, ForecastLine, Outcome};

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
    /// A valid event on Kafka not keyed by its tenant, or on another partition than its
    /// tenant's (SPEC 2): folding it would split the tenant's state.
    WrongPartition,
}

impl RejectKind {
    pub const ALL: [RejectKind; 6] = [
        RejectKind::TooLarge,
        RejectKind::Malformed,
        RejectKind::SchemaMismatch,
        RejectKind::InvalidField,
        RejectKind::UnknownTopic,
        RejectKind::WrongPartition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::TooLarge => "too_large",
            RejectKind::Malformed => "malformed",
            RejectKind::SchemaMismatch => "schema_mismatch",
            RejectKind::InvalidField => "invalid_field",
            RejectKind::UnknownTopic => "unknown_topic",
            RejectKind::WrongPartition => "wrong_partition",
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
        Rejection {
            kind,
            message: message.into(),
            tenant: None,
        }
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

/// Suffixes the storage documents' file names use: a tenant named `x_calibration` would share
/// `x_calibration.json` with the calibration document of tenant `x`, so SPEC 3's pattern is
/// narrowed by these.
pub const RESERVED_SUFFIXES: [&str; 2] = ["_calibration", "_drift"];

/// `^[a-z0-9][a-z0-9_-]{0,63}$`, not ending in a [`RESERVED_SUFFIXES`] entry: the tenant
/// becomes a file name, so nothing else gets through.
pub fn valid_tenant(tenant: &str) -> bool {
    matches_tenant_pattern(tenant) && !RESERVED_SUFFIXES.iter().any(|s| tenant.ends_with(s))
}

fn matches_tenant_pattern(tenant: &str) -> bool {
    let b = tenant.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

pub fn validate(event: &Event) -> Result<(), Rejection> {
    match event {
        Event::Outcome(o) => validate_outcome(o),
        Event::Forecast(f) => validate_forecast(f),
        Event::FeatureImportance(f) => validate_feature_importance(f),
    }
}

/// Lines per forecast record (SPEC 3).
pub const MAX_FORECAST_LINES: usize = 10_000;
/// Features per FeatureImportance record (SPEC 3).
pub const MAX_FEATURES: usize = 10_000;
/// Values per sample of one feature (SPEC 3).
pub const MAX_SAMPLE_VALUES: usize = 100_000;
/// channel and source: 1 to this many of `[A-Za-z0-9_.-]`.
pub const MAX_NAME_CHARS: usize = 64;
/// campaign_id, plan_id, model_version and method: at most this many printable characters.
pub const MAX_ID_CHARS: usize = 128;
/// Feature names: non-empty, at most this many characters, no control characters. SPEC 3 is
/// silent on feature names; they end up as JSON keys in the drift document, so they get the same
/// "printable" rule as ids with a roomier limit for long generated names.
pub const MAX_FEATURE_NAME_CHARS: usize = 256;

pub fn validate_outcome(o: &Outcome) -> Result<(), Rejection> {
    check_tenant(&o.tenant)?;
    outcome_fields(o).map_err(|m| invalid(&o.tenant, m))
}

/// Checks a plan whole: the first bad line rejects the record, naming the line's index.
pub fn validate_forecast(f: &Forecast) -> Result<(), Rejection> {
    check_tenant(&f.tenant)?;
    forecast_fields(f).map_err(|m| invalid(&f.tenant, m))
}

pub fn validate_feature_importance(f: &FeatureImportance) -> Result<(), Rejection> {
    check_tenant(&f.tenant)?;
    feature_importance_fields(f).map_err(|m| invalid(&f.tenant, m))
}

type Check = Result<(), String>;

fn check_tenant(tenant: &str) -> Result<(), Rejection> {
    if valid_tenant(tenant) {
        Ok(())
    } else if matches_tenant_pattern(tenant) {
        Err(Rejection::new(
            RejectKind::InvalidField,
            format!(
                "tenant: {} ends with one of {RESERVED_SUFFIXES:?}, which the storage file names reserve",
                Shown(tenant)
            ),
        ))
    } else {
        Err(Rejection::new(
            RejectKind::InvalidField,
            format!(
                "tenant: {} does not match ^[a-z0-9][a-z0-9_-]{{0,63}}$",
                Shown(tenant)
            ),
        ))
    }
}

fn invalid(tenant: &str, message: String) -> Rejection {
    Rejection::new(RejectKind::InvalidField, message).with_tenant(Some(tenant))
}

fn outcome_fields(o: &Outcome) -> Check {
    date(&"date", o.date)?;
    name(&"channel", &o.channel)?;
    text(&"campaign_id", &o.campaign_id, MAX_ID_CHARS)?;
    non_negative(&"spend", o.spend)?;
    non_negative(&"revenue", o.revenue)?;
    name(&"source", &o.source)
}

fn forecast_fields(f: &Forecast) -> Check {
    required_text(&"plan_id", &f.plan_id, MAX_ID_CHARS)?;
    if let Some(v) = &f.model_version {
        text(&"model_version", v, MAX_ID_CHARS)?;
    }
    count(&"lines", "lines", f.lines.len(), MAX_FORECAST_LINES)?;
    let issued = f.issued_at.date_naive();
    for (i, line) in f.lines.iter().enumerate() {
        forecast_line(i, line, issued)?;
    }
    Ok(())
}

fn forecast_line(i: usize, line: &ForecastLine, issued: chrono::NaiveDate) -> Check {
    date(&At(i, "date"), line.date)?;
    let horizon = (line.date - issued).num_days();
    if horizon < 0 {
        return Err(format!(
            "{}: {} is before the issue date {issued} (horizon {horizon} days)",
            At(i, "date"),
            line.date
        ));
    }
    name(&At(i, "channel"), &line.channel)?;
    text(&At(i, "campaign_id"), &line.campaign_id, MAX_ID_CHARS)?;
    if let Some(spend) = line.spend {
        non_negative(&At(i, "spend"), spend)?;
    }
    if line.revenue.p50().is_none() {
        return Err(format!("{}: p50 is missing", At(i, "revenue")));
    }
    // Crossing quantiles are accepted: the fold counts them (SPEC 3).
    for (level, value) in line.revenue.iter() {
        if !value.is_finite() || value.abs() > MAX_AMOUNT {
            return Err(format!(
                "{}.{}: {value} is not a finite number of at most {MAX_AMOUNT:e} in magnitude",
                At(i, "revenue"),
                super::quantile_key(level)
            ));
        }
    }
    Ok(())
}

fn feature_importance_fields(f: &FeatureImportance) -> Check {
    if let Some(v) = &f.model_version {
        text(&"model_version", v, MAX_ID_CHARS)?;
    }
    if let Some(v) = &f.method {
        text(&"method", v, MAX_ID_CHARS)?;
    }
    count(
        &"importances",
        "features",
        f.importances.len(),
        MAX_FEATURES,
    )?;
    for (feature, &value) in &f.importances {
        feature_name("importances", feature)?;
        finite(&Key("importances", feature), value)?;
    }
    // SPEC 4's shares |v| / sum |v| are undefined when every importance is 0: such an event
    // (an explainer that failed upstream, say) would read as total drift against any baseline.
    if f.importances.values().all(|&v| v == 0.0) {
        return Err(format!(
            "importances: all {} are 0, so their shares |v| / sum |v| are undefined",
            f.importances.len()
        ));
    }
    for (feature, values) in &f.samples {
        feature_name("samples", feature)?;
        let field = Key("samples", feature);
        count(&field, "values", values.len(), MAX_SAMPLE_VALUES)?;
        if let Some(j) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{field}[{j}]: {} is not a finite number",
                values[j]
            ));
        }
    }
    Ok(())
}

/// channel, source: 1 to 64 of `[A-Za-z0-9_.-]`.
fn name(field: &dyn fmt::Display, v: &str) -> Check {
    let ok = !v.is_empty()
        && v.len() <= MAX_NAME_CHARS
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: {} is not 1 to {MAX_NAME_CHARS} characters of [A-Za-z0-9_.-]",
            Shown(v)
        ))
    }
}

/// At most `max` printable characters (no control characters); empty is allowed.
fn text(field: &dyn fmt::Display, v: &str, max: usize) -> Check {
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{field}: {} contains the control character U+{:04X}",
            Shown(v),
            c as u32
        ));
    }
    if v.len() > max {
        let n = v.chars().count();
        if n > max {
            return Err(format!(
                "{field}: {} has {n} characters, at most {max} allowed",
                Shown(v)
            ));
        }
    }
    Ok(())
}

fn required_text(field: &dyn fmt::Display, v: &str, max: usize) -> Check {
    if v.is_empty() {
        return Err(format!("{field} is empty"));
    }
    text(field, v, max)
}

fn feature_name(map: &'static str, feature: &str) -> Check {
    required_text(&FeatureName(map), feature, MAX_FEATURE_NAME_CHARS)
}

fn count(field: &dyn fmt::Display, what: &str, n: usize, max: usize) -> Check {
    if (1..=max).contains(&n) {
        Ok(())
    } else {
        Err(format!("{field}: {n} {what}, expected 1 to {max}"))
    }
}

fn finite(field: &dyn fmt::Display, v: f64) -> Check {
    if v.is_finite() {
        Ok(())
    } else {
        Err(format!("{field}: {v} is not a finite number"))
    }
}

/// Money and forecast values: finite, and small enough that sums of them cannot overflow to
/// infinity (an infinity in a running sum could never be taken out again).
pub const MAX_AMOUNT: f64 = 1e15;

/// Dates: years 1970 to 2999. A typo such as 20266 would otherwise move as_of past every real
/// record and expire the tenant's history.
pub const MIN_YEAR: i32 = 1970;
pub const MAX_YEAR: i32 = 2999;

fn date(field: &dyn fmt::Display, d: chrono::NaiveDate) -> Check {
    use chrono::Datelike;
    if (MIN_YEAR..=MAX_YEAR).contains(&d.year()) {
        Ok(())
    } else {
        Err(format!(
            "{field}: {d} is outside the years {MIN_YEAR} to {MAX_YEAR}"
        ))
    }
}

fn non_negative(field: &dyn fmt::Display, v: f64) -> Check {
    finite(field, v)?;
    if v < 0.0 {
        return Err(format!("{field}: {v} is negative"));
    }
    if v > MAX_AMOUNT {
        return Err(format!("{field}: {v} is larger than {MAX_AMOUNT:e}"));
    }
    Ok(())
}

/// `lines[3].revenue`: the path of a field of one forecast line.
struct At(usize, &'static str);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lines[{}].{}", self.0, self.1)
    }
}

/// `samples["meta_spend"]`: one entry of a feature map.
struct Key<'a>(&'static str, &'a str);

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.0, Shown(self.1))
    }
}

/// `importances feature name`: the key of a feature map, as a field of its own.
struct FeatureName(&'static str);

impl fmt::Display for FeatureName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} feature name", self.0)
    }
}

/// A value quoted for a message, cut short so a 1 MiB field cannot bloat a DLQ header.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 64;
        match self.0.char_indices().nth(MAX) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}...", &self.0[..cut]),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{NaiveDate, TimeZone, Utc};

    #[test]
    fn tenants_ending_like_a_document_file_are_refused() {
        let mut o = outcome();
        o.tenant = "acme_calibration".into();
        let r = validate_outcome(&o).unwrap_err();
        assert!(r.message.contains("reserve"), "{}", r.message);
        o.tenant = "acme_drift".into();
        assert!(validate_outcome(&o).is_err());
        o.tenant = "acme_drifting".into();
        assert!(validate_outcome(&o).is_ok());
    }

    #[test]
    fn amounts_beyond_1e15_and_dates_outside_1970_to_2999_are_refused() {
        let mut o = outcome();
        o.revenue = 1e308;
        assert!(validate_outcome(&o)
            .unwrap_err()
            .message
            .contains("larger than"));
        let mut o = outcome();
        o.date = NaiveDate::from_ymd_opt(20266, 1, 1).unwrap();
        assert!(validate_outcome(&o)
            .unwrap_err()
            .message
            .contains("outside the years"));
        let mut o = outcome();
        o.date = NaiveDate::from_ymd_opt(1969, 12, 31).unwrap();
        assert!(validate_outcome(&o).is_err());
        let mut o = outcome();
        o.revenue = 1e15;
        assert!(validate_outcome(&o).is_ok());
    }

    use super::*;
    use crate::event::Quantiles;

    fn outcome() -> Outcome {
        Outcome {
            tenant: "acme".into(),
            date: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
            channel: "meta".into(),
            campaign_id: "cmp-1".into(),
            spend: 120.5,
            revenue: 480.0,
            source: "meta_ads".into(),
            observed_at: None,
        }
    }

    fn line() -> ForecastLine {
        ForecastLine {
            date: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
            channel: "meta".into(),
            campaign_id: "cmp-1".into(),
            spend: Some(100.0),
            revenue: Quantiles::from_pairs([(10, 300.0), (50, 420.0), (90, 560.0)]),
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
            lines: vec![line()],
        }
    }

    fn importance() -> FeatureImportance {
        FeatureImportance {
            tenant: "acme".into(),
            model_version: Some("mmm-v12".into()),
            computed_at: Utc.with_ymd_and_hms(2026, 11, 15, 0, 0, 0).unwrap(),
            method: Some("shap".into()),
            importances: BTreeMap::from([
                ("meta_spend".into(), 0.41),
                ("seasonality".into(), -0.12),
            ]),
            samples: BTreeMap::from([("meta_spend".into(), vec![120.0, 98.5])]),
        }
    }

    /// Asserts an InvalidField rejection whose message contains `needle`, counted against acme.
    #[track_caller]
    fn rejected(result: Result<(), Rejection>, needle: &str) {
        let r = result.expect_err("expected a rejection");
        assert_eq!(r.kind, RejectKind::InvalidField, "{r}");
        assert!(
            r.message.contains(needle),
            "message {:?} lacks {needle:?}",
            r.message
        );
        assert_eq!(r.tenant.as_deref(), Some("acme"), "{r}");
    }

    fn with_outcome(edit: impl FnOnce(&mut Outcome)) -> Result<(), Rejection> {
        let mut o = outcome();
        edit(&mut o);
        validate_outcome(&o)
    }

    fn with_forecast(edit: impl FnOnce(&mut Forecast)) -> Result<(), Rejection> {
        let mut f = forecast();
        edit(&mut f);
        validate_forecast(&f)
    }

    fn with_line(edit: impl FnOnce(&mut ForecastLine)) -> Result<(), Rejection> {
        with_forecast(|f| {
            f.lines.push(line());
            edit(&mut f.lines[1]);
        })
    }

    fn with_importance(edit: impl FnOnce(&mut FeatureImportance)) -> Result<(), Rejection> {
        let mut f = importance();
        edit(&mut f);
        validate_feature_importance(&f)
    }

    #[test]
    fn the_spec_examples_are_valid() {
        assert_eq!(validate(&Event::Outcome(outcome())), Ok(()));
        assert_eq!(validate(&Event::Forecast(forecast())), Ok(()));
        assert_eq!(validate(&Event::FeatureImportance(importance())), Ok(()));
    }

    #[test]
    fn tenant_must_match_the_pattern_and_is_not_reported_when_bad() {
        for good in ["a", "0", "acme_eu-1", &"a".repeat(64)] {
            assert_eq!(with_outcome(|o| o.tenant = good.into()), Ok(()), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "Acme",
            "_acme",
            "-acme",
            "ac me",
            "acmé",
            &"a".repeat(65),
        ] {
            for r in [
                with_outcome(|o| o.tenant = bad.into()),
                with_forecast(|f| f.tenant = bad.into()),
                with_importance(|f| f.tenant = bad.into()),
            ] {
                let r = r.expect_err(bad);
                assert_eq!(r.kind, RejectKind::InvalidField);
                assert!(r.message.starts_with("tenant: "), "{}", r.message);
                assert_eq!(r.tenant, None);
            }
        }
    }

    #[test]
    fn channel_is_1_to_64_of_the_name_alphabet() {
        for good in ["m", "Meta.Ads_2-x", &"c".repeat(64)] {
            assert_eq!(with_outcome(|o| o.channel = good.into()), Ok(()));
            assert_eq!(with_line(|l| l.channel = good.into()), Ok(()));
        }
        for bad in ["", "me ta", "meta/ads", "métà", &"c".repeat(65)] {
            rejected(with_outcome(|o| o.channel = bad.into()), "channel: ");
            rejected(with_line(|l| l.channel = bad.into()), "lines[1].channel: ");
        }
    }

    #[test]
    fn source_is_1_to_64_of_the_name_alphabet() {
        assert_eq!(with_outcome(|o| o.source = "shopify".into()), Ok(()));
        rejected(
            with_outcome(|o| o.source = Default::default()),
            "source: \"\"",
        );
        rejected(
            with_outcome(|o| o.source = "shop ify".into()),
            "source: \"shop ify\"",
        );
        rejected(
            with_outcome(|o| o.source = "s".repeat(65).into()),
            "source: ",
        );
    }

    #[test]
    fn campaign_id_is_at_most_128_printable_characters_and_may_be_empty() {
        for good in [String::new(), "cmp 1 / été".into(), "é".repeat(128)] {
            assert_eq!(
                with_outcome(|o| o.campaign_id = good.clone().into()),
                Ok(())
            );
            assert_eq!(with_line(|l| l.campaign_id = good.clone().into()), Ok(()));
        }
        rejected(
            with_outcome(|o| o.campaign_id = "é".repeat(129).into()),
            "129 characters, at most 128",
        );
        rejected(
            with_outcome(|o| o.campaign_id = "cmp\n1".into()),
            "control character U+000A",
        );
        rejected(
            with_line(|l| l.campaign_id = "cmp\u{7f}".into()),
            "lines[1].campaign_id: ",
        );
    }

    #[test]
    fn plan_id_is_required_and_at_most_128_printable_characters() {
        assert_eq!(
            with_forecast(|f| f.plan_id = "p".repeat(128).into()),
            Ok(())
        );
        rejected(
            with_forecast(|f| f.plan_id = Default::default()),
            "plan_id is empty",
        );
        rejected(
            with_forecast(|f| f.plan_id = "p".repeat(129).into()),
            "plan_id: ",
        );
        rejected(with_forecast(|f| f.plan_id = "plan\t1".into()), "U+0009");
    }

    #[test]
    fn model_version_and_method_are_at_most_128_printable_characters() {
        assert_eq!(with_forecast(|f| f.model_version = None), Ok(()));
        assert_eq!(
            with_importance(|f| f.method = Some("m".repeat(128))),
            Ok(())
        );
        rejected(
            with_forecast(|f| f.model_version = Some("v".repeat(129))),
            "model_version: ",
        );
        rejected(
            with_importance(|f| f.model_version = Some("v\u{0}".into())),
            "model_version: ",
        );
        rejected(
            with_importance(|f| f.method = Some("m".repeat(129))),
            "method: ",
        );
    }

    #[test]
    fn outcome_spend_and_revenue_are_finite_and_not_negative() {
        assert_eq!(with_outcome(|o| o.spend = 0.0), Ok(()));
        assert_eq!(with_outcome(|o| o.revenue = 0.0), Ok(()));
        rejected(
            with_outcome(|o| o.spend = -0.01),
            "spend: -0.01 is negative",
        );
        rejected(
            with_outcome(|o| o.revenue = -1.0),
            "revenue: -1 is negative",
        );
        rejected(
            with_outcome(|o| o.spend = f64::NAN),
            "spend: NaN is not a finite number",
        );
        rejected(
            with_outcome(|o| o.revenue = f64::INFINITY),
            "revenue: inf is not a finite",
        );
    }

    #[test]
    fn forecast_has_1_to_10000_lines() {
        assert_eq!(
            with_forecast(|f| f.lines = vec![line(); MAX_FORECAST_LINES]),
            Ok(())
        );
        rejected(
            with_forecast(|f| f.lines.clear()),
            "lines: 0 lines, expected 1 to 10000",
        );
        rejected(
            with_forecast(|f| f.lines = vec![line(); MAX_FORECAST_LINES + 1]),
            "10001 lines",
        );
    }

    #[test]
    fn every_line_needs_a_p50() {
        assert_eq!(
            with_line(|l| l.revenue = Quantiles::from_pairs([(50, 1.0)])),
            Ok(())
        );
        let no_p50 = Quantiles::from_pairs([(10, 1.0), (90, 2.0)]);
        rejected(
            with_line(|l| l.revenue = no_p50),
            "lines[1].revenue: p50 is missing",
        );
        rejected(
            with_line(|l| l.revenue = Quantiles::default()),
            "lines[1].revenue: p50 is missing",
        );
    }

    #[test]
    fn planned_spend_is_optional_finite_and_not_negative() {
        assert_eq!(with_line(|l| l.spend = None), Ok(()));
        assert_eq!(with_line(|l| l.spend = Some(0.0)), Ok(()));
        rejected(
            with_line(|l| l.spend = Some(-5.0)),
            "lines[1].spend: -5 is negative",
        );
        rejected(
            with_line(|l| l.spend = Some(f64::NAN)),
            "lines[1].spend: NaN",
        );
    }

    #[test]
    fn quantile_values_are_finite_but_may_cross_or_be_negative() {
        let crossing = Quantiles::from_pairs([(10, 600.0), (50, 420.0), (90, -1.0)]);
        assert!(crossing.crosses());
        assert_eq!(with_line(|l| l.revenue = crossing), Ok(()));
        let nan = Quantiles::from_pairs([(10, f64::NAN), (50, 420.0)]);
        rejected(
            with_line(|l| l.revenue = nan),
            "lines[1].revenue.p10: NaN is not a finite number",
        );
        let inf = Quantiles::from_pairs([(50, f64::NEG_INFINITY)]);
        rejected(with_line(|l| l.revenue = inf), "lines[1].revenue.p50: -inf");
    }

    #[test]
    fn horizon_may_be_zero_but_not_negative() {
        let issue_day = NaiveDate::from_ymd_opt(2026, 11, 15).unwrap();
        assert_eq!(with_line(|l| l.date = issue_day), Ok(()));
        // issued late on the 15th UTC: the 15th is still horizon 0.
        let late = Utc
            .with_ymd_and_hms(2026, 11, 15, 23, 59, 59)
            .unwrap()
            .fixed_offset();
        assert_eq!(
            with_forecast(|f| {
                f.issued_at = late;
                f.lines[0].date = issue_day;
            }),
            Ok(())
        );
        // issued in the evening of the 15th in New York (the 16th in UTC): the 15th is horizon 0.
        let evening: chrono::DateTime<chrono::FixedOffset> =
            "2026-11-15T22:00:00-05:00".parse().unwrap();
        assert_eq!(
            with_forecast(|f| {
                f.issued_at = evening;
                f.lines[0].date = issue_day;
            }),
            Ok(())
        );
        let before = NaiveDate::from_ymd_opt(2026, 11, 14).unwrap();
        rejected(
            with_line(|l| l.date = before),
            "lines[1].date: 2026-11-14 is before the issue date 2026-11-15",
        );
    }

    #[test]
    fn one_bad_line_rejects_the_whole_plan_and_names_the_first_bad_line() {
        let r = with_forecast(|f| {
            f.lines = vec![line(); 5];
            f.lines[3].revenue = Quantiles::from_pairs([(10, 1.0)]);
            f.lines[4].channel = Default::default();
        });
        rejected(r, "lines[3].revenue: p50 is missing");
    }

    #[test]
    fn importances_have_1_to_10000_finite_values() {
        let many: BTreeMap<String, f64> =
            (0..MAX_FEATURES).map(|i| (format!("f{i}"), 1.0)).collect();
        assert_eq!(with_importance(|f| f.importances = many.clone()), Ok(()));
        rejected(
            with_importance(|f| f.importances.clear()),
            "importances: 0 features, expected 1 to 10000",
        );
        let mut too_many = many;
        too_many.insert("one_more".into(), 1.0);
        rejected(
            with_importance(|f| f.importances = too_many),
            "10001 features",
        );
        rejected(
            with_importance(|f| f.importances.values_mut().for_each(|v| *v = -0.0)),
            "importances: all 2 are 0, so their shares |v| / sum |v| are undefined",
        );
        assert_eq!(
            with_importance(|f| {
                f.importances.values_mut().for_each(|v| *v = 0.0);
                f.importances.insert("meta_spend".into(), -1e-300);
            }),
            Ok(())
        );
        rejected(
            with_importance(|f| {
                f.importances.insert("meta_spend".into(), f64::NAN);
            }),
            "importances[\"meta_spend\"]: NaN is not a finite number",
        );
    }

    #[test]
    fn feature_names_are_non_empty_printable_and_at_most_256_characters() {
        assert_eq!(
            with_importance(|f| {
                f.importances.insert("x".repeat(256), 0.1);
                f.importances.insert("spend (meta) / ads".into(), 0.1);
            }),
            Ok(())
        );
        rejected(
            with_importance(|f| {
                f.importances.insert(String::new(), 0.1);
            }),
            "importances feature name is empty",
        );
        rejected(
            with_importance(|f| {
                f.importances.insert("x".repeat(257), 0.1);
            }),
            "257 characters, at most 256",
        );
        rejected(
            with_importance(|f| {
                f.samples.insert("a\u{1b}b".into(), vec![1.0]);
            }),
            "samples feature name: \"a\\u{1b}b\" contains the control character U+001B",
        );
    }

    #[test]
    fn samples_are_optional_with_1_to_100000_finite_values_each() {
        assert_eq!(with_importance(|f| f.samples.clear()), Ok(()));
        assert_eq!(
            with_importance(|f| {
                f.samples
                    .insert("other".into(), vec![0.5; MAX_SAMPLE_VALUES]);
            }),
            Ok(())
        );
        rejected(
            with_importance(|f| {
                f.samples.insert("other".into(), Vec::new());
            }),
            "samples[\"other\"]: 0 values, expected 1 to 100000",
        );
        rejected(
            with_importance(|f| {
                f.samples
                    .insert("other".into(), vec![0.5; MAX_SAMPLE_VALUES + 1]);
            }),
            "100001 values",
        );
        rejected(
            with_importance(|f| {
                f.samples
                    .insert("other".into(), vec![1.0, 2.0, f64::INFINITY]);
            }),
            "samples[\"other\"][2]: inf is not a finite number",
        );
    }

    #[test]
    fn long_values_are_cut_short_in_messages() {
        let r = with_outcome(|o| o.channel = "x".repeat(100_000).into()).unwrap_err();
        assert!(r.message.len() < 200, "{}", r.message);
        assert!(r.message.contains("..."));
    }
}
