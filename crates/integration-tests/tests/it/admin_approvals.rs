//! Roles and M-of-N approval on the admin API against a real `keyward serve` with real operator
//! certificates (issued by `keyward admin cert issue --role`): a viewer is refused a write, an
//! operator `kms-config`, security may; `keys schedule-destroy` without an approval is refused
//! and files a request; self-approval and an approver without the action's role are refused; a
//! second security operator approves, the requester's re-run executes once and a replay is
//! refused; an approval for one key does not authorize another, nor another requester; a denied
//! one is refused; an expired one is refused; on two members of one PostgreSQL store, a request
//! filed on A is approved on B and used on A. Every step is in the audit log.

use crate::serve_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serve_common::*;

pub(crate) fn issue(setup: &ServeSetup, name: &str, roles: &str, admin_addr: &str) -> PathBuf {
    let d = setup.dir.path();
    let ca_key = d.join("ca-key.pem");
    keyward_admin::write_file(&ca_key, setup.ca_obj.key_pem().as_bytes(), true).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["admin", "cert", "issue", "--ca-cert"])
        .arg(&setup.ca)
        .arg("--ca-key")
        .arg(&ca_key)
        .args(["--name", name, "--role", roles, "--days", "2", "--out"])
        .arg(d.join(format!("{name}.pem")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile(setup, name, admin_addr)
}

/// A profile for `name`'s certificate against the admin API at `admin_addr`.
fn profile(setup: &ServeSetup, name: &str, admin_addr: &str) -> PathBuf {
    let prof = setup.dir.path().join(format!(
        "{name}-{}.toml",
        admin_addr.replace([':', '.'], "_")
    ));
    setup.write_profile(
        &prof,
        admin_addr,
        &format!("{name}.pem"),
        &format!("{name}-key.pem"),
    );
    prof
}

/// Refused (exit 1, one line on stderr, nothing on stdout): the line.
pub(crate) fn refused(prof: &Path, args: &[&str]) -> String {
    let out = admin(prof, args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} was not refused: {err}"
    );
    assert!(out.stdout.is_empty(), "{args:?} printed something");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

/// The approval id in an `approval required: request <id>, expires ...` refusal.
pub(crate) fn filed(err: &str) -> String {
    let rest = err
        .split("approval required: request ")
        .nth(1)
        .unwrap_or_else(|| panic!("no approval filed: {err}"));
    let id: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    assert_eq!(id.len(), 32, "{err}");
    assert!(rest.contains("expires "), "{err}");
    id
}

/// Turn dual control back on (serve_common turns it off for the single-operator tests), with
/// `extra` lines in `[admin]`.
pub(crate) fn dual_control(setup: &ServeSetup, extra: &str) {
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    let kept: Vec<&str> = cfg
        .lines()
        .filter(|l| !l.starts_with("approvals_required") && !l.starts_with("approval_ttl"))
        .collect();
    let cfg = kept
        .join("\n")
        .replace("\n[log]", &format!("\n{extra}\n[log]"));
    std::fs::write(&setup.config, cfg).unwrap();
}

fn stop(mut p: Proc) {
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn roles_and_two_person_approval() {
    let setup = ServeSetup::new();
    dual_control(&setup, "");
    let (p, _xks) = setup.start();
    let addr = setup.admin_addr();
    let vera = issue(&setup, "vera", "viewer", &addr);
    let olga = issue(&setup, "olga", "operator", &addr);
    let sam = issue(&setup, "sam", "security", &addr);
    let tom = issue(&setup, "tom", "security,viewer", &addr);

    // Viewer: reads, no write. Operator: key management, no secrets. Security: secrets.
    let err = refused(&vera, &["keys", "create", "k9"]);
    assert!(
        err.contains("forbidden") && err.contains("needs operator"),
        "{err}"
    );
    create_open_key(&olga, "k1");
    create_open_key(&olga, "k2");
    assert!(admin_ok(&vera, &["keys", "list"]).contains("k1"));
    let err = refused(&olga, &["kms-config", "main"]);
    assert!(
        err.contains("forbidden") && err.contains("role is operator") && err.contains("security"),
        "{err}"
    );
    let err = refused(&olga, &["creds", "add"]);
    assert!(err.contains("forbidden"), "{err}");
    assert!(admin_ok(&sam, &["creds", "add"]).contains("secret access key"));

    // Security, without an approval: refused, and a request is filed.
    let destroy_k1 = ["keys", "schedule-destroy", "k1", "--days", "7"];
    let id = filed(&refused(&sam, &destroy_k1));
    let list = admin_ok(&vera, &["approvals", "list"]);
    assert!(
        list.contains(&id) && list.contains("pending") && list.contains("keys_schedule_destroy"),
        "{list}"
    );
    assert!(admin_ok(&vera, &["keys", "list"]).contains("enabled"));

    // The requester cannot approve their own request; an operator lacks the role.
    let err = refused(&sam, &["approvals", "approve", &id]);
    assert!(err.contains("cannot approve their own request"), "{err}");
    let err = refused(&olga, &["approvals", "approve", &id]);
    assert!(err.contains("needs the security role"), "{err}");
    // Not approved yet: the re-run is refused.
    let with = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.push("--approval".into());
        v.push(id.clone());
        v
    };
    let run = |prof: &Path, args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        admin(prof, &a)
    };
    let out = run(&sam, with(&destroy_k1));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not approved yet"));

    // A second security operator approves.
    let ok = admin_ok(&tom, &["approvals", "approve", &id]);
    assert!(ok.contains("approved request"), "{ok}");
    let err = refused(&tom, &["approvals", "approve", &id]);
    assert!(err.contains("not pending"), "{err}");

    // Bound to the exact request and its requester.
    let out = run(
        &sam,
        with(&["keys", "schedule-destroy", "k2", "--days", "7"]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("approved another request"), "{err}");
    let out = run(
        &sam,
        with(&["keys", "schedule-destroy", "k1", "--days", "8"]),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "another --days is another request"
    );
    let out = run(&tom, with(&destroy_k1));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only its requester"));
    let keys = admin_ok(&vera, &["keys", "list"]);
    assert!(!keys.contains("destroy"), "nothing scheduled yet: {keys}");

    // The requester's re-run executes, once.
    let out = run(&sam, with(&destroy_k1));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("scheduled for destruction"));
    let keys = admin_ok(&vera, &["keys", "list"]);
    let k1 = keys.lines().find(|l| l.starts_with("k1 ")).unwrap();
    let k2 = keys.lines().find(|l| l.starts_with("k2 ")).unwrap();
    assert!(k1.contains("destroy") && k2.contains("enabled"), "{keys}");
    let out = run(&sam, with(&destroy_k1));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("used already"));
    assert!(admin_ok(&vera, &["approvals", "list"]).contains("used"));

    // kms-config: filed, denied by the other security operator, then refused.
    let id2 = filed(&refused(&sam, &["kms-config", "main"]));
    admin_ok(&tom, &["approvals", "deny", &id2]);
    let err = refused(&sam, &["kms-config", "main", "--approval", &id2]);
    assert!(err.contains("denied") && !err.contains(SECRET_1), "{err}");
    // ... and with an approval, the secret.
    let id3 = filed(&refused(&sam, &["kms-config", "main"]));
    admin_ok(&tom, &["approvals", "approve", &id3]);
    let kms = admin_ok(&sam, &["kms-config", "main", "--approval", &id3]);
    assert!(kms.contains("RawSecretAccessKey"), "{kms}");
    // A request that needs no approval does not take one.
    let err = refused(&olga, &["keys", "disable", "k2", "--approval", &id3]);
    assert!(err.contains("needs no approval"), "{err}");
    stop(p);

    // The audit log names every step.
    let audit = std::fs::read_to_string(setup.dir.path().join("audit.jsonl")).unwrap();
    let line = |who: &str, what: &str, id: &str| {
        audit
            .lines()
            .find(|l| l.contains(who) && l.contains(what) && l.contains(id))
            .unwrap_or_else(|| panic!("no audit line for {who} {what} {id}:\n{audit}"))
            .to_string()
    };
    assert!(line("CN=sam", "approval_filed", &id).contains("keys_schedule_destroy"));
    assert!(line("CN=sam", "approvals_approve", &id).contains("cannot approve"));
    assert!(line("CN=olga", "approvals_approve", &id).contains("security role"));
    line("CN=tom", "approvals_approve", &id);
    line("CN=tom", "approvals_deny", &id2);
    assert!(line("CN=sam", "approval_used", &id).contains("CN=tom"));
    line("CN=sam", "keys_schedule_destroy", "k1");
    assert!(audit.lines().all(|l| !l.contains(SECRET_1)));

    // The approvals survive a restart (they are records in the sealed store); an expired
    // approval is refused.
    dual_control(&setup, "approvals_required = 2\napproval_ttl = \"2s\"");
    let (p, _xks) = setup.start();
    let addr = setup.admin_addr();
    let sam = profile(&setup, "sam", &addr);
    let tom = profile(&setup, "tom", &addr);
    let list = admin_ok(&tom, &["approvals", "list"]);
    assert!(list.contains(&id) && list.contains(&id2), "{list}");
    let id4 = filed(&refused(&sam, &["stores", "remove", "main", "--force"]));
    admin_ok(&tom, &["approvals", "approve", &id4]);
    std::thread::sleep(Duration::from_secs(3));
    let err = refused(
        &sam,
        &["stores", "remove", "main", "--force", "--approval", &id4],
    );
    assert!(err.contains("expired"), "{err}");
    assert!(admin_ok(&tom, &["approvals", "list"]).contains("expired"));
    assert!(admin_ok(&tom, &["stores"]).contains("main"));
    stop(p);
    let audit = std::fs::read_to_string(setup.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("approval_expired") && l.contains(&id4)),
        "{audit}"
    );
}

