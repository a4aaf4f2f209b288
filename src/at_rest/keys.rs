//! Data keys: the cluster's keys for sealing stored records, where they come from
//! ([`KeySource`]; a key file today, a KMS later), and how a store recognises the keys
//! it was sealed with.
//!
//! Records are sealed with XChaCha20-Poly1305: HChaCha20 derives a subkey from the key
//! and the first 16 bytes of the 24-byte nonce, and ring's ChaCha20-Poly1305 (assembly,
//! about 3× the pure-Rust crate's speed on a 1 KiB record) seals under it with the
//! last 8. The bytes are the standard construction's, so stores sealed before keep
//! opening (a test checks against the pure-Rust `chacha20poly1305` crate).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A data key's number, stored in the header of every record it seals.
pub type KeyId = u32;

/// What identifies a key without revealing it: the AEAD tag of an empty message under
/// a fixed nonce. Stored in the store, so that a different key under a known id is
/// refused at start instead of making every record look tampered with.
pub type Fingerprint = [u8; 16];

/// Bytes of a key, and of the random nonce stored with each sealed record (192 bits:
/// random nonces never repeat in practice, however many writes a key seals).
pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The data keys in force. New records are sealed with the newest (highest id); the
/// others stay to open records written before a rotation.
pub struct Keyring {
    keys: BTreeMap<KeyId, [u8; KEY_LEN]>,
}

/// The ChaCha20-Poly1305 key and 96-bit nonce that XChaCha20-Poly1305 seals with
/// under `key` and the 192-bit `nonce`.
fn xchacha(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
    use chacha20::cipher::consts::U10;
    let subkey = chacha20::hchacha::<U10>(key.into(), nonce[..16].into());
    let key = UnboundKey::new(&CHACHA20_POLY1305, &subkey).expect("a 32-byte key");
    let mut short = [0u8; 12];
    short[4..].copy_from_slice(&nonce[16..]);
    (LessSafeKey::new(key), Nonce::assume_unique_for_key(short))
}

impl Keyring {
    pub fn new(keys: &BTreeMap<KeyId, [u8; KEY_LEN]>) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("no data keys".into());
        }
        Ok(Keyring { keys: keys.clone() })
    }

    /// The key new records are sealed with.
    pub fn newest(&self) -> KeyId {
        *self
            .keys
            .keys()
            .next_back()
            .expect("a keyring is never empty")
    }

    pub fn fingerprints(&self) -> BTreeMap<KeyId, Fingerprint> {
        self.keys
            .iter()
            .map(|(id, key)| {
                let (key, nonce) = xchacha(key, &[0; NONCE_LEN]);
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::empty(), &mut [])
                    .expect("sealing an empty message cannot fail");
                (
                    *id,
                    tag.as_ref().try_into().expect("a Poly1305 tag is 16 bytes"),
                )
            })
            .collect()
    }

    /// Seals what `write_plain` appends to `out` with key `id` (one of the ring's),
    /// leaving `nonce ‖ ciphertext ‖ tag` there: the plaintext is written once, in
    /// place, and encrypted there. `aad` is authenticated but not stored.
    pub fn seal(
        &self,
        id: KeyId,
        aad: &[u8],
        out: &mut Vec<u8>,
        write_plain: impl FnOnce(&mut Vec<u8>),
    ) {
        use rand::RngCore;
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let start = out.len();
        write_plain(out);
        out.reserve(TAG_LEN);
        let (key, nonce) = xchacha(&self.keys[&id], &nonce);
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out[start..])
            .expect("sealing cannot fail");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens what [`Keyring::seal`] made with key `id`.
    pub fn open(&self, id: KeyId, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let key = self.keys.get(&id).ok_or(OpenError::NoKey(id))?;
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Tampered);
        }
        let (nonce, msg) = sealed.split_at(NONCE_LEN);
        let (key, nonce) = xchacha(key, nonce.try_into().expect("24 bytes"));
        let mut body = msg.to_vec();
        let plain_len = key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| OpenError::Tampered)?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

/// Why a sealed record could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The tag does not match: the bytes were changed (or moved from another key).
    #[error("record fails its authentication tag")]
    Tampered,
    /// Sealed with a key this server does not have: a configuration error, not damage.
    #[error("record sealed with data key {0}, which this server does not have")]
    NoKey(KeyId),
}

/// Where a storage server gets its data keys: read at start and on every reload, so
/// that a rotation needs no restart. A key file today; a KMS client can implement it.
pub trait KeySource: Send + Sync {
    fn load(&self) -> Result<Keyring, String>;
    /// Names the source in log lines and errors.
    fn describe(&self) -> String;
}

/// Keys given in code: the simulator's, the fuzzer's and the tests' (no file to keep).
pub struct StaticKeys(pub BTreeMap<KeyId, [u8; KEY_LEN]>);

impl KeySource for StaticKeys {
    fn load(&self) -> Result<Keyring, String> {
        Keyring::new(&self.0)
    }

    fn describe(&self) -> String {
        format!("{} keys given in code", self.0.len())
    }
}

/// A TOML file of `[[key]]` tables (`id`, `secret`: 64 hex digits), readable by its
/// owner only. `junokv keys add FILE` makes one and adds keys to it.
pub struct KeyFile {
    pub path: PathBuf,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyFileText {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: KeyId,
    secret: String,
}

impl KeyFile {
    fn read(path: &Path) -> Result<BTreeMap<KeyId, [u8; KEY_LEN]>, String> {
        let text = crate::secret_file::read(path)?;
        let file: KeyFileText =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut keys = BTreeMap::new();
        for entry in file.key {
            let secret = from_hex(&entry.secret).ok_or_else(|| {
                format!(
                    "{}: key {}: `secret` must be {} hex digits",
                    path.display(),
                    entry.id,
                    2 * KEY_LEN
                )
            })?;
            if keys.insert(entry.id, secret).is_some() {
                return Err(format!("{}: key {} given twice", path.display(), entry.id));
            }
        }
        Ok(keys)
    }

