//! `aver request URL`: curl for attested endpoints. Nothing of the request
//! is sent unless the endpoint's evidence verifies; the answer body streams
//! to stdout as it arrives, the verification report goes to stderr only
//! with `-v`, and the exit code says what happened (see `EXIT_CODES`).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use aver_client::{AttestedClient, AttestedConnection, Endpoint};
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt as _, Full};

use aver_client::ClientError;

use super::{load_policy, CommandResult, Failure};

/// Shown by `aver request --help` and in the README.
const EXIT_CODES: &str = "\
Exit codes:
  0  the answer came back with HTTP status < 400 (its body is on stdout)
  1  not attested: the evidence does not satisfy the policy, the key is not
     the pinned one, or the attestation exchange failed; nothing was sent
  2  usage or input error (bad flags, unreadable policy or body file)
  3  the engine answered with HTTP status >= 400 (its body is still on stdout)
  4  the endpoint could not be reached (nothing was sent), or the connection
     broke during the exchange

stdout carries only the answer body, streamed as it arrives; the report
(-v) and errors go to stderr.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct Args {
    /// Full URL, e.g. https://10.0.0.7:8443/v1/chat/completions, or with
    /// --from-cluster just the path, e.g. /v1/chat/completions
    pub url: String,
    /// Attestation policy (YAML or JSON). Required unless --from-cluster,
    /// where it makes the client verify the endpoint itself instead of
    /// trusting the key pinned in the resource's status.
    #[arg(long, env = "AVER_POLICY", required_unless_present = "from_cluster")]
    pub policy: Option<PathBuf>,
    /// Send to an endpoint of this ConfidentialModel, found in its status.
    #[arg(long, value_name = "NAME")]
    pub from_cluster: Option<String>,
    #[command(flatten)]
    pub cluster: super::cluster::ClusterArgs,
    /// Request body: literal text, `@FILE`, or `@-` for stdin. Implies POST.
    #[arg(short = 'd', long = "data")]
    pub data: Option<String>,
    /// Extra header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// HTTP method [default: POST with --data, else GET].
    #[arg(short = 'X', long = "request")]
    pub method: Option<String>,
    /// Print the verification report and the HTTP status on stderr.
    #[arg(short = 'v', long = "report", visible_alias = "verbose")]
    pub report: bool,
    /// Accepted for compatibility: the report is off unless -v.
    #[arg(short, long, hide = true)]
    pub quiet: bool,
    /// Accepted for compatibility: an HTTP status >= 400 always exits 3.
    #[arg(long, hide = true)]
    pub fail: bool,
    /// Seconds to wait for the connection and TLS handshake.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
}

pub fn run(args: Args) -> CommandResult {
    let policy = args.policy.as_deref().map(load_policy).transpose()?;
    let runtime = super::runtime()?;
    let (url, pinned) = match &args.from_cluster {
        None => (args.url.clone(), None),
        Some(name) => {
            let (url, pin) = runtime.block_on(from_cluster(name, &args))?;
            (url, (policy.is_none()).then_some(pin))
        }
    };
    let endpoint = Endpoint::from_url(&url).map_err(anyhow::Error::from)?;
    let request = build_request(&args, &url)?;
    let timeout = Duration::from_secs(args.connect_timeout);
    let report = args.report && !args.quiet;
    runtime.block_on(async {
        // Attest (or check the pin) first; the request is built already but
        // not one byte of it goes out unless this succeeds.
        let mut connection = match (pinned, policy) {
            (Some(spki), _) => {
                // Not the report: a statement of whom this trusts, always shown.
                eprintln!("pinned: {spki} (verified by the controller, from cluster status; use --policy to verify yourself)");
                AttestedConnection::pinned(&endpoint, vec![spki], timeout)
                    .await
                    .map_err(request_failure)?
            }
            (None, Some(policy)) => {
                let client = AttestedClient::with_policy(policy).with_connect_timeout(timeout);
                client.attest(&endpoint).await.map_err(request_failure)?
            }
            (None, None) => return Err(anyhow::anyhow!("--policy is required").into()),
        };
        if report {
            if let Some(report) = connection.report() {
                eprint!("{}", report.to_text());
            }
        }
        let response = connection
            .send(request)
            .await
            .map_err(|e| Failure::Network(format!("the exchange failed after attestation: {e}")))?;
        let status = response.status();
        if report {
            eprintln!("HTTP {status}");
        }
        let mut body = response.into_body();
        let mut stdout = std::io::stdout().lock();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| Failure::Network(format!("the answer was cut off: {e}")))?;
            if let Some(chunk) = frame.data_ref() {
                stdout.write_all(chunk).context("cannot write to stdout")?;
                stdout.flush().context("cannot write to stdout")?;
            }
        }
        if status.as_u16() >= 400 {
            return Err(Failure::HttpStatus(status.as_u16()));
        }
        Ok(())
    })
}

