//! What a node's boot chain and kernel measured, as the logs that explain
//! the quoted PCRs: the UEFI firmware event log ([`uefi`], PCRs 0–9) and
//! the kernel's IMA measurement list ([`ima`], PCR 10).
//!
//! Both logs are untrusted input: they arrive inside evidence from the
//! node. The parsers are bounded (sizes, counts), return a typed error for
//! every malformation and never panic; a log means something only once its
//! replay equals the PCR values a verified quote holds. No TPM, network or
//! policy code lives here, so the verifier and the node share it.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

pub mod ima;
pub mod uefi;
