//! Job UUIDs: the ones the reference facilitator makes (random-looking version-4 UUIDs derived from a seeded
//! counter, so runs are reproducible) and the reading of a client's `uuid` the way the real facilitator's database
//! lookup does it (Python's `uuid.UUID(hex=...)`, docs/PROTOCOL.md 3.3 step 2).
//!
//! Pure functions; never panics on any input.

/// 62 bits: what is left of the low half of a UUID after the two variant bits.
const LOW_BITS: u32 = 62;
const LOW_MASK: u64 = (1 << LOW_BITS) - 1;

/// The `n`-th UUID of the sequence seeded with `seed`: lowercase, hyphenated, version 4, RFC 4122 variant.
///
/// Distinct `n` (below 2^62) give distinct UUIDs for the same seed: the low 62 bits are a bijection of `n`; the high
/// half only adds a random look.
pub(crate) fn generated(seed: u64, n: u64) -> u128 {
    // Bijections on 62-bit values: adding a constant, multiplying by an odd number, xor with a right shift.
    let mut low = n.wrapping_add(splitmix64(seed)) & LOW_MASK;
    low = low.wrapping_mul(0x9E37_79B9_7F4A_7C15) & LOW_MASK;
    low ^= low >> 31;
    low = low.wrapping_mul(0xBF58_476D_1CE4_E5B9) & LOW_MASK;
    low ^= low >> 29;
    let high = splitmix64(seed ^ splitmix64(n));
    // Version 4 in the high nibble of byte 6; variant `10` in the top bits of byte 8.
    let high = (high & !0xF000) | 0x4000;
    let low = low | (0b10 << LOW_BITS);
    (u128::from(high) << 64) | u128::from(low)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The lowercase hyphenated form, as the facilitator writes job UUIDs.
pub(crate) fn format(value: u128) -> String {
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Reads a UUID as the facilitator's lookup does: Python's `uuid.UUID(hex=text)` removes every `urn:` and `uuid:`,
/// strips `{` and `}` from both ends, removes every `-`, and wants 32 hex digits of either case.
///
/// `None` where the real server's handler crashes. Python's `int(text, 16)` would also take a sign, a `0x` prefix,
/// surrounding spaces or underscores between digits as long as the text stays 32 characters long; those oddities
/// are refused here (the reference facilitator then drops the connection where the real one might not).
pub(crate) fn parse(text: &str) -> Option<u128> {
    let text = text.replace("urn:", "").replace("uuid:", "");
    let digits: String = text
        .trim_matches(|c| c == '{' || c == '}')
        .chars()
        .filter(|&c| c != '-')
        .collect();
    if digits.len() != 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(&digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_uuids_are_version_4_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..10_000 {
            let text = format(generated(7, n));
            assert_eq!(text.len(), 36);
            assert_eq!(&text[14..15], "4", "{text}");
            assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
            assert!(seen.insert(text));
        }
    }

    #[test]
    fn generated_uuids_are_reproducible_and_depend_on_the_seed() {
        assert_eq!(generated(1, 5), generated(1, 5));
        assert_ne!(generated(1, 5), generated(2, 5));
    }

    #[test]
    fn parses_the_forms_python_accepts() {
        let value = 0x7d8a9f4e_1b2c_4d3e_8f40_5a6b7c8d9e01_u128;
        for text in [
            "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01",
            "7D8A9F4E-1B2C-4D3E-8F40-5A6B7C8D9E01",
            "7d8a9f4e1b2c4d3e8f405a6b7c8d9e01",
            "{7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01}",
            "urn:uuid:7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01",
        ] {
            assert_eq!(parse(text), Some(value), "{text}");
        }
        assert_eq!(format(value), "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e01");
    }

    #[test]
    fn refuses_what_is_not_a_uuid() {
        for text in [
            "",
            "not-a-uuid",
            "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e0",
            "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e0g",
            "7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e011",
            "é7d8a9f4e-1b2c-4d3e-8f40-5a6b7c8d9e0",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }
}
