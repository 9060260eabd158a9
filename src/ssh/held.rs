//! Broker-held keys: private keys loaded from secret sources and kept in memory only.
//!
//! Each `private_keys` entry is one source (`file:`, `env:`, … — the same [`SourceSpec`]s and
//! [`resolve_chain`] as secrets, so new source kinds work here too) holding one key, in
//! OpenSSH format (`ssh-keygen`'s default, plain or encrypted) or PEM: PKCS#1
//! (`RSA PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`), PKCS#8 (`PRIVATE KEY`) and encrypted PKCS#8
//! (`ENCRYPTED PRIVATE KEY`). Legacy OpenSSL-encrypted PEM (`Proc-Type: 4,ENCRYPTED`) is refused
//! with a message saying how to convert it.
//!
//! A [`HeldKey`] has no `Debug` and no `Clone`; its signing key zeroizes itself on drop
//! (ed25519-dalek, rsa and ssh-key all implement that). The source bytes and any decrypted
//! intermediate live in zeroizing buffers that are dropped as soon as the key is built.

use rand_core::OsRng;
use rsa::pkcs1::DecodeRsaPrivateKey;
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use ssh_agent_lib::proto::Identity;
use ssh_agent_lib::proto::signature::{RSA_SHA2_256, RSA_SHA2_512};
use ssh_key::private::{EcdsaKeypair, KeypairData, RsaKeypair};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, Fingerprint, HashAlg, PrivateKey, Signature};
use zeroize::Zeroizing;

use pkcs8::DecodePrivateKey;
use std::sync::Arc;

use crate::secret::{SecretBytes, on_own_thread, scrubbed};
use crate::source::{ResolveContext, SourceRuntime, SourceSpec, resolve_chain};

/// The keys of one ssh id, loaded once and held until the policy is reloaded.
#[derive(Default)]
pub struct HeldKeys {
    /// Boxed where they are built, so no move leaves a copy of a key in a stack frame.
    #[allow(
        clippy::vec_box,
        reason = "moving a key out of its box copies it on the stack"
    )]
    keys: Vec<Box<HeldKey>>,
}

/// One private key, ready to sign.
pub struct HeldKey {
    public: KeyData,
    fingerprint: Fingerprint,
    comment: String,
    signer: KeySigner,
}

/// The signing half, prepared once so a signature costs only the signature.
enum KeySigner {
    Ed25519(ed25519_dalek::SigningKey),
    /// ECDSA keys as their curve's signing key: ssh-key's own signer rebuilds that from the
    /// scalar, a scalar multiplication as costly as the signature, on every signature.
    EcdsaP256(p256::ecdsa::SigningKey),
    EcdsaP384(p384::ecdsa::SigningKey),
    EcdsaP521(p521::ecdsa::SigningKey),
    /// Boxed: RSA keys are large, and every other variant is small.
    Rsa(Box<RsaSigners>),
}

/// One RSA key, ready for either SHA-2 signature algorithm.
struct RsaSigners {
    /// ring's key pair, for rsa-sha2-256/512 on the keys ring takes (2048, 3072 or 4096 bits:
    /// primes a multiple of 512 bits; exponent at least 65537): its signatures take a
    /// fraction of the `rsa` crate's time. It does not zeroize itself; the daemon's allocator
    /// clears its blocks when it is freed.
    ring: Option<ring::signature::RsaKeyPair>,
    /// The `rsa` crate's key (zeroized on drop): SHA-2 signatures for the keys ring refuses,
    /// and SHA-1 ones, only when the policy says `allow_sha1 = true`.
    key: rsa::RsaPrivateKey,
}

/// Why a key could not be loaded. Messages name the source, never the value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyLoadError {
    /// The source has no value, or failed.
    #[error("private key {source_uri}: {message}")]
    Source { source_uri: String, message: String },
    /// The bytes are not a private key this broker can hold.
    #[error("private key {source_uri}: {error}")]
    Parse {
        source_uri: String,
        error: KeyParseError,
    },
    /// An encrypted key and no passphrase source in the policy.
    #[error("private key {source_uri} is encrypted; set `passphrase` for this ssh id")]
    NeedsPassphrase { source_uri: String },
    /// The passphrase source has no value, or failed.
    #[error("passphrase {source_uri}: {message}")]
    Passphrase { source_uri: String, message: String },
}