/// A PostgreSQL server in a temporary directory (stopped before the directory goes).
struct Pg {
    pg: keyward_store_pg::local::LocalPostgres,
    _dir: tempfile::TempDir,
}

#[test]
fn a_request_filed_on_one_member_is_approved_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let pg = keyward_store_pg::local::LocalPostgres::start(dir.path(), None)
        .unwrap_or_else(|e| panic!("a local PostgreSQL server (apt-get install postgresql): {e}"));
    let db = Pg { pg, _dir: dir };
    let setup = ServeSetup::new();
    dual_control(&setup, "");
    // Two members on one database: the same configuration but for the local state directory.
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    let start = cfg.find("[storage]").unwrap();
    let end = cfg[start..].find("\n[master_key]").unwrap() + start;
    let member = |state: &str| {
        format!(
            "{}[storage]\nbackend = \"postgres\"\nurl = \"{}\"\ndir = \"{state}\"\n{}",
            &cfg[..start],
            db.pg.url(),
            &cfg[end..]
        )
    };
    std::fs::write(&setup.config, member("state-a")).unwrap();
    let config_b = setup.dir.path().join("member-b.toml");
    std::fs::write(&config_b, member("state-b")).unwrap();

    let (pa, _xks) = setup.start();
    let addr_a = setup.admin_addr();
    let mut pb = Proc::spawn(
        &["serve", "--config", config_b.to_str().unwrap()],
        setup.dir.path(),
    );
    let line = pb.wait_stderr("admin API on ", Duration::from_secs(60));
    let addr_b = addr_after(&line, "admin API on ");
    let olga_a = issue(&setup, "olga", "operator", &addr_a);
    let sam_a = issue(&setup, "sam", "security", &addr_a);
    let tom_b = issue(&setup, "tom", "security", &addr_b);
    let sam_b = profile(&setup, "sam", &addr_b);

    create_open_key(&olga_a, "k1");
    let destroy = ["keys", "schedule-destroy", "k1", "--days", "7"];
    let id = filed(&refused(&sam_a, &destroy));
    // Member B sees the request A filed, and approves it.
    assert!(admin_ok(&tom_b, &["approvals", "list"]).contains(&id));
    assert!(admin_ok(&tom_b, &["approvals", "approve", &id]).contains("approved request"));
    // Member A executes it once; member B refuses the replay (the approval is used on both).
    let mut args: Vec<&str> = destroy.to_vec();
    args.extend(["--approval", &id]);
    admin_ok(&sam_a, &args);
    let err = refused(&sam_b, &args);
    assert!(err.contains("used already"), "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let keys = admin_ok(&tom_b, &["keys", "list"]);
        if keys
            .lines()
            .any(|l| l.starts_with("k1 ") && l.contains("destroy"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "member B: {keys}");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(pb);
    stop(pa);
}
