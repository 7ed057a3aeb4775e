//! Byte sizes in a spec: a plain integer (`1048576`) or a Kubernetes quantity (`1Mi`,
//! `256Mi`, `1G`, `1.5Gi`), as in a pod's resources. A size is stored and published as its
//! integer, so a spec's hash does not depend on how the size was written.

use serde::{Deserialize, Deserializer, de};

/// The byte count `text` names: digits with an optional fraction and an optional suffix —
/// binary `Ki Mi Gi Ti Pi Ei` (powers of 1024), decimal `k M G T P E` (powers of 1000) or
/// a decimal exponent `e6` / `E6`.
/// A fractional result is rounded up, as Kubernetes does.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a byte size: use an integer or a quantity such as 64Ki, 256Mi or 1Gi"
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        exponent if exponent.len() > 1 && exponent.starts_with(['e', 'E']) => exponent[1..]
            .parse::<u32>()
            .ok()
            .and_then(|n| 10u64.checked_pow(n))
            .ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 9
    {
        return Err(bad());
    }
    let too_large = || format!("{text:?} is more bytes than this field can hold");
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(9));
        let digits: u128 = fraction.parse().map_err(|_| bad())?;
        let part = (digits * u128::from(multiplier)).div_ceil(scale);
        bytes = bytes
            .checked_add(u64::try_from(part).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// Serde: an optional byte size from an integer or a quantity string.
pub fn deserialize_opt_bytes<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Size::Number(n)) => Ok(Some(n)),
        Some(Size::Text(text)) => parse_bytes(&text).map(Some).map_err(de::Error::custom),
    }
}

/// The CRD schema of a byte size: an integer or a string (the API server checks the shape;
/// the operator's validation the value and its range).
#[cfg(feature = "kube")]
pub fn bytes_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-int-or-string": true})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_quantities_name_the_same_bytes() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("1Mi", 1 << 20),
            ("256Mi", 256 << 20),
            ("64Ki", 64 << 10),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("2k", 2_000),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            ("1.0001k", 1_001),
            ("1e6", 1_000_000),
            ("2E3", 2_000),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn anything_else_is_an_error_naming_the_value() {
        for text in [
            "",
            "Mi",
            "12Q",
            "1.2.3Mi",
            "-1",
            "1 Mi x",
            "1e",
            "1e99",
            "20000000000Ei",
        ] {
            let err = parse_bytes(text).expect_err(text);
            assert!(err.contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn a_spec_field_takes_either_form() {
        #[derive(Deserialize)]
        struct S {
            #[serde(default, deserialize_with = "deserialize_opt_bytes")]
            size: Option<u64>,
        }
        let parse = |json: &str| serde_json::from_str::<S>(json).map(|s| s.size);
        assert_eq!(parse(r#"{"size": 65536}"#).ok(), Some(Some(65536)));
        assert_eq!(parse(r#"{"size": "64Ki"}"#).ok(), Some(Some(65536)));
        assert_eq!(parse("{}").ok(), Some(None));
        let err = parse(r#"{"size": "lots"}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"lots\" is not a byte size"), "{err}");
    }
}
