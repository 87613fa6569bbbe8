//! A scripted Kubernetes API for unit tests, on kube's `tower-test` mock
//! service: each expected request (method, path, optional query and body
//! checks) gets a canned reply, in order; an unexpected or extra request
//! fails the test.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::Value;
use tokio::task::JoinHandle;

type BodyCheck = Box<dyn FnOnce(&Value) + Send>;

/// One expected request and the answer to it.
pub(crate) struct Reply {
    method: Method,
    path: String,
    query: Vec<String>,
    status: u16,
    body: Value,
    check: Option<BodyCheck>,
}

impl Reply {
    pub(crate) fn json(method: Method, path: &str, status: u16, body: Value) -> Self {
        Self {
            method,
            path: path.to_owned(),
            query: Vec::new(),
            status,
            body,
            check: None,
        }
    }

    /// A `Status` failure reply (404, 409, ...).
    pub(crate) fn status(method: Method, path: &str, code: u16) -> Self {
        let reason = match code {
            404 => "NotFound",
            409 => "Conflict",
            _ => "InternalError",
        };
        Self::json(
            method,
            path,
            code,
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Status",
                "status": "Failure",
                "message": format!("mock {code}"),
                "reason": reason,
                "code": code,
            }),
        )
    }

    pub(crate) fn not_found(method: Method, path: &str) -> Self {
        Self::status(method, path, 404)
    }

    /// Requires the query string to contain `part` (e.g. "fieldManager=aver-controller").
    pub(crate) fn expect_query(mut self, part: &str) -> Self {
        self.query.push(part.to_owned());
        self
    }

    /// Runs `check` on the request body (JSON).
    pub(crate) fn expect_body(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }
}

/// The mock API server task.
pub(crate) struct ApiMock {
    client: Client,
    task: JoinHandle<()>,
}

impl ApiMock {
    pub(crate) fn start(replies: Vec<Reply>) -> Self {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let task = tokio::spawn(async move {
            for reply in replies {
                let (request, respond) = handle.next_request().await.unwrap_or_else(|| {
                    panic!(
                        "expected {} {}, but no request came",
                        reply.method, reply.path
                    )
                });
                let query = request.uri().query().unwrap_or_default().to_owned();
                assert_eq!(
                    (request.method(), request.uri().path()),
                    (&reply.method, reply.path.as_str()),
                    "unexpected request (query {query:?})"
                );
                for part in &reply.query {
                    assert!(
                        query.contains(part.as_str()),
                        "query {query:?} lacks {part:?}"
                    );
                }
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                if let Some(check) = reply.check {
                    let body: Value = serde_json::from_slice(&bytes).expect("request body is JSON");
                    check(&body);
                }
                let response = Response::builder()
                    .status(reply.status)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        serde_json::to_vec(&reply.body).expect("reply JSON"),
                    ))
                    .expect("response");
                respond.send_response(response);
            }
            // Nothing else may be asked.
            if let Ok(Some((request, _))) =
                tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await
            {
                panic!(
                    "unexpected extra request {} {}",
                    request.method(),
                    request.uri()
                );
            }
        });
        Self { client, task }
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Waits for the script to complete, re-raising its assertion failures.
    pub(crate) async fn finish(self) {
        drop(self.client);
        match self.task.await {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("mock API task failed: {e}"),
            Ok(()) => {}
        }
    }
}
