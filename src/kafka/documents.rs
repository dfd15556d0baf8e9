//! The storage writer of `feedback run`: documents computed by the processor's loop are
//! written on a thread of their own, so the fold never waits on the disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::storage::{CalibrationCache, Document, Storage, SyncMode};

/// Writes storage documents on a thread of its own: a round of a thousand tenants is hundreds
/// of megabytes of JSON and a sync, which would otherwise hold up the records behind it
/// (measured: 14,000 records/s with the writes on the loop, 51,000 without any). The loop
/// computes the documents (they need the engines) and hands them over. The queue holds a few
/// slices; when it is full the loop leaves the rest of the round for a later turn, so a slow
/// disk makes the documents lag instead of slowing the fold, and memory stays bounded.
pub(super) struct DocumentWriter {
    storage: Storage,
    metrics: Arc<Metrics>,
    jobs: Option<std::sync::mpsc::SyncSender<WriteJob>>,
    /// Tenants whose write failed, to be marked stale again.
    pub(super) failed: std::sync::mpsc::Receiver<(i32, String)>,
    failed_tx: std::sync::mpsc::Sender<(i32, String)>,
    /// Slices queued and not yet written.
    queued: Arc<AtomicU64>,
    /// Bumped by [`DocumentWriter::discard`]: slices queued before are dropped unwritten.
    epoch: Arc<AtomicU64>,
    /// Nanoseconds the thread has spent encoding, writing and syncing documents.
    busy: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Slices of documents the writer may hold at once.
const WRITER_QUEUE: u64 = 4;

enum WriteJob {
    Write {
        docs: Vec<(i32, crate::fold::TenantDocuments)>,
        epoch: u64,
        sync: SyncMode,
    },
    /// Answered once everything before it is written.
    Flush(std::sync::mpsc::SyncSender<()>),
    /// Tenants this instance no longer owns: what the writer remembers of their documents goes.
    Forget(Vec<String>),
    /// Reports, as failed writes (so that they are written again), the tenants any of whose
    /// three documents is no longer the one this writer wrote.
    Verify,
}

/// Counts a slice out of the queue however its write ends (a panic included).
struct Dequeued<'a>(&'a AtomicU64);

impl Drop for Dequeued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DocumentWriter {
    pub(super) fn new(storage: Storage, metrics: Arc<Metrics>) -> Self {
        let (failed_tx, failed) = std::sync::mpsc::channel();
        let mut writer = DocumentWriter {
            storage,
            metrics,
            jobs: None,
            failed,
            failed_tx,
            queued: Arc::new(AtomicU64::new(0)),
            epoch: Arc::new(AtomicU64::new(0)),
            busy: Arc::new(AtomicU64::new(0)),
            thread: None,
        };
        writer.start();
        writer
    }

    fn start(&mut self) {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<WriteJob>(WRITER_QUEUE as usize);
        let storage = self.storage.clone();
        let metrics = self.metrics.clone();
        let failed_tx = self.failed_tx.clone();
        let queued = self.queued.clone();
        let current = self.epoch.clone();
        let busy = self.busy.clone();
        queued.store(0, Ordering::Relaxed);
        let thread = std::thread::Builder::new()
            .name("feedback-documents".into())
            .spawn(move || {
                // Kept while the thread runs: a restarted writer renders every document whole.
                let mut cache = CalibrationCache::default();
                // The tenants it wrote, with their partition, for `Verify`.
                let mut tenants_written: std::collections::HashMap<String, i32> =
                    std::collections::HashMap::new();
                for job in rx {
                    let (docs, epoch, sync) = match job {
                        WriteJob::Write { docs, epoch, sync } => (docs, epoch, sync),
                        WriteJob::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                        WriteJob::Forget(tenants) => {
                            for tenant in tenants {
                                for doc in Document::ALL {
                                    if let Ok(path) = storage.path(&tenant, doc) {
                                        cache.forget(&path);
                                    }
                                }
                                tenants_written.remove(&tenant);
                            }
                            continue;
                        }
                        // Someone else wrote the documents of a tenant this instance owns (an
                        // instance that had lost it and wrote late, into a directory shared by
                        // the instances; a hand edit; a deletion): written again, else they
                        // would stand until the tenant next changes.
                        WriteJob::Verify => {
                            tenants_written.retain(|tenant, partition| {
                                let current = |doc| {
                                    storage
                                        .path(tenant, doc)
                                        .is_ok_and(|path| cache.is_current(&path))
                                };
                                if Document::ALL.into_iter().all(current) {
                                    return true;
                                }
                                tracing::warn!(
                                    tenant = %tenant,
                                    "the documents were changed by someone else since they were \
                                     written: writing them again"
                                );
                                metrics.documents_rewritten.inc();
                                let _ = failed_tx.send((*partition, tenant.clone()));
                                false
                            });
                            continue;
                        }
                    };
                    let _dequeued = Dequeued(&queued);
                    if epoch != current.load(Ordering::Relaxed) {
                        continue;
                    }
                    let tenants: Vec<(i32, String)> = docs
                        .iter()
                        .map(|(p, d)| (*p, d.performance.tenant.clone()))
                        .collect();
                    let n = docs.len() as u64;
                    let storage = storage.clone().with_sync(sync);
                    let started = std::time::Instant::now();
                    let before = (cache.copied, cache.rendered);
                    let written =
                        storage.write_tenants_cached(docs.into_iter().map(|(_, d)| d), &mut cache);
                    let entries = &metrics.calibration_entries;
                    entries
                        .with_label_values(&["copied"])
                        .inc_by(cache.copied - before.0);
                    entries
                        .with_label_values(&["rendered"])
                        .inc_by(cache.rendered - before.1);
                    busy.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    match written {
                        Ok(()) => {
                            metrics.documents.inc_by(3 * n);
                            tenants_written.extend(tenants.into_iter().map(|(p, t)| (t, p)));
                        }
                        Err(e) => {
                            // The state is safe in Kafka; the files catch up next round.
                            tracing::error!(error = %e, "cannot write the storage documents");
                            for t in tenants {
                                let _ = failed_tx.send(t);
                            }
                        }
                    }
                }
            });
        match thread {
            Ok(t) => {
                self.jobs = Some(jobs);
                self.thread = Some(t);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the storage writer; documents are not written");
            }
        }
    }

