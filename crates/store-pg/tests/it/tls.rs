//! TLS and the password, for real: a server with a CA and certificate made by LocalPostgres
//! and a SCRAM password; the client verifies against the right CA, refuses a wrong one, reads
//! the password from a 0600 file and refuses a 0644 one.

use std::os::unix::fs::PermissionsExt;

use keyward_keystore::{KeyStore, KeystoreError};
use keyward_store_pg::local::LocalOptions;
use keyward_store_pg::{PgConfig, PgKeyStore};

use crate::common::*;

const PASSWORD: &str = "correct horse battery staple";

fn pw_file(dir: &std::path::Path, mode: u32) -> std::path::PathBuf {
    let p = dir.join(format!("pw-{mode:o}"));
    std::fs::write(&p, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn tls_ca_and_password_file() {
    let s = server_with(LocalOptions {
        tls: true,
        password: Some(PASSWORD.into()),
        ..LocalOptions::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let cfg = s.config();
    assert!(cfg.ca_file.is_some());

    // The right CA and the password from a private file.
    let good = cfg
        .clone()
        .with_password_file(&pw_file(tmp.path(), 0o600))
        .unwrap();
    let mut ks = PgKeyStore::connect(&good).unwrap();
    assert_eq!(ks.tip().unwrap(), Some(0));
    // The session really is TLS.
    let mut db = {
        let mut c: postgres::Config = s.url().parse().unwrap();
        c.password(PASSWORD);
        c.connect(postgres::NoTls).unwrap()
    };
    let tls_sessions: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = 'keyward'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(tls_sessions >= 1, "{tls_sessions}");

    // A group/other-readable password file is refused, naming the field.
    let e = cfg
        .clone()
        .with_password_file(&pw_file(tmp.path(), 0o644))
        .unwrap_err()
        .to_string();
    assert!(e.contains("password_file") && e.contains("644"), "{e}");
    assert!(!e.contains(PASSWORD));

    // No password: the server refuses.
    assert!(matches!(
        PgKeyStore::connect(&cfg),
        Err(KeystoreError::Unavailable { .. })
    ));

    // Another CA: the handshake fails, and the error says TLS.
    let other = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    };
    let wrong_ca = tmp.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, other).unwrap();
    let mut wrong = good.clone();
    wrong.ca_file = Some(wrong_ca);
    let e = PgKeyStore::connect(&wrong)
        .err()
        .expect("a wrong CA must be refused");
    let msg = e.to_string();
    assert!(matches!(e, KeystoreError::Unavailable { .. }), "{msg}");
    assert!(msg.contains("TLS"), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");

    // A CA file that is not PEM is a configuration error.
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = PgKeyStore::connect(&PgConfig::new(s.url()).with_ca_file(junk))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("ca_file"), "{e}");
}
