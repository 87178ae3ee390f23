//! Loading the hotkey: from `FACILITATOR_HOTKEY_SEED`-style text, from a bittensor wallet's hotkey file, and what
//! the errors say (the file or variable and what is wrong, never the secret).

use std::path::Path;

use facilitator_client::protocol::keys::{self, Hotkey, KeyError, KeySource};
use serde_json::json;

const SEED_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const ADDRESS: &str = "5HB7kpn92RS7uF9uWn8bXSvPVKFPg8kPUFDd5sbveGjX6Dbi";
const EXPANDED: &str = "87d29d94134be13d30adc66e053ca9aab38d02c8db5bc23cb4249ef0e3dff10da9d71862a3e5746b571be3d187b0041046f52ebd850c7cbd5fde8ee38473b649";
const PUBLIC: &str = "e2111779981618705ecacea1af6ff9350bce2b2dccd03e0c3e01eb0c823d2666";

fn write_wallet(root: &Path, contents: &str) {
    let dir = root.join("w").join("hotkeys");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("h"), contents).expect("write");
}

fn load(contents: &str) -> Result<Hotkey, KeyError> {
    let dir = tempfile::tempdir().expect("tempdir");
    write_wallet(dir.path(), contents);
    Hotkey::from_wallet(dir.path(), "w", "h")
}

#[test]
fn seed_text_in_the_env_format_gives_the_vector_key() {
    let hotkey = Hotkey::from_seed_hex(&format!("0x{SEED_HEX}")).expect("valid");
    assert_eq!(hotkey.ss58(), ADDRESS);
    let upper = Hotkey::from_seed_hex(&format!("0x{}\n", SEED_HEX.to_uppercase())).expect("valid");
    assert_eq!(
        upper.ss58(),
        ADDRESS,
        "either case, surrounding whitespace ignored"
    );
}

#[test]
fn a_malformed_seed_says_what_is_wrong_without_echoing_it() {
    for (text, expected) in [
        (SEED_HEX.to_owned(), "does not start with 0x"),
        (format!("0x{}", &SEED_HEX[..62]), "62 characters after 0x"),
        (format!("0x{}zz", &SEED_HEX[..62]), "not a hex digit"),
    ] {
        let err = Hotkey::from_seed_hex(&text)
            .expect_err("malformed")
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(err.contains("0x followed by 64 hex digits"), "{err}");
        assert!(!err.contains(&SEED_HEX[..16]), "the seed leaks into: {err}");
    }
}

#[test]
fn an_unset_variable_is_named_in_the_error() {
    let var = "FACILITATOR_CLIENT_TEST_SURELY_UNSET_VARIABLE";
    let err = Hotkey::from_env_var(var).expect_err("unset");
    assert_eq!(
        err,
        KeyError::Missing {
            origin: KeySource::EnvVar(var.into())
        }
    );
    assert!(err.to_string().contains(var));
}

#[test]
fn a_seed_in_the_environment_is_read() {
    let var = "FACILITATOR_CLIENT_TEST_SEED_VARIABLE";
    // SAFETY: the variable is unique to this test; no other thread reads or writes it.
    unsafe { std::env::set_var(var, format!("0x{SEED_HEX}")) };
    assert_eq!(Hotkey::from_env_var(var).expect("valid").ss58(), ADDRESS);
    unsafe { std::env::set_var(var, "0x1234") };
    let err = Hotkey::from_env_var(var).expect_err("short").to_string();
    assert!(
        err.contains(var) && err.contains("4 characters after 0x"),
        "{err}"
    );
    unsafe { std::env::remove_var(var) };
}

#[test]
fn a_wallet_file_with_a_good_secret_seed_loads() {
    let file = json!({"secretSeed": format!("0x{SEED_HEX}"), "publicKey": format!("0x{PUBLIC}"), "ss58Address": ADDRESS});
    assert_eq!(load(&file.to_string()).expect("loads").ss58(), ADDRESS);
}

#[test]
fn a_garbled_secret_seed_falls_back_to_the_private_key() {
    // bittensor-wallet 4.1.1 writes a garbled secretSeed for seed-created keys (docs/PROTOCOL.md 7.1).
    let file = json!({"secretSeed": "b'\\x00\\x01'", "privateKey": format!("0x{EXPANDED}"), "ss58Address": ADDRESS});
    assert_eq!(load(&file.to_string()).expect("loads").ss58(), ADDRESS);
}

