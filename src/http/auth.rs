//! The API's bearer token: `--api-token` (env `FEEDBACK_API_TOKEN`), compared in constant time.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;
use super::AppState;

/// A secret: never printed, not even by `{:?}`.
#[derive(Clone)]
pub struct ApiToken(String);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the API token is empty (leave --api-token and FEEDBACK_API_TOKEN unset for no token)"
    )]
    Empty,
    #[error("the API token must be printable ASCII without spaces (it travels in an HTTP header)")]
    NotPrintable,
}

impl ApiToken {
    pub fn new(token: &str) -> Result<ApiToken, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable);
        }
        Ok(ApiToken(token.to_owned()))
    }

    /// Whether `candidate` is this token. The time taken depends on the candidate's length
    /// only, never on where it first differs from the token.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl std::str::FromStr for ApiToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiToken::new(s)
    }
}

/// Every byte of `candidate` is compared (against the secret, cycled), and the difference
/// accumulated without branching; lengths that differ are a mismatch folded in the same way.
fn constant_time_eq(secret: &[u8], candidate: &[u8]) -> bool {
    let mut diff = u8::from(secret.len() != candidate.len());
    for (i, &c) in candidate.iter().enumerate() {
        let s = secret.get(i % secret.len().max(1)).copied().unwrap_or(0);
        diff |= s ^ c;
    }
    std::hint::black_box(diff) == 0
}

/// Lets a request through when no token is set or when it carries the token as a bearer token.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match presented {
        Some(p) if token.matches(p) => next.run(request).await,
        Some(_) => ApiError::Unauthorized("the bearer token is not the API token").into_response(),
        None => ApiError::Unauthorized("this API needs an Authorization: Bearer <token> header")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let t = ApiToken::new("s3cret-token").unwrap();
        assert!(t.matches("s3cret-token"));
        for wrong in ["", "s3cret-toke", "s3cret-tokenn", "S3cret-token", "x"] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        assert!(ApiToken::new("").is_err());
        assert!(ApiToken::new("has space").is_err());
        assert_eq!(format!("{t:?}"), "ApiToken(..)");
    }
}
