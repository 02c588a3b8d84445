//! Deterministic CBOR (RFC 8949 section 4.2.1): definite lengths, shortest integers (ciborium
//! already does both) and map keys sorted by their encoded bytes (done here, recursively).
//! Everything hashed or signed in KRP/1 goes through [`to_canonical`].

use ciborium::Value;
use serde::{de::DeserializeOwned, Serialize};

/// Errors from (de)serialising CBOR.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    /// A value does not serialise to a CBOR value.
    #[error("CBOR encode: {0}")]
    Value(#[source] ciborium::value::Error),
    #[error("CBOR encode: {0}")]
    Encode(#[source] ciborium::ser::Error<std::io::Error>),
    #[error("CBOR decode: {0}")]
    Decode(#[source] ciborium::de::Error<std::io::Error>),
}

fn sort(v: Value) -> Result<Value, CborError> {
    Ok(match v {
        Value::Map(entries) => {
            let mut keyed = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let k = sort(k)?;
                let mut kb = Vec::new();
                ciborium::into_writer(&k, &mut kb).map_err(CborError::Encode)?;
                keyed.push((kb, k, sort(v)?));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort).collect::<Result<_, _>>()?),
        Value::Tag(t, inner) => Value::Tag(t, Box::new(sort(*inner)?)),
        other => other,
    })
}

/// Encode `value` as deterministic CBOR.
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CborError> {
    let v = Value::serialized(value).map_err(CborError::Value)?;
    let v = sort(v)?;
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).map_err(CborError::Encode)?;
    Ok(out)
}

/// Decode CBOR bytes; malformed input is an error, never a panic.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    ciborium::from_reader(bytes).map_err(CborError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn keys_sorted_length_first() {
        let mut m = BTreeMap::new();
        m.insert("bb".to_string(), 1u8);
        m.insert("a".to_string(), 2u8);
        m.insert("c".to_string(), 3u8);
        let b = to_canonical(&m).unwrap();
        // map(3), "a", 2, "c", 3, "bb", 1
        assert_eq!(
            b,
            vec![0xa3, 0x61, b'a', 2, 0x61, b'c', 3, 0x62, b'b', b'b', 1]
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let e = from_slice::<BTreeMap<String, u8>>(&[0xff, 0x00, 0x13]).unwrap_err();
        assert!(matches!(e, CborError::Decode(_)), "{e}");
        // the decoder's own error is kept as the source, not flattened into text
        let source = std::error::Error::source(&e).expect("a source");
        assert!(
            source
                .downcast_ref::<ciborium::de::Error<std::io::Error>>()
                .is_some(),
            "{source}"
        );
    }
}
