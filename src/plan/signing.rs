//! Signed policy files: `NAME.toml.sig` holds a hex Ed25519 signature over the file's exact bytes.

use std::path::{Path, PathBuf};

use super::policy::{LoadOptions, PolicyError};
use crate::keys::{verify_hex, KeyPair, Role, TrustStore};

/// Who signed a file, as the trust store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    Maintainer(String),
    /// The signature is by a trusted key that lacks the maintainer role.
    NotMaintainer(String),
    Revoked(String),
    /// No key of the trust store made this signature.
    Unknown,
    Unsigned,
}

pub fn sig_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Signs a file's exact bytes; returns the path of the `.sig` written.
pub fn sign_file(file: &Path, key: &KeyPair) -> std::io::Result<PathBuf> {
    let bytes = std::fs::read(file)?;
    let sig = sig_path(file);
    std::fs::write(&sig, format!("{}\n", key.sign(&bytes)))?;
    Ok(sig)
}

/// Who signed `bytes`, given the content of its `.sig` file (None: there is none).
pub fn signer(bytes: &[u8], sig: Option<&str>, trust: &TrustStore) -> Signer {
    let Some(sig) = sig else {
        return Signer::Unsigned;
    };
    let sig = sig.trim();
    let mut revoked = None;
    for key in trust.keys.values() {
        if verify_hex(&key.public, bytes, sig) {
            if trust.revoked.contains(&key.key_id) {
                revoked = Some(key.key_id.clone());
                continue;
            }
            return if key.has_role(Role::Maintainer) {
                Signer::Maintainer(key.key_id.clone())
            } else {
                Signer::NotMaintainer(key.key_id.clone())
            };
        }
    }
    revoked.map(Signer::Revoked).unwrap_or(Signer::Unknown)
}

/// Checks one policy file's signature as `opts` asks: a present signature must be good and by a
/// maintainer; a missing one is an error only when signatures are required.
pub fn check_file(file: &Path, bytes: &[u8], opts: LoadOptions<'_>) -> Result<(), PolicyError> {
    // Without a trust store there is nothing to check a signature against.
    let Some(trust) = opts.trust else {
        return if opts.require_signed {
            Err(error(
                file,
                "signatures are required but no trust store is configured".into(),
            ))
        } else {
            Ok(())
        };
    };
    let sig = match std::fs::read_to_string(sig_path(file)) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(error(file, format!("cannot read its signature: {e}"))),
    };
    if sig.is_none() && !opts.require_signed {
        return Ok(());
    }
    match signer(bytes, sig.as_deref(), trust) {
        Signer::Maintainer(_) => Ok(()),
        Signer::Unsigned => Err(error(
            file,
            format!(
                "is not signed (no {}) and signed policies are required",
                sig_path(file).display()
            ),
        )),
        Signer::NotMaintainer(k) => Err(error(
            file,
            format!("is signed by `{k}`, which is not a maintainer key"),
        )),
        Signer::Revoked(k) => Err(error(file, format!("is signed by `{k}`, a revoked key"))),
        Signer::Unknown => Err(error(
            file,
            "has a bad signature: no trusted key made it, or the file changed after signing".into(),
        )),
    }
}

fn error(file: &Path, reason: String) -> PolicyError {
    PolicyError {
        file: file.to_path_buf(),
        line: 0,
        field: "signature".into(),
        reason,
    }
}