/// Why bytes are not a usable private key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error(
        "not a private key: expected OpenSSH (BEGIN OPENSSH PRIVATE KEY) or PEM (RSA, EC, PRIVATE KEY, ENCRYPTED PRIVATE KEY)"
    )]
    NotAKey,
    #[error(
        "legacy OpenSSL-encrypted PEM (Proc-Type: 4,ENCRYPTED) is not supported; convert it with `ssh-keygen -p -f KEY` (OpenSSH format) or `openssl pkcs8 -topk8`"
    )]
    LegacyEncryptedPem,
    #[error("the key is encrypted and no passphrase was given")]
    Encrypted,
    #[error("wrong passphrase, or a damaged key")]
    WrongPassphrase,
    #[error("cannot read the {format} key: {message}")]
    Malformed {
        format: &'static str,
        message: String,
    },
    #[error("{0} keys cannot be held by buildbroker (ed25519, ecdsa and rsa can)")]
    Unsupported(String),
    /// The thread that parses keys could not start, or the parser panicked (its message is
    /// withheld: it could quote the key).
    #[error("the key could not be parsed: its thread did not start, or the parser failed")]
    Interrupted,
}

/// Why a held key did not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeldSignError {
    /// `ssh-rsa` (SHA-1) signatures through `sign`: those go through `sign_rsa_sha1`, for ids
    /// whose policy says `allow_sha1 = true` only, as OpenSSH refuses them for new connections.
    #[error("rsa signature without the rsa-sha2-256/512 flag (SHA-1) refused")]
    RsaSha1,
    #[error("signing failed")]
    Failed,
}

impl HeldKeys {
    /// Loads every key of an id from its sources; any failure fails the whole id, so a
    /// policy that names a key never silently exposes fewer.
    pub async fn load(
        id: &str,
        private_keys: &[SourceSpec],
        passphrase: Option<&SourceSpec>,
        sources: &SourceRuntime,
    ) -> Result<HeldKeys, KeyLoadError> {
        let mut keys = Vec::with_capacity(private_keys.len());
        let mut pass: Option<Arc<SecretBytes>> = None;
        for spec in private_keys {
            let source_uri = spec.to_string();
            let bytes = Arc::new(resolve_one(spec, id, sources).await.map_err(|message| {
                KeyLoadError::Source {
                    source_uri: source_uri.clone(),
                    message,
                }
            })?);
            let mut built = build_key(bytes.clone(), None, source_uri.clone()).await;
            if matches!(built, Err(KeyParseError::Encrypted)) {
                let Some(pspec) = passphrase else {
                    return Err(KeyLoadError::NeedsPassphrase { source_uri });
                };
                if pass.is_none() {
                    let resolved = resolve_one(pspec, id, sources).await.map_err(|message| {
                        KeyLoadError::Passphrase {
                            source_uri: pspec.to_string(),
                            message,
                        }
                    })?;
                    pass = Some(Arc::new(resolved));
                }
                built = build_key(bytes.clone(), pass.clone(), source_uri.clone()).await;
            }
            drop(bytes);
            keys.push(built.map_err(|error| KeyLoadError::Parse { source_uri, error })?);
        }
        Ok(HeldKeys { keys })
    }

    /// The public keys and comments, for `SSH_AGENTC_REQUEST_IDENTITIES`.
    pub fn identities(&self) -> Vec<Identity> {
        self.keys
            .iter()
            .map(|k| Identity {
                credential: k.public.clone().into(),
                comment: k.comment.clone(),
            })
            .collect()
    }

    /// The held key whose public half is `public`.
    pub fn find(&self, public: &KeyData) -> Option<&HeldKey> {
        self.keys.iter().find(|k| k.public == *public).map(|k| &**k)
    }

    /// Runs `sign` with the held key whose public half is `public`; `None` when no held key
    /// has it. An ed25519 signature (tens of microseconds) is made where called; RSA
    /// (milliseconds, tens with the `rsa` crate at 4096 bits) and ECDSA (up to milliseconds
    /// for P-521) on a thread of their own ([`on_own_thread`]), off the connection's thread.
    /// That thread failing is [`HeldSignError::Failed`].
    pub async fn sign_with<T: Send + 'static>(
        self: &Arc<Self>,
        public: &KeyData,
        sign: impl FnOnce(&HeldKey) -> Result<T, HeldSignError> + Send + 'static,
    ) -> Option<Result<T, HeldSignError>> {
        let key = self.find(public)?;
        if matches!(key.signer, KeySigner::Ed25519(_)) {
            return Some(sign(key));
        }
        let keys = Arc::clone(self);
        let public = public.clone();
        // `find` cannot miss on the other thread: the keys are the same, and never change.
        let signed = on_own_thread(move || keys.find(&public).map(sign)).await;
        Some(signed.flatten().unwrap_or(Err(HeldSignError::Failed)))
    }
}

