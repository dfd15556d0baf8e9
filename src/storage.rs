//! The storage directory of SPEC 6: tenant documents written atomically (temporary file, fsync,
//! rename), so a reader never sees half a document and a crash never leaves one.
//!
//! Documents are compact JSON. Indented, a tenant's calibration history of 120 days took 330 KB
//! and the documents of 1,000 tenants 363 MB; compact, 187 MB, and `feedback fold` over that
//! history ran 15 to 20% faster (docs/PERFORMANCE.md). `jq .` indents them for reading.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::event::validate::valid_tenant;
use crate::fold::report::CalibrationHistory;
use crate::fold::TenantDocuments;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid document: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid tenant name {0:?}")]
    InvalidTenant(String),
    /// [`Storage::write_all_tenants`] was asked to stop; the documents of `written` tenants
    /// were written.
    #[error("interrupted after writing the documents of {written} tenants")]
    Interrupted { written: usize },
}

/// The storage directory (default `./storage`).
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
    sync: SyncMode,
}

/// How a batch of documents is made durable before the renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// One `syncfs` for the batch: the cheapest for thousands of files written at once (the
    /// offline `fold`), but it also flushes whatever else is dirty on that filesystem.
    Filesystem,
    /// An fsync of each file: for a long-running writer that shares its filesystem with a
    /// Kafka broker, whose unsynced log `syncfs` would flush too, stalling both.
    EachFile,
}

/// Which of a tenant's documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    Performance,
    Calibration,
    Drift,
}

impl Document {
    /// A tenant's three documents.
    pub const ALL: [Document; 3] = [
        Document::Performance,
        Document::Calibration,
        Document::Drift,
    ];
}

