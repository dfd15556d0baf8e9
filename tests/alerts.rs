//! The alert guarantees of SPEC 5 that hold whatever the interleaving of the three topics: no
//! alert id twice, one daily calibration report per tenant per as_of advance, statuses of
//! performance and drift alerts that alternate and end in agreement with the tags; and the
//! scenarios of the simulator make the matching alerts fire, while healthy data fires none.

use std::collections::{BTreeMap, BTreeSet};

use feedback::alert::{Alert, AlertType};
use feedback::event::{Event, Topic};
use feedback::fold::{Engine, FoldConfig};
use feedback::simulate::{generate_events, Scenario, SimConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn events() -> Vec<Event> {
    let sim = SimConfig {
        tenants: 4,
        days: 80,
        ..SimConfig::default()
    };
    generate_events(&sim)
}

/// The same per-topic sequences, interleaved at random (each topic keeps its own order).
fn interleave(events: &[Event], seed: u64) -> Vec<Event> {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut queues: BTreeMap<Topic, std::collections::VecDeque<Event>> = BTreeMap::new();
    for e in events {
        queues.entry(e.topic()).or_default().push_back(e.clone());
    }
    let mut picks: Vec<Topic> = queues
        .iter()
        .flat_map(|(t, q)| std::iter::repeat_n(*t, q.len()))
        .collect();
    picks.shuffle(&mut rng);
    picks
        .into_iter()
        .filter_map(|t| queues.get_mut(&t).and_then(|q| q.pop_front()))
        .collect()
}

fn fold(events: &[Event]) -> (Engine, Vec<Alert>) {
    let mut engine = Engine::new(FoldConfig::default());
    let mut alerts = Vec::new();
    for e in events {
        engine.apply(e, &mut alerts);
    }
    (engine, alerts)
}

/// The as_of values a tenant takes, in order: one per outcome that moves it forward.
fn as_of_advances(events: &[Event]) -> BTreeSet<(String, String)> {
    let mut latest: BTreeMap<&str, chrono::NaiveDate> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for e in events {
        if let Event::Outcome(o) = e {
            if latest.get(o.tenant.as_str()).is_none_or(|d| o.date > *d) {
                latest.insert(&o.tenant, o.date);
                out.insert((o.tenant.to_string(), o.date.to_string()));
            }
        }
    }
    out
}

fn check_invariants(engine: &Engine, alerts: &[Alert], events: &[Event]) {
    let ids: BTreeSet<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), alerts.len(), "an alert id appears twice");

    let reports: Vec<(String, String)> = alerts
        .iter()
        .filter(|a| a.kind == AlertType::Calibration && a.data_json()["trigger"] == "as_of")
        .map(|a| {
            (
                a.subject.clone(),
                a.data_json()["as_of"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let unique: BTreeSet<_> = reports.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        reports.len(),
        "two daily reports for one tenant and as_of"
    );
    assert_eq!(
        unique,
        as_of_advances(events),
        "daily reports do not match the as_of advances"
    );

    let mut last: BTreeMap<(String, AlertType, String), String> = BTreeMap::new();
    for a in alerts.iter().filter(|a| {
        matches!(
            a.kind,
            AlertType::PerformanceDegraded | AlertType::DriftDetected
        )
    }) {
        let key = (a.subject.clone(), a.kind, a.scope().unwrap().to_owned());
        let status = a.status().unwrap().to_owned();
        let previous = last.get(&key).map(String::as_str).unwrap_or("resolved");
        assert_ne!(
            previous, status,
            "{key:?} published {status} twice in a row"
        );
        last.insert(key, status);
    }
    for tenant in engine.tenants() {
        let doc = engine.documents(tenant).unwrap().performance;
        for (kind, tag) in [
            (AlertType::PerformanceDegraded, "model.performance.degraded"),
            (AlertType::DriftDetected, "model.drift_detected"),
        ] {
            let firing = last
                .iter()
                .any(|((t, k, _), s)| t == tenant && *k == kind && s == "firing");
            assert_eq!(
                doc.tags.iter().any(|t| t == tag),
                firing,
                "{tenant}: tag {tag} disagrees with the alerts"
            );
        }
    }
}

#[test]
fn guarantees_hold_in_log_order_and_in_any_interleaving() {
    let events = events();
    let (engine, alerts) = fold(&events);
    check_invariants(&engine, &alerts, &events);
    let figures = |e: &Engine| -> Vec<_> {
        e.tenants()
            .iter()
            .map(|t| e.documents(t).unwrap().performance.windows)
            .collect()
    };
    for seed in 1..=3 {
        let shuffled = interleave(&events, seed);
        let (other, other_alerts) = fold(&shuffled);
        check_invariants(&other, &other_alerts, &shuffled);
        assert_eq!(
            figures(&engine),
            figures(&other),
            "window figures depend on the interleaving"
        );
    }
}

#[test]
fn scenarios_fire_their_alerts() {
    let (engine, alerts) = fold(&events());
    let fired = |tenant: &str, kind: AlertType, status: &str| {
        alerts
            .iter()
            .any(|a| a.subject == tenant && a.kind == kind && a.status().as_deref() == Some(status))
    };
    assert!(fired(
        "degraded-001",
        AlertType::PerformanceDegraded,
        "firing"
    ));
    assert!(fired("miscal-002", AlertType::Calibration, "warn_low"));
    assert!(fired("drift-003", AlertType::DriftDetected, "firing"));
    assert!(!alerts.iter().any(|a| a.subject == "healthy-000"
        && matches!(
            a.status().as_deref(),
            Some("firing" | "warn_low" | "warn_high")
        )));
    let tags = |t: &str| engine.documents(t).unwrap().performance.tags;
    assert!(tags("degraded-001").contains(&"model.performance.degraded".to_owned()));
    assert!(tags("miscal-002").contains(&"model.calibration.warn_low".to_owned()));
    assert!(tags("drift-003").contains(&"model.drift_detected".to_owned()));
    assert!(tags("healthy-000").is_empty());
}

#[test]
fn a_batch_grouped_by_tenant_leaves_the_same_state_and_alerts() {
    let events = events();
    let (one_by_one, mut alerts) = fold(&events);
    let mut batched = Engine::new(FoldConfig::default());
    let mut batch_alerts = Vec::new();
    for chunk in events.chunks(500) {
        batched.apply_batch(chunk, &mut batch_alerts);
    }
    for t in one_by_one.tenants() {
        assert_eq!(one_by_one.documents(t), batched.documents(t), "{t}");
        let of = |a: &[Alert]| {
            a.iter()
                .filter(|x| x.subject == t)
                .map(|x| x.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            of(&alerts),
            of(&batch_alerts),
            "{t}: alerts differ or come in another order"
        );
    }
    alerts.sort_by(|a, b| a.id.cmp(&b.id));
    batch_alerts.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(alerts, batch_alerts);
}

/// Folds a simulated history and returns the engine and the alerts.
fn fold_sim(sim: &SimConfig) -> (Engine, Vec<Alert>) {
    let events: Vec<Event> = generate_events(sim);
    fold(&events)
}

/// Shapes of history: (channels, campaigns, days), from one campaign to many, short to long.
const SHAPES: [(usize, usize, u32); 8] = [
    (1, 1, 120),
    (2, 2, 70),
    (3, 2, 90),
    (2, 3, 200),
    (6, 1, 60),
    (4, 4, 100),
    (1, 2, 300),
    (2, 1, 40),
];

#[test]
fn healthy_data_fires_no_alert() {
    for (channels, campaigns, days) in SHAPES {
        for seed in [1, 2, 3, 42] {
            let sim = SimConfig {
                seed,
                tenants: 3,
                channels,
                campaigns,
                days,
                scenario: Scenario::Healthy,
                ..SimConfig::default()
            };
            let (engine, alerts) = fold_sim(&sim);
            let bad: Vec<String> = alerts
                .iter()
                .filter(|a| {
                    matches!(
                        a.status().as_deref(),
                        Some("firing" | "warn_low" | "warn_high")
                    )
                })
                .map(|a| format!("{} {} {}", a.subject, a.kind, a.data_json()))
                .collect();
            assert!(bad.is_empty(), "{sim:?}: healthy data fired {bad:#?}");
            assert!(
                alerts.iter().all(|a| a.kind == AlertType::Calibration),
                "only the daily calibration reports"
            );
            for t in engine.tenants() {
                assert!(engine.documents(t).unwrap().performance.tags.is_empty());
            }
        }
    }
}

#[test]
fn each_scenario_fires_its_alert_and_ends_with_its_tag() {
    let cases = [
        (
            Scenario::Degraded,
            AlertType::PerformanceDegraded,
            "firing",
            "model.performance.degraded",
        ),
        (
            Scenario::Miscalibrated,
            AlertType::Calibration,
            "warn_low",
            "model.calibration.warn_low",
        ),
        (
            Scenario::Drift,
            AlertType::DriftDetected,
            "firing",
            "model.drift_detected",
        ),
    ];
    for (scenario, kind, status, tag) in cases {
        for (channels, campaigns, days) in SHAPES {
            let sim = SimConfig {
                seed: 7,
                tenants: 2,
                channels,
                campaigns,
                days,
                scenario,
                ..SimConfig::default()
            };
            let (engine, alerts) = fold_sim(&sim);
            for t in engine.tenants() {
                assert!(
                    alerts.iter().any(|a| a.subject == t
                        && a.kind == kind
                        && a.status().as_deref() == Some(status)),
                    "{sim:?}: {t} never published {kind} {status}"
                );
                let tags = engine.documents(t).unwrap().performance.tags;
                assert!(
                    tags.iter().any(|x| x == tag),
                    "{sim:?}: {t} ends with tags {tags:?}"
                );
            }
        }
    }
}
