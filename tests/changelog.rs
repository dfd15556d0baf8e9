//! The changelog of tenant state (SPEC 7, `fold::snapshot`): a tenant restored from the
//! compacted records the processor wrote is the tenant that wrote them. Same documents to the
//! last bit, and folding on from there publishes the same alerts (same ids) as folding on
//! without the restore.

use std::collections::{BTreeMap, BTreeSet};

use feedback::alert::Alert;
use feedback::event::validate::{RejectKind, Rejection};
use feedback::event::Event;
use feedback::fold::snapshot::{readable, StateKey, TenantRecords, FORMAT_VERSION};
use feedback::fold::{Engine, FoldConfig};
use feedback::simulate::{generate_events, Scenario, SimConfig};

fn events(days: u32) -> Vec<Event> {
    events_of(4, days)
}

fn events_of(tenants: usize, days: u32) -> Vec<Event> {
    let sim = SimConfig {
        tenants,
        days,
        scenario: Scenario::Mixed,
        ..SimConfig::default()
    };
    generate_events(&sim)
}

/// A compacted topic: the latest value per key, tombstones removing keys.
#[derive(Default)]
struct Compacted(BTreeMap<String, Option<Vec<u8>>>);

impl Compacted {
    fn take(&mut self, engine: &mut Engine) -> usize {
        let changes = engine.take_changes();
        let n = changes.records.len();
        for r in changes.records {
            self.0.insert(r.key, r.value);
        }
        n
    }

    fn restore(&self, config: FoldConfig) -> Engine {
        let mut tenants = BTreeMap::new();
        for (key, value) in &self.0 {
            TenantRecords::apply(&mut tenants, key, value.clone()).unwrap();
        }
        let mut engine = Engine::new(config).with_changelog();
        engine.restore(&tenants).unwrap();
        engine
    }

    fn live_days(&self) -> usize {
        self.0
            .iter()
            .filter(|(k, v)| {
                v.is_some() && matches!(StateKey::parse(k), Some(StateKey::Day { .. }))
            })
            .count()
    }
}

fn documents(engine: &Engine) -> BTreeMap<String, String> {
    engine
        .tenants()
        .into_iter()
        .map(|t| {
            let docs = engine.documents(t).unwrap();
            (t.to_owned(), serde_json::to_string(&docs).unwrap())
        })
        .collect()
}

fn alert_lines(alerts: &[Alert]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| serde_json::to_string(a).unwrap())
        .collect()
}

/// Folds `events` in chunks, writing the changes to a compacted log after each; at every
/// `restore_every`-th chunk the engine is thrown away and restored from the log. The documents
/// and alerts must be those of an engine that folded everything without a break.
fn check(config: FoldConfig, events: &[Event], chunk: usize, restore_every: usize) {
    // Every 97th record is also refused once for its tenant, so the rejected counter travels
    // through the changelog too.
    let refuse = |i: usize, e: &Event, engine: &mut Engine| {
        if i % 97 == 0 {
            let r = Rejection::new(RejectKind::InvalidField, "test").with_tenant(Some(e.tenant()));
            engine.record_rejection(&r);
        }
    };
    let mut plain = Engine::new(config.clone());
    let mut plain_alerts = Vec::new();
    for (i, e) in events.iter().enumerate() {
        plain.apply(e, &mut plain_alerts);
        refuse(i, e, &mut plain);
    }

    let mut log = Compacted::default();
    let mut engine = Engine::new(config.clone()).with_changelog();
    let mut alerts = Vec::new();
    for (i, part) in events.chunks(chunk).enumerate() {
        for (j, e) in part.iter().enumerate() {
            engine.apply(e, &mut alerts);
            refuse(i * chunk + j, e, &mut engine);
        }
        log.take(&mut engine);
        if i % restore_every == restore_every - 1 {
            let restored = log.restore(config.clone());
            assert_eq!(documents(&restored), documents(&engine), "after chunk {i}");
            engine = restored;
        }
    }
    assert_eq!(documents(&engine), documents(&plain));
    assert_eq!(alert_lines(&alerts), alert_lines(&plain_alerts));
    // Nothing left unwritten, and a second take is empty.
    assert_eq!(log.take(&mut engine), 0);
    assert_eq!(documents(&log.restore(config)), documents(&plain));
}

