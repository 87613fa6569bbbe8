//! Prints the ConfidentialModel CRD as YAML, or with `--write` writes it to
//! every committed location (run from the workspace root, as cargo does).
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use aver_crds::crd::{crd_yaml, CRD_PATHS};

fn main() -> ExitCode {
    let yaml = match crd_yaml() {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    match std::env::args().nth(1).as_deref() {
        None => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Some("--write") => {
            // The package lives one level below the workspace root.
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            for relative in CRD_PATHS {
                let path = root.join(relative);
                if let Some(dir) = path.parent() {
                    if let Err(e) = std::fs::create_dir_all(dir) {
                        eprintln!("crdgen: cannot create {}: {e}", dir.display());
                        return ExitCode::FAILURE;
                    }
                }
                if let Err(e) = std::fs::write(&path, &yaml) {
                    eprintln!("crdgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("crdgen: wrote {relative}");
            }
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("crdgen: unknown argument {other:?}; usage: crdgen [--write]");
            ExitCode::FAILURE
        }
    }
}
