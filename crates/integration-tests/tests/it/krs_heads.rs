//! Store heads anchored at the KRS (issue 12 §2), the KRS side, against the real
//! `keyward krs serve` (SoftHSMv2) and the library's boot agent with simulated SNP evidence:
//! the per-boot key registered at release, `HeadUpdate` as a compare-and-set, `HeadQuery`, the
//! head carried in the next release receipt (also after a KRS restart), and the refusals: a key
//! no release registered, a signature by another key, a head that does not extend the one held,
//! another store, and a lost race between two boots of one deployment (a fleet).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use keyward_agent::KrsAnchor;
use keyward_agent::{parse_pins, Agent, Client, Released};
use keyward_attest::SimulatedSnpAttester;
use keyward_keystore::{AnchorError, HeadAnchor, StoreHead};
use keyward_krp::messages::{Request, Response};
use keyward_krp::BootKey;
use keyward_krp::DenyCode;
use keyward_verify::testsign::test_root_policy_toml;

const MEAS: [u8; 48] = [0x11; 48];

fn honest() -> SimulatedSnpAttester {
    common::honest_snp(MEAS)
}

fn release(f: &common::KrsFixture, addr: &str) -> Released {
    Agent {
        cfg: f.agent_config(addr),
        attesters: vec![Box::new(honest())],
        product_release: "keyward-test".into(),
    }
    .release()
    .unwrap()
}

fn anchor(f: &common::KrsFixture, addr: &str, r: &Released, key: Arc<BootKey>) -> KrsAnchor {
    let pins = parse_pins(&f.agent_config(addr)).unwrap();
    KrsAnchor::new(
        &[addr],
        pins.tls,
        r.receipt_spki.clone(),
        key,
        Duration::from_secs(5),
    )
}

fn head(store: u8, seq: u64) -> StoreHead {
    StoreHead {
        store_id: vec![store; 16],
        seq,
        chain_mac: vec![seq as u8 ^ store; 32],
        mk_version: 1,
    }
}

fn refused(r: Result<(), AnchorError>, code: DenyCode) {
    match r {
        Err(AnchorError::Refused(why)) => {
            assert!(why.contains(&code.number().to_string()), "{why}")
        }
        other => panic!("expected a refusal with {}, got {other:?}", code.name()),
    }
}

