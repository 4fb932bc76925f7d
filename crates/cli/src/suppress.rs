//! `edm suppress`: the suppression list shared by every campaign
//! (`$EDM_HOME/suppression.csv`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use edm_campaign::{SharedSuppression, SuppressedAddress};

use crate::progress;

#[derive(Subcommand, Debug)]
pub enum SuppressCommand {
    /// Add addresses (never sent to again by any campaign).
    Add {
        /// The addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
        /// Why (kept in the file).
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Add every address of a file: a CSV with an `email` column, or one address a line.
    Import {
        /// The file.
        file: PathBuf,
        /// Why (kept in the file).
        #[arg(long, default_value = "imported")]
        reason: String,
    },
    /// Print the list as CSV (email,reason,added_at,campaign).
    List,
    /// Remove addresses from the list.
    Remove {
        /// The addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
}

pub fn run(command: SuppressCommand) -> anyhow::Result<u8> {
    progress::init_logging(None, true);
    let list = SharedSuppression::open_default();
    let file = list.path().display().to_string();
    match command {
        SuppressCommand::Add { addresses, reason } => {
            let bad: Vec<String> = addresses
                .iter()
                .filter_map(|a| {
                    edm_campaign::validate_address(a)
                        .err()
                        .map(|e| format!("{a:?}: {e}"))
                })
                .collect();
            if !bad.is_empty() {
                bail!("not an address: {}", bad.join("; "));
            }
            let entries: Vec<_> = addresses
                .iter()
                .map(|a| SuppressedAddress::now(a, &reason, ""))
                .collect();
            let r = list.add(&entries)?;
            println!("{} added to {file} ({} already listed)", r.added, r.already);
        }
        SuppressCommand::Import {
            file: input,
            reason,
        } => {
            let (valid, invalid) = edm_campaign::read_import(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let entries: Vec<_> = valid
                .iter()
                .map(|a| SuppressedAddress::now(a, &reason, ""))
                .collect();
            let r = list.add(&entries)?;
            println!(
                "{} added to {file} from {} ({} already listed, {} invalid skipped)",
                r.added,
                input.display(),
                r.already,
                invalid.len()
            );
            for a in invalid.iter().take(10) {
                eprintln!("skipped, not an address: {a:?}");
            }
        }
        SuppressCommand::List => {
            let n = list.write_csv(std::io::stdout().lock())?;
            eprintln!("{n} addresses in {file}");
        }
        SuppressCommand::Remove { addresses } => {
            let n = list.remove(&addresses)?;
            println!("{n} removed from {file}");
            if n < addresses.len() as u64 {
                return Ok(1);
            }
        }
    }
    Ok(0)
}
