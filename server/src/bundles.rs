//! Compiled, signed bundles, cached per distinct bundle (a derived cache: rebuilt at will).
//!
//! A bundle is compiled at most once per (stack version, hostname, traits hash) and signed
//! once per distinct content: envoys whose bundles come out identical share one
//! `Arc<SignedBundle>` and one signature. A new stack version drops the old entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use sha2::{Digest, Sha256};
use vigo_proto::bundle::SignedBundle;
use vigo_state::LiveStack;

use crate::stack::Stack;
use crate::stack::traits::Traits;

/// Why no bundle could be produced for an envoy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BundleError {
    /// The live stack archive does not parse (it did at publish: a bug or a newer format).
    #[error("live stack version {version} cannot be read: {reason}")]
    Stack {
        /// Stack version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// The stack does not compile for this envoy (e.g. a template needs a trait it lacks).
    #[error("stack version {version} does not compile for {hostname}: {reason}")]
    Compile {
        /// Stack version.
        version: u64,
        /// Envoy hostname.
        hostname: String,
        /// Why.
        reason: String,
    },
}

#[derive(Default)]
struct Inner {
    version: u64,
    stack: Option<Arc<Stack>>,
    /// Per hostname: the traits hash its bundle was compiled for, and the bundle. Looked up by
    /// `&str`, so a hit allocates nothing.
    by_hostname: HashMap<String, ([u8; 32], Arc<SignedBundle>)>,
    by_fingerprint: HashMap<[u8; 32], Arc<SignedBundle>>,
}

/// The bundle cache. See the module docs.
pub struct BundleCache {
    signing_key: SigningKey,
    inner: Mutex<Inner>,
}

