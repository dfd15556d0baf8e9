//! The storage directory of SPEC 6: tenant documents written atomically (temporary file, fsync,
//! rename), so a reader never sees half a document and a crash never leaves one.
//!
//! Documents are compact JSON. Indented, a tenant's calibration history of 120 days took 330 KB
//! and the documents of 1,000 tenants 363 MB; compact, 187 MB, and `feedback fold` over that
//! history ran 15 to 20% faster (docs/PERFORMANCE.md). `jq .` indents them for reading.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
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
    /// Whether a batch is encoded on every core (rayon) or on the calling thread only.
    parallel: bool,
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
            parallel: false,
        }
    }

    /// The same directory, with each batch encoded and staged on every core: for a one-off
    /// write of thousands of documents (the offline `fold`), not for a writer that runs beside
    /// the processor's loop.
    pub fn with_parallel_staging(self) -> Self {
        Storage {
            parallel: true,
            ..self
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
        self.write_tenants(std::iter::once(docs.clone()))
    }

    /// Writes the documents of many tenants atomically: every temporary file is written, then
    /// synced (one filesystem sync for all of them, or an fsync each: [`SyncMode`]), then each is
    /// renamed over its target. A reader sees each document old or new, never partial, and a
    /// crash leaves no target file empty.
    pub fn write_tenants(
        &self,
        docs: impl IntoIterator<Item = TenantDocuments>,
    ) -> Result<(), StorageError> {
        let dir = self.performance_dir();
        fs::create_dir_all(&dir).map_err(|source| StorageError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let stage_tenant = |d: &TenantDocuments| {
            let tenant = &d.performance.tenant;
            Ok([
                stage(&self.path(tenant, Document::Performance)?, &d.performance)?,
                stage(&self.path(tenant, Document::Calibration)?, &d.calibration)?,
                stage(&self.path(tenant, Document::Drift)?, &d.drift)?,
            ])
        };
        let staged: Vec<[_; 3]> = if self.parallel {
            // Encoding the JSON is most of the work: a tenant's calibration history runs to
            // hundreds of kilobytes.
            let docs: Vec<TenantDocuments> = docs.into_iter().collect();
            docs.par_iter()
                .map(stage_tenant)
                .collect::<Result<_, StorageError>>()?
        } else {
            docs.into_iter()
                .map(|d| stage_tenant(&d))
                .collect::<Result<_, StorageError>>()?
        };
        let staged: Vec<_> = staged.into_iter().flatten().collect();
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

/// Writes a value to a temporary file beside `path`, not yet synced nor renamed.
fn stage<T: Serialize>(
    path: &Path,
    value: &T,
) -> Result<(tempfile::NamedTempFile, PathBuf), StorageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let write_err = |source| StorageError::Write {
        path: path.to_owned(),
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
    {
        let mut w = BufWriter::new(tmp.as_file());
        serde_json::to_writer(&mut w, value).map_err(|source| StorageError::Encode {
            path: path.to_owned(),
            source,
        })?;
        w.write_all(b"\n").map_err(write_err)?;
        w.flush().map_err(write_err)?;
    }
    Ok((tmp, path.to_owned()))
}

/// Makes renames in `dir` durable; not every platform can fsync a directory, hence no error.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Temporary file in the same directory, fsync, rename over the target, fsync the directory.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StorageError> {
    let (tmp, path) = stage(path, value)?;
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
