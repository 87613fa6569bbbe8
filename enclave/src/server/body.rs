//! The one body type every route answers with.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};

/// `type` of the enclave's JSON error bodies.
pub const ERROR_TYPE: &str = "aver_enclave";

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON error in the shape OpenAI-compatible clients expect
/// (`{"error": {"type": "aver_enclave", "message": …}}`), so their error
/// handling keeps working.
pub fn error(status: StatusCode, message: &str) -> Response<BoxBody> {
    aver_serve::json_error(status, ERROR_TYPE, None, message)
        .map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

/// [`error`] with `Retry-After`, for refusals that say "not now" (429 and
/// 503), so that well-behaved clients back off instead of retrying at once.
pub fn retry_later(status: StatusCode, message: &str, retry_after_secs: u64) -> Response<BoxBody> {
    let mut response = error(status, message);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        http::HeaderValue::from(retry_after_secs),
    );
    response
}