#[test]
fn restored_tenants_publish_what_they_would_have() {
    check(FoldConfig::default(), &events(70), 997, 3);
}

#[test]
fn restore_after_every_small_chunk() {
    check(FoldConfig::default(), &events(40), 61, 1);
}

#[test]
fn expired_days_become_tombstones() {
    let config = FoldConfig {
        retention_days: 20,
        ..FoldConfig::default()
    };
    let evs = events(60);
    check(config.clone(), &evs, 500, 2);

    let mut log = Compacted::default();
    let mut engine = Engine::new(config).with_changelog();
    let mut alerts = Vec::new();
    let mut early = BTreeMap::new();
    for part in evs.chunks(500) {
        for e in part {
            engine.apply(e, &mut alerts);
        }
        log.take(&mut engine);
        if early.is_empty() {
            early = log.0.clone();
        }
    }
    // A date's record that outlived its tombstone (at-least-once, a batch cut short) is not
    // restored, and the first commit deletes it.
    let (stale, value) = (early.iter())
        .find(|(k, v)| {
            v.is_some()
                && matches!(StateKey::parse(k), Some(StateKey::Day { .. }))
                && log.0.get(*k) == Some(&None)
        })
        .expect("an expired date");
    let mut cut = Compacted(log.0.clone());
    cut.0.insert(stale.clone(), value.clone());
    let mut restored = cut.restore(FoldConfig {
        retention_days: 20,
        ..FoldConfig::default()
    });
    assert_eq!(documents(&restored), documents(&engine));
    assert!(cut.take(&mut restored) > 0);
    assert_eq!(cut.0[stale], None, "{stale}");
    // Four tenants, 20 days retained; forecast lines reach up to 28 days past as_of.
    assert!(
        log.live_days() <= 4 * (20 + 28),
        "{} live days",
        log.live_days()
    );
    assert!(log.0.values().any(Option::is_none), "no tombstone written");
    // Every date with a live record of its outcomes, and every plan with a live record of its
    // lines, is one the tenant still holds: expiry left nothing behind.
    for tenant in engine.tenants() {
        let state = engine.tenant(tenant).unwrap();
        let live = |kind: fn(StateKey) -> Option<String>| -> BTreeSet<String> {
            (log.0.iter())
                .filter(|(_, v)| v.is_some())
                .filter_map(|(k, _)| StateKey::parse(k).filter(|key| key.tenant() == tenant))
                .filter_map(kind)
                .collect()
        };
        let dates = live(|k| match k {
            StateKey::Day { date, .. } => Some(date.to_string()),
            _ => None,
        });
        let with_outcomes = state.days.values().filter(|d| !d.cells.is_empty()).count();
        assert_eq!(dates.len(), with_outcomes, "{tenant}");
        let plans = live(|k| match k {
            StateKey::PlanLines { plan, .. } => Some(plan.to_string()),
            StateKey::PlanDay { .. } => panic!("a date's lines of one plan in this format"),
            _ => None,
        });
        let with_lines: BTreeSet<String> = (state.days.values())
            .flat_map(|d| d.channels.values().flat_map(|cd| &cd.lines))
            .map(|l| l.plan.to_string())
            .collect();
        assert_eq!(plans, with_lines, "{tenant}");
        // Drift history entries past retention are deleted too: one live entry per entry the
        // tenant keeps, and at least one was dropped (60 days of weekly events, 20 retained).
        let entries = log
            .0
            .iter()
            .filter(|(k, v)| {
                v.is_some()
                    && matches!(StateKey::parse(k), Some(StateKey::DriftHistory { tenant: t, .. }) if t == tenant)
            })
            .count();
        assert_eq!(entries, state.drift_history.len(), "{tenant}");
        assert!(
            (entries as u64) < state.counters.feature_importances,
            "{tenant}: no entry expired"
        );
    }
    assert_eq!(
        documents(&log.restore(FoldConfig {
            retention_days: 20,
            ..FoldConfig::default()
        })),
        documents(&engine)
    );
    // A plan's record keeps the lines of its dates that expired while later ones did not; a
    // restore with a longer retention does not bring them back: the dates a tenant holds are
    // those it held.
    let longer = log.restore(FoldConfig {
        retention_days: 40,
        ..FoldConfig::default()
    });
    let lines = |e: &Engine, t: &str| -> Vec<(i32, usize)> {
        (e.tenant(t).unwrap().days.iter())
            .map(|(&day, d)| (day, d.channels.values().map(|cd| cd.lines.len()).sum()))
            .collect()
    };
    for tenant in engine.tenants() {
        assert_eq!(lines(&longer, tenant), lines(&engine, tenant), "{tenant}");
    }
    // Nor does a late plan: its lines on dropped dates are refused as expired, by the restored
    // tenant as by the one it restores to.
    let mut longer = longer;
    let mut late = evs
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Forecast(f) => Some(f.clone()),
            _ => None,
        })
        .unwrap();
    let back = chrono::Duration::days(35);
    late.plan_id = "late".into();
    late.issued_at -= back;
    for line in &mut late.lines {
        line.date -= back;
    }
    let tenant = late.tenant.to_string();
    let before = lines(&longer, &tenant);
    longer.apply(&Event::Forecast(late), &mut Vec::new());
    let after = lines(&longer, &tenant);
    assert!(after != before && after.len() == before.len(), "{after:?}");
    log.take(&mut longer);
    let config = FoldConfig {
        retention_days: 40,
        ..FoldConfig::default()
    };
    assert_eq!(documents(&log.restore(config)), documents(&longer));
}

