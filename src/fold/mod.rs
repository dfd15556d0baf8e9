//! The fold: validated events in, per-tenant state and alert transitions out.
//!
//! Architecture Invariant: this module knows nothing of Kafka, files, HTTP or the clock. It cannot
//! fail on I/O, and every rule can be tested with plain data. The Kafka processor and the
//! offline `fold` command both drive the same [`Engine`].

pub mod config;
mod decimals;
pub mod drift;
mod intern;
pub mod report;
pub mod rules;
pub mod snapshot;
pub mod stats;
pub mod tenant;

use std::collections::BTreeMap;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::alert::Alert;
use crate::event::{Event, Rejection};
pub use config::FoldConfig;
pub use report::TenantDocuments;
use tenant::{Shared, TenantState};

/// What [`Engine::take_changes`] returns.
#[derive(Debug, Default)]
pub struct Changes {
    /// The tenants that changed, sorted.
    pub tenants: Vec<String>,
    /// Their changelog records: per tenant its head, then its days, tombstones and drift.
    pub records: Vec<snapshot::StateRecord>,
}

/// Every tenant's state, and the settings they share.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Shared,
    tenants: FxHashMap<String, TenantState>,
}

impl Engine {
    pub fn new(config: FoldConfig) -> Self {
        let drift = drift::DriftConfig {
            baseline_events: config.drift.baseline_events,
            key_features: config.drift.key_features.clone(),
            ..drift::DriftConfig::default()
        };
        Engine {
            shared: Shared {
                config,
                drift,
                track_changes: false,
            },
            tenants: FxHashMap::default(),
        }
    }

    /// An engine whose tenants record what changes, for [`Engine::take_changes`]. Call before
    /// folding anything.
    pub fn with_changelog(mut self) -> Self {
        self.shared.track_changes = true;
        for state in self.tenants.values_mut() {
            state.changes.get_or_insert_with(Default::default);
        }
        self
    }

    pub fn config(&self) -> &FoldConfig {
        &self.shared.config
    }

    fn tenant_mut(&mut self, name: &str) -> &mut TenantState {
        let shared = &self.shared;
        self.tenants
            .entry(name.to_owned())
            .or_insert_with(|| TenantState::new(name, shared))
    }

    /// Folds one validated event; the alert transitions it causes are appended to `alerts`.
    pub fn apply(&mut self, event: &Event, alerts: &mut Vec<Alert>) {
        let shared = &self.shared;
        let name = event.tenant();
        let state = match self.tenants.get_mut(name) {
            Some(s) => s,
            None => self
                .tenants
                .entry(name.to_owned())
                .or_insert_with(|| TenantState::new(name, shared)),
        };
        fold_into(state, shared, event, alerts);
    }

    /// Folds a batch of events: each tenant's events in their order in the batch, tenant after
    /// tenant in order of first appearance. Tenants are independent, so the state afterwards is
    /// the state `apply` one by one would leave, and each tenant's alerts come in the same
    /// order; only alerts of different tenants interleave differently. Taking a tenant's events
    /// together keeps its state in cache: 37% more records per second at 1,000 tenants
    /// (docs/PERFORMANCE.md).
    pub fn apply_batch(&mut self, events: &[Event], alerts: &mut Vec<Alert>) {
        self.apply_grouped(events, &Groups::of(events), alerts);
    }

    /// [`Engine::apply_batch`] of a batch already grouped by tenant.
    fn apply_grouped(&mut self, events: &[Event], groups: &Groups, alerts: &mut Vec<Alert>) {
        for g in 0..groups.len() {
            for &i in groups.events(g) {
                self.apply(&events[i], alerts);
            }
        }
    }

    /// [`Engine::apply_batch`] with the tenants folded on every core of rayon's pool: the same
    /// state afterwards and the same alerts in the same order, since each tenant's events still
    /// fold in order on one thread and the alerts are put back in the order of the tenants'
    /// first appearance. Falls back to `apply_batch` when there is one tenant or one thread, and
    /// when the engine holds far more tenants than the batch has records: the tenants' states
    /// are found in one pass over all of them, which would then cost more than it saves.
    pub fn apply_batch_parallel(&mut self, events: &[Event], alerts: &mut Vec<Alert>) {
        alerts.extend(
            apply_batches_parallel(&mut [(self, events)])
                .into_iter()
                .flatten(),
        );
    }

    /// Counts a refused record against its tenant, when it named a valid one.
    pub fn record_rejection(&mut self, rejection: &Rejection) {
        if let Some(tenant) = &rejection.tenant {
            let state = self.tenant_mut(tenant);
            state.counters.rejected += 1;
            state.mark_head();
        }
    }

