//! The JSON error body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// An error answer in the shape OpenAI-compatible clients expect, so that
/// their error handling keeps working in front of aver:
/// `{"error": {"type": error_type, "code": code, "message": message}}`
/// (`code` only when given), one line of JSON and a newline.
pub fn json_error(
    status: StatusCode,
    error_type: &str,
    code: Option<&str>,
    message: &str,
) -> Response<Full<Bytes>> {
    let mut error = serde_json::Map::new();
    error.insert("type".into(), error_type.into());
    if let Some(code) = code {
        error.insert("code".into(), code.into());
    }
    error.insert("message".into(), message.into());
    let mut body = serde_json::json!({ "error": error }).to_string();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn body_json(response: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(bytes.ends_with(b"\n"));
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[tokio::test]
    async fn the_body_has_the_openai_error_shape() {
        let response = json_error(StatusCode::BAD_GATEWAY, "aver_x", Some("model"), "no");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_json(response).await,
            serde_json::json!({"error": {"type": "aver_x", "code": "model", "message": "no"}})
        );
        let response = json_error(StatusCode::NOT_FOUND, "aver_x", None, "a \"quoted\" word");
        assert_eq!(
            body_json(response).await,
            serde_json::json!({"error": {"type": "aver_x", "message": "a \"quoted\" word"}})
        );
    }
}