/// A plan id that comes again after every date of its lines expired: its record is written
/// again, not deleted, even when both happen between two commits.
#[test]
fn a_plan_whose_dates_all_expired_can_come_again() {
    let config = FoldConfig {
        retention_days: 20,
        ..FoldConfig::default()
    };
    // One tenant; its first plan and the plans from day 56 on, all under one id: the first
    // plan's dates (days 1 to 28) have all expired by as_of 49, then the id comes again.
    let first = chrono::NaiveDate::from_ymd_opt(2026, 8, 1).unwrap();
    let evs: Vec<Event> = events_of(1, 70)
        .into_iter()
        .filter_map(|e| match e {
            Event::Forecast(mut f) => {
                let issued = (f.issued_at.date_naive() - first).num_days();
                f.plan_id = "same".into();
                (issued == 0 || issued >= 56).then_some(Event::Forecast(f))
            }
            e => Some(e),
        })
        .collect();
    for chunk in [evs.len(), 200, 37] {
        check(config.clone(), &evs, chunk, 1);
    }
}

#[test]
fn a_record_of_another_version_is_refused() {
    let mut engine = Engine::new(FoldConfig::default()).with_changelog();
    let mut alerts = Vec::new();
    for e in events(10).iter().take(50) {
        engine.apply(e, &mut alerts);
    }
    let mut log = Compacted::default();
    log.take(&mut engine);
    let (key, value) = log
        .0
        .iter_mut()
        .find(|(k, _)| matches!(StateKey::parse(k), Some(StateKey::Head { .. })))
        .unwrap();
    let text = readable(key, value.as_ref().unwrap()).unwrap();
    let version = format!("\"v\":{FORMAT_VERSION}");
    *value = Some(text.replacen(&version, "\"v\":99", 1).into_bytes());
    let key = key.clone();
    let mut tenants = BTreeMap::new();
    for (k, v) in &log.0 {
        TenantRecords::apply(&mut tenants, k, v.clone()).unwrap();
    }
    let err = Engine::new(FoldConfig::default())
        .restore(&tenants)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&key) && err.contains("version 99"), "{err}");

    let mut tenants = BTreeMap::new();
    assert!(TenantRecords::apply(&mut tenants, "acme/nonsense", None).is_err());
    assert!(TenantRecords::apply(&mut tenants, "acme/day/2026-13-01", None).is_err());
    assert!(TenantRecords::apply(&mut tenants, "acme/day/2026-1-05", None).is_err());
    assert!(TenantRecords::apply(&mut tenants, "acme/day/2026-01-05/", None).is_err());
    assert!(TenantRecords::apply(&mut tenants, "acme/drift/+3", None).is_err());
    assert!(TenantRecords::apply(&mut tenants, "acme/day/2026-01-05/3", None).is_ok());
    assert!(TenantRecords::apply(&mut tenants, "acme/drift/3", None).is_ok());
    assert!(TenantRecords::apply(&mut tenants, "acme/drift/history/3", None).is_ok());
    assert!(TenantRecords::apply(&mut tenants, "acme/drift/history/+3", None).is_err());
    assert!(TenantRecords::apply(&mut tenants, "acme/drift/history/", None).is_err());
    assert!(TenantRecords::apply(&mut tenants, "acme/drift/other/3", None).is_err());
    assert!(TenantRecords::apply(&mut tenants, "acme/plan/0", None).is_ok());
    assert!(TenantRecords::apply(&mut tenants, "acme/plan/x", None).is_err());
    assert!(TenantRecords::apply(&mut tenants, "acme/plan", None).is_err());
}