impl BundleCache {
    /// A cache that signs with `signing_key`.
    pub fn new(signing_key: SigningKey) -> Self {
        Self { signing_key, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The parsed live stack, parsing the archive on first use of a version.
    fn stack(&self, live: &LiveStack) -> Result<Arc<Stack>, BundleError> {
        {
            let inner = self.lock();
            if inner.version == live.version
                && let Some(stack) = &inner.stack
            {
                return Ok(stack.clone());
            }
        }
        // Parse outside the lock: check-ins of other envoys keep flowing meanwhile.
        let stack = Arc::new(
            Stack::from_archive(&live.archive)
                .map_err(|e| BundleError::Stack { version: live.version, reason: one_line(&e.to_string()) })?,
        );
        let mut inner = self.lock();
        if inner.version < live.version {
            *inner = Inner { version: live.version, stack: Some(stack.clone()), ..Inner::default() };
        }
        Ok(stack)
    }

    /// The signed bundle for an envoy, compiling and signing it on first use. `traits` is
    /// called only on a miss, and the stack reads only as far as it reaches into them: a hit
    /// costs one hash-map lookup. `None` when `traits` has none to give (they changed
    /// meanwhile).
    pub fn bundle_for(
        &self,
        live: &LiveStack,
        hostname: &str,
        traits_hash: &[u8],
        traits: impl FnOnce() -> Option<Traits>,
    ) -> Result<Option<Arc<SignedBundle>>, BundleError> {
        let traits_hash: [u8; 32] = traits_hash.try_into().map_err(|_| BundleError::Compile {
            version: live.version,
            hostname: hostname.to_string(),
            reason: "traits hash is not 32 bytes".to_string(),
        })?;
        {
            let inner = self.lock();
            if inner.version == live.version
                && let Some((hash, bundle)) = inner.by_hostname.get(hostname)
                && *hash == traits_hash
            {
                return Ok(Some(bundle.clone()));
            }
        }
        let stack = self.stack(live)?;
        let Some(traits) = traits() else { return Ok(None) };
        let bundle = stack.compile(live.version, hostname, &traits).map_err(|e| BundleError::Compile {
            version: live.version,
            hostname: hostname.to_string(),
            reason: one_line(&e.to_string()),
        })?;
        let encoded = bundle.encode_to_vec();
        let fingerprint: [u8; 32] = Sha256::digest(&encoded).into();
        let mut inner = self.lock();
        if inner.version != live.version {
            // A newer version arrived while compiling; serve this one without caching it.
            return Ok(Some(Arc::new(self.sign(encoded, fingerprint))));
        }
        let signed = match inner.by_fingerprint.get(&fingerprint) {
            Some(shared) => shared.clone(),
            None => {
                let signed = Arc::new(self.sign(encoded, fingerprint));
                inner.by_fingerprint.insert(fingerprint, signed.clone());
                signed
            }
        };
        inner.by_hostname.insert(hostname.to_string(), (traits_hash, signed.clone()));
        Ok(Some(signed))
    }

    fn sign(&self, encoded: Vec<u8>, fingerprint: [u8; 32]) -> SignedBundle {
        let signature = self.signing_key.sign(&vigo_proto::signing::bundle_bytes(&encoded));
        SignedBundle { bundle: encoded, signature: signature.to_bytes().to_vec(), fingerprint: fingerprint.to_vec() }
    }

    /// Number of distinct signed bundles held.
    pub fn n_distinct(&self) -> usize {
        self.lock().by_fingerprint.len()
    }
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(version: u64, greeting: &str) -> LiveStack {
        let module = "resources:\n  - { type: file, path: /etc/motd, template: motd.j2 }\n";
        let template = format!("{greeting} {{{{ hostname }}}} {{{{ traits.os.family }}}}\n");
        let archive = crate::stack::tests::tar_gz(&[
            ("assign.yaml", b"- match: \"*\"\n  modules: [base]\n"),
            ("modules/base/module.yaml", module.as_bytes()),
            ("modules/base/files/motd.j2", template.as_bytes()),
        ]);
        LiveStack {
            version,
            sha256: Sha256::digest(&archive).into(),
            archive: Arc::new(archive),
            author: "test".into(),
            message: String::new(),
            index: version,
        }
    }

    fn traits(family: &str) -> (Traits, [u8; 32]) {
        let json = format!(r#"{{"os":{{"family":"{family}"}}}}"#);
        let hash = Sha256::digest(json.as_bytes()).into();
        (Traits::from_json(&json).unwrap(), hash)
    }

    fn bundle(
        cache: &BundleCache,
        live: &LiveStack,
        hostname: &str,
        hash: &[u8],
        traits: &Traits,
    ) -> Result<Arc<SignedBundle>, BundleError> {
        cache.bundle_for(live, hostname, hash, || Some(traits.clone())).map(|b| b.expect("traits given"))
    }

    #[test]
    fn a_bundle_is_compiled_once_per_hostname_and_traits_and_shared_when_identical() {
        let cache = BundleCache::new(SigningKey::from_bytes(&[7; 32]));
        let v1 = live(1, "hello");
        let (debian, debian_hash) = traits("debian");
        let first = bundle(&cache, &v1, "web-1", &debian_hash, &debian).unwrap();
        let again = bundle(&cache, &v1, "web-1", &debian_hash, &debian).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "a hit returns the cached bundle");

        let (rhel, rhel_hash) = traits("rhel");
        let changed = bundle(&cache, &v1, "web-1", &rhel_hash, &rhel).unwrap();
        assert_ne!(changed.fingerprint, first.fingerprint, "new traits compile anew");
        assert_eq!(cache.n_distinct(), 2);

        let other = bundle(&cache, &v1, "web-2", &rhel_hash, &rhel).unwrap();
        assert_ne!(other.fingerprint, changed.fingerprint, "the hostname is in the bundle");
        assert_eq!(cache.n_distinct(), 3);

        let v2 = live(2, "hi");
        let newer = bundle(&cache, &v2, "web-1", &debian_hash, &debian).unwrap();
        assert_ne!(newer.fingerprint, first.fingerprint);
        assert_eq!(cache.n_distinct(), 1, "a new stack version drops the old bundles");
    }

    #[test]
    fn a_traits_hash_of_the_wrong_length_is_refused_by_name() {
        let cache = BundleCache::new(SigningKey::from_bytes(&[7; 32]));
        let (debian, _) = traits("debian");
        let err = bundle(&cache, &live(1, "hello"), "web-1", b"short", &debian).unwrap_err();
        assert_eq!(err.to_string(), "stack version 1 does not compile for web-1: traits hash is not 32 bytes");
    }
}