    /// Adds a fresh random key, numbered one above the highest in the file (creating the
    /// file, mode 0600, if it does not exist), and returns its id. New writes use it
    /// once the storage servers reload their keys.
    pub fn add_key(path: &Path) -> Result<KeyId, String> {
        use rand::RngCore;
        let mut keys = if path.exists() {
            Self::read(path)?
        } else {
            BTreeMap::new()
        };
        let id = keys.keys().next_back().map_or(1, |id| id + 1);
        let mut secret = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        keys.insert(id, secret);
        let file = KeyFileText {
            key: keys
                .iter()
                .map(|(id, k)| KeyEntry {
                    id: *id,
                    secret: to_hex(k),
                })
                .collect(),
        };
        let text = format!(
            "# JunoKV data keys. New records are sealed with the highest id; keep the older\n\
             # ones until every storage server logs that no record is sealed with them.\n\n{}",
            toml::to_string(&file).expect("a key file serialises")
        );
        crate::secret_file::write(path, &text, true)?;
        Ok(id)
    }
}

impl KeySource for KeyFile {
    fn load(&self) -> Result<Keyring, String> {
        Keyring::new(&Self::read(&self.path)?).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn describe(&self) -> String {
        format!("key file {}", self.path.display())
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<[u8; KEY_LEN]> {
    let text = text.as_bytes();
    if text.len() != 2 * KEY_LEN {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in text.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[KeyId]) -> Keyring {
        Keyring::new(&ids.iter().map(|id| (*id, [*id as u8; KEY_LEN])).collect()).unwrap()
    }

    fn sealed(r: &Keyring, id: KeyId, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        r.seal(id, aad, &mut out, |o| o.extend_from_slice(plain));
        out
    }

    proptest::proptest! {
        /// The bytes are XChaCha20-Poly1305's as the pure-Rust crate makes them (the
        /// sealer before ring's): records sealed either way open the other way.
        #[test]
        fn seals_as_the_reference_xchacha20_poly1305(
            key: [u8; KEY_LEN],
            aad in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            plain in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
        ) {
            use chacha20poly1305::aead::{Aead, KeyInit, Payload};
            use chacha20poly1305::{XChaCha20Poly1305, XNonce};
            let reference = XChaCha20Poly1305::new(&key.into());
            let r = Keyring::new(&[(1, key)].into()).unwrap();
            let ours = sealed(&r, 1, &aad, &plain);
            let (nonce, msg) = ours.split_at(NONCE_LEN);
            let nonce = XNonce::from_slice(nonce);
            let opened = reference.decrypt(nonce, Payload { msg, aad: &aad }).unwrap();
            proptest::prop_assert_eq!(&opened, &plain);
            let theirs = reference.encrypt(nonce, Payload { msg: &plain, aad: &aad }).unwrap();
            let mut stored = nonce.to_vec();
            stored.extend_from_slice(&theirs);
            proptest::prop_assert_eq!(&stored, &ours);
            proptest::prop_assert_eq!(r.open(1, &aad, &stored).unwrap(), plain);
            let tag = reference.encrypt(&XNonce::default(), &b""[..]).unwrap();
            proptest::prop_assert_eq!(&r.fingerprints()[&1][..], &tag[..]);
        }
    }

    #[test]
    fn the_newest_key_is_the_highest_and_any_key_opens_its_own() {
        let old = ring(&[1]);
        let sealed = sealed(&old, old.newest(), b"k", b"value");
        let both = ring(&[1, 2]);
        assert_eq!(both.newest(), 2);
        assert_eq!(both.open(1, b"k", &sealed).unwrap(), b"value");
        assert_eq!(ring(&[2]).open(1, b"k", &sealed), Err(OpenError::NoKey(1)));
    }

    #[test]
    fn any_change_or_another_key_or_aad_is_detected() {
        let r = ring(&[1]);
        let sealed = sealed(&r, 1, b"k", b"value");
        for i in 0..sealed.len() * 8 {
            let mut b = sealed.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(r.open(1, b"k", &b), Err(OpenError::Tampered), "bit {i}");
        }
        assert_eq!(r.open(1, b"other", &sealed), Err(OpenError::Tampered));
        let imposter = Keyring::new(&[(1, [9; KEY_LEN])].into()).unwrap();
        assert_eq!(imposter.open(1, b"k", &sealed), Err(OpenError::Tampered));
        assert_ne!(imposter.fingerprints(), r.fingerprints());
    }

    #[test]
    fn key_file_is_made_private_grows_and_refuses_others_readers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        assert_eq!(KeyFile::add_key(&path).unwrap(), 1);
        assert_eq!(KeyFile::add_key(&path).unwrap(), 2);
        let file = KeyFile { path: path.clone() };
        let first = file.load().unwrap();
        assert_eq!(first.newest(), 2);
        assert_eq!(file.load().unwrap().fingerprints(), first.fingerprints());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = file.load().err().unwrap();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn malformed_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        for (text, expect) in [
            ("[[key]]\nid = 1\nsecret = \"abc\"\n", "hex digits"),
            ("", "no data keys"),
            (
                "[[key]]\nid = 1\nsecret = \"00\"\nextra = 1\n",
                "unknown field",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = KeyFile { path: path.clone() }.load().err().unwrap();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }
}