    /// The changelog records of everything that changed since the last call (an engine made
    /// [`Engine::with_changelog`]; empty otherwise), and the tenants they belong to, sorted.
    ///
    /// The changed tenants' records are encoded on every core of rayon's pool when there are
    /// several (the processor takes them at every commit, and encoding them on its loop alone
    /// was a quarter of that thread's time); the records come out in the same order either way.
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = Changes::default();
        let mut changed: Vec<(&String, &mut TenantState)> = (self.tenants.iter_mut())
            .filter(|(_, state)| snapshot::has_changes(state))
            .collect();
        if changed.len() < 2 || rayon::current_num_threads() < 2 {
            for (name, state) in changed {
                snapshot::take_changes(state, &mut changes.records);
                changes.tenants.push(name.clone());
            }
        } else {
            let per_tenant: Vec<Vec<snapshot::StateRecord>> = changed
                .par_iter_mut()
                .map(|(_, state)| {
                    let mut records = Vec::new();
                    snapshot::take_changes(state, &mut records);
                    records
                })
                .collect();
            changes
                .records
                .reserve(per_tenant.iter().map(Vec::len).sum());
            changes.records.extend(per_tenant.into_iter().flatten());
            changes.tenants = changed.into_iter().map(|(name, _)| name.clone()).collect();
        }
        changes.tenants.sort_unstable();
        changes
    }

    /// Every changelog record of one tenant.
    pub fn snapshot(&self, name: &str) -> Option<Vec<snapshot::StateRecord>> {
        self.tenants.get(name).map(snapshot::full)
    }

    /// Replaces the state of the given tenants with what their changelog records hold (see
    /// [`snapshot::TenantRecords::apply`]); a tenant without a head record is dropped. Returns
    /// how many tenants were restored. On an unreadable record nothing is changed.
    pub fn restore(
        &mut self,
        records: &BTreeMap<String, snapshot::TenantRecords>,
    ) -> Result<usize, snapshot::SnapshotError> {
        let mut restored = Vec::with_capacity(records.len());
        for (name, r) in records {
            restored.push((name, snapshot::restore(name, r, &self.shared)?));
        }
        let mut count = 0;
        for (name, state) in restored {
            match state {
                Some(mut state) => {
                    if !self.shared.track_changes {
                        state.changes = None;
                    }
                    self.tenants.insert(name.clone(), state);
                    count += 1;
                }
                None => {
                    self.tenants.remove(name);
                }
            }
        }
        Ok(count)
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Tenant names, sorted.
    pub fn tenants(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tenants.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn tenant(&self, name: &str) -> Option<&TenantState> {
        self.tenants.get(name)
    }

    /// The storage documents of SPEC 6 for one tenant.
    pub fn documents(&self, name: &str) -> Option<TenantDocuments> {
        self.tenants
            .get(name)
            .map(|s| report::documents(s, &self.shared))
    }
}

/// Folds one event into its tenant's state.
fn fold_into(state: &mut TenantState, shared: &Shared, event: &Event, alerts: &mut Vec<Alert>) {
    match event {
        Event::Outcome(o) => state.apply_outcome(o, shared, alerts),
        Event::Forecast(f) => state.apply_forecast(f, shared, alerts),
        Event::FeatureImportance(fi) => state.apply_feature_importance(fi, shared, alerts),
    }
}

/// Folds several engines' batches (the processor's partitions) on every core of rayon's pool at
/// once: for each, what [`Engine::apply_batch_parallel`] does, but with one fork and join for
/// all their tenants instead of one per engine, so a core that finishes one partition's
/// tenants goes on with another's. Returns each batch's alerts, in the order of `batches`.
pub fn apply_batches_parallel(batches: &mut [(&mut Engine, &[Event])]) -> Vec<Vec<Alert>> {
    let mut out: Vec<Vec<Alert>> = batches.iter().map(|_| Vec::new()).collect();
    let groups: Vec<Groups> = batches
        .iter()
        .map(|(_, events)| Groups::of(events))
        .collect();
    // An engine with far more tenants than its batch has records folds as one job: finding each
    // tenant's state in a pass over all of them would cost more than it saves.
    let whole: Vec<bool> = (batches.iter())
        .map(|(engine, events)| engine.tenants.len() > 16 * events.len())
        .collect();
    let spread: usize = (groups.iter().zip(&whole))
        .filter(|(_, &whole)| !whole)
        .map(|(groups, _)| groups.len())
        .sum();
    if spread < 2 || rayon::current_num_threads() < 2 {
        for (((engine, events), groups), alerts) in batches.iter_mut().zip(&groups).zip(&mut out) {
            engine.apply_grouped(events, groups, alerts);
        }
        return out;
    }
    /// What one worker folds: one tenant's events of a batch, or the whole batch of an engine.
    enum Job<'a> {
        Tenant {
            batch: usize,
            shared: &'a Shared,
            state: &'a mut TenantState,
            events: &'a [Event],
            order: &'a [usize],
        },
        Engine {
            batch: usize,
            engine: &'a mut Engine,
            events: &'a [Event],
            groups: &'a Groups<'a>,
        },
    }
    let mut jobs: Vec<Job> = Vec::new();
    for (b, ((engine, events), groups)) in batches.iter_mut().zip(&groups).enumerate() {
        if whole[b] {
            jobs.push(Job::Engine {
                batch: b,
                engine,
                events,
                groups,
            });
            continue;
        }
        let Engine { shared, tenants } = &mut **engine;
        for &name in &groups.names {
            if !tenants.contains_key(name) {
                tenants.insert(name.to_owned(), TenantState::new(name, shared));
            }
        }
        // One exclusive reference per tenant of the batch, taken from a single pass over the
        // map (the borrow checker's proof that they are disjoint).
        let mut states: Vec<Option<&mut TenantState>> = Vec::new();
        states.resize_with(groups.len(), || None);
        for (name, state) in tenants.iter_mut() {
            if let Some(&g) = groups.index.get(name.as_str()) {
                states[g] = Some(state);
            }
        }
        let shared: &Shared = shared;
        for (g, state) in states.into_iter().enumerate() {
            jobs.push(Job::Tenant {
                batch: b,
                shared,
                state: state.expect("every tenant of the batch was inserted"),
                events,
                order: groups.events(g),
            });
        }
    }
    let per_tenant: Vec<(usize, Vec<Alert>)> = jobs
        .into_par_iter()
        .map(|job| {
            let mut alerts = Vec::new();
            match job {
                Job::Tenant {
                    batch,
                    shared,
                    state,
                    events,
                    order,
                } => {
                    for &i in order {
                        fold_into(state, shared, &events[i], &mut alerts);
                    }
                    (batch, alerts)
                }
                Job::Engine {
                    batch,
                    engine,
                    events,
                    groups,
                } => {
                    engine.apply_grouped(events, groups, &mut alerts);
                    (batch, alerts)
                }
            }
        })
        .collect();
    for (b, alerts) in per_tenant {
        out[b].extend(alerts);
    }
    out
}

