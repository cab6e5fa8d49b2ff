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
    by_envoy_key: HashMap<(String, Vec<u8>), Arc<SignedBundle>>,
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

    /// The signed bundle for an envoy, compiling and signing it on first use. The traits JSON
    /// is read only on a miss, and only as far as the stack reaches into it: a hit costs one
    /// hash-map lookup.
    pub fn bundle_for(
        &self,
        live: &LiveStack,
        hostname: &str,
        traits_hash: &[u8],
        traits_json: &Arc<str>,
    ) -> Result<Arc<SignedBundle>, BundleError> {
        let key = (hostname.to_string(), traits_hash.to_vec());
        {
            let inner = self.lock();
            if inner.version == live.version
                && let Some(bundle) = inner.by_envoy_key.get(&key)
            {
                return Ok(bundle.clone());
            }
        }
        let stack = self.stack(live)?;
        let traits = Traits::new(traits_json.clone());
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
            return Ok(Arc::new(self.sign(encoded, fingerprint)));
        }
        let signed = match inner.by_fingerprint.get(&fingerprint) {
            Some(shared) => shared.clone(),
            None => {
                let signed = Arc::new(self.sign(encoded, fingerprint));
                inner.by_fingerprint.insert(fingerprint, signed.clone());
                signed
            }
        };
        inner.by_envoy_key.insert(key, signed.clone());
        Ok(signed)
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
