//! The cryptography of the repository, in one place so it can be reviewed
//! in one sitting.
//!
//! - Confidentiality: age (X25519 + ChaCha20-Poly1305) to every recipient,
//!   per pack index and per manifest. Chunks are sealed with XChaCha20-Poly1305
//!   under a random data key of the writer (random 192-bit nonces, the chunk
//!   id as associated data); the keys travel in the pack index, so one X25519
//!   exchange covers a whole pack instead of one per chunk. Writers hold only
//!   recipients: they can decrypt nothing they did not write in this run.
//! - Chunk ids: BLAKE3 keyed with the repository's chunk-id key, so the ids
//!   stored in packs and the catalog say nothing about the plaintext to anyone
//!   without the key (no plain hash of plaintext ever leaves the process).
//! - Manifest authenticity: BLAKE3 keyed with the manifest MAC key. age alone
//!   is not enough: anyone can encrypt to a public recipient, so a forged
//!   manifest would decrypt fine; it cannot carry a valid MAC.

use std::io::{Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// The repository secret: the keys writers need besides the recipients.
/// Stored in the bucket age-encrypted to the recipients (`keys/repository`),
/// and handed to writers as a file (a Kubernetes Secret).
#[derive(Clone, Serialize, Deserialize)]
pub struct RepoSecret {
    /// Repository this secret belongs to.
    pub repository_id: uuid::Uuid,
    #[serde(with = "hex32")]
    pub chunk_id_key: [u8; 32],
    #[serde(with = "hex32")]
    pub manifest_mac_key: [u8; 32],
    /// SHA-256 of the repository's `config` object: the config is plain
    /// JSON (a reader needs it before any key), and this pins it, so a
    /// config written by anyone else is refused.
    #[serde(with = "hex32")]
    pub config_sha256: [u8; 32],
}

impl std::fmt::Debug for RepoSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoSecret({}, keys redacted)", self.repository_id)
    }
}

impl RepoSecret {
    /// A new secret for the repository `repository_id` whose `config`
    /// object has the SHA-256 `config_sha256`.
    pub fn generate(repository_id: uuid::Uuid, config_sha256: [u8; 32]) -> Result<Self> {
        let mut keys = [0u8; 64];
        getrandom::fill(&mut keys).map_err(|e| {
            Error::new(ErrorKind::Failed, format!("no randomness from the OS: {e}"))
        })?;
        Ok(RepoSecret {
            repository_id,
            chunk_id_key: keys[..32].try_into().unwrap(),
            manifest_mac_key: keys[32..].try_into().unwrap(),
            config_sha256,
        })
    }