/// Parses a private key and prepares its signer on a thread of its own
/// ([`secret::on_own_thread`](crate::secret::on_own_thread), which takes the stack and
/// register copies of the key with it): decrypting an OpenSSH key runs bcrypt-pbkdf for as
/// many rounds as `ssh-keygen -a` asked (about a second at 100), and on a connection's thread
/// that would hold up every connection placed there (README, "Operations → Threads"). The
/// comment is the key's own, or `source_uri`.
async fn build_key(
    bytes: Arc<SecretBytes>,
    pass: Option<Arc<SecretBytes>>,
    source_uri: String,
) -> Result<Box<HeldKey>, KeyParseError> {
    // Boxed where it is built: only the box's pointer leaves that thread.
    let built = on_own_thread(move || parse_boxed(&bytes, pass.as_deref(), source_uri)).await;
    built.unwrap_or(Err(KeyParseError::Interrupted))
}

/// The names of the threads keys were parsed on (for the test that checks where).
#[cfg(test)]
pub(super) static PARSE_THREADS: std::sync::Mutex<std::collections::BTreeSet<Option<String>>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Parses a private key and builds its [`HeldKey`] on the heap.
fn parse_boxed(
    bytes: &SecretBytes,
    pass: Option<&SecretBytes>,
    source_uri: String,
) -> Result<Box<HeldKey>, KeyParseError> {
    #[cfg(test)]
    PARSE_THREADS
        .lock()
        .unwrap()
        .insert(std::thread::current().name().map(str::to_owned));
    let (keypair, comment) =
        parse_private_key(bytes.expose(), pass.map(|p| trim_newline(p.expose())))?;
    let comment = if comment.is_empty() {
        source_uri
    } else {
        comment
    };
    HeldKey::new(&keypair, comment).map(Box::new)
}

