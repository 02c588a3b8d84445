//! `keyward bench` argument handling: every refusal names its field, the mix parser, the demo
//! line, and the percentile reporting on known inputs.

use std::time::Duration;

use keyward_bench::parse_stat;
use keyward_bench::{distribution, new_histogram, record, CpuUse, LatencySummary};
use keyward_bench::{DemoLine, Load, Mix, Op, Preset, RawSettings, SettingsError, Target};

fn base() -> RawSettings {
    RawSettings {
        url: Some("https://127.0.0.1:8443".into()),
        access_key_id: Some("AKIAIOSFODNN7EXAMPLEAB".into()),
        secret_access_key: Some("0123456789abcdefghijklmnopqrstuvwxyzABCDEFG".into()),
        key_ids: vec!["key-1".into()],
        ..RawSettings::default()
    }
}

fn field_of(r: Result<keyward_bench::Settings, SettingsError>) -> String {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(SettingsError::Invalid { field, .. }) | Err(SettingsError::Missing { field }) => {
            field.to_string()
        }
    }
}

#[test]
fn defaults_are_closed_loop_kms_sized_encrypt() {
    let s = base().validate().unwrap();
    assert_eq!(s.load, Load::Closed);
    assert_eq!(s.connections, 16);
    assert_eq!((s.plaintext_size, s.aad_size), Preset::Kms.sizes());
    assert_eq!(s.mix.pick(0), Op::Encrypt);
    assert_eq!(s.region, "us-east-1");
    assert_eq!(s.target.port, 8443);
    assert!(s.target.tls);
}

#[test]
fn every_refusal_names_its_field() {
    let cases: Vec<(RawSettings, &str)> = vec![
        (
            RawSettings {
                url: None,
                ..base()
            },
            "--url",
        ),
        (
            RawSettings {
                url: Some("ftp://x".into()),
                ..base()
            },
            "--url",
        ),
        (
            RawSettings {
                url: Some("https://h:0".into()),
                ..base()
            },
            "--url",
        ),
        (
            RawSettings {
                url: Some("https://h:99999".into()),
                ..base()
            },
            "--url",
        ),
        (
            RawSettings {
                url: Some("https://h/path".into()),
                ..base()
            },
            "--url",
        ),
        (
            RawSettings {
                uri_prefix: Some("keyward".into()),
                ..base()
            },
            "--uri-prefix",
        ),
        (
            RawSettings {
                region: Some("US_EAST".into()),
                ..base()
            },
            "--region",
        ),
        (
            RawSettings {
                access_key_id: None,
                ..base()
            },
            "--access-key-id",
        ),
        (
            RawSettings {
                access_key_id: Some("AK:ID".into()),
                ..base()
            },
            "--access-key-id",
        ),
        (
            RawSettings {
                secret_access_key: None,
                ..base()
            },
            "--secret-access-key",
        ),
        (
            RawSettings {
                key_ids: vec![],
                ..base()
            },
            "--key-id",
        ),
        (
            RawSettings {
                key_ids: vec!["..".into()],
                ..base()
            },
            "--key-id",
        ),
        (
            RawSettings {
                key_ids: vec!["a/b".into()],
                ..base()
            },
            "--key-id",
        ),
        (
            RawSettings {
                op: Some("sign".into()),
                ..base()
            },
            "--op",
        ),
        (
            RawSettings {
                op: Some("encrypt".into()),
                mix: Some("encrypt=1".into()),
                ..base()
            },
            "--op",
        ),
        (
            RawSettings {
                mix: Some("encrypt=x".into()),
                ..base()
            },
            "--mix",
        ),
        (
            RawSettings {
                plaintext_size: Some(1 << 20),
                ..base()
            },
            "--plaintext-size",
        ),
        (
            RawSettings {
                aad_size: Some(65_536),
                ..base()
            },
            "--aad-size",
        ),
        (
            RawSettings {
                connections: Some(0),
                ..base()
            },
            "--connections",
        ),
        (
            RawSettings {
                rate: Some(0.0),
                ..base()
            },
            "--rate",
        ),
        (
            RawSettings {
                rate: Some(f64::NAN),
                ..base()
            },
            "--rate",
        ),
        (
            RawSettings {
                duration: Some(Duration::ZERO),
                ..base()
            },
            "--duration",
        ),
        (
            RawSettings {
                requests: Some(0),
                ..base()
            },
            "--requests",
        ),
        (
            RawSettings {
                timeout: Some(Duration::ZERO),
                ..base()
            },
            "--timeout",
        ),
        (
            RawSettings {
                threads: Some(0),
                ..base()
            },
            "--threads",
        ),
        (
            RawSettings {
                server_pid: Some(0),
                ..base()
            },
            "--server-pid",
        ),
        (
            RawSettings {
                principal: Some(String::new()),
                ..base()
            },
            "--principal",
        ),
    ];
    for (raw, want) in cases {
        let dbg = format!("{raw:?}");
        let err = raw.validate();
        let msg = err
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(field_of(err), want, "case {dbg}");
        assert!(
            msg.starts_with(want),
            "message `{msg}` should start with {want}"
        );
    }
}

