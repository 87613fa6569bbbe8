//! The one logging setup of the aver binaries (`aver`, `aver-enclave`,
//! `aver-node`, `aver-controller`).
//!
//! Each binary used to configure `tracing` on its own, and they disagreed on
//! the variable that sets the filter, on colours and on the JSON layout. Here
//! they share one setup:
//!
//! - one variable: `AVER_LOG` holds the filter directives (`AVER_LOG=debug`,
//!   `AVER_LOG=info,aver_controller=debug`). `RUST_LOG` is still honoured
//!   when `AVER_LOG` is unset, and each binary passes its own default for
//!   when neither is set. A variable that does not parse is not ignored
//!   quietly: the default applies and one warning line on stderr names the
//!   variable.
//! - logs go to stderr, so that stdout carries only a command's result (a
//!   report, evidence, a policy, a proxied answer) and can be piped.
//! - text, with colours only when stderr is a terminal, or JSON, one object
//!   per line with the event's fields at the top level, for log collectors.
//!
//! [`quiet_tss_logging`] silences the TSS C libraries' own diagnostics in the
//! binaries that talk to a TPM.
#![warn(unreachable_pub)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The variable that holds the filter directives.
pub const FILTER_VAR: &str = "AVER_LOG";

/// The variable read when [`FILTER_VAR`] is unset.
pub const FALLBACK_FILTER_VAR: &str = "RUST_LOG";

/// Default filter of a service that does not talk to a TPM: `info` and
/// above, from every crate.
pub const DEFAULT_FILTER: &str = "info";