/// Builds a log, then converts `convert` of its values; restoring it must give `expected`.
fn restore_converted(
    convert: impl Fn(&str, &[u8]) -> Vec<u8>,
) -> Result<BTreeMap<String, String>, String> {
    let mut engine = Engine::new(FoldConfig::default()).with_changelog();
    let mut alerts = Vec::new();
    for e in &events(45) {
        engine.apply(e, &mut alerts);
    }
    let mut log = Compacted::default();
    log.take(&mut engine);
    let mut tenants = BTreeMap::new();
    for (k, v) in &log.0 {
        let v = v.as_ref().map(|v| convert(k, v));
        TenantRecords::apply(&mut tenants, k, v).unwrap();
    }
    let mut restored = Engine::new(FoldConfig::default()).with_changelog();
    restored.restore(&tenants).map_err(|e| e.to_string())?;
    assert_eq!(documents(&restored), documents(&engine));
    Ok(documents(&restored))
}

#[test]
fn a_changelog_rendered_as_json_is_still_restored() {
    // `readable` keeps this format's version; records of earlier builds it writes the way
    // format 1 stored them (below).
    restore_converted(|k, v| {
        let text = readable(k, v).unwrap();
        let version = format!("\"v\":{FORMAT_VERSION}");
        assert!(text.starts_with('{') && text.contains(&version), "{text}");
        text.into_bytes()
    })
    .unwrap();
}

/// A changelog an earlier build wrote, from a fixture of `{"key", FIELD: hex}` lines.
fn fixture_log(text: &str, field: &str) -> Compacted {
    let mut log = Compacted::default();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let hex = v[field].as_str().unwrap();
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        log.0
            .insert(v["key"].as_str().unwrap().to_owned(), Some(bytes));
    }
    log
}

/// The changelog that build 1aff2d3 (format 2: postcard, the drift baseline whole in
/// `{tenant}/drift`) wrote for `events_of(2, 15)` taken every 97 events.
fn format2_log() -> Compacted {
    fixture_log(include_str!("fixtures/changelog-format2.jsonl"), "format2")
}

#[test]
fn a_changelog_of_an_earlier_build_is_restored_then_rewritten_in_this_format() {
    let mut plain = Engine::new(FoldConfig::default());
    let mut alerts = Vec::new();
    for e in &events_of(2, 15) {
        plain.apply(e, &mut alerts);
    }
    let expected = documents(&plain);

    // Format 2 as that build wrote it, and as format-1 JSON.
    let mut log = format2_log();
    assert!(log.0.keys().any(|k| k.ends_with("/drift")));
    let mut restored = log.restore(FoldConfig::default());
    assert_eq!(documents(&restored), expected);
    let mut json = Compacted::default();
    for (k, v) in &log.0 {
        let text = readable(k, v.as_ref().unwrap()).unwrap();
        assert!(text.contains("\"v\":1"), "{text}");
        json.0.insert(k.clone(), Some(text.into_bytes()));
    }
    assert_eq!(documents(&json.restore(FoldConfig::default())), expected);

    // The first commit after the restore writes the drift records and every whole day in this
    // format (the date's outcomes apart, its lines in their plans' records), and the log
    // restores to the same tenants from then on.
    assert!(log.take(&mut restored) > 0);
    let tag = |log: &Compacted, key: &str| u32::from(log.0[key].as_ref().unwrap()[0]);
    for k in log.0.keys() {
        if matches!(
            StateKey::parse(k),
            Some(StateKey::Drift { .. } | StateKey::Day { .. })
        ) {
            assert_eq!(tag(&log, k), FORMAT_VERSION, "{k} still in format 2");
        }
    }
    assert!(log
        .0
        .keys()
        .any(|k| matches!(StateKey::parse(k), Some(StateKey::PlanLines { .. }))));
    assert_eq!(log.take(&mut restored), 0);
    assert_eq!(documents(&log.restore(FoldConfig::default())), expected);

    // Folding on from there: a plan sent again, a corrected outcome.
    let history = events_of(2, 15);
    let plan = history
        .iter()
        .rev()
        .find(|e| matches!(e, Event::Forecast(_)));
    let mut correction = history
        .iter()
        .rev()
        .find(|e| matches!(e, Event::Outcome(_)))
        .unwrap()
        .clone();
    if let Event::Outcome(o) = &mut correction {
        o.revenue *= 1.25;
    }
    for e in plan.into_iter().chain([&correction]) {
        restored.apply(e, &mut alerts);
        plain.apply(e, &mut Vec::new());
    }
    assert!(log.take(&mut restored) > 0);
    let expected = documents(&plain);
    assert_eq!(documents(&restored), expected);
    assert_eq!(documents(&log.restore(FoldConfig::default())), expected);
}

