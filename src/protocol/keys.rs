//! sr25519 hotkeys, SS58 addresses and the authentication request (docs/PROTOCOL.md sections 7 and 8).
//!
//! Owns: deriving a keypair from a 32-byte seed exactly as bittensor/substrate do, loading a hotkey from a bittensor
//! wallet file or from `FACILITATOR_HOTKEY_SEED`, SS58 encoding/decoding, sr25519 signing and verification (with
//! bittensor-wallet's `<Bytes>` fallback), building the auth request and checking one as the facilitator does.
//!
//! Must never: print, log or put into an error message any secret (seed, expanded secret, file contents). `Hotkey`'s
//! `Debug` shows only the SS58 address; errors about a seed or a key file say *what* is wrong, never the value.

use std::fmt;
use std::path::{Path, PathBuf};

use blake2::{Blake2b512, Digest};
use schnorrkel::{ExpansionMode, Keypair, MiniSecretKey, PublicKey, SecretKey, Signature};
use serde_json::Value;

use super::messages::AuthenticationRequest;

/// The sr25519 signing context of substrate and bittensor.
pub const SIGNING_CONTEXT: &[u8] = b"substrate";

/// The SS58 address format the facilitator and bittensor use for hotkeys (generic substrate).
pub const SS58_FORMAT: u8 = 42;

/// The environment variable that can hold the hotkey's seed: `0x` followed by 64 hex digits.
pub const SEED_ENV_VAR: &str = "FACILITATOR_HOTKEY_SEED";

/// A validator hotkey: an sr25519 keypair.
///
/// `Debug` prints only the SS58 address; the secret never leaves this type except as signatures. The keypair's secret
/// half is zeroed when the `Hotkey` is dropped.
///
/// ```
/// use facilitator_client::protocol::keys::Hotkey;
/// let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
/// let hotkey = Hotkey::from_seed(&seed);
/// assert_eq!(hotkey.ss58(), "5HB7kpn92RS7uF9uWn8bXSvPVKFPg8kPUFDd5sbveGjX6Dbi");
/// assert!(!format!("{hotkey:?}").contains("000102"));
/// ```
pub struct Hotkey {
    keypair: Keypair,
}

impl fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hotkey")
            .field("ss58", &self.ss58())
            .finish_non_exhaustive()
    }
}

impl Clone for Hotkey {
    fn clone(&self) -> Self {
        Hotkey {
            keypair: self.keypair.clone(),
        }
    }
}

impl Hotkey {
    /// The keypair of a 32-byte seed (substrate "mini secret key", Ed25519 expansion; section 7.1), as
    /// bittensor's `Keypair.create_from_seed` makes it.
    pub fn from_seed(seed: &[u8; 32]) -> Hotkey {
        // A mini secret key is any 32 bytes, so this cannot fail; `from_bytes` only checks the length.
        let mini = match MiniSecretKey::from_bytes(seed) {
            Ok(mini) => mini,
            Err(e) => unreachable!("a 32-byte mini secret key is always valid: {e}"),
        };
        Hotkey {
            keypair: mini.expand_to_keypair(ExpansionMode::Ed25519),
        }
    }

    /// The keypair of a 64-byte expanded secret (secret scalar little-endian ‖ nonce), which is what bittensor
    /// hotkey files store as `privateKey`.
    pub fn from_expanded_secret(bytes: &[u8; 64]) -> Result<Hotkey, KeyError> {
        let secret = SecretKey::from_bytes(bytes).map_err(|_| KeyError::Invalid {
            origin: KeySource::Bytes,
            problem: "the expanded secret's scalar is not canonical (not an sr25519 secret key)"
                .into(),
        })?;
        Ok(Hotkey {
            keypair: secret.to_keypair(),
        })
    }

    /// Parses a seed written as `0x` followed by 64 hex digits (either case), the format of
    /// `FACILITATOR_HOTKEY_SEED`.
    pub fn from_seed_hex(text: &str) -> Result<Hotkey, KeyError> {
        parse_seed_hex(text)
            .map(|seed| Hotkey::from_seed(&seed))
            .map_err(|problem| KeyError::Invalid {
                origin: KeySource::Text,
                problem,
            })
    }