/// A passphrase file usually ends with a newline that is not part of the passphrase.
fn trim_newline(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// Resolves one source; the error is what users see (never the value).
async fn resolve_one(
    spec: &SourceSpec,
    id: &str,
    sources: &SourceRuntime,
) -> Result<SecretBytes, String> {
    let ctx = ResolveContext::without_client(sources);
    let chain = resolve_chain(std::slice::from_ref(spec), id, ctx).await;
    match chain.value {
        Some((_, value)) => Ok(value),
        None => Err(chain
            .attempts
            .first()
            .map(|a| match &a.outcome {
                crate::source::AttemptOutcome::Missing(why) => why.clone(),
                crate::source::AttemptOutcome::Failed(why) => format!("error: {why}"),
                crate::source::AttemptOutcome::Found => "found".into(),
            })
            .unwrap_or_else(|| "not resolved".into())),
    }
}

impl HeldKey {
    fn new(keypair: &KeypairData, comment: String) -> Result<HeldKey, KeyParseError> {
        let malformed = |e: ssh_key::Error| KeyParseError::Malformed {
            format: "OpenSSH",
            message: e.to_string(),
        };
        let signer = match keypair {
            KeypairData::Ed25519(kp) => {
                KeySigner::Ed25519(ed25519_dalek::SigningKey::try_from(kp).map_err(malformed)?)
            }
            KeypairData::Ecdsa(kp) => {
                let malformed = |message: String| KeyParseError::Malformed {
                    format: "ECDSA",
                    message,
                };
                // The curve's signing key from the scalar, refused unless its public point is
                // the one stored beside it (ssh-key does not check; a key listed under one
                // public key must not sign as another).
                macro_rules! signing_key {
                    ($curve:ident, $private:expr, $public:expr) => {{
                        let key = $curve::ecdsa::SigningKey::from_slice($private.as_ref())
                            .map_err(|e| malformed(e.to_string()))?;
                        let stored =
                            $curve::ecdsa::VerifyingKey::from_sec1_bytes($public.as_bytes())
                                .map_err(|e| malformed(format!("its public key: {e}")))?;
                        let derived = $curve::ecdsa::VerifyingKey::from(&key);
                        if derived.to_encoded_point(false) != stored.to_encoded_point(false) {
                            return Err(malformed(
                                "the private key does not match the public key stored with it"
                                    .into(),
                            ));
                        }
                        key
                    }};
                }
                match kp {
                    EcdsaKeypair::NistP256 { private, public } => {
                        KeySigner::EcdsaP256(signing_key!(p256, private, public))
                    }
                    EcdsaKeypair::NistP384 { private, public } => {
                        KeySigner::EcdsaP384(signing_key!(p384, private, public))
                    }
                    EcdsaKeypair::NistP521 { private, public } => {
                        KeySigner::EcdsaP521(signing_key!(p521, private, public))
                    }
                }
            }
            KeypairData::Rsa(kp) => {
                let key = rsa_private_key(kp)?;
                let ring = {
                    use rsa::pkcs1::EncodeRsaPrivateKey;
                    // The DER is a zeroizing document (its encoder's intermediate buffer is
                    // cleared by the daemon's allocator); ring refuses sizes it does not take.
                    key.to_pkcs1_der()
                        .ok()
                        .and_then(|der| ring::signature::RsaKeyPair::from_der(der.as_bytes()).ok())
                };
                KeySigner::Rsa(Box::new(RsaSigners { ring, key }))
            }
            other => {
                let name = other
                    .algorithm()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "unknown".into());
                return Err(KeyParseError::Unsupported(name));
            }
        };
        let public = KeyData::try_from(keypair).map_err(malformed)?;
        Ok(HeldKey {
            fingerprint: public.fingerprint(HashAlg::Sha256),
            public,
            comment,
            signer,
        })
    }

    /// Whether RSA SHA-2 signatures go through ring (tests).
    #[cfg(test)]
    pub(super) fn signs_rsa_with_ring(&self) -> bool {
        matches!(&self.signer, KeySigner::Rsa(rsa) if rsa.ring.is_some())
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Signs `data` as an agent does: ed25519 and ecdsa by their one algorithm, rsa by the
    /// SHA-2 variant the flags ask for (draft-miller-ssh-agent §3.6.1); SHA-1 is
    /// [`HeldKey::sign_rsa_sha1`].
    pub fn sign(&self, data: &[u8], flags: u32) -> Result<Signature, HeldSignError> {
        // Signing copies the key (and ed25519's expanded secret) into its stack frames.
        scrubbed(|| self.sign_unscrubbed(data, flags))
    }

    fn sign_unscrubbed(&self, data: &[u8], flags: u32) -> Result<Signature, HeldSignError> {
        // The `signature` crate's Signer, for ed25519-dalek and ssh-key's ECDSA alike.
        use ed25519_dalek::Signer as _;
        let signature = match &self.signer {
            KeySigner::Ed25519(key) => {
                Signature::new(Algorithm::Ed25519, key.sign(data).to_bytes().to_vec())
            }
            KeySigner::EcdsaP256(key) => return ecdsa_sign::<_, p256::ecdsa::Signature>(key, data),
            KeySigner::EcdsaP384(key) => return ecdsa_sign::<_, p384::ecdsa::Signature>(key, data),
            KeySigner::EcdsaP521(key) => return ecdsa_sign::<_, p521::ecdsa::Signature>(key, data),
            // OpenSSH's agent_decode_alg checks SHA-256 first; so do we.
            KeySigner::Rsa(rsa) if flags & RSA_SHA2_256 != 0 => Signature::new(
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
                rsa.sign_sha2(HashAlg::Sha256, data)?,
            ),
            KeySigner::Rsa(rsa) if flags & RSA_SHA2_512 != 0 => Signature::new(
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                rsa.sign_sha2(HashAlg::Sha512, data)?,
            ),
            KeySigner::Rsa(_) => return Err(HeldSignError::RsaSha1),
        };
        signature.map_err(|_| HeldSignError::Failed)
    }

    /// The raw `ssh-rsa` signature (PKCS#1 v1.5 over SHA-1) for an id whose policy says
    /// `allow_sha1 = true`; the caller checks that. ssh-key 0.6 cannot hold it as a
    /// `Signature`, so it is returned as bytes.
    pub fn sign_rsa_sha1(&self, data: &[u8]) -> Result<Vec<u8>, HeldSignError> {
        scrubbed(|| match &self.signer {
            KeySigner::Rsa(rsa) => rsa.sign_with_crate::<Sha1>(data),
            _ => Err(HeldSignError::Failed),
        })
    }
}

/// An ECDSA signature by a curve's signing key, as ssh-key's `Signature`.
fn ecdsa_sign<K, S>(key: &K, data: &[u8]) -> Result<Signature, HeldSignError>
where
    K: ed25519_dalek::Signer<S>,
    Signature: TryFrom<S>,
{
    let signature = key.try_sign(data).map_err(|_| HeldSignError::Failed)?;
    Signature::try_from(signature).map_err(|_| HeldSignError::Failed)
}

impl RsaSigners {
    /// A PKCS#1 v1.5 signature over SHA-256 or SHA-512 (RFC 8332), by ring where it took the
    /// key, else by the `rsa` crate.
    fn sign_sha2(&self, hash: HashAlg, data: &[u8]) -> Result<Vec<u8>, HeldSignError> {
        if let Some(fast) = &self.ring {
            let padding: &'static dyn ring::signature::RsaEncoding = match hash {
                HashAlg::Sha512 => &ring::signature::RSA_PKCS1_SHA512,
                _ => &ring::signature::RSA_PKCS1_SHA256,
            };
            let mut signature = vec![0; fast.public().modulus_len()];
            fast.sign(
                padding,
                &ring::rand::SystemRandom::new(),
                data,
                &mut signature,
            )
            .map_err(|_| HeldSignError::Failed)?;
            return Ok(signature);
        }
        match hash {
            HashAlg::Sha512 => self.sign_with_crate::<Sha512>(data),
            _ => self.sign_with_crate::<Sha256>(data),
        }
    }

    /// A PKCS#1 v1.5 signature over `D` by the `rsa` crate (blinded).
    fn sign_with_crate<D>(&self, data: &[u8]) -> Result<Vec<u8>, HeldSignError>
    where
        D: rsa::sha2::Digest + pkcs8::AssociatedOid,
    {
        let digest = D::digest(data);
        self.key
            .sign_with_rng(&mut OsRng, rsa::Pkcs1v15Sign::new::<D>(), &digest)
            .map_err(|_| HeldSignError::Failed)
    }
}