#[test]
fn health_alone_needs_no_key_id() {
    let s = RawSettings {
        key_ids: vec![],
        op: Some("health".into()),
        ..base()
    }
    .validate();
    assert!(s.is_ok());
}

#[test]
fn open_loop_and_max_preset() {
    let s = RawSettings {
        rate: Some(1800.0),
        preset: Some(Preset::Max),
        ..base()
    }
    .validate()
    .unwrap();
    assert_eq!(s.load, Load::Open { rate: 1800.0 });
    assert_eq!(s.connections, 32);
    assert_eq!((s.plaintext_size, s.aad_size), (4300, 8192));
}

#[test]
fn mix_parser_reduces_and_interleaves() {
    let m = Mix::parse("encrypt=70, decrypt=25,health=5").unwrap();
    assert_eq!(
        m.entries(),
        &[(Op::Encrypt, 14), (Op::Decrypt, 5), (Op::Health, 1)]
    );
    assert_eq!(m.describe(), "encrypt=14,decrypt=5,health=1");
    // One cycle of 20 requests holds exactly 14/5/1, and the mix repeats.
    let ops: Vec<Op> = (0..20).map(|n| m.pick(n)).collect();
    assert_eq!(ops.iter().filter(|o| **o == Op::Encrypt).count(), 14);
    assert_eq!(ops.iter().filter(|o| **o == Op::Decrypt).count(), 5);
    assert_eq!(ops.iter().filter(|o| **o == Op::Health).count(), 1);
    assert_eq!(m.pick(20), m.pick(0));
    // Interleaved, not 14 encrypts in a row.
    let longest_run = ops.chunk_by(|a, b| a == b).map(|c| c.len()).max().unwrap();
    assert!(longest_run <= 3, "ops {ops:?}");
    // Zero weights drop out.
    let m = Mix::parse("encrypt=1,metadata=0").unwrap();
    assert!(!m.contains(Op::Metadata));
}

#[test]
fn mix_parser_refusals() {
    for bad in [
        "",
        "encrypt",
        "encrypt=",
        "sign=3",
        "encrypt=1,encrypt=2",
        "encrypt=0",
        "encrypt=-1",
        "encrypt=2000000",
    ] {
        let e = Mix::parse(bad).unwrap_err();
        assert!(e.to_string().starts_with("--mix"), "`{bad}` gave {e}");
    }
}

