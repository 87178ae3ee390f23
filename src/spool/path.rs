//! Where a spool lives by default: one file per hotkey and facilitator under the user's state directory, named
//! after the hotkey and a hash of the normalised facilitator URL.
//!
//! Owns: URL normalisation (which spellings of one facilitator share a spool) and the default file name. Must never
//! touch the file system: the caller decides whether the directory can be created.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why a facilitator URL cannot name a spool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot name a spool after the facilitator URL {url:?}: {problem}")]
pub struct SpoolUrlError {
    /// The URL given.
    pub url: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// The form of a facilitator URL a spool is named after and records: the scheme and host lower-cased, a default
/// port dropped (80 for `ws`, 443 for `wss`), an empty path written `/` (the request line is the same), a fragment
/// dropped (never sent); the user part, path and query kept exactly as given.
///
/// So `WSS://Facilitator.Example:443/ws/v0/` and `wss://facilitator.example/ws/v0/` share one spool, while
/// `/ws/v0` and `/ws/v0/` do not (the server may route them differently).
///
/// ```
/// # use facilitator_client::spool::normalise_url;
/// assert_eq!(normalise_url("WSS://Facilitator.Example:443/ws/v0/").unwrap(), "wss://facilitator.example/ws/v0/");
/// assert_eq!(normalise_url("ws://127.0.0.1:8080").unwrap(), "ws://127.0.0.1:8080/");
/// ```
pub fn normalise_url(url: &str) -> Result<String, SpoolUrlError> {
    let error = |problem| SpoolUrlError {
        url: url.to_owned(),
        problem,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| error("it has no scheme (expected ws:// or wss://)"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "ws" => 80,
        "wss" => 443,
        _ => return Err(error("the scheme must be ws:// or wss://")),
    };
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(authority_end);
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    // An IPv6 literal is bracketed; its colons are not a port separator.
    let (host, port) = if host_port.starts_with('[') {
        let close = host_port
            .find(']')
            .ok_or_else(|| error("an IPv6 address lacks its closing `]`"))?;
        let (host, after) = host_port.split_at(close + 1);
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(error("unexpected text after the IPv6 address")),
            },
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(error("there is no host"));
    }
    let port = match port {
        // `host:` with nothing after the colon means the default port (RFC 3986 6.2.3).
        None | Some("") => None,
        Some(digits) => {
            let n: u16 = digits
                .parse()
                .map_err(|_| error("the port is not a number from 0 to 65535"))?;
            (n != default_port).then_some(n)
        }
    };
    let mut out = format!("{scheme}://");
    if let Some(user) = userinfo {
        out.push_str(user);
        out.push('@');
    }
    out.push_str(&host.to_ascii_lowercase());
    if let Some(port) = port {
        out.push_str(&format!(":{port}"));
    }
    if !path_and_query.starts_with('/') {
        out.push('/');
    }
    out.push_str(path_and_query);
    Ok(out)
}

/// The default spool file: `<state_dir>/facilitator-client/<ss58>-<h>.spool`, where `<h>` is the first 12 hex
/// digits of the SHA-256 of [`normalise_url`]`(url)`; so every spelling of one facilitator finds the same file.
///
/// ```
/// # use std::path::Path;
/// # use facilitator_client::spool::default_path;
/// let p = default_path(Path::new("/state"), "5Hotkey", "WSS://Facilitator.Example:443/ws/v0/").unwrap();
/// assert_eq!(p, Path::new("/state/facilitator-client/5Hotkey-e8856186fad6.spool"));
/// ```
pub fn default_path(
    state_dir: &Path,
    hotkey_ss58: &str,
    url: &str,
) -> Result<PathBuf, SpoolUrlError> {
    let digest = Sha256::digest(normalise_url(url)?.as_bytes());
    let short = hex::encode(&digest[..6]);
    Ok(state_dir
        .join("facilitator-client")
        .join(format!("{hotkey_ss58}-{short}.spool")))
}

/// The user's state directory: `$XDG_STATE_HOME` if it is set to an absolute path, else `$HOME/.local/state`
/// (the XDG base directory rules); `None` when neither can be had (no usable `$HOME`).
pub fn default_state_dir() -> Option<PathBuf> {
    state_dir_from(
        std::env::var_os("XDG_STATE_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

fn state_dir_from(
    xdg_state_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    // The XDG rules: a relative value is invalid and ignored.
    if let Some(dir) = xdg_state_home.map(Path::new)
        && dir.is_absolute()
    {
        return Some(dir.to_path_buf());
    }
    let home = Path::new(home?);
    home.is_absolute()
        .then(|| home.join(".local").join("state"))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn scheme_and_host_are_lower_cased_and_the_default_port_dropped() {
        for (given, expected) in [
            (
                "WSS://Facilitator.Example:443/ws/v0/",
                "wss://facilitator.example/ws/v0/",
            ),
            ("ws://Host:80/a", "ws://host/a"),
            ("ws://host:443/a", "ws://host:443/a"),
            ("wss://host:80/a", "wss://host:80/a"),
            ("ws://host:/a", "ws://host/a"),
            ("ws://host:08080/a", "ws://host:8080/a"),
            ("ws://[::1]:80/", "ws://[::1]/"),
            ("ws://[::1]:9000/x", "ws://[::1]:9000/x"),
            ("ws://host", "ws://host/"),
            ("ws://host?x=1", "ws://host/?x=1"),
            ("ws://host/a#frag", "ws://host/a"),
        ] {
            assert_eq!(normalise_url(given).unwrap(), expected, "{given}");
        }
    }

    #[test]
    fn the_path_query_and_user_part_are_kept_as_given() {
        assert_eq!(
            normalise_url("wss://User:Pw@HOST/Ws/V0/?Key=A%2f").unwrap(),
            "wss://User:Pw@host/Ws/V0/?Key=A%2f"
        );
        assert_ne!(
            normalise_url("ws://h/ws/v0").unwrap(),
            normalise_url("ws://h/ws/v0/").unwrap()
        );
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for url in [
            "WSS://A.B:443",
            "ws://x:1/p?q",
            "ws://[::1]:80",
            "ws://u@H:80/",
        ] {
            let once = normalise_url(url).unwrap();
            assert_eq!(normalise_url(&once).unwrap(), once);
        }
    }

    #[test]
    fn urls_that_name_no_facilitator_are_refused() {
        for bad in [
            "facilitator.example",
            "http://h/",
            "ws:///path",
            "ws://h:99999/",
            "ws://h:x/",
            "ws://[::1/",
            "ws://[::1]x/",
        ] {
            assert!(normalise_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_file_is_named_after_the_hotkey_and_the_urls_hash() {
        let path = default_path(
            Path::new("/state"),
            "5Hotkey",
            "wss://facilitator.example/ws/v0/",
        )
        .unwrap();
        // `printf %s wss://facilitator.example/ws/v0/ | sha256sum | cut -c1-12`
        assert_eq!(
            path,
            Path::new("/state/facilitator-client/5Hotkey-e8856186fad6.spool")
        );
        let other = default_path(
            Path::new("/state"),
            "5Hotkey",
            "wss://staging.example/ws/v0/",
        );
        assert_ne!(Ok(path.clone()), other);
        let same = default_path(
            Path::new("/state"),
            "5Hotkey",
            "WSS://FACILITATOR.example:443/ws/v0/",
        );
        assert_eq!(Ok(path), same);
        assert!(default_path(Path::new("/state"), "5Hotkey", "http://x/").is_err());
    }

    #[test]
    fn the_state_directory_follows_the_xdg_rules() {
        assert_eq!(
            state_dir_from(Some(OsStr::new("/xdg")), Some(OsStr::new("/home/u"))),
            Some(PathBuf::from("/xdg"))
        );
        assert_eq!(
            state_dir_from(Some(OsStr::new("rel")), Some(OsStr::new("/home/u"))),
            Some(PathBuf::from("/home/u/.local/state"))
        );
        assert_eq!(
            state_dir_from(None, Some(OsStr::new("/home/u"))),
            Some(PathBuf::from("/home/u/.local/state"))
        );
        assert_eq!(state_dir_from(None, None), None);
        assert_eq!(state_dir_from(None, Some(OsStr::new(""))), None);
    }
}
