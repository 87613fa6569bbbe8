//! `aver eventlog`: reading a node's firmware event log and IMA list.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aver_boot_log::ima::ImaLog;
use aver_boot_log::uefi::{EventLog, HashAlg, LogFormat};

use super::{read_input, CommandResult};

#[derive(clap::Subcommand, Debug)]
pub enum EventlogCommand {
    /// Print a firmware event log (binary_bios_measurements): every event
    /// with what it measured, then the PCR values it replays to per bank.
    #[command(long_about = SHOW_ABOUT)]
    Show(ShowArgs),
    /// Print an IMA measurement list (binary_runtime_measurements): every
    /// entry, then the PCR values it replays to (sha256 bank).
    Ima(ImaArgs),
}

const SHOW_ABOUT: &str = "\
Print a firmware event log (/sys/kernel/security/tpm0/binary_bios_measurements \
on the node): every event as its index, PCR and type, what its data says, and \
its sha256 digest; then the PCR values the log replays to, sha256 bank first, \
in the layout of tpm2_eventlog's `pcrs:` section so the two can be compared. \
Compare the replayed values with `tpm2_pcrread` on the node: only a log that \
replays to the quoted PCRs means anything.";

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The binary firmware event log.
    pub file: PathBuf,
    /// Also print this IMA measurement list (binary_runtime_measurements)
    /// and its PCR 10 replay.
    #[arg(long, value_name = "FILE")]
    pub ima: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ImaArgs {
    /// The binary IMA measurement list.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: EventlogCommand) -> CommandResult {
    match cmd {
        EventlogCommand::Show(args) => show(args),
        EventlogCommand::Ima(args) => ima(args),
    }
}

/// Reads and parses a firmware event log, naming the file in any error.
pub fn load_event_log(path: &Path) -> anyhow::Result<EventLog> {
    let bytes = read_input(path, "event log")?;
    EventLog::parse(&bytes)
        .with_context(|| format!("{} is not a valid UEFI event log", path.display()))
}

fn load_ima(path: &Path) -> anyhow::Result<ImaLog> {
    let bytes = read_input(path, "IMA list")?;
    ImaLog::parse(&bytes)
        .with_context(|| format!("{} is not a valid IMA measurement list", path.display()))
}

/// The log's banks, sha256 first, then the others in log order.
fn banks(log: &EventLog) -> Vec<HashAlg> {
    let mut banks: Vec<HashAlg> = log
        .banks()
        .iter()
        .copied()
        .filter(|b| *b == HashAlg::Sha256)
        .collect();
    banks.extend(
        log.banks()
            .iter()
            .copied()
            .filter(|b| *b != HashAlg::Sha256),
    );
    banks
}

fn show(args: ShowArgs) -> CommandResult {
    let log = load_event_log(&args.file)?;
    let ima = args.ima.as_deref().map(load_ima).transpose()?;
    let banks = banks(&log);
    let mut replays = Vec::new();
    for bank in &banks {
        let replay = log
            .replay(*bank)
            .with_context(|| format!("{}: cannot replay the {bank} bank", args.file.display()))?;
        replays.push(replay);
    }
    if args.json {
        let events: Vec<serde_json::Value> = log
            .events()
            .iter()
            .map(|e| {
                let digests: serde_json::Map<String, serde_json::Value> = e
                    .digests()
                    .iter()
                    .map(|(alg, d)| (alg.name().to_owned(), hex::encode(d).into()))
                    .collect();
                serde_json::json!({
                    "index": e.index,
                    "pcr": e.pcr,
                    "type": e.event_type.to_string(),
                    "description": e.describe(),
                    "digests": digests,
                })
            })
            .collect();
        let pcrs: serde_json::Map<String, serde_json::Value> = replays
            .iter()
            .map(|bank| {
                let values: serde_json::Map<String, serde_json::Value> = bank
                    .iter()
                    .map(|(pcr, v)| (pcr.to_string(), hex::encode(v).into()))
                    .collect();
                (bank.alg().name().to_owned(), values.into())
            })
            .collect();
        let mut doc = serde_json::json!({
            "format": match log.format() {
                LogFormat::CryptoAgile => "crypto-agile",
                LogFormat::Sha1Legacy => "sha1-legacy",
            },
            "banks": banks.iter().map(|b| b.name()).collect::<Vec<_>>(),
            "events": events,
            "pcrs": pcrs,
        });
        if let (Some(ima), Some(obj)) = (&ima, doc.as_object_mut()) {
            obj.insert("ima".into(), ima_json(ima));
        }
        println!("{doc:#}");
        return Ok(());
    }

    let mut out = String::new();
    let shown = banks.first().copied().unwrap_or(HashAlg::Sha256);
    for e in log.events() {
        let _ = writeln!(out, "{:>4}  PCR {:<2}  {}", e.index, e.pcr, e.describe());
        if let Some(d) = e.digest(shown) {
            let _ = writeln!(out, "                {shown}:{}", hex::encode(d));
        }
    }
    out.push_str("pcrs:\n");
    for bank in &replays {
        let _ = writeln!(out, "  {}:", bank.alg());
        for (pcr, value) in bank.iter() {
            let _ = writeln!(out, "    {pcr:<3}: 0x{}", hex::encode(value));
        }
    }
    if let Some(ima) = &ima {
        out.push('\n');
        ima_text(ima, &mut out);
    }
    print!("{out}");
    Ok(())
}

