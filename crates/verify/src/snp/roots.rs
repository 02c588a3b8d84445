//! AMD's built-in SEV-SNP roots (ARK) and intermediates (ASK issues VCEKs, ASVK issues VLEKs)
//! for Milan, Genoa and Turin, shipped in `attestation/amd/` and pinned here by SHA-256 of the
//! DER. `attestation/amd/README.md` lists the same fingerprints for auditors; the test
//! `builtin_roots_match_pins` checks that the files and the pins agree.

use crate::policy::Product;

use super::cert::{split_cert_input, Cert};

/// SHA-256 (hex) of each AMD ARK's DER, as published in `attestation/amd/README.md`.
pub(crate) const ARK_PINS: [(Product, &str); 3] = [
    (
        Product::Milan,
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    ),
    (
        Product::Genoa,
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    ),
    (
        Product::Turin,
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    ),
];

/// SHA-256 (hex) of each built-in intermediate's DER: (product, ASK, ASVK).
pub(crate) const INTERMEDIATE_PINS: [(Product, &str, &str); 3] = [
    (
        Product::Milan,
        "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
        "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
    ),
    (
        Product::Genoa,
        "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
        "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
    ),
    (
        Product::Turin,
        "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
        "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
    ),
];

const PEMS: [(Product, &str, &str, &str); 3] = [
    (
        Product::Milan,
        include_str!("../../../../attestation/amd/milan_ark.pem"),
        include_str!("../../../../attestation/amd/milan_ask.pem"),
        include_str!("../../../../attestation/amd/milan_asvk.pem"),
    ),
    (
        Product::Genoa,
        include_str!("../../../../attestation/amd/genoa_ark.pem"),
        include_str!("../../../../attestation/amd/genoa_ask.pem"),
        include_str!("../../../../attestation/amd/genoa_asvk.pem"),
    ),
    (
        Product::Turin,
        include_str!("../../../../attestation/amd/turin_ark.pem"),
        include_str!("../../../../attestation/amd/turin_ask.pem"),
        include_str!("../../../../attestation/amd/turin_asvk.pem"),
    ),
];

/// One product's built-in certificates.
pub(crate) struct BuiltinSet {
    pub product: Product,
    pub ark: Cert,
    pub ask: Cert,
    pub asvk: Cert,
}

fn load(pem: &str, pin: &str) -> Option<Cert> {
    let der = split_cert_input(pem.as_bytes()).ok()?.into_iter().next()?;
    let c = Cert::from_der(&der).ok()?;
    // A built-in file that does not hash to its pin is never used.
    (hex::encode(c.sha256()) == pin).then_some(c)
}

/// The built-in sets whose files match their pins (all three, unless the tree was altered),
/// parsed once per process.
pub(crate) fn builtin() -> &'static [BuiltinSet] {
    static SETS: std::sync::OnceLock<Vec<BuiltinSet>> = std::sync::OnceLock::new();
    SETS.get_or_init(load_all)
}

fn load_all() -> Vec<BuiltinSet> {
    let mut out = Vec::new();
    for (((product, ark, ask, asvk), (_, ark_pin)), (_, ask_pin, asvk_pin)) in
        PEMS.iter().zip(ARK_PINS).zip(INTERMEDIATE_PINS)
    {
        if let (Some(ark), Some(ask), Some(asvk)) =
            (load(ark, ark_pin), load(ask, ask_pin), load(asvk, asvk_pin))
        {
            out.push(BuiltinSet {
                product: *product,
                ark,
                ask,
                asvk,
            });
        }
    }
    out
}

/// Whether `sha256_hex` is one of AMD's ARK pins.
pub fn is_amd_ark(sha256_hex: &str) -> Option<Product> {
    ARK_PINS
        .iter()
        .find(|(_, p)| *p == sha256_hex)
        .map(|(prod, _)| *prod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_roots_match_pins() {
        let b = builtin();
        assert_eq!(
            b.len(),
            3,
            "every built-in AMD certificate must hash to its pin"
        );
        for set in b {
            let name = set.product.amd_name();
            assert_eq!(set.ark.subject_cn(), format!("ARK-{name}"));
            assert_eq!(set.ask.subject_cn(), format!("SEV-{name}"));
            assert_eq!(set.asvk.subject_cn(), format!("SEV-VLEK-{name}"));
            assert!(set.ark.is_self_issued());
        }
    }
}
