//! Ed25519 keys in ggen's hex format, the daemon's signing key, and the trust store (`trusted-keys.toml`).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {}{reason}", crate::located::about(.field))]
    Invalid {
        file: PathBuf,
        line: usize,
        field: String,
        reason: String,
    },
    #[error("cannot write {file}: {source}")]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness available: {0}")]
    Random(String),
}

pub use crate::located::{line_of, toml_error};

/// A key that signs: the daemon's, a maintainer's or a publisher's.
#[derive(Clone)]
pub struct KeyPair {
    pub key_id: String,
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({}, {})", self.key_id, self.public_hex())
    }
}

impl KeyPair {
    pub fn generate(key_id: impl Into<String>) -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(key_id, seed))
    }

    /// A deterministic key, for generated registries and tests.
    pub fn from_seed(key_id: impl Into<String>, seed: [u8; 32]) -> Self {
        Self {
            key_id: key_id.into(),
            signing: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.public().to_bytes())
    }

    pub fn secret_hex(&self) -> String {
        hex::encode(self.signing.to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> String {
        hex::encode(self.signing.sign(msg).to_bytes())
    }

    /// Reads a secret key file: 64 hex chars (the seed) or 128 (seed then public key, as ggen writes
    /// a key pair). The key id is the file stem.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| KeyError::Invalid {
            file: path.to_path_buf(),
            line: 1,
            field: "secret_key_hex".into(),
            reason,
        };
        let bytes = hex::decode(text.trim()).map_err(|e| invalid(format!("not hex: {e}")))?;
        let seed: [u8; 32] = match bytes.len() {
            32 | 64 => bytes[..32]
                .try_into()
                .map_err(|_| invalid("bad length".into()))?,
            n => return Err(invalid(format!("expected 32 or 64 bytes, found {n}"))),
        };
        let pair = Self::from_seed(key_id_of(path), seed);
        if bytes.len() == 64 && bytes[32..] != pair.public().to_bytes() {
            return Err(invalid(
                "the public half does not match the secret half".into(),
            ));
        }
        Ok(pair)
    }

    /// Writes `DIR/ID.key` (secret, owner-only) and `DIR/ID.pub` (public), both hex.
    pub fn save(&self, dir: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
        let secret = dir.join(format!("{}.key", self.key_id));
        let public = dir.join(format!("{}.pub", self.key_id));
        write_private(&secret, &format!("{}\n", self.secret_hex()))?;
        std::fs::write(&public, format!("{}\n", self.public_hex())).map_err(|source| {
            KeyError::Write {
                file: public.clone(),
                source,
            }
        })?;
        Ok((secret, public))
    }
}

fn key_id_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".into())
}

fn write_private(path: &Path, text: &str) -> Result<(), KeyError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| KeyError::Write {
            file: path.to_path_buf(),
            source,
        })
}

/// Parses a hex public key.
pub fn parse_public_hex(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(hex_key.trim()).map_err(|e| format!("not hex: {e}"))?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("expected 32 bytes, found {}", bytes.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// Verifies a hex signature over `msg`; any malformed input is simply "not valid".
pub fn verify_hex(key: &VerifyingKey, msg: &[u8], signature_hex: &str) -> bool {
    let Ok(bytes) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify(msg, &sig).is_ok()
}

/// What a key is trusted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Maintainer,
    Publisher,
    Daemon,
}

#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key_id: String,
    pub public: VerifyingKey,
    pub public_hex: String,
    pub label: String,
    /// Empty means every role, as in ggen's format, which has no roles.
    pub roles: Vec<Role>,
}

impl TrustedKey {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }
}

/// What the trust store says of a key id.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    Trusted(&'a TrustedKey),
    Revoked,
    Unknown,
}

/// ggen's `trusted-keys.toml`: trusted keys and revoked key ids.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    pub keys: BTreeMap<String, TrustedKey>,
    pub revoked: Vec<String>,
    /// A digest of the file's content, so a change to it can be noticed cheaply.
    pub digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    #[serde(default)]
    trusted_keys: Vec<TrustEntry>,
    #[serde(default)]
    revoked_keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustEntry {
    key_id: toml::Spanned<String>,
    public_key_hex: toml::Spanned<String>,
    #[serde(default)]
    label: String,
    #[serde(default)]
    roles: Vec<Role>,
}