    /// A short public name of this secret, safe to print and to put in a
    /// reader's configuration (`encryption.repository_fingerprint`): a
    /// reader pinned to it refuses a repository whose secret was replaced.
    /// Derived one-way, so it reveals nothing of the keys.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new_derive_key("drctl repository secret fingerprint v1");
        h.update(self.repository_id.as_bytes());
        h.update(&self.chunk_id_key);
        h.update(&self.manifest_mac_key);
        h.update(&self.config_sha256);
        let hex = hex::encode(&h.finalize().as_bytes()[..16]);
        format!("drs1-{hex}")
    }

    /// The keyed id of a chunk's plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.chunk_id_key, data).as_bytes())
    }

    /// The keyed id of a tree object ([`super::tree`]): domain-separated
    /// from chunk ids, so a file whose bytes equal a tree's serialisation is
    /// never taken for that tree (or the tree for it).
    pub fn tree_id(&self, data: &[u8]) -> ChunkId {
        let mut h = blake3::Hasher::new_keyed(&self.chunk_id_key);
        h.update(b"drctl tree v1\0");
        h.update(data);
        ChunkId(*h.finalize().as_bytes())
    }

    /// The key that seals tree objects. Derived from the secret, not
    /// random per run like data keys: an incremental backup reads its
    /// parent's trees, and writers hold the secret but never an identity.
    /// Trees hold names, sizes, owners and chunk ids, which the catalog
    /// (readable by writers) held before trees existed; file contents stay
    /// sealed to the recipients alone.
    pub fn tree_key(&self) -> DataKey {
        let mut h = blake3::Hasher::new_derive_key("drctl tree key v1");
        h.update(&self.chunk_id_key);
        h.update(&self.manifest_mac_key);
        DataKey(*h.finalize().as_bytes())
    }

    /// MAC of a manifest body.
    pub fn manifest_mac(&self, body: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.manifest_mac_key, body).as_bytes()
    }

    /// Seed of the content-defined chunker: secret, so chunk boundaries (and
    /// so sizes) do not fingerprint known files.
    pub fn chunker_seed(&self) -> u64 {
        let h = blake3::keyed_hash(&self.chunk_id_key, b"drctl chunker seed v1");
        u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("secret serialises")
    }

    /// The secret in the file `drctl repo init --secret-file` wrote.
    pub fn from_file(p: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(p).map_err(|e| {
            crate::error::Error::config(format!(
                "cannot read the repository secret {}",
                p.display()
            ))
            .with_source(e)
        })?;
        Self::from_json(&bytes).map_err(|_| {
            crate::error::Error::config(format!("{} is not a drctl repository secret", p.display()))
                .with_guidance("use the file `drctl repo init --secret-file` wrote")
        })
    }

    pub fn from_json(bytes: &[u8]) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A keyed BLAKE3 id of a chunk's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Decoded with a table: a pack index of tiny files holds 240,000 ids,
    /// and the `hex` crate's decoder was a quarter of a one-file restore.
    pub fn from_hex(s: &str) -> Option<Self> {
        const fn table() -> [u8; 256] {
            let mut t = [0xff; 256];
            let mut i = 0;
            while i < 10 {
                t[b'0' as usize + i] = i as u8;
                i += 1;
            }
            let mut i = 0;
            while i < 6 {
                t[b'a' as usize + i] = 10 + i as u8;
                t[b'A' as usize + i] = 10 + i as u8;
                i += 1;
            }
            t
        }
        static HEX: [u8; 256] = table();
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
            bad |= hi | lo;
            *o = (hi << 4) | (lo & 0x0f);
        }
        // Every valid digit is below 16; 0xff marks the rest.
        (bad < 16).then_some(ChunkId(out))
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    /// Decoded from the borrowed string where the input allows, without a
    /// `String` per id: a pack index of tiny files holds 240,000 of them,
    /// and a one-file restore parses it all.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = ChunkId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a chunk id: 64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<ChunkId, E> {
                ChunkId::from_hex(s).ok_or_else(|| E::custom("bad chunk id"))
            }
        }
        d.deserialize_str(Hex)
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// A random key that seals chunks. Made per writer thread per backup run;
/// stored only inside age-encrypted pack indexes.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(redacted)")
    }
}

const NONCE: usize = 24;
const TAG: usize = 16;

