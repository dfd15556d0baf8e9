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

    /// Writes the documents of every tenant in `tenants`, as `documents` gives them, with all
    /// cores: the documents are computed and encoded on every core (rayon), a slice of tenants
    /// at a time, while a writer thread stages, syncs and renames the slice before. At most two
    /// slices of JSON are held (a long calibration history runs to megabytes a tenant). Each
    /// slice is atomic as [`Storage::write_tenants`] says, not the whole write: on an error the
    /// slices before it stay written. One `syncfs` per slice: for a one-off write of thousands
    /// of tenants (`fold`), not beside a broker or the processor.
    pub fn write_all_tenants<F>(&self, tenants: &[&str], documents: F) -> Result<(), StorageError>
    where
        F: Fn(&str) -> Option<TenantDocuments> + Sync,
    {
        /// Tenants whose documents are computed and written together.
        const SLICE: usize = 128;
        // A rendezvous: a slice is handed over only when the writer is ready for it.
        let (slices, received) = std::sync::mpsc::sync_channel::<Vec<EncodedTenant>>(0);
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> Result<(), StorageError> {
                for slice in received {
                    self.write_staged(slice.into_iter().map(Ok))?;
                }
                Ok(())
            });
            for slice in tenants.chunks(SLICE) {
                let encoded = slice
                    .par_iter()
                    .filter_map(|name| documents(name))
                    .map(|docs| self.encode_tenant(&docs))
                    .collect::<Result<Vec<_>, _>>()?;
                if slices.send(encoded).is_err() {
                    // The writer stopped on an error, which the join below returns.
                    break;
                }
            }
            drop(slices);
            match writer.join() {
                Ok(written) => written,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A tenant's three documents as JSON: the computing half of a write.
    fn encode_tenant(&self, docs: &TenantDocuments) -> Result<EncodedTenant, StorageError> {
        let tenant = &docs.performance.tenant;
        Ok(EncodedTenant {
            files: [
                encode(
                    self.path(tenant, Document::Performance)?,
                    &docs.performance,
                    64 << 10,
                )?,
                encode(
                    self.path(tenant, Document::Calibration)?,
                    &docs.calibration,
                    docs.calibration.json_size_hint(),
                )?,
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
        let dir = self.performance_dir();
        fs::create_dir_all(&dir).map_err(|source| StorageError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let mut staged = Vec::new();
        for tenant in encoded {
            for (path, bytes) in tenant?.files {
                staged.push(stage(path, &bytes)?);
            }
        }
        let Some((first, path)) = staged.first() else {
            return Ok(());
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
        for (tmp, path) in staged {
            tmp.persist(&path).map_err(|e| StorageError::Write {
                path: path.clone(),
                source: e.error,
            })?;
        }
        sync_dir(&dir);
        Ok(())
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

/// Writes encoded bytes to a temporary file beside `path`, not yet synced nor renamed.
fn stage(path: PathBuf, bytes: &[u8]) -> Result<(tempfile::NamedTempFile, PathBuf), StorageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let write_err = |source| StorageError::Write {
        path: path.clone(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    // Temporary files are created 0600; a document is for the dashboard and operators too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(mode).map_err(write_err)?;
    }
    tmp.write_all(bytes).map_err(write_err)?;
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

    /// More tenants than one slice: every document lands, readable, with no temporary file
    /// left; a tenant that cannot be encoded, or a directory the writer thread cannot write,
    /// is an error, not a hang, and leaves no temporary file.
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
            .write_all_tenants(&names, |name| engine.documents(name))
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
        let err = storage.write_all_tenants(&names, bad).unwrap_err();
        assert!(matches!(err, StorageError::InvalidTenant(_)), "{err}");
        let left: Vec<_> = fs::read_dir(storage.performance_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.ends_with(".json"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");

        // The writer thread fails (the documents' directory is a file) while the caller still
        // has slices to hand over.
        let blocked = tempfile::tempdir().unwrap();
        fs::create_dir_all(blocked.path().join("metadata")).unwrap();
        fs::write(blocked.path().join("metadata/performance"), b"").unwrap();
        let err = Storage::new(blocked.path())
            .write_all_tenants(&names, |name| engine.documents(name))
            .unwrap_err();
        assert!(matches!(err, StorageError::CreateDir { .. }), "{err}");
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
