//! `aver request URL`: curl for attested endpoints. Nothing of the request
//! is sent unless the endpoint's evidence verifies; the answer streams to
//! stdout as it arrives.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use aver_verifier::client::{AttestedClient, Endpoint};
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt as _, Full};

use super::{client_failure, load_policy, CommandResult};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Full URL, e.g. https://10.0.0.7:8443/v1/chat/completions
    pub url: String,
    /// Attestation policy (YAML or JSON).
    #[arg(long, env = "AVER_POLICY")]
    pub policy: PathBuf,
    /// Request body: literal text, `@FILE`, or `@-` for stdin. Implies POST.
    #[arg(short = 'd', long = "data")]
    pub data: Option<String>,
    /// Extra header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// HTTP method [default: POST with --data, else GET].
    #[arg(short = 'X', long = "request")]
    pub method: Option<String>,
    /// Do not print the verification report on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Exit non-zero (3) when the server answers with an HTTP error status.
    #[arg(long)]
    pub fail: bool,
    /// Seconds to wait for the connection and TLS handshake.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
}

pub fn run(args: Args) -> CommandResult {
    let policy = load_policy(&args.policy)?;
    let endpoint = Endpoint::from_url(&args.url).map_err(anyhow::Error::from)?;
    let request = build_request(&args)?;
    let client = AttestedClient::new(policy)
        .map_err(client_failure)?
        .with_connect_timeout(Duration::from_secs(args.connect_timeout));
    let runtime = super::runtime()?;
    runtime.block_on(async {
        // Attest first; the request is built already but not one byte of it
        // goes out unless this succeeds.
        let mut connection = client.attest(&endpoint).await.map_err(client_failure)?;
        if !args.quiet {
            if let Some(report) = connection.report() {
                eprint!("{}", report.to_text());
            }
        }
        let response = connection.send(request).await.map_err(client_failure)?;
        let status = response.status();
        if !args.quiet || !status.is_success() {
            eprintln!("HTTP {status}");
        }
        let mut body = response.into_body();
        let mut stdout = std::io::stdout().lock();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the answer was cut off")?;
            if let Some(chunk) = frame.data_ref() {
                stdout.write_all(chunk).context("cannot write to stdout")?;
                stdout.flush().context("cannot write to stdout")?;
            }
        }
        if args.fail && !status.is_success() {
            return Err(super::Failure::HttpStatus(status.as_u16()));
        }
        Ok(())
    })
}

fn build_request(args: &Args) -> anyhow::Result<Request<Full<Bytes>>> {
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
        .uri(&args.url)
        .body(Full::new(body))
        .with_context(|| format!("invalid URL {:?}", args.url))?;
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