impl DataKey {
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| {
            Error::new(ErrorKind::Failed, format!("no randomness from the OS: {e}"))
        })?;
        Ok(DataKey(k))
    }

    fn cipher(&self) -> chacha20poly1305::XChaCha20Poly1305 {
        use chacha20poly1305::KeyInit;
        chacha20poly1305::XChaCha20Poly1305::new((&self.0).into())
    }

    /// `nonce ‖ ciphertext ‖ tag` of the concatenation of `parts`, bound to `id`.
    pub fn seal(&self, id: &ChunkId, parts: &[&[u8]]) -> Result<Vec<u8>> {
        self.seal_into(id, parts, Vec::new())
    }

    /// [`DataKey::seal`] into `out`, a buffer to reuse (its contents are
    /// discarded).
    pub fn seal_into(&self, id: &ChunkId, parts: &[&[u8]], mut out: Vec<u8>) -> Result<Vec<u8>> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        DataKey::start_blob(&mut out);
        out.reserve(len + TAG);
        for p in parts {
            out.extend_from_slice(p);
        }
        self.seal_in_place(id, &mut out)?;
        Ok(out)
    }

    /// Empties `out` and leaves room for the nonce: append the plaintext
    /// after it, then call [`DataKey::seal_in_place`]. Lets a compressor
    /// write straight into the blob, with no buffer and copy in between.
    pub fn start_blob(out: &mut Vec<u8>) {
        out.clear();
        out.resize(NONCE, 0);
    }

    /// Seals a blob begun with [`DataKey::start_blob`]: picks the nonce,
    /// encrypts what follows it in place and appends the tag.
    pub fn seal_in_place(&self, id: &ChunkId, out: &mut Vec<u8>) -> Result<()> {
        use chacha20poly1305::AeadInPlace;
        assert!(out.len() >= NONCE, "blob not started with start_blob");
        getrandom::fill(&mut out[..NONCE]).map_err(|e| {
            Error::new(ErrorKind::Failed, format!("no randomness from the OS: {e}"))
        })?;
        let (nonce, body) = out.split_at_mut(NONCE);
        let tag = self
            .cipher()
            .encrypt_in_place_detached((&*nonce).into(), &id.0, body)
            .map_err(|_| Error::new(ErrorKind::Failed, "chunk encryption failed"))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens a sealed blob of chunk `id`; `None` when it does not authenticate.
    pub fn open(&self, id: &ChunkId, blob: &[u8]) -> Option<Vec<u8>> {
        use chacha20poly1305::AeadInPlace;
        if blob.len() < NONCE + TAG {
            return None;
        }
        let (nonce, rest) = blob.split_at(NONCE);
        let (body, tag) = rest.split_at(rest.len() - TAG);
        let mut plain = body.to_vec();
        self.cipher()
            .decrypt_in_place_detached(nonce.into(), &id.0, &mut plain, tag.into())
            .ok()?;
        Some(plain)
    }
}

impl Serialize for DataKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        hex32::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for DataKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        hex32::deserialize(d).map(DataKey)
    }
}

