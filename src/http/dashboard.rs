//! The `/calibration` dashboard: one HTML page, its stylesheet, script and icon, all compiled
//! into the binary (no CDN, no network), drawing the API's documents as inline SVG.
//!
//! The page is open; the data it polls from `/api/v1` needs the API token when one is set (the
//! page asks for it once and keeps it in sessionStorage). The Content-Security-Policy allows
//! nothing but this server, so a page served from here cannot reach anywhere else.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

pub const PAGE: &str = "/calibration";
const HTML: &str = include_str!("assets/calibration.html");
const CSS: &str = include_str!("assets/calibration.css");
const JS: &str = include_str!("assets/calibration.js");
const ICON: &str = include_str!("assets/icon.svg");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(PAGE, get(|| asset("text/html; charset=utf-8", HTML)))
        .route(
            "/calibration/app.css",
            get(|| asset("text/css; charset=utf-8", CSS)),
        )
        .route(
            "/calibration/app.js",
            get(|| asset("text/javascript; charset=utf-8", JS)),
        )
        .route(
            "/calibration/icon.svg",
            get(|| asset("image/svg+xml", ICON)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Small and compiled in: revalidating costs little, and a new binary shows at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