fn ima(args: ImaArgs) -> CommandResult {
    let ima = load_ima(&args.file)?;
    if args.json {
        println!("{:#}", ima_json(&ima));
    } else {
        let mut out = String::new();
        ima_text(&ima, &mut out);
        print!("{out}");
    }
    Ok(())
}

fn ima_path(e: &aver_boot_log::ima::ImaEntry) -> String {
    match e.path() {
        Some(p) => p.to_owned(),
        None => e.path_bytes().escape_ascii().to_string(),
    }
}

fn ima_digest(e: &aver_boot_log::ima::ImaEntry) -> String {
    match e.file_digest() {
        Some((alg, d)) => format!("{alg}:{}", hex::encode(d)),
        None => "violation".to_owned(),
    }
}

/// The replayed sha256 value of each PCR the list extends.
fn ima_replays(ima: &ImaLog) -> Vec<(u32, Option<[u8; 32]>)> {
    ima.pcrs()
        .into_iter()
        .map(|pcr| {
            let value = u8::try_from(pcr)
                .ok()
                .filter(|p| usize::from(*p) < aver_boot_log::uefi::PCR_COUNT)
                .map(|p| ima.replay_sha256(p));
            (pcr, value)
        })
        .collect()
}

fn ima_text(ima: &ImaLog, out: &mut String) {
    let _ = writeln!(out, "IMA measurement list: {} entries", ima.len());
    for (i, e) in ima.entries().iter().enumerate() {
        let pcr = if e.pcr() == u32::from(aver_boot_log::ima::IMA_PCR) {
            String::new()
        } else {
            format!("  (PCR {})", e.pcr())
        };
        let _ = writeln!(
            out,
            "{i:>6}  {:<7}  {}  {}{pcr}",
            e.template_name(),
            ima_digest(e),
            ima_path(e)
        );
    }
    out.push_str("pcrs:\n  sha256:\n");
    for (pcr, value) in ima_replays(ima) {
        match value {
            Some(v) => {
                let _ = writeln!(out, "    {pcr:<3}: 0x{}", hex::encode(v));
            }
            None => {
                let _ = writeln!(out, "    {pcr:<3}: (not a TPM PCR)");
            }
        }
    }
}

fn ima_json(ima: &ImaLog) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = ima
        .entries()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            serde_json::json!({
                "index": i,
                "pcr": e.pcr(),
                "template": e.template_name(),
                "digest": e.file_digest().map(|(alg, d)| format!("{alg}:{}", hex::encode(d))),
                "path": ima_path(e),
                "violation": e.is_violation(),
            })
        })
        .collect();
    let pcrs: serde_json::Map<String, serde_json::Value> = ima_replays(ima)
        .into_iter()
        .map(|(pcr, v)| (pcr.to_string(), v.map(hex::encode).into()))
        .collect();
    serde_json::json!({
        "entries": entries,
        "pcrs": { "sha256": pcrs },
    })
}
