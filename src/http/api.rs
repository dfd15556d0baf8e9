//! The read-only JSON API under `/api/v1`: the tenants a storage directory holds and their
//! three storage documents (SPEC 6) as stored, with the OpenAPI document that describes it.
//!
//! Tenant names are checked with the fold's own rule before any file is touched, so a request
//! can only ever name a document of the storage directory.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::event::validate::valid_tenant;
use crate::fold::report::StatusDoc;
use crate::storage::{Document, Storage};

pub const TENANTS: &str = "/api/v1/tenants";
pub const PERFORMANCE: &str = "/api/v1/tenants/{tenant}/performance";
pub const CALIBRATION: &str = "/api/v1/tenants/{tenant}/calibration";
pub const DRIFT: &str = "/api/v1/tenants/{tenant}/drift";
pub const OPENAPI: &str = "/api/v1/openapi.json";
/// Every route of the API, as the OpenAPI document names them (a test checks both agree).
pub const PATHS: [&str; 5] = [TENANTS, PERFORMANCE, CALIBRATION, DRIFT, OPENAPI];

const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

/// Why a request failed; each becomes a status and a JSON body `{"error": code, "message": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "invalid tenant name {0:?}: a tenant is 1 to 64 of a-z, 0-9, _ and -, starting with a \
         letter or digit, and does not end in _calibration or _drift"
    )]
    InvalidTenant(String),
    #[error("no {doc} document for tenant {tenant:?}")]
    UnknownTenant { tenant: String, doc: &'static str },
    /// The tenant has documents, only not this one (removed by hand, or the storage
    /// directory restored from an incomplete copy).
    #[error("no {doc} document for tenant {tenant:?}, though the tenant has other documents")]
    MissingDocument { tenant: String, doc: &'static str },
    #[error("cannot read the {doc} document of tenant {tenant:?}")]
    ReadDocument {
        tenant: String,
        doc: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the tenants")]
    ListTenants(#[source] tokio::task::JoinError),
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("no such route")]
    NoRoute,
    #[error("method not allowed: every route here answers GET (and HEAD) only")]
    MethodNotAllowed,
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code: `invalid_tenant`, `unknown_tenant`, `missing_document`, `unauthorized`,
    /// `not_found`, `method_not_allowed`, `internal`.
    pub error: String,
    pub message: String,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidTenant(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownTenant { .. }
            | ApiError::MissingDocument { .. }
            | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::ReadDocument { .. } | ApiError::ListTenants(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidTenant(_) => "invalid_tenant",
            ApiError::UnknownTenant { .. } => "unknown_tenant",
            ApiError::MissingDocument { .. } => "missing_document",
            ApiError::NoRoute => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::ReadDocument { .. } | ApiError::ListTenants(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            // The cause (and the file's path) goes to the log, not to the client.
            tracing::error!(error = %self, cause = ?std::error::Error::source(&self), "API request failed");
        }
        let body = ErrorBody {
            error: self.code().to_owned(),
            message: self.to_string(),
        };
        let mut response = (self.status(), no_store(), Json(body)).into_response();
        if matches!(self, ApiError::MethodNotAllowed) {
            (response.headers_mut()).insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"model-feedback\""),
            );
        }
        response
    }
}

fn no_store() -> [(header::HeaderName, &'static str); 1] {
    [(header::CACHE_CONTROL, "no-store")]
}

/// One entry of `/api/v1/tenants`: what the performance document says about the tenant's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantSummary {
    pub tenant: String,
    pub as_of: Option<String>,
    pub status: StatusDoc,
    pub tags: Vec<String>,
    /// Whether the processor of this server owns the tenant (its partition is assigned here)
    /// and so keeps its documents current; absent while the processor has no assignment (at
    /// start, during a rebalance). A document of a tenant not owned stays as it was when its
    /// partition moved to another instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned: Option<bool>,
}

/// The answer of `/api/v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantList {
    pub tenants: Vec<TenantSummary>,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(TENANTS, get(tenants))
        .route(PERFORMANCE, get(performance))
        .route(CALIBRATION, get(calibration))
        .route(DRIFT, get(drift))
        .route(OPENAPI, get(openapi))
}

/// Every tenant with a performance document, sorted by name. A document that cannot be read or
/// parsed (say, being replaced by hand) leaves its tenant out and is logged, rather than hiding
/// every other tenant.
pub fn list_tenants(storage: &Storage, owns: impl Fn(&str) -> Option<bool>) -> TenantList {
    let tenants = crate::commands::tenants(storage)
        .into_iter()
        .filter_map(
            |t| match storage.read::<TenantSummary>(&t, Document::Performance) {
                Ok(s) => Some(TenantSummary {
                    owned: owns(&s.tenant),
                    ..s
                }),
                Err(e) => {
                    tracing::warn!(tenant = %t, error = %e, "tenant left out of /api/v1/tenants");
                    None
                }
            },
        )
        .collect();
    TenantList { tenants }
}

async fn tenants(State(s): State<AppState>) -> Result<Response, ApiError> {
    let storage = s.storage.clone();
    let handles = s.handles.clone();
    let list = tokio::task::spawn_blocking(move || list_tenants(&storage, |t| handles.owns(t)))
        .await
        .map_err(ApiError::ListTenants)?;
    Ok((no_store(), Json(list)).into_response())
}

async fn performance(
    State(s): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    document(&s.storage, tenant, Document::Performance).await
}

async fn calibration(
    State(s): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    document(&s.storage, tenant, Document::Calibration).await
}

async fn drift(
    State(s): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    document(&s.storage, tenant, Document::Drift).await
}

/// The document's bytes as the processor wrote them.
async fn document(
    storage: &Storage,
    tenant: Result<Path<String>, PathRejection>,
    doc: Document,
) -> Result<Response, ApiError> {
    // A path segment that is not UTF-8 cannot be a tenant either.
    let tenant = tenant.map_or_else(|r| r.body_text(), |Path(t)| t);
    if !valid_tenant(&tenant) {
        return Err(ApiError::InvalidTenant(tenant));
    }
    let name = match doc {
        Document::Performance => "performance",
        Document::Calibration => "calibration",
        Document::Drift => "drift",
    };
    let path = storage
        .path(&tenant, doc)
        .map_err(|_| ApiError::InvalidTenant(tenant.clone()))?;
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok((
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut known = false;
            for other in Document::ALL.into_iter().filter(|&d| d != doc) {
                if let Ok(path) = storage.path(&tenant, other) {
                    known |= tokio::fs::try_exists(&path).await.unwrap_or(false);
                }
            }
            Err(match known {
                true => ApiError::MissingDocument { tenant, doc: name },
                false => ApiError::UnknownTenant { tenant, doc: name },
            })
        }
        Err(source) => Err(ApiError::ReadDocument {
            tenant,
            doc: name,
            source,
        }),
    }
}

async fn openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        OPENAPI_DOCUMENT,
    )
        .into_response()
}

/// Any other path: 404 with the same JSON error body as the API.
pub async fn not_found() -> ApiError {
    ApiError::NoRoute
}

/// A route asked with another method than GET or HEAD: 405 with the same JSON error body.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI_DOCUMENT).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
        let mut routes = super::PATHS.to_vec();
        documented.sort_unstable();
        routes.sort_unstable();
        assert_eq!(documented, routes);
    }
}