/// age recipients, parsed.
#[derive(Clone)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    pub fn parse(list: &[String]) -> Result<Self> {
        if list.is_empty() {
            return Err(Error::config("no age recipients configured").with_guidance(
                "set encryption.recipients in the configuration (drctl key generate prints one)",
            ));
        }
        let parsed = list
            .iter()
            .map(|r| {
                age::x25519::Recipient::from_str(r)
                    .map_err(|e| Error::config(format!("`{r}` is not an age recipient: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Recipients(parsed))
    }

    /// Short, public fingerprints of the recipients for the repository config.
    pub fn fingerprints(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|r| hex::encode(&crate::store::sha256(r.to_string().as_bytes())[..8]))
            .collect()
    }

    /// Encrypts `plain` to every recipient.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        self.encrypt_parts(&[plain])
    }

    /// Encrypts the concatenation of `parts` without building it first.
    pub fn encrypt_parts(&self, parts: &[&[u8]]) -> Vec<u8> {
        let enc = age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
            .expect("x25519 recipients always wrap");
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // age adds a header (~200 bytes a recipient) and 16 bytes per 64 KiB.
        let mut out = Vec::with_capacity(len + len / 4096 + 256 * self.0.len() + 64);
        let mut w = enc.wrap_output(&mut out).expect("writing to a Vec");
        for p in parts {
            w.write_all(p).expect("writing to a Vec");
        }
        w.finish().expect("writing to a Vec");
        out
    }
}

/// What decrypts the repository: the age identity, or a restore grant.
///
/// A grant is what a node agent gets to restore one backup without the
/// identity: the plaintexts of exactly the age files that backup needs
/// (its manifest, its packs' indexes), each under the BLAKE3 hash of its
/// ciphertext, decrypted by the restore's coordinator (which holds the
/// identity) and sent to the agent encrypted to a key the agent made for
/// that one job. It decrypts nothing else: any other age file is refused.
/// What it yields is checked as ever (the manifest's MAC, each pack's
/// hash, each chunk's AEAD tag and keyed id), so a forged grant can make
/// a restore fail, never make it write what the repository does not hold.
pub struct Identity {
    keys: Vec<age::x25519::Identity>,
    granted: std::collections::HashMap<[u8; 32], Vec<u8>>,
}

/// The plaintexts a restore grant carries (see [`Identity`]).
#[derive(Default)]
pub struct Grant(std::collections::HashMap<[u8; 32], Vec<u8>>);

impl Grant {
    /// Adds the plaintext of the age file `sealed`.
    pub fn add(&mut self, sealed: &[u8], plain: Vec<u8>) {
        self.0.insert(*blake3::hash(sealed).as_bytes(), plain);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The grant encrypted to `recipient` (the agent's key for one job).
    pub fn seal_to(&self, recipient: &str) -> Result<Vec<u8>> {
        let mut plain = Vec::new();
        for (hash, text) in &self.0 {
            plain.extend_from_slice(hash);
            plain.extend_from_slice(&(text.len() as u64).to_le_bytes());
            plain.extend_from_slice(text);
        }
        Ok(Recipients::parse(&[recipient.to_string()])?.encrypt(&plain))
    }

    /// A grant [`Grant::seal_to`] made, opened with the job's key.
    pub fn open(sealed: &[u8], key: &Identity) -> Result<Grant> {
        let plain = key.decrypt("the restore grant", sealed)?;
        let bad = || Error::new(ErrorKind::Integrity, "the restore grant is malformed");
        let mut out = std::collections::HashMap::new();
        let mut rest = &plain[..];
        while !rest.is_empty() {
            if rest.len() < 40 {
                return Err(bad());
            }
            let hash: [u8; 32] = rest[..32].try_into().unwrap();
            let len = u64::from_le_bytes(rest[32..40].try_into().unwrap()) as usize;
            if rest.len() - 40 < len {
                return Err(bad());
            }
            out.insert(hash, rest[40..40 + len].to_vec());
            rest = &rest[40 + len..];
        }
        Ok(Grant(out))
    }
}

impl Identity {
    /// Reads an identity file (`AGE-SECRET-KEY-1…` lines; `#` comments).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the age identity can be read by other users: it decrypts every backup; chmod 600 it"
                );
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                e,
                ErrorKind::Failed,
                format!("cannot read identity file {}", path.display()),
            )
            .with_guidance("pass the age identity with --identity FILE or DRCTL_IDENTITY_FILE")
        })?;
        let ids: Vec<_> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
            .filter_map(|l| age::x25519::Identity::from_str(l).ok())
            .collect();
        if ids.is_empty() {
            // Never quote the file: it may hold a key in a form we do not parse.
            return Err(Error::new(
                ErrorKind::Permission,
                format!("{} holds no age X25519 identity", path.display()),
            )
            .with_guidance("pass the file `drctl key generate` wrote (AGE-SECRET-KEY-1… lines)"));
        }
        Ok(Identity {
            keys: ids,
            granted: Default::default(),
        })
    }

    /// A fresh identity for one job (never written anywhere).
    pub fn ephemeral() -> Identity {
        Identity {
            keys: vec![age::x25519::Identity::generate()],
            granted: Default::default(),
        }
    }

    /// An identity that decrypts what `grant` covers and nothing else.
    pub fn granted(grant: Grant) -> Identity {
        Identity {
            keys: Vec::new(),
            granted: grant.0,
        }
    }

    /// Decrypts an age file. A wrong key is `Permission`, damage is `Integrity`.
    pub fn decrypt(&self, what: &str, data: &[u8]) -> Result<Vec<u8>> {
        if self.keys.is_empty() {
            return self
                .granted
                .get(blake3::hash(data).as_bytes())
                .cloned()
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Permission,
                        format!("the restore grant does not cover {what}"),
                    )
                    .with_guidance(
                        "the object differs from the one the restore's coordinator read (it was \
                         replaced meanwhile?); run the restore again",
                    )
                });
        }
        let dec = age::Decryptor::new_buffered(data).map_err(|e| {
            Error::new(
                ErrorKind::Integrity,
                format!("{what} is not a valid age file"),
            )
            .with_source(e)
        })?;
        let mut r = dec
            .decrypt(self.keys.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => Error::new(
                    ErrorKind::Permission,
                    format!("the identity does not decrypt {what}"),
                )
                .with_guidance(
                    "this identity is not one of the repository's recipients; pass the \
                     identity whose recipient is in encryption.recipients",
                ),
                other => Error::new(ErrorKind::Integrity, format!("{what} does not decrypt"))
                    .with_source(other),
            })?;
        let mut out = Vec::with_capacity(data.len());
        r.read_to_end(&mut out).map_err(|e| {
            Error::new(
                ErrorKind::Integrity,
                format!("{what} is damaged (authentication failed)"),
            )
            .with_source(e)
        })?;
        Ok(out)
    }

    /// The recipients of this identity.
    pub fn recipients(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|i| i.to_public().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_read_back_from_hex_and_bad_hex_is_refused() {
        let id = ChunkId(std::array::from_fn(|i| (i * 37 + 11) as u8));
        let hex = id.to_hex();
        assert_eq!(ChunkId::from_hex(&hex), Some(id));
        assert_eq!(ChunkId::from_hex(&hex.to_uppercase()), Some(id));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
        for bad in [
            &hex[..63],
            &format!("{hex}0"),
            &format!("g{}", &hex[1..]),
            &format!("{}:", &hex[..63]),
        ] {
            assert_eq!(ChunkId::from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn encrypt_decrypt_and_wrong_identity() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let r = Recipients::parse(&[id.to_public().to_string()]).unwrap();
        let ct = r.encrypt(b"secret bytes");
        let id = Identity {
            keys: vec![id],
            granted: Default::default(),
        };
        assert_eq!(id.decrypt("x", &ct).unwrap(), b"secret bytes");
        let other = Identity {
            keys: vec![other],
            granted: Default::default(),
        };
        let err = other.decrypt("x", &ct).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permission);
    }

    #[test]
    fn a_grant_decrypts_what_it_covers_and_nothing_else() {
        let owner = age::x25519::Identity::generate();
        let r = Recipients::parse(&[owner.to_public().to_string()]).unwrap();
        let (a, b) = (r.encrypt(b"index a"), r.encrypt(b"index b"));
        let owner = Identity {
            keys: vec![owner],
            granted: Default::default(),
        };
        let mut grant = Grant::default();
        grant.add(&a, owner.decrypt("a", &a).unwrap());
        // The agent's key for the job: only it opens the grant.
        let job = Identity::ephemeral();
        let sealed = grant.seal_to(&job.recipients()[0]).unwrap();
        assert!(Grant::open(&sealed, &Identity::ephemeral()).is_err());
        let granted = Identity::granted(Grant::open(&sealed, &job).unwrap());
        assert_eq!(granted.decrypt("a", &a).unwrap(), b"index a");
        let err = granted.decrypt("b", &b).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permission);
        assert!(err.to_string().contains("does not cover b"), "{err}");
    }

    #[test]
    fn data_keys_seal_bound_to_the_chunk_id() {
        let k = DataKey::generate().unwrap();
        let (a, b) = (ChunkId([1; 32]), ChunkId([2; 32]));
        let blob = k.seal(&a, &[b"he", b"llo"]).unwrap();
        assert_eq!(k.open(&a, &blob).unwrap(), b"hello");
        assert!(k.open(&b, &blob).is_none(), "moved to another id");
        let mut bad = blob.clone();
        bad[30] ^= 1;
        assert!(k.open(&a, &bad).is_none(), "flipped bit");
        assert!(
            DataKey::generate().unwrap().open(&a, &blob).is_none(),
            "other key"
        );
        assert_ne!(
            k.seal(&a, &[b"hello"]).unwrap(),
            blob,
            "fresh nonce each time"
        );
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let a = RepoSecret::generate(uuid::Uuid::nil(), [0; 32]).unwrap();
        let b = RepoSecret::generate(uuid::Uuid::nil(), [0; 32]).unwrap();
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_eq!(a.chunk_id(b"x"), a.chunk_id(b"x"));
        let round = RepoSecret::from_json(&a.to_json()).unwrap();
        assert_eq!(round.chunk_id(b"x"), a.chunk_id(b"x"));
    }
}