/// Default filter of the binaries that talk to a TPM: tss-esapi's own
/// chatter is off unless asked for, since every TPM failure is reported
/// through the binary's errors.
pub const TPM_DEFAULT_FILTER: &str = "info,tss_esapi=off";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global `tracing` subscriber: events go to stderr in
/// `format`, filtered by `AVER_LOG` if set, else by `RUST_LOG`, else by
/// `default_filter` (an `EnvFilter` directive string such as `"warn"`).
///
/// An empty variable counts as unset. A variable that is not a valid filter
/// (or not UTF-8) is replaced by `default_filter`, with one warning line on
/// stderr naming it.
///
/// # Panics
///
/// If a global subscriber is already installed: call it once, at the start
/// of `main`.
pub fn init(format: LogFormat, default_filter: &str) {
    let aver_log = std::env::var_os(FILTER_VAR);
    let rust_log = std::env::var_os(FALLBACK_FILTER_VAR);
    let choice = choose_filter(aver_log.as_deref(), rust_log.as_deref());
    let (filter, warning) = build_filter(choice, default_filter);
    if let Some(warning) = warning {
        // Prefixed like the binaries' own error lines ("aver-node: error: ...").
        match program_name() {
            Some(program) => eprintln!("{program}: {warning}"),
            None => eprintln!("{warning}"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The running executable's file name, as it was invoked.
fn program_name() -> Option<String> {
    let arg0 = std::env::args_os().next()?;
    let name = std::path::Path::new(&arg0).file_name()?;
    Some(name.to_string_lossy().into_owned())
}

/// The error and its causes on one line, each said once (library errors
/// often repeat their cause's text in their own message): what a binary
/// prints on stderr before it exits with a failure.
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(current) = cause {
        let text = current.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = current.source();
    }
    line
}

/// Keeps the TSS C libraries (under tss-esapi) quiet: they print their own
/// multi-line diagnostics to stderr for every failure (e.g. an unreachable
/// TPM simulator), which would drown the one-line error a binary reports.
/// They stay silent unless the operator asks for them by setting `TSS2_LOG`
/// (e.g. `TSS2_LOG=all+debug`), which this leaves as it is.
///
/// It sets `TSS2_LOG=all+NONE` in the process environment, which is only
/// sound while no other thread exists (another thread may be reading the
/// environment): call it first thing in `main`, before any runtime, thread
/// pool or TPM context is created.
pub fn quiet_tss_logging() {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
}

/// Which variable supplies the filter, and its value: `AVER_LOG` over
/// `RUST_LOG`, an empty (or blank) value counting as unset. `None` means
/// the caller's default applies.
fn choose_filter<'a>(
    aver_log: Option<&'a OsStr>,
    rust_log: Option<&'a OsStr>,
) -> Option<(&'static str, &'a OsStr)> {
    let set = |value: &&OsStr| value.to_str().is_none_or(|s| !s.trim().is_empty());
    aver_log
        .filter(set)
        .map(|value| (FILTER_VAR, value))
        .or_else(|| {
            rust_log
                .filter(set)
                .map(|value| (FALLBACK_FILTER_VAR, value))
        })
}

/// The filter for `choice`, or `default_filter` and the warning to print if
/// the chosen variable does not parse.
fn build_filter(
    choice: Option<(&'static str, &OsStr)>,
    default_filter: &str,
) -> (EnvFilter, Option<String>) {
    let Some((variable, value)) = choice else {
        return (EnvFilter::new(default_filter), None);
    };
    let reason = match value.to_str() {
        None => "it is not UTF-8".to_owned(),
        Some(directives) => match EnvFilter::builder().parse(directives) {
            Ok(filter) => return (filter, None),
            Err(error) => format!("{directives:?}: {error}"),
        },
    };
    let warning = format!(
        "warning: ignoring {variable}, not a valid log filter ({reason}); \
         using the default {default_filter:?}"
    );
    (EnvFilter::new(default_filter), Some(warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn an_error_line_says_each_cause_once() {
        let refused = Layer("connection refused", None);
        let tpm = Layer(
            "TPM unreachable: connection refused",
            Some(Box::new(refused)),
        );
        let top = Layer("cannot open the TPM", Some(Box::new(tpm)));
        assert_eq!(
            error_line(&top),
            "cannot open the TPM: TPM unreachable: connection refused"
        );
        assert_eq!(error_line(&Layer("alone", None)), "alone");
    }

    fn os(value: &str) -> Option<&OsStr> {
        Some(OsStr::new(value))
    }

    fn chosen<'a>(
        aver_log: Option<&'a OsStr>,
        rust_log: Option<&'a OsStr>,
    ) -> Option<(&'static str, &'a str)> {
        choose_filter(aver_log, rust_log)
            .map(|(variable, value)| (variable, value.to_str().unwrap()))
    }

    #[test]
    fn aver_log_wins_over_rust_log() {
        assert_eq!(
            chosen(os("debug"), os("trace")),
            Some(("AVER_LOG", "debug"))
        );
        assert_eq!(chosen(os("debug"), None), Some(("AVER_LOG", "debug")));
    }

    #[test]
    fn rust_log_applies_when_aver_log_is_unset_or_empty() {
        assert_eq!(chosen(None, os("trace")), Some(("RUST_LOG", "trace")));
        assert_eq!(chosen(os(""), os("trace")), Some(("RUST_LOG", "trace")));
        assert_eq!(chosen(os("  "), os("trace")), Some(("RUST_LOG", "trace")));
    }

    #[test]
    fn default_applies_when_neither_is_set() {
        assert_eq!(chosen(None, None), None);
        assert_eq!(chosen(os(""), os("")), None);
        let (filter, warning) = build_filter(None, "warn,aver=info");
        assert_eq!(
            filter.to_string(),
            EnvFilter::new("warn,aver=info").to_string()
        );
        assert_eq!(warning, None);
    }

    #[test]
    fn a_valid_variable_is_used() {
        let (filter, warning) =
            build_filter(choose_filter(os("info,aver_node=debug"), None), "warn");
        assert_eq!(
            filter.to_string(),
            EnvFilter::new("info,aver_node=debug").to_string()
        );
        assert_eq!(warning, None);
    }

    #[test]
    fn an_invalid_variable_falls_back_to_the_default_with_a_warning() {
        for (aver_log, rust_log, variable) in [
            (os("aver=lots"), os("debug"), "AVER_LOG"),
            (None, os("aver[{=debug"), "RUST_LOG"),
        ] {
            let (filter, warning) = build_filter(choose_filter(aver_log, rust_log), "warn");
            assert_eq!(filter.to_string(), EnvFilter::new("warn").to_string());
            let warning = warning.expect("a warning");
            assert!(warning.contains(variable), "{warning}");
            assert!(warning.contains("\"warn\""), "{warning}");
            assert!(!warning.contains('\n'), "{warning}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_variable_that_is_not_utf8_falls_back_with_a_warning() {
        use std::os::unix::ffi::OsStrExt as _;
        let value = OsStr::from_bytes(b"debug\xff");
        let (filter, warning) = build_filter(choose_filter(Some(value), os("trace")), "warn");
        assert_eq!(filter.to_string(), EnvFilter::new("warn").to_string());
        assert!(warning.expect("a warning").contains("AVER_LOG"));
    }
}