/// The changelog that format 4 (the drift history inside `{tenant}/drift`, commit c26a35e)
/// wrote for `events_of(2, 15)` taken every 97 events.
fn format4_log() -> Compacted {
    fixture_log(include_str!("fixtures/changelog-format4.jsonl"), "format4")
}

#[test]
fn a_format4_changelog_is_restored_then_its_drift_history_written_apart() {
    let mut plain = Engine::new(FoldConfig::default());
    let history = events_of(2, 15);
    for e in &history {
        plain.apply(e, &mut Vec::new());
    }
    let mut log = format4_log();
    let tag = |log: &Compacted, key: &str| u32::from(log.0[key].as_ref().unwrap()[0]);
    assert!(log.0.keys().all(|k| tag(&log, k) == 4));
    let mut restored = log.restore(FoldConfig::default());
    assert_eq!(documents(&restored), documents(&plain));

    // The first commit rewrites the heads and drift records, each plan and history entry
    // apart; then nothing is left to write, and the log restores to the same tenants.
    assert!(log.take(&mut restored) > 0);
    for t in restored.tenants() {
        assert_eq!(
            tag(&log, t),
            FORMAT_VERSION,
            "head of {t} still in format 4"
        );
        let plans = (log.0.iter())
            .filter(|(k, v)| {
                v.is_some()
                    && matches!(StateKey::parse(k), Some(StateKey::Plan { tenant, .. }) if tenant == t)
            })
            .count();
        assert!(plans >= 2, "{t}: {plans} plan records");
    }
    let entries = |log: &Compacted| {
        (log.0.iter())
            .filter(|(k, v)| {
                v.is_some() && matches!(StateKey::parse(k), Some(StateKey::DriftHistory { .. }))
            })
            .count()
    };
    let kept: usize = restored
        .tenants()
        .into_iter()
        .map(|t| restored.tenant(t).unwrap().drift_history.len())
        .sum();
    assert!(kept >= 2);
    assert_eq!(entries(&log), kept);
    for k in log.0.keys() {
        if matches!(StateKey::parse(k), Some(StateKey::Drift { .. })) {
            assert_eq!(tag(&log, k), FORMAT_VERSION, "{k} still in format 4");
        }
    }
    assert_eq!(log.take(&mut restored), 0);
    assert_eq!(
        documents(&log.restore(FoldConfig::default())),
        documents(&plain)
    );

    // Folding on from the restored tenants writes one new entry per event.
    let later = events_of(2, 30);
    let more: Vec<&Event> = later[history.len()..]
        .iter()
        .filter(|e| matches!(e, Event::FeatureImportance(_)))
        .collect();
    assert!(!more.is_empty());
    for e in &more {
        restored.apply(e, &mut Vec::new());
        plain.apply(e, &mut Vec::new());
    }
    log.take(&mut restored);
    assert_eq!(entries(&log), kept + more.len());
    assert_eq!(
        documents(&log.restore(FoldConfig::default())),
        documents(&plain)
    );
}

/// The changelog that format 5 (each date's lines of a plan in `{tenant}/day/{date}/{plan}`,
/// commit f924753) wrote for `events_of(2, 15)` taken every 97 events.
fn format5_log() -> Compacted {
    fixture_log(include_str!("fixtures/changelog-format5.jsonl"), "format5")
}