    /// Reads the seed from the environment variable `FACILITATOR_HOTKEY_SEED` (`0x` + 64 hex digits).
    pub fn from_env() -> Result<Hotkey, KeyError> {
        Self::from_env_var(SEED_ENV_VAR)
    }

    /// Reads the seed from the named environment variable (`0x` + 64 hex digits).
    pub fn from_env_var(var: &str) -> Result<Hotkey, KeyError> {
        let source = KeySource::EnvVar(var.to_owned());
        let text = match std::env::var(var) {
            Ok(text) => text,
            Err(std::env::VarError::NotPresent) => {
                return Err(KeyError::Missing { origin: source });
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(KeyError::Invalid {
                    origin: source,
                    problem: "it is not valid UTF-8".into(),
                });
            }
        };
        parse_seed_hex(&text)
            .map(|seed| Hotkey::from_seed(&seed))
            .map_err(|problem| KeyError::Invalid {
                origin: source,
                problem,
            })
    }

    /// Loads the hotkey of a bittensor wallet: the unencrypted JSON file
    /// `<wallet_path>/<wallet_name>/hotkeys/<hotkey_name>`.
    ///
    /// Uses `secretSeed` (`0x` + 64 hex digits) when it is well-formed, else `privateKey` (`0x` + 128 hex digits,
    /// the expanded secret): bittensor-wallet 4.1.1 writes a garbled `secretSeed` for keys made from a seed
    /// (section 7.1). When the file also names the public key (`publicKey`, `accountId` or `ss58Address`), the
    /// chosen secret must match it.
    pub fn from_wallet(
        wallet_path: &Path,
        wallet_name: &str,
        hotkey_name: &str,
    ) -> Result<Hotkey, KeyError> {
        let path = wallet_path
            .join(wallet_name)
            .join("hotkeys")
            .join(hotkey_name);
        Self::from_hotkey_file(&path)
    }

    /// Loads a bittensor hotkey file (see [`Hotkey::from_wallet`]).
    pub fn from_hotkey_file(path: &Path) -> Result<Hotkey, KeyError> {
        let source = KeySource::File(path.to_path_buf());
        let text = std::fs::read(path).map_err(|e| KeyError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_hotkey_file_contents(&text).map_err(|problem| KeyError::Invalid {
            origin: source,
            problem,
        })
    }

    fn from_hotkey_file_contents(bytes: &[u8]) -> Result<Hotkey, String> {
        if bytes.starts_with(b"$NACL")
            || bytes.starts_with(b"$ANSIBLE_VAULT")
            || bytes.starts_with(b"$BTWALLET")
        {
            return Err("it is encrypted; this client reads only unencrypted hotkey files (bittensor stores \
                        hotkeys unencrypted by default) — or set FACILITATOR_HOTKEY_SEED instead"
                .into());
        }
        // Parse to a `Value` first: serde's typed errors would quote field values, which are secrets here.
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "it is not JSON ({}, line {} column {})",
                category(&e),
                e.line(),
                e.column()
            )
        })?;
        let Value::Object(file) = value else {
            return Err(
                "it is JSON but not an object; expected bittensor's hotkey file format".into(),
            );
        };
        let text_field = |key: &str| file.get(key).and_then(Value::as_str);
        let expected = expected_public_key(&file)?;

        let mut problems = Vec::new();
        let mut candidates = Vec::new();
        match text_field("secretSeed").map(parse_seed_hex) {
            Some(Ok(seed)) => candidates.push(("secretSeed", Hotkey::from_seed(&seed))),
            Some(Err(problem)) => problems.push(format!("secretSeed: {problem}")),
            None => problems.push("secretSeed is missing".to_owned()),
        }
        match text_field("privateKey").map(parse_expanded_secret_hex) {
            Some(Ok(hotkey)) => candidates.push(("privateKey", hotkey)),
            Some(Err(problem)) => problems.push(format!("privateKey: {problem}")),
            None => problems.push("privateKey is missing".to_owned()),
        }
        if candidates.is_empty() {
            return Err(format!(
                "it holds no usable secret ({})",
                problems.join("; ")
            ));
        }
        match expected {
            None => Ok(candidates.swap_remove(0).1),
            Some((expected_key, field)) => {
                let mismatched: Vec<&str> = candidates
                    .iter()
                    .filter(|(_, hotkey)| hotkey.public_key() != expected_key)
                    .map(|(name, _)| *name)
                    .collect();
                candidates
                    .into_iter()
                    .find(|(_, hotkey)| hotkey.public_key() == expected_key)
                    .map(|(_, hotkey)| hotkey)
                    .ok_or_else(|| {
                        let verb = if mismatched.len() == 1 { "does" } else { "do" };
                        format!(
                            "its {} {verb} not give the key of its {field} ({}); the file is damaged",
                            mismatched.join(" and "),
                            ss58_encode(&expected_key)
                        )
                    })
            }
        }
    }

    /// The 32-byte sr25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.keypair.public.to_bytes()
    }

    /// The SS58 address (format 42), as the facilitator and bittensor show it.
    pub fn ss58(&self) -> String {
        ss58_encode(&self.public_key())
    }

    /// Signs `message` with context `substrate`. Signatures are randomized: signing twice gives different bytes.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.keypair
            .sign_simple(SIGNING_CONTEXT, message)
            .to_bytes()
    }

    /// The `V0AuthenticationRequest` the reference validator sends (section 8.1): the lowercase hex public key and
    /// `0x` + hex of a signature over the 32 raw public-key bytes.
    pub fn auth_request(&self) -> AuthenticationRequest {
        let public_key = self.public_key();
        AuthenticationRequest {
            public_key: hex::encode(public_key),
            signature: format!("0x{}", hex::encode(self.sign(&public_key))),
        }
    }
}