#[test]
fn demo_line_is_found_among_human_lines() {
    let out = "starting...\n{\"url\":\"https://127.0.0.1:8443\",\"uri_prefix\":\"/keyward\",\"region\":\"eu-west-1\",\
        \"access_key_id\":\"ABCDEFGHIJKLMNOPQRST\",\"secret_access_key\":\"s\",\"ca_cert\":\"/tmp/ca.pem\",\
        \"key_ids\":[\"k1\",\"k2\"],\"admin_profile\":\"/tmp/p\",\"pid\":4242}\ncurl ...\n";
    let d = DemoLine::parse_output(out).unwrap();
    assert_eq!(d.pid, Some(4242));
    assert_eq!(d.key_ids, vec!["k1", "k2"]);
    let s = RawSettings {
        demo: Some(d),
        url: None,
        access_key_id: None,
        secret_access_key: None,
        key_ids: vec![],
        ..base()
    }
    .validate()
    .unwrap();
    assert_eq!(s.target.uri_prefix, "/keyward");
    assert_eq!(s.region, "eu-west-1");
    assert_eq!(s.server_pid, Some(4242));
    assert_eq!(s.key_ids, vec!["k1", "k2"]);
    let e = DemoLine::parse_output("no json here\n").unwrap_err();
    assert!(e.to_string().starts_with("--demo"));
    let e = DemoLine::parse_output("{\"url\": 5}\n").unwrap_err();
    assert!(e.to_string().starts_with("--demo"));
}

#[test]
fn target_parsing() {
    let t = Target::parse("http://[::1]:9000/", "/p/").unwrap();
    assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 9000, false));
    assert_eq!(t.authority, "[::1]:9000");
    assert_eq!(t.uri_prefix, "/p");
    let t = Target::parse("https://xks.example.com", "").unwrap();
    assert_eq!((t.port, t.authority.as_str()), (443, "xks.example.com"));
}

#[test]
fn percentiles_on_known_inputs() {
    let mut h = new_histogram();
    // 1..=1000 microseconds, one each.
    for i in 1..=1000u64 {
        record(&mut h, Duration::from_micros(i));
    }
    let s = LatencySummary::from_histogram(&h);
    assert_eq!(s.count, 1000);
    // Three significant digits: values are exact to within 0.1% (and to 1 us here).
    let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1.0;
    assert!(near(s.p50_us, 500.0), "{s:?}");
    assert!(near(s.p90_us, 900.0), "{s:?}");
    assert!(near(s.p99_us, 990.0), "{s:?}");
    assert!(near(s.p999_us, 999.0), "{s:?}");
    assert!(near(s.max_us, 1000.0), "{s:?}");
    assert!(near(s.min_us, 1.0), "{s:?}");
    assert!(near(s.mean_us, 500.5), "{s:?}");
    let d = distribution(&h);
    assert_eq!(d.first().unwrap()[0], 0.0);
    assert_eq!(d.last().unwrap()[0], 100.0);
    assert!(d.windows(2).all(|w| w[0][1] <= w[1][1]), "monotone: {d:?}");

    // A tail: 990 fast requests and 10 slow ones; p99 is still fast, p99.9 is slow.
    let mut h = new_histogram();
    for _ in 0..990 {
        record(&mut h, Duration::from_micros(100));
    }
    for _ in 0..10 {
        record(&mut h, Duration::from_millis(50));
    }
    let s = LatencySummary::from_histogram(&h);
    assert!(near(s.p99_us, 100.0), "{s:?}");
    assert!(near(s.p999_us, 50_000.0), "{s:?}");
    // Beyond the range: clamped, not lost.
    record(&mut h, Duration::from_secs(600));
    assert_eq!(LatencySummary::from_histogram(&h).count, 1001);
    // Empty histogram: zeros, no panic.
    assert_eq!(LatencySummary::from_histogram(&new_histogram()).count, 0);
}

#[test]
fn cpu_figures() {
    let c = CpuUse::new(
        Duration::from_millis(500),
        Duration::from_secs(1),
        10_000,
        2,
    );
    assert_eq!(c.us_per_request, 50.0);
    assert_eq!(c.cores, 0.5);
    assert_eq!(c.share_of_machine, 0.25);
    // A command name with spaces and parentheses; utime 150 + stime 50 ticks at 100 Hz = 2 s.
    let stat =
        "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 4 0 100 0";
    assert_eq!(parse_stat(stat, 100), Some(Duration::from_secs(2)));
    assert_eq!(parse_stat("garbage", 100), None);
    assert_eq!(parse_stat("1 (x) S 1", 100), None);
}
