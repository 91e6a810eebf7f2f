//! ed25519 key files. Private keys are PKCS#8 PEM files written with mode 0600 and refused when
//! anyone but the owner can read them; public keys are SPKI PEM files. Both interoperate with
//! `openssl pkey`. A key's fingerprint is the first 16 hex characters of sha256 of its 32 bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::ids::Sha256;

/// Errors from reading or writing key files. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists and would be overwritten.
    #[error("{path}: already exists; refusing to overwrite a key")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file is readable by group or others.
    #[error(
        "{path}: private key file has mode {mode:o}; it must not be readable by group or others (chmod 600 {path})"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a key of the expected kind.
    #[error("{path}: not an ed25519 {what} in PEM form: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// "private key (PKCS#8)" or "public key (SPKI)".
        what: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The system random source failed.
    #[error("cannot draw random bytes for a key: {0}")]
    Random(String),
}

/// A fresh key from the operating system's random source.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The short fingerprint of a public key, for logs and tables.
pub fn fingerprint(key: &VerifyingKey) -> String {
    Sha256::of(key.as_bytes()).to_string()[..16].to_string()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create_new(path: &Path, mode: u32) -> Result<std::fs::File, KeyError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            io(path)(e)
        }
    })
}

/// Writes a private key as PKCS#8 PEM, mode 0600; refuses to overwrite.
pub fn write_private(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    // PKCS#8 v1 (RFC 5208: the secret key alone), which every common tool reads — OpenSSL 3.0
    // and Python's `cryptography` refuse the v2 form with the public key inside that
    // `SigningKey::to_pkcs8_pem` writes. Both forms are read.
    let v1 = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let pem = v1
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Format {
            path: path.to_path_buf(),
            what: "private key (PKCS#8)",
            message: e.to_string(),
        })?;
    let mut f = create_new(path, 0o600)?;
    f.write_all(pem.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Writes a public key as SPKI PEM, mode 0644; refuses to overwrite.
pub fn write_public(path: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    let mut f = create_new(path, 0o644)?;
    f.write_all(public_pem(key).as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// A public key as SPKI PEM text.
pub fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("an ed25519 public key always encodes")
}

/// Reads a private key, refusing files readable by group or others.
pub fn read_private(path: &Path) -> Result<SigningKey, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Format {
        path: path.to_path_buf(),
        what: "private key (PKCS#8)",
        message: e.to_string(),
    })
}

/// Reads a public key file.
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    parse_public(&text).map_err(|message| KeyError::Format {
        path: path.to_path_buf(),
        what: "public key (SPKI)",
        message,
    })
}

/// Parses SPKI PEM text.
pub fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate().unwrap();
        let (sk, pk) = (dir.path().join("k.pem"), dir.path().join("k.pub.pem"));
        write_private(&sk, &key).unwrap();
        write_public(&pk, &key.verifying_key()).unwrap();
        assert_eq!(read_private(&sk).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(read_public(&pk).unwrap(), key.verifying_key());
        assert!(
            std::fs::read_to_string(&sk)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        assert!(matches!(
            write_private(&sk, &key),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(fingerprint(&key.verifying_key()).len(), 16);
        assert_ne!(generate().unwrap().to_bytes(), key.to_bytes());
    }

    /// Regression: keygen wrote PKCS#8 v2 (with the public key inside), which Python's
    /// `cryptography` and OpenSSL 3.0 refuse. The file is now RFC 8410's v1 form exactly, and a
    /// v2 file written by an earlier release is still read.
    #[test]
    fn private_keys_are_written_as_pkcs8_v1_and_v2_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let sk = dir.path().join("k.pem");
        write_private(&sk, &key).unwrap();
        let pem = std::fs::read_to_string(&sk).unwrap();
        let (label, der) =
            ed25519_dalek::pkcs8::spki::der::pem::decode_vec(pem.as_bytes()).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        let mut want = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        want.extend_from_slice(&[9; 32]);
        assert_eq!(der, want, "version 0 (v1), no public key");
        let v2 = dir.path().join("v2.pem");
        let text = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert!(
            text.len() > pem.len(),
            "the v2 form carries the public key too"
        );
        let mut f = create_new(&v2, 0o600).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        drop(f);
        assert_eq!(read_private(&v2).unwrap().to_bytes(), key.to_bytes());
    }

    #[cfg(unix)]
    #[test]
    fn loose_private_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sk = dir.path().join("k.pem");
        write_private(&sk, &generate().unwrap()).unwrap();
        assert_eq!(
            std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private(&sk).unwrap_err().to_string();
        assert!(
            err.contains("mode 644") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_a_format_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let pk = dir.path().join("bad.pem");
        std::fs::write(&pk, "hello").unwrap();
        let err = read_public(&pk).unwrap_err().to_string();
        assert!(err.contains("bad.pem: not an ed25519 public key"), "{err}");
    }
}