/// Where a key came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable.
    EnvVar(String),
    /// A bittensor hotkey file.
    File(PathBuf),
    /// A text given directly (e.g. a command-line value).
    Text,
    /// Raw bytes given by the program.
    Bytes,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::EnvVar(var) => write!(f, "environment variable {var}"),
            KeySource::File(path) => write!(f, "hotkey file {}", path.display()),
            KeySource::Text => f.write_str("the hotkey seed"),
            KeySource::Bytes => f.write_str("the hotkey secret"),
        }
    }
}

/// Why a hotkey could not be loaded. Messages name the file or variable and what is wrong, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The environment variable is not set.
    #[error(
        "{origin} is not set: set it to 0x followed by the 64 hex digits of the hotkey's seed, or use a wallet"
    )]
    Missing {
        /// Where the key was looked for.
        origin: KeySource,
    },
    /// The hotkey file could not be read.
    #[error(
        "cannot read hotkey file {}: {reason}; check the wallet path, wallet name and hotkey name",
        path.display()
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The value or file is not a usable key.
    #[error("{origin} is not a usable hotkey: {problem}")]
    Invalid {
        /// Where the key came from.
        origin: KeySource,
        /// What is wrong (never the secret itself).
        problem: String,
    },
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "unexpected end",
    }
}

/// `0x` + 64 hex digits -> 32 bytes. The error describes the text's shape, never its content.
fn parse_seed_hex(text: &str) -> Result<[u8; 32], String> {
    let bytes = parse_prefixed_hex(text, 32)?;
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&bytes);
    Ok(seed)
}

fn parse_expanded_secret_hex(text: &str) -> Result<Hotkey, String> {
    let bytes = parse_prefixed_hex(text, 64)?;
    let mut secret = [0u8; 64];
    secret.copy_from_slice(&bytes);
    Hotkey::from_expanded_secret(&secret).map_err(|e| match e {
        KeyError::Invalid { problem, .. } => problem,
        other => other.to_string(),
    })
}

fn parse_prefixed_hex(text: &str, len: usize) -> Result<Vec<u8>, String> {
    let expected = format!("expected 0x followed by {} hex digits", len * 2);
    let text = text.trim();
    let Some(digits) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) else {
        return Err(format!("it does not start with 0x; {expected}"));
    };
    if digits.len() != len * 2 {
        return Err(format!(
            "it has {} characters after 0x; {expected}",
            digits.chars().count()
        ));
    }
    hex::decode(digits)
        .map_err(|_| format!("it contains a character that is not a hex digit; {expected}"))
}