#[test]
fn a_format5_changelog_is_restored_then_each_plan_written_in_one_record() {
    let mut plain = Engine::new(FoldConfig::default());
    let history = events_of(2, 15);
    for e in &history {
        plain.apply(e, &mut Vec::new());
    }
    let mut log = format5_log();
    let tag = |log: &Compacted, key: &str| u32::from(log.0[key].as_ref().unwrap()[0]);
    assert!(log.0.keys().all(|k| tag(&log, k) == 5));
    let per_date = |log: &Compacted| {
        (log.0.iter())
            .filter(|(k, v)| {
                v.is_some() && matches!(StateKey::parse(k), Some(StateKey::PlanDay { .. }))
            })
            .count()
    };
    assert!(per_date(&log) > 50);
    let mut restored = log.restore(FoldConfig::default());
    assert_eq!(documents(&restored), documents(&plain));
    let mut json = Compacted::default();
    for (k, v) in &log.0 {
        let text = readable(k, v.as_ref().unwrap()).unwrap();
        json.0.insert(k.clone(), Some(text.into_bytes()));
    }
    assert_eq!(
        documents(&json.restore(FoldConfig::default())),
        documents(&plain)
    );

    // The first commit writes each plan's lines in one record and deletes the per-date ones;
    // then nothing is left to write, and the log restores to the same tenants.
    assert!(log.take(&mut restored) > 0);
    assert_eq!(per_date(&log), 0);
    for t in restored.tenants() {
        let state = restored.tenant(t).unwrap();
        let with_lines: BTreeSet<u32> = (state.days.values())
            .flat_map(|d| d.channels.values().flat_map(|cd| &cd.lines))
            .map(|l| l.plan)
            .collect();
        assert!(with_lines.len() >= 2, "{t}");
        for plan in with_lines {
            let key = format!("{t}/plan/{plan}/lines");
            assert_eq!(tag(&log, &key), FORMAT_VERSION, "{key}");
        }
        assert_eq!(tag(&log, t), FORMAT_VERSION, "head of {t}");
    }
    assert_eq!(log.take(&mut restored), 0);
    assert_eq!(
        documents(&log.restore(FoldConfig::default())),
        documents(&plain)
    );

    // Folding on from the restored tenants gives what folding on without a break gives, and
    // so does the log.
    let later = events_of(2, 30);
    for e in &later[history.len()..] {
        restored.apply(e, &mut Vec::new());
        plain.apply(e, &mut Vec::new());
    }
    log.take(&mut restored);
    assert_eq!(documents(&restored), documents(&plain));
    assert_eq!(
        documents(&log.restore(FoldConfig::default())),
        documents(&plain)
    );
}

/// The changelog that format 6 (a plan's lines, a date's outcome reports and a baseline
/// event's samples as plain doubles, commit 6699028) wrote for `events_of(2, 15)` taken every
/// 97 events.
fn format6_log() -> Compacted {
    fixture_log(include_str!("fixtures/changelog-format6.jsonl"), "format6")
}

/// The bytes of the records of each kind: (plan lines, days, baseline events).
fn float_bytes(log: &Compacted) -> (usize, usize, usize) {
    let mut bytes = (0, 0, 0);
    for (k, v) in &log.0 {
        let n = v.as_ref().map_or(0, Vec::len);
        match StateKey::parse(k) {
            Some(StateKey::PlanLines { .. }) => bytes.0 += n,
            Some(StateKey::Day { .. }) => bytes.1 += n,
            Some(StateKey::DriftEvent { .. }) => bytes.2 += n,
            _ => {}
        }
    }
    bytes
}

