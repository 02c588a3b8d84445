//! `keyward audit verify FILE...`: the audit log checked offline (the chain, the signed
//! checkpoints, the keys), naming the first line removed, changed or reordered.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Verify audit log files, oldest first (rotated files and restarts continue one chain).
    Verify {
        /// The files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A checkpoint key (SEC1 hex, from the appliance's start-up log line "audit log
        /// checkpoints are signed by this boot's key ..."); repeat for several boots. Without
        /// it any key is accepted and listed: the chain then shows edits by someone without the
        /// key, not a log rewritten whole.
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Verify { files, keys, json } = args.command;
    match keyward_audit::verify(&files, &keys) {
        Ok(r) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "lines": r.lines, "segments": r.segments,
                        "checkpoints": r.checkpoints, "keys": r.keys,
                        "unsigned_tail": r.unsigned_tail, "first_seq": r.first_seq,
                    })
                );
            } else {
                println!(
                    "OK: {} line(s) in {} segment(s), {} signed checkpoint(s)",
                    r.lines, r.segments, r.checkpoints
                );
                if r.first_seq > 0 {
                    println!("  starts at seq {} (older files not given)", r.first_seq);
                }
                if keys.is_empty() {
                    for k in &r.keys {
                        println!("  key (not pinned: pass --key to require it) {k}");
                    }
                }
                if r.unsigned_tail > 0 {
                    println!(
                        "  warning: the last {} line(s) are covered by no checkpoint (lines cut \
                         off after them would not show)",
                        r.unsigned_tail
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": e.to_string() })
                );
            } else {
                eprintln!("keyward audit verify: {e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