/// The public key a hotkey file says it holds, and the field that said so.
fn expected_public_key(
    file: &serde_json::Map<String, Value>,
) -> Result<Option<([u8; 32], &'static str)>, String> {
    for field in ["publicKey", "accountId"] {
        if let Some(text) = file.get(field).and_then(Value::as_str) {
            let bytes = parse_prefixed_hex(text, 32).map_err(|p| format!("{field}: {p}"))?;
            let mut key = [0u8; 32];
            key.copy_from_slice(&bytes);
            return Ok(Some((key, field)));
        }
    }
    if let Some(text) = file.get("ss58Address").and_then(Value::as_str) {
        let key = ss58_decode(text).map_err(|e| format!("ss58Address: {e}"))?;
        return Ok(Some((key, "ss58Address")));
    }
    Ok(None)
}

/// The SS58 address (format 42) of a public key (section 7.3).
///
/// ```
/// use facilitator_client::protocol::keys::{ss58_decode, ss58_encode};
/// let key = [7u8; 32];
/// assert_eq!(ss58_decode(&ss58_encode(&key)), Ok(key));
/// ```
pub fn ss58_encode(public_key: &[u8; 32]) -> String {
    encode_one_byte_prefix(SS58_FORMAT, public_key)
}

/// The SS58 address of a public key with a one-byte network prefix (0..=63). Formats of 64 and above need the
/// two-byte encoding, which this crate does not write: they give [`Ss58Error::BadPrefix`].
pub fn ss58_encode_with_format(public_key: &[u8; 32], format: u8) -> Result<String, Ss58Error> {
    if format >= 64 {
        return Err(Ss58Error::BadPrefix(format));
    }
    Ok(encode_one_byte_prefix(format, public_key))
}

fn encode_one_byte_prefix(format: u8, public_key: &[u8; 32]) -> String {
    let mut data = Vec::with_capacity(35);
    data.push(format);
    data.extend_from_slice(public_key);
    let checksum = ss58_checksum(&data);
    data.extend_from_slice(&checksum[..2]);
    bs58::encode(data).into_string()
}

/// Decodes an SS58 address of any network prefix (one- or two-byte) and checks its checksum, as bittensor-wallet
/// does for a job signature's `signatory` (section 7.3). Returns the 32-byte public key.
pub fn ss58_decode(address: &str) -> Result<[u8; 32], Ss58Error> {
    ss58_decode_with_format(address).map(|(_, key)| key)
}

/// Like [`ss58_decode`], also returning the network prefix (format).
pub fn ss58_decode_with_format(address: &str) -> Result<(u16, [u8; 32]), Ss58Error> {
    let data = bs58::decode(address)
        .into_vec()
        .map_err(|_| Ss58Error::NotBase58)?;
    // The prefix encoding of substrate's `sp_core` (`from_ss58check_with_version`).
    let (prefix_len, format) = match data.first() {
        Some(&first @ 0..=63) => (1, u16::from(first)),
        Some(&first @ 64..=127) => {
            let second = *data.get(1).ok_or(Ss58Error::BadLength(data.len()))?;
            let lower = (first << 2) | (second >> 6);
            let upper = second & 0b0011_1111;
            (2, u16::from(lower) | (u16::from(upper) << 8))
        }
        Some(&first) => return Err(Ss58Error::BadPrefix(first)),
        None => return Err(Ss58Error::BadLength(0)),
    };
    if data.len() != prefix_len + 32 + 2 {
        return Err(Ss58Error::BadLength(data.len()));
    }
    let (body, checksum) = data.split_at(prefix_len + 32);
    if ss58_checksum(body)[..2] != *checksum {
        return Err(Ss58Error::BadChecksum);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&body[prefix_len..]);
    Ok((format, key))
}

fn ss58_checksum(data: &[u8]) -> [u8; 64] {
    let mut hasher = Blake2b512::new();
    hasher.update(b"SS58PRE");
    hasher.update(data);
    hasher.finalize().into()
}