#[test]
fn a_format6_changelog_is_restored_and_its_records_rewritten_as_decimals_when_they_change() {
    let mut plain = Engine::new(FoldConfig::default());
    let history = events_of(2, 15);
    for e in &history {
        plain.apply(e, &mut Vec::new());
    }
    let mut log = format6_log();
    let tag = |log: &Compacted, key: &str| u32::from(log.0[key].as_ref().unwrap()[0]);
    assert!(log.0.keys().all(|k| tag(&log, k) == 6));
    let mut restored = log.restore(FoldConfig::default());
    assert_eq!(documents(&restored), documents(&plain));
    let mut json = Compacted::default();
    for (k, v) in &log.0 {
        let text = readable(k, v.as_ref().unwrap()).unwrap();
        assert!(text.contains("\"v\":6"), "{text}");
        json.0.insert(k.clone(), Some(text.into_bytes()));
    }
    assert_eq!(
        documents(&json.restore(FoldConfig::default())),
        documents(&plain)
    );
    // A restore rewrites nothing (format 6 is read as it is)...
    assert_eq!(log.take(&mut restored), 0);

    // ...and what changes next is written in this format, which reads back the same; folding
    // on gives what folding on without a break gives.
    let later = events_of(2, 30);
    for e in &later[history.len()..] {
        restored.apply(e, &mut Vec::new());
        plain.apply(e, &mut Vec::new());
    }
    log.take(&mut restored);
    assert!(log.0.keys().any(|k| tag(&log, k) == 6));
    assert!(log.0.keys().any(|k| tag(&log, k) == FORMAT_VERSION));
    assert_eq!(documents(&restored), documents(&plain));
    assert_eq!(
        documents(&log.restore(FoldConfig::default())),
        documents(&plain)
    );
    // The two formats side by side, as JSON.
    let mut json = Compacted::default();
    for (k, v) in &log.0 {
        let Some(v) = v else { continue };
        json.0
            .insert(k.clone(), Some(readable(k, v).unwrap().into_bytes()));
    }
    assert_eq!(
        documents(&json.restore(FoldConfig::default())),
        documents(&plain)
    );

    // The same history written in this format takes far fewer bytes: lines, outcome reports
    // and samples are short decimals.
    let mut engine = Engine::new(FoldConfig::default()).with_changelog();
    let mut now = Compacted::default();
    for part in history.chunks(97) {
        for e in part {
            engine.apply(e, &mut Vec::new());
        }
        now.take(&mut engine);
    }
    assert_eq!(
        documents(&now.restore(FoldConfig::default())),
        documents(&engine)
    );
    let (before, after) = (float_bytes(&format6_log()), float_bytes(&now));
    // (41,346, 8,260, 19,768) bytes -> (21,906, 5,863, 3,553) when this was written.
    assert!(
        after.0 * 10 < before.0 * 6,
        "plan lines {before:?} -> {after:?}"
    );
    assert!(after.1 * 10 < before.1 * 8, "days {before:?} -> {after:?}");
    assert!(
        after.2 * 4 < before.2,
        "baseline events {before:?} -> {after:?}"
    );
}

#[test]
fn a_batch_cut_short_after_a_new_history_entry_still_restores() {
    // At-least-once: a batch can end anywhere. Cut one right after a feature-importance
    // event's history entry, before the drift record that names it; the event is then read
    // again and folded with the same number, and the next commit must not delete its entry.
    let config = FoldConfig::default();
    let history = events_of(1, 40);
    let fi: Vec<usize> = (history.iter().enumerate())
        .filter(|(_, e)| matches!(e, Event::FeatureImportance(_)))
        .map(|(i, _)| i)
        .collect();
    let cut = fi[2];
    let mut engine = Engine::new(config.clone()).with_changelog();
    let mut log = Compacted::default();
    for e in &history[..cut] {
        engine.apply(e, &mut Vec::new());
    }
    log.take(&mut engine);
    engine.apply(&history[cut], &mut Vec::new());
    let batch = engine.take_changes().records;
    let entry = (batch.iter())
        .position(|r| matches!(StateKey::parse(&r.key), Some(StateKey::DriftHistory { .. })))
        .unwrap();
    assert!((batch[entry + 1..].iter())
        .any(|r| matches!(StateKey::parse(&r.key), Some(StateKey::Drift { .. }))));
    for r in &batch[..=entry] {
        log.0.insert(r.key.clone(), r.value.clone());
    }

    let mut restored = log.restore(config.clone());
    for e in &history[cut..] {
        restored.apply(e, &mut Vec::new());
    }
    log.take(&mut restored);
    let mut plain = Engine::new(config.clone());
    for e in &history {
        plain.apply(e, &mut Vec::new());
    }
    // The head of the cut batch counted the event once already (at-least-once counts it
    // twice); the drift history is the same.
    let again = log.restore(config);
    for t in plain.tenants() {
        let drift = |e: &Engine| serde_json::to_string(&e.documents(t).unwrap().drift).unwrap();
        assert_eq!(drift(&again), drift(&plain), "{t}");
    }
}