#[test]
fn a_secret_seed_that_contradicts_the_public_key_falls_back_to_the_private_key() {
    let wrong_seed = format!("0x{}", "22".repeat(32));
    let file = json!({"secretSeed": wrong_seed, "privateKey": format!("0x{EXPANDED}"), "publicKey": format!("0x{PUBLIC}")});
    assert_eq!(load(&file.to_string()).expect("loads").ss58(), ADDRESS);
}

#[test]
fn a_file_whose_secrets_all_contradict_its_address_is_refused() {
    let wrong_seed = format!("0x{}", "22".repeat(32));
    let file = json!({"secretSeed": wrong_seed, "ss58Address": ADDRESS});
    let err = load(&file.to_string())
        .expect_err("inconsistent")
        .to_string();
    assert!(
        err.contains("secretSeed") && err.contains(ADDRESS) && err.contains("damaged"),
        "{err}"
    );
    assert!(
        !err.contains(&"22".repeat(8)),
        "the secret leaks into: {err}"
    );
}

#[test]
fn a_file_without_any_secret_names_both_fields() {
    let err = load(&json!({"ss58Address": ADDRESS}).to_string())
        .expect_err("no secret")
        .to_string();
    assert!(
        err.contains("secretSeed is missing") && err.contains("privateKey is missing"),
        "{err}"
    );
    assert!(err.contains("hotkeys"), "the path is named: {err}");
}

#[test]
fn a_missing_file_names_the_path_and_what_to_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Hotkey::from_wallet(dir.path(), "nowallet", "nohotkey").expect_err("missing");
    let KeyError::Unreadable { path, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        path,
        &dir.path().join("nowallet").join("hotkeys").join("nohotkey")
    );
    assert!(err.to_string().contains("wallet name"), "{err}");
}

#[test]
fn an_encrypted_or_non_json_file_is_explained_without_its_contents() {
    let err = load("$NACLsecretbytes").expect_err("encrypted").to_string();
    assert!(
        err.contains("encrypted") && !err.contains("secretbytes"),
        "{err}"
    );
    let err = load(&format!("{{\"secretSeed\": \"0x{SEED_HEX}\""))
        .expect_err("truncated")
        .to_string();
    assert!(err.contains("not JSON") && !err.contains(SEED_HEX), "{err}");
}

#[test]
fn debug_output_never_shows_the_secret() {
    let hotkey = Hotkey::from_seed_hex(&format!("0x{SEED_HEX}")).expect("valid");
    let debug = format!("{hotkey:?} {:?}", hotkey.clone());
    assert!(debug.contains(ADDRESS), "{debug}");
    for secret in [&SEED_HEX[..16], &EXPANDED[..16], "135, 210"] {
        assert!(!debug.contains(secret), "{debug}");
    }
}

#[test]
fn auth_requests_are_checked_with_the_servers_strictness() {
    let hotkey = Hotkey::from_seed_hex(&format!("0x{SEED_HEX}")).expect("valid");
    let good = hotkey.auth_request();
    assert_eq!(keys::verify_auth_request(&good), Ok(hotkey.public_key()));
    assert_eq!(keys::auth_lookup_address(&good).as_deref(), Ok(ADDRESS));

    let mut prefixed = good.clone();
    prefixed.public_key = format!("0x{}", good.public_key);
    assert_eq!(
        keys::auth_lookup_address(&prefixed).as_deref(),
        Ok(ADDRESS),
        "0x tolerated for the lookup"
    );
    assert!(matches!(
        keys::verify_auth_request(&prefixed),
        Err(keys::AuthError::MalformedPublicKey(_))
    ));

    let mut upper = good.clone();
    upper.signature = format!("0x{}", good.signature[2..].to_uppercase());
    assert_eq!(keys::verify_auth_request(&upper), Ok(hotkey.public_key()));
    let mut upper_prefix = good.clone();
    upper_prefix.signature = format!("0X{}", &good.signature[2..]);
    assert!(matches!(
        keys::verify_auth_request(&upper_prefix),
        Err(keys::AuthError::MalformedSignature(_))
    ));

    let other = Hotkey::from_seed(&[3; 32]);
    let mut foreign = good;
    foreign.signature = other.auth_request().signature;
    let err = keys::verify_auth_request(&foreign).expect_err("wrong key");
    assert_eq!(err, keys::AuthError::SignatureInvalid);
    assert!(!err.crashes_real_server());
}