/// Why a text is not an SS58 address of a 32-byte key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ss58Error {
    /// Not base58 (Bitcoin alphabet).
    #[error("not base58 text")]
    NotBase58,
    /// The first byte is not a valid SS58 prefix.
    #[error("invalid SS58 prefix byte {0}")]
    BadPrefix(u8),
    /// The decoded length does not fit a 32-byte key.
    #[error("decodes to {0} bytes, which is not an SS58 address of a 32-byte key")]
    BadLength(usize),
    /// The checksum does not match (a typo, or a truncated address).
    #[error("bad checksum (mistyped or truncated address?)")]
    BadChecksum,
}

/// sr25519 verification as bittensor-wallet does it (section 7.2): over `message`, and if that fails over
/// `<Bytes>` ‖ `message` ‖ `</Bytes>`. A signature without schnorrkel's marker bit or a public key that is not a
/// valid point never verifies.
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(public_key).is_some_and(|key| key.verify(message, signature))
}

/// An sr25519 public key decompressed once, for keys that verify many signatures (a trusted signer's): decompressing
/// the 32 bytes to a curve point costs about a tenth of a verification.
///
/// ```
/// use facilitator_client::protocol::keys::{Hotkey, VerifyingKey};
/// let hotkey = Hotkey::from_seed(&[3; 32]);
/// let key = VerifyingKey::from_bytes(&hotkey.public_key()).expect("a hotkey's key is a valid point");
/// assert!(key.verify(b"message", &hotkey.sign(b"message")));
/// assert_eq!(key.to_bytes(), hotkey.public_key());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey(PublicKey);

impl VerifyingKey {
    /// The key of 32 compressed bytes; `None` when they are not a valid point (no signature verifies against
    /// them).
    pub fn from_bytes(public_key: &[u8; 32]) -> Option<VerifyingKey> {
        PublicKey::from_bytes(public_key).ok().map(VerifyingKey)
    }

    /// The 32 compressed bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// [`verify`] with this key.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(signature) = Signature::from_bytes(signature) else {
            return false;
        };
        if self
            .0
            .verify_simple(SIGNING_CONTEXT, message, &signature)
            .is_ok()
        {
            return true;
        }
        let mut wrapped = Vec::with_capacity(message.len() + 15);
        wrapped.extend_from_slice(b"<Bytes>");
        wrapped.extend_from_slice(message);
        wrapped.extend_from_slice(b"</Bytes>");
        self.0
            .verify_simple(SIGNING_CONTEXT, &wrapped, &signature)
            .is_ok()
    }
}

/// Verifies many sr25519 signatures (`(key, message, signature)`, each over the plain message as [`verify`]'s
/// first try) at once with schnorrkel's batch equation: true only if every one verifies. Cheaper per signature than
/// [`verify`] as the batch grows; on false, nothing says which failed (check them one by one). The keys come
/// decompressed: a batch mostly repeats one or two signers' keys.
pub fn verify_batch(items: &[(VerifyingKey, [u8; 64], [u8; 64])]) -> bool {
    let mut public_keys = Vec::with_capacity(items.len());
    let mut signatures = Vec::with_capacity(items.len());
    for (key, _, signature) in items {
        let Ok(signature) = Signature::from_bytes(signature) else {
            return false;
        };
        public_keys.push(key.0);
        signatures.push(signature);
    }
    let context = schnorrkel::signing_context(SIGNING_CONTEXT);
    let transcripts = items.iter().map(|(_, message, _)| context.bytes(message));
    // Job requests mostly come from one or two signers: merging equal keys makes the batch cheaper.
    schnorrkel::verify_batch(transcripts, &signatures, &public_keys, true).is_ok()
}

/// Why an authentication request is refused, in the facilitator's terms (section 8.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `public_key` is not 64 hex digits. The real facilitator's handler crashes here (no Response; section 5.4).
    #[error("public_key is malformed: {0}")]
    MalformedPublicKey(String),
    /// `signature` is not `0x` + 128 hex digits. The real facilitator's handler crashes here (no Response).
    #[error("signature is malformed: {0}")]
    MalformedSignature(String),
    /// Well-formed, but does not verify: the facilitator answers `auth.signature_invalid` and closes with 3000.
    #[error("the signature does not match the public key")]
    SignatureInvalid,
}