/// The exit-code classes of `EXIT_CODES`: refusals (1) apart from
/// unreachable endpoints (4) and bad input (2). Nothing was sent in any case.
fn request_failure(error: ClientError) -> Failure {
    match error {
        ClientError::Verify(e) => Failure::Rejected(e),
        ClientError::Connect { .. } | ClientError::ConnectTimeout(_) => {
            Failure::Network(format!("not attested, nothing sent: {error}"))
        }
        ClientError::BadEndpoint(_) | ClientError::Request(_) => {
            Failure::Input(anyhow::Error::from(error))
        }
        other => Failure::Unattested(other),
    }
}

/// The URL of one published endpoint and its pinned key. A pin older than
/// the policy's maxEvidenceAge is refused: the controller has stopped
/// vouching for it.
async fn from_cluster(
    name: &str,
    args: &Args,
) -> anyhow::Result<(String, aver_verifier::Sha256Digest)> {
    let model = super::cluster::fetch(name, &args.cluster).await?;
    let endpoints = super::cluster::endpoints(&model)?;
    let max_age = model
        .spec
        .attestation
        .max_evidence_age()
        .context("the resource's attestation policy")?;
    let now = jiff::Timestamp::now();
    let fresh = endpoints.iter().find(|e| {
        now.duration_since(e.last_attested.0).as_secs()
            < i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX)
    });
    let Some(endpoint) = fresh else {
        bail!("every endpoint of {name} was last attested more than maxEvidenceAge ago; the controller may be down (use --policy to verify directly)");
    };
    if !args.url.starts_with('/') {
        bail!(
            "with --from-cluster, give the request path (e.g. /v1/chat/completions), not {:?}",
            args.url
        );
    }
    let host = if endpoint.address.contains(':') {
        format!("[{}]", endpoint.address)
    } else {
        endpoint.address.clone()
    };
    Ok((
        format!("https://{host}:{}{}", endpoint.port, args.url),
        endpoint.spki_sha256,
    ))
}

fn build_request(args: &Args, url: &str) -> anyhow::Result<Request<Full<Bytes>>> {
    let body = match args.data.as_deref() {
        None => Bytes::new(),
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            Bytes::from(buf)
        }
        Some(data) => match data.strip_prefix('@') {
            Some(path) => Bytes::from(
                std::fs::read(path).with_context(|| format!("cannot read request body {path}"))?,
            ),
            None => Bytes::from(data.to_owned()),
        },
    };
    let method = match &args.method {
        Some(m) => {
            Method::from_bytes(m.as_bytes()).with_context(|| format!("invalid method {m:?}"))?
        }
        None if args.data.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .with_context(|| format!("invalid URL {url:?}"))?;
    let headers = request.headers_mut();
    if args.data.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    for line in &args.headers {
        let Some((name, value)) = line.split_once(':') else {
            bail!("header {line:?} must look like 'Name: value'");
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("invalid header name in {line:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("invalid header value in {line:?}"))?;
        headers.insert(name, value);
    }
    Ok(request)
}