#[test]
fn heads_are_compare_and_set_by_registered_boot_keys_and_survive_restarts() {
    let Some(f) = common::KrsFixture::new("krs-heads", "") else {
        return;
    };
    let text = common::policy_text_full(2, &[hex::encode(MEAS)], &test_root_policy_toml());
    f.sign_policy_text(2, &text, &f.policy_file);
    let krs = f.serve();
    let addr = krs.addr.clone();

    // First boot of the deployment: no head yet; the boot key is registered.
    let r1 = release(&f, &addr);
    assert_eq!(r1.receipt.head, None);
    let k1 = r1
        .boot_key
        .clone()
        .expect("the KRS registered the boot key");
    assert_eq!(r1.receipt.boot_key_id, k1.id().to_vec());
    let a1 = anchor(&f, &addr, &r1, k1.clone());
    assert_eq!(a1.current().unwrap(), None);

    // CAS: prev must be what the KRS holds (None first), an identical retry is accepted.
    refused(
        a1.advance(Some(&head(1, 1)), &head(1, 2)),
        DenyCode::HeadRefused,
    );
    a1.advance(None, &head(1, 1)).unwrap();
    a1.advance(None, &head(1, 1)).unwrap();
    assert_eq!(a1.current().unwrap(), Some(head(1, 1)));
    // Not extending the held head (a stale prev, i.e. an older store), another store, a rewind.
    refused(a1.advance(None, &head(1, 2)), DenyCode::HeadRefused);
    refused(
        a1.advance(Some(&head(1, 1)), &head(2, 2)),
        DenyCode::HeadRefused,
    );
    refused(
        a1.advance(Some(&head(1, 1)), &head(1, 0)),
        DenyCode::HeadRefused,
    );
    a1.advance(Some(&head(1, 1)), &head(1, 2)).unwrap();
    let log = f.log_entries();
    let last = log.last().unwrap();
    assert_eq!(last["decision"], "head", "{last}");
    assert!(last["detail"].as_str().unwrap().contains("seq 2"), "{last}");

    // A key no release registered: refused, and nothing moves.
    let stranger = anchor(&f, &addr, &r1, Arc::new(BootKey::generate()));
    refused(
        stranger.advance(Some(&head(1, 2)), &head(1, 3)),
        DenyCode::HeadKeyUnknown,
    );
    refused(stranger.current().map(|_| ()), DenyCode::HeadKeyUnknown);
    // The registered key's id with another key's signature.
    let forger = BootKey::generate();
    let mut u = forger.head_update(Some(&head(1, 2)), &head(1, 3)).unwrap();
    u.boot_key_id = k1.id().to_vec();
    let pins = parse_pins(&f.agent_config(&addr)).unwrap();
    let mut c = Client::connect(&addr, pins.tls, Duration::from_secs(5)).unwrap();
    match c.call(&Request::HeadUpdate(u)).unwrap() {
        Response::Deny(d) => assert_eq!(d.code, DenyCode::HeadSignature.number()),
        other => panic!("a forged head update was answered: {other:?}"),
    }
    assert_eq!(a1.current().unwrap(), Some(head(1, 2)));

    // Reboot: the new release receipt carries the head (the floor the store must reach).
    let r2 = release(&f, &addr);
    assert_eq!(r2.receipt.head, Some(head(1, 2)));
    let a2 = anchor(&f, &addr, &r2, r2.boot_key.clone().unwrap());
    // Two boots of one deployment (a fleet sharing a store): both keys may advance the one
    // head, by compare-and-set; the loser of a race is refused, never forks it.
    a2.advance(Some(&head(1, 2)), &head(1, 3)).unwrap();
    refused(
        a1.advance(Some(&head(1, 2)), &head(1, 3 + 100)),
        DenyCode::HeadRefused,
    );
    a1.advance(Some(&head(1, 3)), &head(1, 4)).unwrap();

    // The KRS restarts: the heads were on disk before each answer.
    drop(krs);
    let down = a1.advance(Some(&head(1, 4)), &head(1, 5));
    assert!(matches!(down, Err(AnchorError::Unreachable(_))), "{down:?}");
    let krs = f.serve();
    let addr = krs.addr.clone();
    let r3 = release(&f, &addr);
    assert_eq!(r3.receipt.head, Some(head(1, 4)));
    drop(krs);
    let (ok, out) = f.log_verify(&f.log_path());
    assert!(ok, "krs log verify with head entries: {out}");
}

/// Two addresses of one KRS (issue 14: the KRS down must not stop a booting member when another
/// instance answers): an unreachable `krs_url` is passed over for `krs_fallback_urls`, for the
/// release and for head updates; with every address down the release fails with the last
/// connection error.
#[test]
fn the_agent_and_the_anchor_fall_back_to_the_next_krs_address() {
    let Some(f) = common::KrsFixture::new("krs-fallback", "") else {
        return;
    };
    let text = common::policy_text_full(2, &[hex::encode(MEAS)], &test_root_policy_toml());
    f.sign_policy_text(2, &text, &f.policy_file);
    let krs = f.serve();
    // A port nothing listens on (bound, then closed).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut cfg = f.agent_config(&krs.addr);
    cfg.krs_url = dead.clone();
    cfg.krs_fallback_urls = vec![krs.addr.clone()];
    let agent = Agent {
        cfg: cfg.clone(),
        attesters: vec![Box::new(honest())],
        product_release: "keyward-test".into(),
    };
    let r = agent
        .release()
        .expect("released through the fallback address");
    let pins = parse_pins(&cfg).unwrap();
    // The pins still name krs_url (what the KRS's deployment judges), not the address used.
    assert_eq!(pins.pins.krs_url, dead);
    let a = KrsAnchor::new(
        &[dead.as_str(), krs.addr.as_str()],
        pins.tls,
        r.receipt_spki.clone(),
        r.boot_key.clone().unwrap(),
        Duration::from_secs(5),
    );
    a.advance(None, &head(7, 1)).unwrap();
    assert_eq!(a.current().unwrap(), Some(head(7, 1)));

    cfg.krs_fallback_urls = vec![dead.clone()];
    let agent = Agent {
        cfg,
        attesters: vec![Box::new(honest())],
        product_release: "keyward-test".into(),
    };
    match agent.release() {
        Err(keyward_agent::AgentError::Connect { krs, .. }) => assert_eq!(krs, dead),
        Err(e) => panic!("expected a connection error naming {dead}, got {e}"),
        Ok(_) => panic!("released with every KRS address down"),
    }
}