impl AuthError {
    /// Whether the real facilitator would crash on this request (drop the connection without a Response) rather
    /// than answer `auth.signature_invalid`.
    pub fn crashes_real_server(&self) -> bool {
        !matches!(self, AuthError::SignatureInvalid)
    }
}

/// The SS58 address the facilitator looks up for an auth request (section 8.2 step 2): computed from `public_key`,
/// tolerating a `0x` prefix at this step. Fails (the real server crashes) when it is not 32 bytes of hex.
pub fn auth_lookup_address(request: &AuthenticationRequest) -> Result<String, AuthError> {
    let text = request
        .public_key
        .strip_prefix("0x")
        .unwrap_or(&request.public_key);
    let key = decode_public_key_hex(text)?;
    Ok(ss58_encode(&key))
}

/// Checks an auth request as the facilitator does (section 8.2 step 4) and returns the authenticated public key.
///
/// `public_key`: hex of exactly 32 bytes, either case, no `0x`. `signature`: lowercase `0x`, then hex of exactly
/// 64 bytes, either case. The signature must verify over the 32 raw public-key bytes (or their `<Bytes>` wrapping).
///
/// ```
/// use facilitator_client::protocol::keys::{verify_auth_request, Hotkey};
/// let hotkey = Hotkey::from_seed(&[1; 32]);
/// assert_eq!(verify_auth_request(&hotkey.auth_request()), Ok(hotkey.public_key()));
/// ```
pub fn verify_auth_request(request: &AuthenticationRequest) -> Result<[u8; 32], AuthError> {
    let key = decode_public_key_hex(&request.public_key)?;
    let digits = request.signature.strip_prefix("0x").ok_or_else(|| {
        AuthError::MalformedSignature("it does not start with a lowercase 0x".into())
    })?;
    let bytes = hex::decode(digits)
        .map_err(|_| AuthError::MalformedSignature("it is not hex after the 0x".into()))?;
    let signature: [u8; 64] = bytes.as_slice().try_into().map_err(|_| {
        AuthError::MalformedSignature(format!(
            "it is {} bytes; an sr25519 signature is 64",
            bytes.len()
        ))
    })?;
    if verify(&key, &key, &signature) {
        Ok(key)
    } else {
        Err(AuthError::SignatureInvalid)
    }
}

fn decode_public_key_hex(text: &str) -> Result<[u8; 32], AuthError> {
    let bytes = hex::decode(text).map_err(|_| {
        AuthError::MalformedPublicKey("it is not an even number of hex digits".into())
    })?;
    bytes.as_slice().try_into().map_err(|_| {
        AuthError::MalformedPublicKey(format!("it is {} bytes; a public key is 32", bytes.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_errors_never_echo_the_seed() {
        let secretish = format!("0x{}g", &"abcdef".repeat(11)[..63]);
        let err = Hotkey::from_seed_hex(&secretish).unwrap_err().to_string();
        assert!(!err.contains("abcdef"), "{err}");
        assert!(err.contains("not a hex digit"), "{err}");
    }

    #[test]
    fn seed_without_0x_is_refused_with_the_expected_format() {
        let err = Hotkey::from_seed_hex(&"11".repeat(32))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not start with 0x"), "{err}");
        assert!(err.contains("64 hex digits"), "{err}");
    }

    #[test]
    fn two_byte_prefix_addresses_decode() {
        // Format 255 (two-byte prefix), built by hand with sp_core's layout.
        let key = [9u8; 32];
        let format: u16 = 255;
        let first = ((format & 0b1111_1100) >> 2) as u8 | 0b0100_0000;
        let second = ((format >> 8) as u8) | (((format & 0b11) as u8) << 6);
        let mut data = vec![first, second];
        data.extend_from_slice(&key);
        let checksum = ss58_checksum(&data);
        data.extend_from_slice(&checksum[..2]);
        let address = bs58::encode(data).into_string();
        assert_eq!(ss58_decode_with_format(&address), Ok((format, key)));
    }
}