#[test]
fn the_log_keeps_only_the_baseline_events() {
    let config = FoldConfig::default();
    let k = config.drift.baseline_events as u64;
    let mut engine = Engine::new(config.clone()).with_changelog();
    let mut alerts = Vec::new();
    let mut log = Compacted::default();
    for part in events(90).chunks(61) {
        for e in part {
            engine.apply(e, &mut alerts);
        }
        log.take(&mut engine);
    }
    for tenant in engine.tenants() {
        let seen = engine.tenant(tenant).unwrap().counters.feature_importances;
        assert!(seen > k, "{tenant}: only {seen} events");
        let mut live: Vec<u64> = log
            .0
            .iter()
            .filter_map(|(key, v)| match StateKey::parse(key) {
                Some(StateKey::DriftEvent { tenant: t, seq }) if t == tenant && v.is_some() => {
                    Some(seq)
                }
                _ => None,
            })
            .collect();
        live.sort_unstable();
        assert_eq!(live, (seen - k..seen).collect::<Vec<_>>(), "{tenant}");
    }
    assert_eq!(documents(&log.restore(config)), documents(&engine));
}

#[test]
fn binary_records_are_refused_when_cut_short_or_of_an_unknown_tag() {
    let err = restore_converted(|_, v| v[..v.len() / 2].to_vec()).unwrap_err();
    assert!(err.contains("state record"), "{err}");
    let err = restore_converted(|_, v| [v, &[0]].concat()).unwrap_err();
    assert!(err.contains("1 bytes after the record"), "{err}");
    let err = restore_converted(|_, v| {
        let mut v = v.to_vec();
        v[0] = 8;
        v
    })
    .unwrap_err();
    assert!(err.contains("format version 8"), "{err}");
}

/// The three topics interleaved as a consumer reads them: each topic in its own order, in runs
/// of random length, one topic far ahead of another at times (seeded, so a failure repeats).
fn interleaved(events: &[Event], seed: u64) -> Vec<Event> {
    let mut queues: [std::collections::VecDeque<Event>; 3] = Default::default();
    for e in events {
        let q = match e {
            Event::Outcome(_) => 0,
            Event::Forecast(_) => 1,
            Event::FeatureImportance(_) => 2,
        };
        queues[q].push_back(e.clone());
    }
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut out = Vec::with_capacity(events.len());
    while queues.iter().any(|q| !q.is_empty()) {
        let q = next(3) as usize;
        let longest = if next(4) == 0 { 2000 } else { 60 };
        let run = 1 + next(longest) as usize;
        for _ in 0..run {
            match queues[q].pop_front() {
                Some(e) => out.push(e),
                None => break,
            }
        }
    }
    out
}

/// [`check`] on the topics interleaved as Kafka delivers them, folded in batches as the
/// processor folds them: a restore at any point must leave the alerts (ids included) those of
/// an engine that never stopped.
#[test]
fn restored_mid_stream_with_the_topics_interleaved_like_a_consumer() {
    let base = events_of(6, 200);
    for seed in 0..12 {
        let events = interleaved(&base, seed);
        let config = FoldConfig::default();
        let mut plain = Engine::new(config.clone());
        let mut plain_alerts = Vec::new();
        for batch in events.chunks(173) {
            plain.apply_batch(batch, &mut plain_alerts);
        }
        let mut log = Compacted::default();
        let mut engine = Engine::new(config.clone()).with_changelog();
        let mut alerts = Vec::new();
        for (i, batch) in events.chunks(173).enumerate() {
            engine.apply_batch(batch, &mut alerts);
            log.take(&mut engine);
            if i % 3 == 2 {
                engine = log.restore(config.clone());
            }
        }
        let (a, b) = (alert_lines(&alerts), alert_lines(&plain_alerts));
        if a != b {
            let first = a
                .iter()
                .zip(&b)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len()));
            panic!(
                "seed {seed}: alerts differ from #{first}:\nrestored: {:?}\nplain:    {:?}",
                a.get(first),
                b.get(first)
            );
        }
        assert_eq!(documents(&engine), documents(&plain), "seed {seed}");
    }
}