    /// Starts the writer again if its thread is gone (a panic while writing).
    pub(super) fn ensure_running(&mut self) {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            tracing::error!("the storage writer stopped; starting it again");
            self.jobs = None;
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            self.start();
        }
    }

    /// Whether the queue has room for another slice.
    pub(super) fn has_room(&self) -> bool {
        self.jobs.is_some() && self.queued.load(Ordering::Relaxed) < WRITER_QUEUE
    }

    /// Queues documents (waiting for room); false when there is no writer.
    pub(super) fn write(
        &self,
        docs: Vec<(i32, crate::fold::TenantDocuments)>,
        sync: SyncMode,
    ) -> bool {
        let Some(jobs) = &self.jobs else {
            return false;
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::Relaxed);
        if jobs.send(WriteJob::Write { docs, epoch, sync }).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// How long the thread has spent writing documents, in all.
    pub(super) fn busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.busy.load(Ordering::Relaxed))
    }

    /// Drops the slices queued so far unwritten (they were computed from work being rewound).
    pub(super) fn discard(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets what the writer remembers of the documents of `tenants` (their partitions were
    /// revoked): without it, an instance would keep that for every tenant it ever owned. Their
    /// writes queued before it are done first.
    pub(super) fn forget(&self, tenants: Vec<String>) {
        if let Some(j) = &self.jobs {
            let _ = j.send(WriteJob::Forget(tenants));
        }
    }

    /// Asks the writer to check that the documents it wrote are still its own (see
    /// [`WriteJob::Verify`]); skipped when its queue is full (the next round asks again).
    pub(super) fn verify(&self) {
        if let Some(j) = &self.jobs {
            let _ = j.try_send(WriteJob::Verify);
        }
    }

    /// Waits until everything queued so far is written.
    pub(super) fn flush(&self) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if let Some(j) = &self.jobs {
            if j.send(WriteJob::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

impl Drop for DocumentWriter {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::Engine;

    /// The writer copies unchanged calibration entries from what it wrote before, counts them,
    /// and after `forget` renders the forgotten tenants whole again.
    #[test]
    fn the_writer_copies_unchanged_entries_and_forgets_revoked_tenants() {
        let engine = Engine::simulated(2, 30);
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let writer = DocumentWriter::new(Storage::new(dir.path()), metrics.clone());
        let tenants: Vec<String> = engine.tenants().iter().map(|t| t.to_string()).collect();
        let write = || {
            let docs = (tenants.iter())
                .map(|t| (0, engine.documents(t).unwrap()))
                .collect();
            assert!(writer.write(docs, SyncMode::EachFile));
            writer.flush();
        };
        let count = |how: &str| metrics.calibration_entries.with_label_values(&[how]).get();
        let entries: u64 = (tenants.iter())
            .map(|t| engine.documents(t).unwrap().calibration.entries() as u64)
            .sum();
        assert!(entries >= 2 * 29, "{entries} entries");

        write();
        assert_eq!((count("copied"), count("rendered")), (0, entries));
        write();
        assert_eq!((count("copied"), count("rendered")), (entries, entries));
        writer.forget(vec![tenants[0].clone()]);
        write();
        let first = engine.documents(&tenants[0]).unwrap().calibration.entries() as u64;
        assert_eq!(
            (count("copied"), count("rendered")),
            (2 * entries - first, entries + first)
        );
    }
}