/// ssh-key 0.6.7's own conversion passes `p` twice instead of `p` and `q`
/// (private/rsa.rs, `TryFrom<&RsaKeypair> for rsa::RsaPrivateKey`), as ssh-agent-lib's
/// key-storage example notes; build the key from the right components here.
fn rsa_private_key(kp: &RsaKeypair) -> Result<rsa::RsaPrivateKey, KeyParseError> {
    let malformed = |message: String| KeyParseError::Malformed {
        format: "RSA",
        message,
    };
    let big = |m: &ssh_key::Mpint| rsa::BigUint::try_from(m).map_err(|e| malformed(e.to_string()));
    rsa::RsaPrivateKey::from_components(
        big(&kp.public.n)?,
        big(&kp.public.e)?,
        big(&kp.private.d)?,
        vec![big(&kp.private.p)?, big(&kp.private.q)?],
    )
    .map_err(|e| malformed(e.to_string()))
}

/// Parses a private key in any supported format; returns its key pair and comment (empty
/// when the format has none).
pub fn parse_private_key(
    bytes: &[u8],
    passphrase: Option<&[u8]>,
) -> Result<(KeypairData, String), KeyParseError> {
    let label = pkcs8::der::pem::decode_label(bytes).map_err(|_| KeyParseError::NotAKey)?;
    if label == "OPENSSH PRIVATE KEY" {
        // ssh-key 0.6 reads an ECDSA scalar only at its curve's full size (66 bytes for
        // P-521), and OpenSSH writes it as an mpint without leading zeros: about a quarter of
        // all P-521 keys (top two bits clear) are a byte shorter, and 1 in 512 P-256 or P-384
        // keys (RustCrypto/SSH#350). Its error is a bare "length invalid"; say what to do.
        let short_scalar = |e: ssh_key::Error| KeyParseError::Malformed {
            format: "OpenSSH",
            message: if matches!(
                e,
                ssh_key::Error::Encoding(ssh_agent_lib::ssh_encoding::Error::Length)
            ) {
                format!(
                    "{e} (an ECDSA key? about a quarter of P-521 keys, and a few P-256 or \
                     P-384 ones, cannot be read in OpenSSH format here; convert it to PKCS#8 \
                     with `ssh-keygen -p -m PKCS8 -f KEY`)"
                )
            } else {
                e.to_string()
            },
        };
        let key = PrivateKey::from_openssh(bytes).map_err(short_scalar)?;
        let key = if key.is_encrypted() {
            let pass = passphrase.ok_or(KeyParseError::Encrypted)?;
            // A wrong passphrase fails the check integers (a crypto error); a right one can
            // still meet the short scalar above.
            key.decrypt(pass).map_err(|e| match e {
                ssh_key::Error::Encoding(_) => short_scalar(e),
                _ => KeyParseError::WrongPassphrase,
            })?
        } else {
            key
        };
        return Ok((key.key_data().clone(), key.comment().to_string()));
    }
    if contains(bytes, b"Proc-Type: 4,ENCRYPTED") {
        return Err(KeyParseError::LegacyEncryptedPem);
    }
    let (_, der) = pkcs8::der::pem::decode_vec(bytes).map_err(|e| KeyParseError::Malformed {
        format: "PEM",
        message: e.to_string(),
    })?;
    let der = Zeroizing::new(der);
    let keypair = match label {
        "RSA PRIVATE KEY" => {
            let key =
                rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|e| KeyParseError::Malformed {
                    format: "PKCS#1",
                    message: e.to_string(),
                })?;
            rsa_keypair(&key)?
        }
        "EC PRIVATE KEY" => ec_from_sec1(&der)?,
        "PRIVATE KEY" => from_pkcs8(&der)?,
        "ENCRYPTED PRIVATE KEY" => {
            let pass = passphrase.ok_or(KeyParseError::Encrypted)?;
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|e| {
                KeyParseError::Malformed {
                    format: "encrypted PKCS#8",
                    message: e.to_string(),
                }
            })?;
            let plain = info
                .decrypt(pass)
                .map_err(|_| KeyParseError::WrongPassphrase)?;
            from_pkcs8(plain.as_bytes())?
        }
        _ => return Err(KeyParseError::NotAKey),
    };
    Ok((keypair, String::new()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn rsa_keypair(key: &rsa::RsaPrivateKey) -> Result<KeypairData, KeyParseError> {
    RsaKeypair::try_from(key)
        .map(KeypairData::Rsa)
        .map_err(|e| KeyParseError::Malformed {
            format: "RSA",
            message: e.to_string(),
        })
}

/// A PKCS#8 `PrivateKeyInfo`: each key type checks the algorithm identifier itself.
fn from_pkcs8(der: &[u8]) -> Result<KeypairData, KeyParseError> {
    if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_der(der) {
        return Ok(KeypairData::Ed25519(key.into()));
    }
    if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
        return rsa_keypair(&key);
    }
    if let Ok(key) = p256::SecretKey::from_pkcs8_der(der) {
        return Ok(ec_p256(key));
    }
    if let Ok(key) = p384::SecretKey::from_pkcs8_der(der) {
        return Ok(ec_p384(key));
    }
    if let Ok(key) = p521::SecretKey::from_pkcs8_der(der) {
        return Ok(ec_p521(key));
    }
    Err(KeyParseError::Unsupported(
        "this PKCS#8 key type".to_string(),
    ))
}

/// A SEC1 `ECPrivateKey` names its curve; each curve type checks it.
fn ec_from_sec1(der: &[u8]) -> Result<KeypairData, KeyParseError> {
    if let Ok(key) = p256::SecretKey::from_sec1_der(der) {
        return Ok(ec_p256(key));
    }
    if let Ok(key) = p384::SecretKey::from_sec1_der(der) {
        return Ok(ec_p384(key));
    }
    if let Ok(key) = p521::SecretKey::from_sec1_der(der) {
        return Ok(ec_p521(key));
    }
    Err(KeyParseError::Unsupported(
        "this elliptic curve".to_string(),
    ))
}

fn ec_p256(key: p256::SecretKey) -> KeypairData {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    KeypairData::Ecdsa(EcdsaKeypair::NistP256 {
        public: key.public_key().to_encoded_point(false),
        private: key.into(),
    })
}

fn ec_p384(key: p384::SecretKey) -> KeypairData {
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    KeypairData::Ecdsa(EcdsaKeypair::NistP384 {
        public: key.public_key().to_encoded_point(false),
        private: key.into(),
    })
}

fn ec_p521(key: p521::SecretKey) -> KeypairData {
    use p521::elliptic_curve::sec1::ToEncodedPoint;
    KeypairData::Ecdsa(EcdsaKeypair::NistP521 {
        public: key.public_key().to_encoded_point(false),
        private: key.into(),
    })
}