impl Storage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Storage {
            root: root.into(),
            sync: SyncMode::Filesystem,
        }
    }

    /// The same directory, synced as `sync` says.
    pub fn with_sync(self, sync: SyncMode) -> Self {
        Storage { sync, ..self }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the documents' directory and a file in it, and removes the file: a long-running
    /// writer checks this at start, so a directory it cannot write is an error then, not a
    /// log line every few seconds while the documents silently stay unwritten.
    pub fn check_writable(&self) -> Result<(), StorageError> {
        let dir = self.performance_dir();
        fs::create_dir_all(&dir).map_err(|source| StorageError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        tempfile::NamedTempFile::new_in(&dir)
            .map(drop)
            .map_err(|source| StorageError::Write { path: dir, source })
    }

    pub fn performance_dir(&self) -> PathBuf {
        self.root.join("metadata").join("performance")
    }

    /// The path of one document. Tenant names are checked first: they become file names.
    pub fn path(&self, tenant: &str, doc: Document) -> Result<PathBuf, StorageError> {
        if !valid_tenant(tenant) {
            return Err(StorageError::InvalidTenant(tenant.to_owned()));
        }
        let name = match doc {
            Document::Performance => format!("{tenant}.json"),
            Document::Calibration => format!("{tenant}_calibration.json"),
            Document::Drift => format!("{tenant}_drift.json"),
        };
        Ok(self.performance_dir().join(name))
    }

    /// Writes the three documents of a tenant.
    pub fn write_tenant(&self, docs: &TenantDocuments) -> Result<(), StorageError> {
        self.write_staged(std::iter::once(self.encode_tenant(docs)))
    }

    /// Writes the documents of many tenants atomically: every temporary file is written, then
    /// synced (one filesystem sync for all of them, or an fsync each: [`SyncMode`]), then each is
    /// renamed over its target. A reader sees each document old or new, never partial, and a
    /// crash leaves no target file empty. Each document is encoded just before it is staged, so
    /// one tenant's JSON at a time is held in memory.
    pub fn write_tenants(
        &self,
        docs: impl IntoIterator<Item = TenantDocuments>,
    ) -> Result<(), StorageError> {
        self.write_staged(docs.into_iter().map(|d| self.encode_tenant(&d)))
    }

    /// Writes documents as [`Storage::write_tenants`] does, taking the calibration histories'
    /// unchanged entries from the files `cache` remembers writing instead of rendering them
    /// again, and remembering what it writes. For a writer that rewrites the same tenants'
    /// documents over and over (`feedback run`): a calibration history holds an entry a day, and
    /// mostly its last weeks change between two writes. On an error the written tenants are
    /// forgotten, so their next write renders them whole.
    pub fn write_tenants_cached(
        &self,
        docs: impl IntoIterator<Item = TenantDocuments>,
        cache: &mut CalibrationCache,
    ) -> Result<(), StorageError> {
        let docs: Vec<TenantDocuments> = docs.into_iter().collect();
        let mut pending = Vec::new();
        let written = self.write_staged_stamped(docs.iter().map(|d| {
            self.encode_tenant_with(d, |path, history| {
                let encoded = cache.encode(path, history);
                pending.push((path.to_owned(), history.first_day(), encoded.1, encoded.2));
                encoded.0
            })
        }));
        match written {
            Ok(stamps) => {
                for (path, first, fingerprints, spans) in pending {
                    match stamps.get(&path) {
                        Some(&stamp) => cache.remember(path, stamp, first, fingerprints, spans),
                        None => cache.forget(&path),
                    }
                }
                // Every document's stamp (the calibration documents' are also in `written`).
                cache.stamps.extend(stamps);
                Ok(())
            }
            Err(e) => {
                // Whatever of the slice was written or not: all of it is rendered next time.
                for d in &docs {
                    for doc in Document::ALL {
                        if let Ok(path) = self.path(&d.performance.tenant, doc) {
                            cache.forget(&path);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Writes the documents of every tenant in `tenants`, as `documents` gives them, with all
    /// cores, a slice of tenants at a time: a creator thread makes the temporary files of the
    /// next slice, while the documents of this one are computed, encoded and written into its
    /// files on every core (rayon), and a syncer thread syncs and renames the slice before. A
    /// tenant's JSON (a long calibration history runs to megabytes) is freed once written, and
    /// at most three slices' files are open (576). Each slice is atomic as
    /// [`Storage::write_tenants`] says, not the whole write: on an error the slices before it
    /// stay written. One `syncfs` per slice: for a one-off write of thousands of tenants
    /// (`fold`), not beside a broker or the processor.
    ///
    /// Files are created on one thread only: created in one directory from several threads
    /// they queue on the directory's lock, and the waiting threads spin (7.5% of `feedback
    /// fold`'s cycles when it did). Their bytes are written on every core: copying 843 MB into
    /// the page cache from one thread kept it busy for 2.7 s of a 3.3 s end, the pool's
    /// threads half idle (docs/PERFORMANCE.md).
    ///
    /// `stop` is asked before each slice: once it answers true the write ends with
    /// [`StorageError::Interrupted`], the slices before published, no temporary file left.
    pub fn write_all_tenants<F>(
        &self,
        tenants: &[&str],
        documents: F,
        stop: impl Fn() -> bool,
    ) -> Result<(), StorageError>
    where
        F: Fn(&str) -> Option<TenantDocuments> + Sync,
    {
        /// Tenants whose documents are computed and written together.
        const SLICE: usize = 64;
        // Rendezvous: a slice is handed over only when the next stage is ready for it.
        let (created_tx, created) = std::sync::mpsc::sync_channel::<Vec<[Staged; 3]>>(0);
        let (staged_tx, to_publish) = std::sync::mpsc::sync_channel::<Vec<Staged>>(0);
        std::thread::scope(|scope| {
            let syncer = scope.spawn(move || -> Result<(), StorageError> {
                for slice in to_publish {
                    self.publish(slice)?;
                }
                Ok(())
            });
            let creator = scope.spawn(move || -> Result<(), StorageError> {
                self.create_dir()?;
                for slice in tenants.chunks(SLICE) {
                    let files = (slice.iter())
                        .map(|name| self.create_files(name))
                        .collect::<Result<Vec<_>, _>>()?;
                    if created_tx.send(files).is_err() {
                        // The caller stopped, on its own error or the syncer's.
                        break;
                    }
                }
                Ok(())
            });
            let writing = (|| -> Result<(), StorageError> {
                for (i, slice) in tenants.chunks(SLICE).enumerate() {
                    if stop() {
                        return Err(StorageError::Interrupted { written: i * SLICE });
                    }
                    let Ok(files) = created.recv() else {
                        // The creator stopped on an error, which its join returns.
                        break;
                    };
                    let staged = (slice.par_iter().zip(files))
                        .map(|(name, files)| match documents(name) {
                            Some(docs) => self.write_encoded(self.encode_tenant(&docs)?, files),
                            // No documents: the temporary files are removed as they drop.
                            None => Ok(Vec::new()),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if staged_tx
                        .send(staged.into_iter().flatten().collect())
                        .is_err()
                    {
                        // The syncer stopped on an error, which its join returns.
                        break;
                    }
                }
                Ok(())
            })();
            // Hanging up lets a stage blocked on a hand-over end.
            drop((created, staged_tx));
            let join = |stage: std::thread::ScopedJoinHandle<'_, Result<(), StorageError>>| {
                stage
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            };
            // The syncer's error is of the earliest slice, the creator's of the latest.
            let (creating, publishing) = (join(creator), join(syncer));
            publishing.and(writing).and(creating)
        })
    }

    /// Creates the documents' directory.
    fn create_dir(&self) -> Result<(), StorageError> {
        let dir = self.performance_dir();
        fs::create_dir_all(&dir).map_err(|source| StorageError::CreateDir { path: dir, source })
    }

    /// The empty temporary files of a tenant's documents, in the order of [`Document::ALL`].
    fn create_files(&self, tenant: &str) -> Result<[Staged; 3], StorageError> {
        let [a, b, c] = Document::ALL.map(|doc| self.path(tenant, doc));
        Ok([
            create_temporary(a?)?,
            create_temporary(b?)?,
            create_temporary(c?)?,
        ])
    }

    /// Writes a tenant's encoded documents into its temporary files from [`Storage::create_files`].
    fn write_encoded(
        &self,
        encoded: EncodedTenant,
        files: [Staged; 3],
    ) -> Result<Vec<Staged>, StorageError> {
        let mut staged = Vec::with_capacity(3);
        for ((path, bytes), (mut tmp, target)) in encoded.files.into_iter().zip(files) {
            if path != target {
                // The documents are another tenant's than the name they were asked for.
                return Err(StorageError::Write {
                    path,
                    source: std::io::Error::other(format!(
                        "expected the document for {}",
                        target.display()
                    )),
                });
            }
            tmp.write_all(&bytes)
                .map_err(|source| StorageError::Write { path, source })?;
            staged.push((tmp, target));
        }
        Ok(staged)
    }

    /// A tenant's three documents as JSON: the computing half of a write.
    fn encode_tenant(&self, docs: &TenantDocuments) -> Result<EncodedTenant, StorageError> {
        self.encode_tenant_with(docs, |_, history| {
            let mut bytes = Vec::with_capacity(history.json_size_hint());
            history.write_json(&mut bytes);
            bytes
        })
    }

    /// As [`Storage::encode_tenant`], the calibration history's JSON (without its final line
    /// break) made by `calibration` from the document's path.
    fn encode_tenant_with(
        &self,
        docs: &TenantDocuments,
        calibration: impl FnOnce(&Path, &CalibrationHistory) -> Vec<u8>,
    ) -> Result<EncodedTenant, StorageError> {
        let tenant = &docs.performance.tenant;
        let path = self.path(tenant, Document::Calibration)?;
        let mut bytes = calibration(&path, &docs.calibration);
        bytes.push(b'\n');
        Ok(EncodedTenant {
            files: [
                encode(
                    self.path(tenant, Document::Performance)?,
                    &docs.performance,
                    64 << 10,
                )?,
                (path, bytes),
                encode(
                    self.path(tenant, Document::Drift)?,
                    &docs.drift,
                    docs.drift.history.len() * 1024,
                )?,
            ],
        })
    }

    /// The writing half: every file staged from the calling thread, one after the other (files
    /// created in one directory from several threads queue on the directory's lock, and the
    /// waiting threads spin: 7.5% of `feedback fold`'s cycles when it staged on every core),
    /// then synced and renamed.
    fn write_staged(
        &self,
        encoded: impl IntoIterator<Item = Result<EncodedTenant, StorageError>>,
    ) -> Result<(), StorageError> {
        self.write_staged_stamped(encoded).map(drop)
    }

    /// [`Storage::write_staged`], returning each written file's [`FileStamp`].
    fn write_staged_stamped(
        &self,
        encoded: impl IntoIterator<Item = Result<EncodedTenant, StorageError>>,
    ) -> Result<std::collections::HashMap<PathBuf, FileStamp>, StorageError> {
        let staged = self.stage_all(encoded)?;
        self.publish(staged)
    }

    /// Every file written to a temporary file beside its target, not yet synced nor renamed.
    fn stage_all(
        &self,
        encoded: impl IntoIterator<Item = Result<EncodedTenant, StorageError>>,
    ) -> Result<Vec<Staged>, StorageError> {
        self.create_dir()?;
        let mut staged = Vec::new();
        for tenant in encoded {
            for (path, bytes) in tenant?.files {
                staged.push(stage(path, &bytes)?);
            }
        }
        Ok(staged)
    }

    /// Staged files synced (as [`SyncMode`] says), then renamed over their targets, and the
    /// renames synced; each written file's [`FileStamp`].
    fn publish(
        &self,
        staged: Vec<Staged>,
    ) -> Result<std::collections::HashMap<PathBuf, FileStamp>, StorageError> {
        let dir = self.performance_dir();
        let Some((first, path)) = staged.first() else {
            return Ok(Default::default());
        };
        let sync_err = |path: &PathBuf, e: std::io::Error| StorageError::Write {
            path: path.clone(),
            source: e,
        };
        match self.sync {
            SyncMode::Filesystem => {
                rustix::fs::syncfs(first.as_file()).map_err(|e| sync_err(path, e.into()))?
            }
            SyncMode::EachFile => {
                for (tmp, path) in &staged {
                    tmp.as_file().sync_data().map_err(|e| sync_err(path, e))?;
                }
            }
        }
        let mut stamps = std::collections::HashMap::with_capacity(staged.len());
        for (tmp, path) in staged {
            let file = tmp.persist(&path).map_err(|e| StorageError::Write {
                path: path.clone(),
                source: e.error,
            })?;
            // Taken after the rename, which changes the file's ctime.
            if let Ok(meta) = file.metadata() {
                stamps.insert(path, FileStamp::of(&meta));
            }
        }
        sync_dir(&dir);
        Ok(stamps)
    }

    /// Reads one document as JSON.
    pub fn read<T: serde::de::DeserializeOwned>(
        &self,
        tenant: &str,
        doc: Document,
    ) -> Result<T, StorageError> {
        let path = self.path(tenant, doc)?;
        let bytes = fs::read(&path).map_err(|source| StorageError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StorageError::Decode { path, source })
    }
}

/// Which file a path held when it was written: the same device, inode, length, modification
/// time and change time mean nobody has replaced or changed it since (a tool can set a file's
/// mtime back, not its ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    /// Device, inode, ctime in seconds and nanoseconds (zeros where there are none).
    unix: [i64; 4],
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let unix = {
            use std::os::unix::fs::MetadataExt;
            [
                meta.dev() as i64,
                meta.ino() as i64,
                meta.ctime(),
                meta.ctime_nsec(),
            ]
        };
        #[cfg(not(unix))]
        let unix = [0; 4];
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            unix,
        }
    }
}

/// What a long-running writer remembers of the calibration documents it wrote: for each file,
/// the entries' fingerprints ([`CalibrationHistory::fingerprints`]) and where each entry's JSON
/// lies in it. The next write of that document copies the entries that kept their fingerprint
/// from the file, and renders only the others: a history of a year and a half is 800 KB of
/// JSON a tenant, rewritten every storage interval, and between two writes new outcomes change
/// its last weeks, and days expiring its first four (the windows that held them). The file is
/// read only if it is still the one written (same device, inode, length, mtime and ctime), and
/// a copied entry must start as its day's entry does and end as an entry does; anything else
/// is rendered. About 24 bytes an entry, 13 KB a tenant for a year and a half. Of the other
/// documents it wrote it keeps the stamp only, so that [`CalibrationCache::is_current`] can
/// tell whether someone else changed any of a tenant's documents since.
#[derive(Debug, Default)]
pub struct CalibrationCache {
    written: std::collections::HashMap<PathBuf, Written>,
    /// The performance and drift documents written: each file's stamp after its rename.
    stamps: std::collections::HashMap<PathBuf, FileStamp>,
    /// Entries copied from files and entries rendered, since the cache was made.
    pub copied: u64,
    pub rendered: u64,
}

#[derive(Debug)]
struct Written {
    stamp: FileStamp,
    first: crate::fold::tenant::Day,
    fingerprints: Vec<u64>,
    /// Each entry's bytes in the file: start and end.
    spans: Vec<(u64, u64)>,
}

impl CalibrationCache {
    /// The JSON of `history` for the file at `path` (without the final line break), its
    /// entries' fingerprints, and each entry's span in the JSON.
    fn encode(
        &mut self,
        path: &Path,
        history: &CalibrationHistory,
    ) -> (Vec<u8>, Vec<u64>, Vec<(u64, u64)>) {
        let mut out = Vec::with_capacity(history.json_size_hint());
        history.write_json_head(&mut out);
        let entries = history.entries();
        let first = history.first_day();
        let fingerprints = history.fingerprints();
        let old = self.readable(path, first, &fingerprints);
        let mut spans = Vec::with_capacity(entries);
        let (mut copied, mut rendered) = (0, 0);
        let mut date = String::with_capacity(10);
        for (i, fingerprint) in fingerprints.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let start = out.len();
            // The entry of the same day in the file, if its fingerprint is the same and its
            // bytes start as that day's entry does and end as an entry does.
            let same = old.as_ref().and_then(|(written, bytes, shift)| {
                let j = usize::try_from(i as i64 + shift).ok()?;
                (written.fingerprints.get(j) == Some(fingerprint)).then_some(())?;
                let (s, e) = written.spans[j];
                let entry = bytes.get(s as usize..e as usize)?;
                date.clear();
                crate::fold::tenant::push_date(&mut date, first + i as crate::fold::tenant::Day);
                let head = entry.strip_prefix(b"{\"as_of\":\"".as_slice())?;
                (head.starts_with(date.as_bytes()) && entry.ends_with(b"}")).then_some(entry)
            });
            match same {
                Some(entry) => {
                    out.extend_from_slice(entry);
                    copied += 1;
                }
                None => {
                    history.write_entry(i, &mut out);
                    rendered += 1;
                }
            }
            spans.push((start as u64, out.len() as u64));
        }
        out.extend_from_slice(CalibrationHistory::JSON_TAIL);
        self.copied += copied;
        self.rendered += rendered;
        (out, fingerprints, spans)
    }

    /// The entries the file at `path` was written with, its bytes, and the index of its entry
    /// of day `first` (negative when the file starts later, past its entries when every day
    /// it held expired): when some entry of the new history (its first on `first`, its
    /// entries' `fingerprints`) is unchanged and the file is still the one written.
    fn readable(
        &self,
        path: &Path,
        first: crate::fold::tenant::Day,
        fingerprints: &[u64],
    ) -> Option<(&Written, Vec<u8>, i64)> {
        let old = self.written.get(path)?;
        let shift = i64::from(first) - i64::from(old.first);
        let unchanged = |(i, fingerprint): (usize, &u64)| {
            let j = usize::try_from(i as i64 + shift).ok();
            j.and_then(|j| old.fingerprints.get(j)) == Some(fingerprint)
        };
        fingerprints
            .iter()
            .enumerate()
            .any(unchanged)
            .then_some(())?;
        let mut bytes = Vec::new();
        let mut f = File::open(path).ok()?;
        (FileStamp::of(&f.metadata().ok()?) == old.stamp).then_some(())?;
        std::io::Read::read_to_end(&mut f, &mut bytes).ok()?;
        (bytes.len() as u64 == old.stamp.len).then_some((old, bytes, shift))
    }

    fn remember(
        &mut self,
        path: PathBuf,
        stamp: FileStamp,
        first: crate::fold::tenant::Day,
        fingerprints: Vec<u64>,
        spans: Vec<(u64, u64)>,
    ) {
        let written = Written {
            stamp,
            first,
            fingerprints,
            spans,
        };
        self.written.insert(path, written);
    }

    /// Forgets the document at `path`: its next write renders it whole.
    pub fn forget(&mut self, path: &Path) {
        self.written.remove(path);
        self.stamps.remove(path);
    }

    /// Whether the file at `path` (any of the three documents) is still the one this cache
    /// last wrote there: false when it was written by someone else since (another instance
    /// that owned its tenant and wrote late, a hand edit), removed, or never written by this
    /// cache.
    pub fn is_current(&self, path: &Path) -> bool {
        let stamp = match self.written.get(path) {
            Some(written) => &written.stamp,
            None => match self.stamps.get(path) {
                Some(stamp) => stamp,
                None => return false,
            },
        };
        fs::metadata(path).is_ok_and(|meta| FileStamp::of(&meta) == *stamp)
    }
}

/// A tenant's documents encoded, each with the path it goes to.
#[derive(Debug)]
struct EncodedTenant {
    files: [(PathBuf, Vec<u8>); 3],
}

/// A value as the JSON of a document, with its final line break.
/// `capacity`: about the size of the JSON, so that the buffer does not grow by copying.
fn encode<T: Serialize>(
    path: PathBuf,
    value: &T,
    capacity: usize,
) -> Result<(PathBuf, Vec<u8>), StorageError> {
    let mut bytes = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut bytes, value).map_err(|source| StorageError::Encode {
        path: path.clone(),
        source,
    })?;
    bytes.push(b'\n');
    Ok((path, bytes))
}

/// A document written to a temporary file beside its path, not yet synced nor renamed.
type Staged = (tempfile::NamedTempFile, PathBuf);

/// Writes encoded bytes to a temporary file beside `path`, not yet synced nor renamed.
fn stage(path: PathBuf, bytes: &[u8]) -> Result<Staged, StorageError> {
    let (mut tmp, path) = create_temporary(path)?;
    tmp.write_all(bytes).map_err(|source| StorageError::Write {
        path: path.clone(),
        source,
    })?;
    Ok((tmp, path))
}

/// An empty temporary file beside `path`, readable by all as a document is.
fn create_temporary(path: PathBuf) -> Result<Staged, StorageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let write_err = |source| StorageError::Write {
        path: path.clone(),
        source,
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    // Temporary files are created 0600; a document is for the dashboard and operators too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(mode).map_err(write_err)?;
    }
    Ok((tmp, path))
}

/// Makes renames in `dir` durable; not every platform can fsync a directory, hence no error.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Temporary file in the same directory, fsync, rename over the target, fsync the directory.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StorageError> {
    let (path, bytes) = encode(path.to_owned(), value, 128)?;
    let (tmp, path) = stage(path, &bytes)?;
    let write_err = |source| StorageError::Write {
        path: path.clone(),
        source,
    };
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(&path).map_err(|e| write_err(e.error))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_tenant_names_that_are_not_file_safe() {
        let s = Storage::new("/tmp/x");
        assert!(matches!(
            s.path("../etc", Document::Performance),
            Err(StorageError::InvalidTenant(_))
        ));
        assert!(s
            .path("acme", Document::Drift)
            .unwrap()
            .ends_with("metadata/performance/acme_drift.json"));
    }

    /// The names of the files in the documents' directory, checked to be documents only (no
    /// temporary file).
    fn only_documents(storage: &Storage) -> Vec<String> {
        let names: Vec<_> = fs::read_dir(storage.performance_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|name| name.ends_with(".json")),
            "{names:?}"
        );
        names
    }

    /// More tenants than one slice: every document lands, readable, with no temporary file
    /// left; a tenant that cannot be encoded, a name the creator thread refuses mid-way, or a
    /// directory it cannot write, is an error, not a hang, and leaves no temporary file.
    #[test]
    fn write_all_tenants_writes_every_slice() {
        use crate::fold::{Engine, FoldConfig};
        use crate::simulate::{generate_events, SimConfig};
        let mut engine = Engine::new(FoldConfig::default());
        let events = generate_events(&SimConfig {
            tenants: 300,
            days: 3,
            ..SimConfig::default()
        });
        engine.apply_batch(&events, &mut Vec::new());
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path());
        let names = engine.tenants();
        assert_eq!(names.len(), 300);
        storage
            .write_all_tenants(&names, |name| engine.documents(name), || false)
            .unwrap();
        assert_eq!(
            fs::read_dir(storage.performance_dir()).unwrap().count(),
            900
        );
        for name in &names {
            let doc: crate::fold::report::CalibrationDoc =
                storage.read(name, Document::Calibration).unwrap();
            assert_eq!(doc.tenant, *name);
        }

        let bad = |name: &str| {
            let mut docs = engine.documents(name)?;
            if name == names[200] {
                docs.performance.tenant = "../etc".into();
            }
            Some(docs)
        };
        let err = storage
            .write_all_tenants(&names, bad, || false)
            .unwrap_err();
        assert!(matches!(err, StorageError::InvalidTenant(_)), "{err}");
        let left: Vec<_> = fs::read_dir(storage.performance_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.ends_with(".json"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");

        // The creator fails mid-way (an invalid name, past the first slices): the slices
        // before it are written, and no temporary file is left.
        let midway = tempfile::tempdir().unwrap();
        let storage = Storage::new(midway.path());
        let mut with_bad = names.clone();
        with_bad.insert(200, "../etc");
        let err = storage
            .write_all_tenants(&with_bad, |name| engine.documents(name), || false)
            .unwrap_err();
        assert!(matches!(err, StorageError::InvalidTenant(_)), "{err}");
        let written = only_documents(&storage);
        // The three slices of 64 tenants before the one holding the invalid name.
        assert_eq!(written.len(), 3 * 3 * 64);
        let doc: crate::fold::report::CalibrationDoc =
            storage.read(names[0], Document::Calibration).unwrap();
        assert_eq!(doc.tenant, names[0]);

        // Asked to stop before the second slice: the first is written, nothing else, and no
        // temporary file is left (the creator had made the second's files already).
        let stopped = tempfile::tempdir().unwrap();
        let storage = Storage::new(stopped.path());
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let err = storage
            .write_all_tenants(
                &names,
                |name| engine.documents(name),
                || asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 1,
            )
            .unwrap_err();
        assert!(
            matches!(err, StorageError::Interrupted { written: 64 }),
            "{err}"
        );
        let written = only_documents(&storage);
        assert_eq!(written.len(), 3 * 64);

        // The creator fails at once (the documents' directory is a file) while the caller still
        // has slices to hand over.
        let blocked = tempfile::tempdir().unwrap();
        fs::create_dir_all(blocked.path().join("metadata")).unwrap();
        fs::write(blocked.path().join("metadata/performance"), b"").unwrap();
        let err = Storage::new(blocked.path())
            .write_all_tenants(&names, |name| engine.documents(name), || false)
            .unwrap_err();
        assert!(matches!(err, StorageError::CreateDir { .. }), "{err}");

        // The syncer fails (a document's path is a directory, so its rename fails) while the
        // pool still writes slices after it: an error, not a hang; the slice before it is
        // published and no temporary file is left.
        let renamed = tempfile::tempdir().unwrap();
        let storage = Storage::new(renamed.path());
        let in_the_way = storage.path(names[200], Document::Calibration).unwrap();
        fs::create_dir_all(&in_the_way).unwrap();
        let err = storage
            .write_all_tenants(&names, |name| engine.documents(name), || false)
            .unwrap_err();
        assert!(matches!(err, StorageError::Write { .. }), "{err}");
        let doc: crate::fold::report::CalibrationDoc =
            storage.read(names[0], Document::Calibration).unwrap();
        assert_eq!(doc.tenant, names[0]);
        let left: Vec<_> = fs::read_dir(storage.performance_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|path| path.extension().is_none_or(|e| e != "json"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    /// Documents written through a [`CalibrationCache`], step after step of a fold, are the
    /// bytes a whole render writes: as new days come, after a late correction of an early day,
    /// while days expire from the start, and after the file was changed behind the writer's
    /// back (then it is rendered whole). Most entries are copied, not rendered.
    #[test]
    fn cached_calibration_documents_are_what_a_whole_render_writes() {
        use crate::event::Event;
        use crate::fold::{Engine, FoldConfig};
        use crate::simulate::{generate_events, SimConfig};
        let events = generate_events(&SimConfig {
            tenants: 3,
            days: 70,
            ..SimConfig::default()
        });
        // A short retention, so that days expire from the start of the histories.
        let config = FoldConfig {
            retention_days: 50,
            ..FoldConfig::default()
        };
        let mut engine = Engine::new(config);
        let (cached, whole) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (cached, whole) = (Storage::new(cached.path()), Storage::new(whole.path()));
        let mut cache = CalibrationCache::default();
        let check = |engine: &Engine, cache: &mut CalibrationCache| {
            let docs = || {
                engine
                    .tenants()
                    .into_iter()
                    .filter_map(|t| engine.documents(t))
            };
            cached.write_tenants_cached(docs(), cache).unwrap();
            whole.write_tenants(docs()).unwrap();
            for tenant in engine.tenants() {
                let path = |s: &Storage| s.path(tenant, Document::Calibration).unwrap();
                let (got, want) = (
                    fs::read(path(&cached)).unwrap(),
                    fs::read(path(&whole)).unwrap(),
                );
                assert!(
                    got == want,
                    "{tenant}: the cached document differs from a whole render"
                );
            }
        };
        let early = events
            .iter()
            .find_map(|e| match e {
                Event::Outcome(o) if chrono::Datelike::day(&o.date) == 10 => Some(o.clone()),
                _ => None,
            })
            .unwrap();
        let history = |engine: &Engine, tenant: &str| engine.documents(tenant).unwrap().calibration;
        let mut firsts = Vec::new();
        for (step, chunk) in events.chunks(events.len() / 12).enumerate() {
            engine.apply_batch(chunk, &mut Vec::new());
            let mut all_rendered = None;
            if step == 6 {
                // A late correction of a day weeks back: its entries and those after change.
                let tenant = early.tenant.to_string();
                let before = history(&engine, &tenant);
                let mut late = early.clone();
                late.revenue *= 3.0;
                engine.apply(&Event::Outcome(late), &mut Vec::new());
                let after = history(&engine, &tenant);
                assert_eq!(before.first_day(), after.first_day());
                let (a, b) = (before.fingerprints(), after.fingerprints());
                let changed = (0..a.len()).find(|&i| a[i] != b[i]).unwrap();
                assert!(
                    changed + 20 < a.len(),
                    "entry {changed} of {} changed first",
                    a.len()
                );
            }
            if step == 9 {
                // A document changed behind the writer's back, its length and mtime kept, is
                // not copied from: every entry of it is rendered.
                let tenant = engine.tenants()[0];
                let path = cached.path(tenant, Document::Calibration).unwrap();
                let mtime = fs::metadata(&path).unwrap().modified().unwrap();
                // The kernel's clock for file times ticks every few milliseconds: the change
                // must not fall in the tick of the write it follows.
                std::thread::sleep(std::time::Duration::from_millis(50));
                let text = fs::read_to_string(&path)
                    .unwrap()
                    .replace("\"n\":", "\"N\":");
                fs::write(&path, text).unwrap();
                let f = File::options().write(true).open(&path).unwrap();
                f.set_modified(mtime).unwrap();
                all_rendered = Some(history(&engine, tenant).entries() as u64);
            }
            let (copied, rendered) = (cache.copied, cache.rendered);
            check(&engine, &mut cache);
            assert!(
                step == 0 || cache.copied > copied,
                "step {step} copied nothing"
            );
            if let Some(entries) = all_rendered {
                assert!(cache.rendered - rendered >= entries);
            }
            firsts.push(history(&engine, engine.tenants()[0]).first_day());
        }
        // Days expired in several steps that copied entries.
        let moved = firsts.windows(2).filter(|w| w[1] > w[0]).count();
        assert!(
            moved >= 3,
            "the first day moved in {moved} steps: {firsts:?}"
        );
        // 50 days kept and a window of 28: the days expiring change about half the entries.
        assert!(
            cache.copied > cache.rendered,
            "{} entries copied, {} rendered",
            cache.copied,
            cache.rendered
        );
    }

    /// A failed write forgets what the cache knew of the tenants in it, also when some of its
    /// files were renamed before the failure: their next write renders them whole.
    #[test]
    fn a_failed_cached_write_forgets_its_tenants() {
        use crate::fold::Engine;
        let engine = Engine::simulated(1, 20);
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path());
        let mut cache = CalibrationCache::default();
        let docs = || {
            engine
                .tenants()
                .into_iter()
                .filter_map(|t| engine.documents(t))
        };
        storage.write_tenants_cached(docs(), &mut cache).unwrap();
        assert_eq!(cache.written.len(), 1);
        // The drift document's path taken by a directory: the performance and calibration
        // documents are renamed into place, then the drift document's rename fails.
        let tenant = engine.tenants()[0];
        let drift = storage.path(tenant, Document::Drift).unwrap();
        fs::remove_file(&drift).unwrap();
        fs::create_dir(&drift).unwrap();
        let calibration = storage.path(tenant, Document::Calibration).unwrap();
        let before = fs::metadata(&calibration).unwrap();
        assert!(storage.write_tenants_cached(docs(), &mut cache).is_err());
        assert!(cache.stamps.is_empty());
        let after = fs::metadata(&calibration).unwrap();
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&before),
            std::os::unix::fs::MetadataExt::ino(&after),
            "the calibration document was replaced before the failure"
        );
        assert!(cache.written.is_empty());
        fs::remove_dir(&drift).unwrap();
        let rendered = cache.rendered;
        storage.write_tenants_cached(docs(), &mut cache).unwrap();
        let entries = docs().map(|d| d.calibration.entries() as u64).sum::<u64>();
        assert!(entries >= 19, "{entries} entries");
        assert_eq!(
            cache.rendered - rendered,
            entries,
            "every entry rendered again"
        );
        let whole = serde_json::to_vec(&docs().next().unwrap().calibration).unwrap();
        assert_eq!(
            fs::read(&calibration).unwrap(),
            [whole, b"\n".to_vec()].concat()
        );
    }

    /// Every document a cached write wrote is current until someone else replaces, changes
    /// or removes it; each is told apart from the tenant's other two.
    #[test]
    fn a_cache_knows_which_documents_are_still_its_own() {
        use crate::fold::Engine;
        let engine = Engine::simulated(1, 10);
        let tenant = engine.tenants()[0];
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path());
        let mut cache = CalibrationCache::default();
        let path = |doc| storage.path(tenant, doc).unwrap();
        let current = |cache: &CalibrationCache| Document::ALL.map(|d| cache.is_current(&path(d)));
        assert_eq!(current(&cache), [false; 3], "nothing written yet");
        storage
            .write_tenants_cached(engine.documents(tenant), &mut cache)
            .unwrap();
        assert_eq!(current(&cache), [true; 3]);
        // Replaced by a rename, as another writer does.
        write_atomic(&path(Document::Performance), &serde_json::json!({})).unwrap();
        assert_eq!(current(&cache), [false, true, true]);
        fs::remove_file(path(Document::Drift)).unwrap();
        assert_eq!(current(&cache), [false, true, false]);
        // Changed in place, keeping its inode.
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(path(Document::Calibration))
            .unwrap();
        std::io::Write::write_all(&mut file, b" ").unwrap();
        drop(file);
        assert_eq!(current(&cache), [false; 3]);
        storage
            .write_tenants_cached(engine.documents(tenant), &mut cache)
            .unwrap();
        assert_eq!(current(&cache), [true; 3], "written again");
        cache.forget(&path(Document::Drift));
        assert_eq!(current(&cache), [true, true, false], "forgotten");
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, &serde_json::json!({"a": 1})).unwrap();
        write_atomic(&path, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["a"], 2);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left behind"
        );
    }
}
