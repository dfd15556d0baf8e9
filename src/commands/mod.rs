//! The operator commands of SPEC 8 beside `fold` and `run`: their logic lives here so that
//! `main.rs` only parses flags, prints and maps results to exit codes.
//!
//! Exit codes, for every command here: 0 all is well, 1 the command did its job and found
//! something an operator must look at (a degraded model, a horizon below the coverage
//! threshold, refused records), 2 it could not do its job (bad arguments, unreadable files,
//! unknown tenant, Kafka unreachable).

pub mod check;
pub mod forecast;
pub mod produce;
pub mod replay;
pub mod simulate;

use std::path::PathBuf;

use crate::event::validate::valid_tenant;
use crate::storage::{Document, Storage, StorageError};

/// Why a tenant's documents could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error(
        "invalid tenant name {0:?}: a tenant is 1 to 64 of a-z, 0-9, _ and -, starting with a \
         letter or digit, and does not end in _calibration or _drift"
    )]
    InvalidTenant(String),
    #[error("no documents for tenant {tenant:?} in {dir}; {known}")]
    UnknownTenant {
        tenant: String,
        dir: PathBuf,
        known: KnownTenants,
    },
    #[error(
        "tenant {tenant:?} has a performance document in {dir} but no {file}: the fold writes \
         the three together, so a file was removed or the directory is being written; run the \
         command again, or fold or replay again"
    )]
    MissingDocument {
        tenant: String,
        dir: PathBuf,
        file: String,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The tenants a storage directory holds, for the message about an unknown one.
#[derive(Debug)]
pub struct KnownTenants(pub Vec<String>);

impl std::fmt::Display for KnownTenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 20;
        match self.0.len() {
            0 => write!(
                f,
                "it holds no tenant (`feedback fold` or `feedback run` writes them)"
            ),
            n => {
                let names: Vec<&str> = self.0.iter().take(SHOWN).map(String::as_str).collect();
                write!(f, "tenants there: {}", names.join(", "))?;
                if n > SHOWN {
                    write!(f, " and {} more", n - SHOWN)?;
                }
                Ok(())
            }
        }
    }
}

/// The tenants whose performance document is in `storage`, sorted.
pub fn tenants(storage: &Storage) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(storage.performance_dir()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let tenant = name.strip_suffix(".json")?;
            // Tenant names cannot end in _calibration or _drift, so these are never performance documents.
            valid_tenant(tenant).then(|| tenant.to_owned())
        })
        .collect();
    names.sort_unstable();
    names
}

/// Reads one of a tenant's documents; the tenant name is checked before any file is touched.
pub fn read_document<T: serde::de::DeserializeOwned>(
    storage: &Storage,
    tenant: &str,
    doc: Document,
) -> Result<T, DocumentError> {
    if !valid_tenant(tenant) {
        return Err(DocumentError::InvalidTenant(tenant.to_owned()));
    }
    match storage.read(tenant, doc) {
        Err(StorageError::Read { source, path })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let known = tenants(storage);
            if doc != Document::Performance && known.iter().any(|t| t == tenant) {
                let file = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |f| f.to_string_lossy().into_owned(),
                );
                return Err(DocumentError::MissingDocument {
                    tenant: tenant.to_owned(),
                    dir: storage.performance_dir(),
                    file,
                });
            }
            Err(DocumentError::UnknownTenant {
                tenant: tenant.to_owned(),
                dir: storage.performance_dir(),
                known: KnownTenants(known),
            })
        }
        other => Ok(other?),
    }
}

/// `12.3%`, or `-` when undefined.
pub(crate) fn percent(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{:.1}%", 100.0 * x))
}

/// A number with `decimals` decimals, or `-` when undefined.
pub(crate) fn number(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_invalid_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path());
        let err = read_document::<serde_json::Value>(&storage, "../x", Document::Performance)
            .unwrap_err();
        assert!(matches!(err, DocumentError::InvalidTenant(_)), "{err}");
        let err = read_document::<serde_json::Value>(&storage, "acme", Document::Performance)
            .unwrap_err();
        assert!(err.to_string().contains("holds no tenant"), "{err}");
        let perf = storage.performance_dir();
        std::fs::create_dir_all(&perf).unwrap();
        for name in [
            "b.json",
            "a.json",
            "a_calibration.json",
            "a_drift.json",
            "notes.txt",
        ] {
            std::fs::write(perf.join(name), "{}").unwrap();
        }
        assert_eq!(tenants(&storage), ["a", "b"]);
        let err = read_document::<serde_json::Value>(&storage, "acme", Document::Performance)
            .unwrap_err();
        assert!(err.to_string().ends_with("tenants there: a, b"), "{err}");
        // A tenant the directory holds, one of whose documents is gone, is not called unknown.
        let err =
            read_document::<serde_json::Value>(&storage, "b", Document::Calibration).unwrap_err();
        assert!(
            matches!(err, DocumentError::MissingDocument { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("but no b_calibration.json"),
            "{err}"
        );
    }
}
