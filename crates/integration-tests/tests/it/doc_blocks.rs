//! The docs' runnable shell blocks (fences that read "```sh runnable") run against a fresh
//! `keyward demo`, as a newcomer would run them after `make run` (`scripts/doc-blocks.sh`, see
//! docs/testing.md). A block that fails, or a runnable block that silently disappears from the
//! README, docs/admin.md or docs/backup.md, fails this test.

use std::process::Command;

use crate::tools;

#[test]
fn readme_and_docs_runnable_blocks_run_against_the_demo() {
    tools::need("curl", "curl");
    tools::need("jq", "jq");
    let repo = keyward_integration_tests::repo();
    let mut files = vec![repo.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(repo.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let out = Command::new(repo.join("scripts/doc-blocks.sh"))
        .args(&files)
        .env("KEYWARD", keyward_integration_tests::keyward_bin_str())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "runnable doc blocks failed:\n{stdout}\n{stderr}"
    );
    // The README's tour, the admin session and the backup are runnable: at least this many
    // blocks ran in each (a fence whose "runnable" was dropped would otherwise pass unnoticed).
    for (page, least) in [
        ("README.md", 6),
        ("docs/admin.md", 1),
        ("docs/backup.md", 1),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.ends_with(" block(s) ran") && l.contains(&format!("{page}:")))
            .unwrap_or_default();
        let ran: usize = line
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or(0);
        assert!(ran >= least, "{page}: {line:?}\n{stdout}");
    }
}