/// The events of a batch grouped by tenant: tenants in order of first appearance, each tenant's
/// events in batch order.
struct Groups<'e> {
    /// Tenant names by group.
    names: Vec<&'e str>,
    /// Group of each tenant name.
    index: FxHashMap<&'e str, usize>,
    /// Event indices, group after group.
    order: Vec<usize>,
    /// Where each group starts in `order`, and the end.
    start: Vec<usize>,
}

impl<'e> Groups<'e> {
    fn of(events: &'e [Event]) -> Self {
        let mut index: FxHashMap<&str, usize> = FxHashMap::default();
        let mut names = Vec::new();
        let group: Vec<usize> = events
            .iter()
            .map(|e| {
                let next = index.len();
                *index.entry(e.tenant()).or_insert_with(|| {
                    names.push(e.tenant());
                    next
                })
            })
            .collect();
        // Counting sort of the event indices by group, stable within a group.
        let mut start = vec![0usize; names.len() + 1];
        for &g in &group {
            start[g + 1] += 1;
        }
        for g in 1..start.len() {
            start[g] += start[g - 1];
        }
        let mut next = start.clone();
        let mut order = vec![0usize; events.len()];
        for (i, &g) in group.iter().enumerate() {
            order[next[g]] = i;
            next[g] += 1;
        }
        Groups {
            names,
            index,
            order,
            start,
        }
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn events(&self, group: usize) -> &[usize] {
        &self.order[self.start[group]..self.start[group + 1]]
    }
}

/// An engine that folded the simulator's default history of `tenants` x `days`, for tests.
#[cfg(test)]
impl Engine {
    pub(crate) fn simulated(tenants: usize, days: u32) -> Engine {
        let events = crate::simulate::generate_events(&crate::simulate::SimConfig {
            tenants,
            days,
            ..crate::simulate::SimConfig::default()
        });
        let mut engine = Engine::new(FoldConfig::default());
        engine.apply_batch(&events, &mut Vec::new());
        engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{generate_events, Scenario, SimConfig};

    /// Several engines' batches folded together (the processor's partitions) leave each engine
    /// as folding its batch alone would, with each batch's alerts in the same order; an engine
    /// with far more tenants than its batch has records is folded as one job.
    #[test]
    fn several_engines_fold_together_as_each_alone() {
        let events = generate_events(&SimConfig {
            tenants: 60,
            days: 30,
            scenario: Scenario::Mixed,
            ..SimConfig::default()
        });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let engine = || Engine::new(FoldConfig::default()).with_changelog();
        let mut alone: Vec<Engine> = (0..3).map(|_| engine()).collect();
        let mut together: Vec<Engine> = (0..3).map(|_| engine()).collect();
        let partition = |e: &Event| e.tenant().bytes().map(usize::from).sum::<usize>() % 3;
        let json = |alerts: &[Alert]| serde_json::to_string(alerts).unwrap();
        let (mut alerts, mut small_batches) = (0, 0);
        // In every third chunk the first engine gets a single record of its share, far fewer
        // than the tenants it holds (folded as one job), while the others' tenants are a job
        // each.
        for (n, chunk) in events.chunks(701).enumerate() {
            let mut per: Vec<Vec<Event>> = vec![Vec::new(); 3];
            for e in chunk {
                per[partition(e)].push(e.clone());
            }
            if n % 3 == 0 {
                per[0].truncate(1);
            }
            let expected: Vec<Vec<Alert>> = (alone.iter_mut().zip(&per))
                .map(|(engine, batch)| {
                    let mut out = Vec::new();
                    engine.apply_batch(batch, &mut out);
                    out
                })
                .collect();
            small_batches += usize::from(
                together
                    .iter()
                    .enumerate()
                    .any(|(p, engine)| !per[p].is_empty() && engine.len() > 16 * per[p].len()),
            );
            let mut batches: Vec<(&mut Engine, &[Event])> = (together.iter_mut().zip(&per))
                .map(|(engine, batch)| (engine, batch.as_slice()))
                .collect();
            let got = pool.install(|| apply_batches_parallel(&mut batches));
            assert_eq!(got.len(), 3);
            for (want, got) in expected.iter().zip(&got) {
                assert_eq!(json(want), json(got));
                alerts += got.len();
            }
            for (a, b) in alone.iter_mut().zip(&mut together) {
                assert_eq!(a.take_changes().records, b.take_changes().records);
            }
        }
        assert!(alerts > 100, "{alerts} alerts");
        assert!(small_batches > 0, "an engine was folded as one job");
        for (a, b) in alone.iter().zip(&together) {
            assert_eq!(a.tenants(), b.tenants());
            for name in a.tenants() {
                assert_eq!(a.documents(name), b.documents(name));
            }
        }
    }

    /// Folding a batch's tenants on several threads leaves the same state and yields the same
    /// alerts, in the same order, as folding them one after the other.
    #[test]
    fn parallel_batches_equal_sequential_batches() {
        let events = generate_events(&SimConfig {
            tenants: 12,
            days: 60,
            scenario: Scenario::Mixed,
            ..SimConfig::default()
        });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        // With changelogs, as the processor's engines have them.
        let mut sequential = Engine::new(FoldConfig::default()).with_changelog();
        let mut parallel = Engine::new(FoldConfig::default()).with_changelog();
        let (mut seq_alerts, mut par_alerts) = (Vec::new(), Vec::new());
        let json = |alerts: &[Alert]| serde_json::to_string(alerts).unwrap();
        let mut mixed_batches = 0;
        // Uneven batches, so tenants enter and leave them at different points.
        for batch in events.chunks(777) {
            let (mut seq, mut par) = (Vec::new(), Vec::new());
            sequential.apply_batch(batch, &mut seq);
            pool.install(|| parallel.apply_batch_parallel(batch, &mut par));
            assert_eq!(json(&seq), json(&par));
            let tenants: std::collections::BTreeSet<&str> =
                seq.iter().map(|a| a.subject.as_str()).collect();
            mixed_batches += usize::from(tenants.len() > 1);
            assert_eq!(
                sequential.take_changes().records,
                parallel.take_changes().records
            );
            seq_alerts.extend(seq);
            par_alerts.extend(par);
        }
        assert!(
            mixed_batches > 5,
            "batches whose alerts come from several tenants, so their order is tested"
        );
        assert_eq!(json(&seq_alerts), json(&par_alerts));
        assert_eq!(sequential.tenants(), parallel.tenants());
        assert_eq!(sequential.len(), 12);
        for name in sequential.tenants() {
            assert_eq!(sequential.documents(name), parallel.documents(name));
        }
    }
}