impl TrustStore {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let src = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &src)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Self, KeyError> {
        let file: TrustFile = toml::from_str(src).map_err(|e| {
            let (line, reason) = toml_error(src, &e);
            KeyError::Invalid {
                file: path.to_path_buf(),
                line,
                field: "trusted_keys".into(),
                reason,
            }
        })?;
        let mut keys = BTreeMap::new();
        for entry in file.trusted_keys {
            let at = |span: std::ops::Range<usize>| line_of(src, span.start);
            let public = parse_public_hex(entry.public_key_hex.get_ref()).map_err(|reason| {
                KeyError::Invalid {
                    file: path.to_path_buf(),
                    line: at(entry.public_key_hex.span()),
                    field: "public_key_hex".into(),
                    reason,
                }
            })?;
            let key_id = entry.key_id.get_ref().clone();
            if keys.contains_key(&key_id) {
                return Err(KeyError::Invalid {
                    file: path.to_path_buf(),
                    line: at(entry.key_id.span()),
                    field: "key_id".into(),
                    reason: format!("duplicate key id `{key_id}`"),
                });
            }
            keys.insert(
                key_id.clone(),
                TrustedKey {
                    key_id,
                    public_hex: hex::encode(public.to_bytes()),
                    public,
                    label: entry.label,
                    roles: entry.roles,
                },
            );
        }
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(src.as_bytes()));
        Ok(Self {
            keys,
            revoked: file.revoked_keys,
            digest,
        })
    }

    pub fn trust(&self, key_id: &str) -> Trust<'_> {
        if self.revoked.iter().any(|k| k == key_id) {
            return Trust::Revoked;
        }
        match self.keys.get(key_id) {
            Some(k) => Trust::Trusted(k),
            None => Trust::Unknown,
        }
    }

    /// Renders the store in ggen's format.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let revoked: Vec<String> = self.revoked.iter().map(|k| format!("{k:?}")).collect();
        out.push_str(&format!("revoked_keys = [{}]\n", revoked.join(", ")));
        for k in self.keys.values() {
            out.push_str("\n[[trusted_keys]]\n");
            out.push_str(&format!("key_id = {:?}\n", k.key_id));
            out.push_str(&format!("public_key_hex = {:?}\n", k.public_hex));
            out.push_str(&format!("label = {:?}\n", k.label));
            if !k.roles.is_empty() {
                let roles: Vec<String> = k
                    .roles
                    .iter()
                    .map(|r| {
                        format!(
                            "{:?}",
                            match r {
                                Role::Maintainer => "maintainer",
                                Role::Publisher => "publisher",
                                Role::Daemon => "daemon",
                            }
                        )
                    })
                    .collect();
                out.push_str(&format!("roles = [{}]\n", roles.join(", ")));
            }
        }
        out
    }

    pub fn add(&mut self, key: &KeyPair, label: &str, roles: Vec<Role>) {
        self.keys.insert(
            key.key_id.clone(),
            TrustedKey {
                key_id: key.key_id.clone(),
                public: key.public(),
                public_hex: key.public_hex(),
                label: label.to_string(),
                roles,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_key_and_message() {
        let a = KeyPair::from_seed("a", [1; 32]);
        let b = KeyPair::from_seed("b", [2; 32]);
        let sig = a.sign(b"hello");
        assert!(verify_hex(&a.public(), b"hello", &sig));
        assert!(!verify_hex(&a.public(), b"hellO", &sig));
        assert!(!verify_hex(&b.public(), b"hello", &sig));
        assert!(!verify_hex(&a.public(), b"hello", "zz"));
    }

    #[test]
    fn key_files_round_trip_and_keep_their_id() {
        let dir = tempfile::tempdir().unwrap();
        let k = KeyPair::generate("maint-alice").unwrap();
        let (secret, _) = k.save(dir.path()).unwrap();
        let back = KeyPair::load(&secret).unwrap();
        assert_eq!(back.key_id, "maint-alice");
        assert_eq!(back.public_hex(), k.public_hex());
    }

    #[test]
    fn trust_store_bad_hex_names_file_line_and_field() {
        let src =
            "revoked_keys = []\n\n[[trusted_keys]]\nkey_id = \"k1\"\npublic_key_hex = \"nothex\"\n";
        let err = TrustStore::parse(Path::new("trusted-keys.toml"), src).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("trusted-keys.toml:5: field `public_key_hex`"),
            "{msg}"
        );
    }

    #[test]
    fn revoked_keys_are_not_trusted_even_when_listed() {
        let k = KeyPair::from_seed("pub-1", [3; 32]);
        let mut store = TrustStore::default();
        store.add(&k, "publisher one", vec![Role::Publisher]);
        assert!(matches!(store.trust("pub-1"), Trust::Trusted(_)));
        store.revoked.push("pub-1".into());
        let parsed = TrustStore::parse(Path::new("t.toml"), &store.to_toml()).unwrap();
        assert!(matches!(parsed.trust("pub-1"), Trust::Revoked));
        assert!(matches!(parsed.trust("nobody"), Trust::Unknown));
    }
}
