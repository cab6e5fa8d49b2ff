//! The exact bytes an envoy signs for each request. Both sides build them here, so a change
//! to the layout cannot drift between `envoy` and `vigosrv`. Every layout starts with its own
//! domain tag, so a signature over one kind of request can never be replayed as another.

use sha2::{Digest, Sha256};

use crate::agent::{CheckInRequest, ReportRequest, RunReport, WatchRequest};

fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

/// Bytes signed by an envoy for a check-in (everything but the signature and traits body).
pub fn check_in_bytes(req: &CheckInRequest) -> Vec<u8> {
    let mut out = b"vigo/check-in/v1\0".to_vec();
    put(&mut out, req.envoy_id.as_bytes());
    out.extend_from_slice(&req.counter.to_be_bytes());
    put(&mut out, &req.traits_hash);
    put(&mut out, &req.bundle_fingerprint);
    put(&mut out, &Sha256::digest(req.traits_json.as_bytes()));
    out
}

/// Bytes signed by an envoy to open a watch.
pub fn watch_bytes(req: &WatchRequest) -> Vec<u8> {
    let mut out = b"vigo/watch/v1\0".to_vec();
    put(&mut out, req.envoy_id.as_bytes());
    out.extend_from_slice(&req.counter.to_be_bytes());
    out
}

/// Bytes signed by an envoy for a results report.
pub fn report_bytes(req: &ReportRequest) -> Vec<u8> {
    use prost::Message;
    let mut out = b"vigo/report/v1\0".to_vec();
    put(&mut out, req.envoy_id.as_bytes());
    out.extend_from_slice(&req.counter.to_be_bytes());
    let mut runs = Sha256::new();
    for run in &req.runs {
        runs.update(RunReport::encode_to_vec(run));
    }
    put(&mut out, &runs.finalize());
    out
}

/// Bytes signed with the new key at enrollment, proving the envoy holds it.
pub fn enroll_bytes(token: &str, hostname: &str, pubkey: &[u8]) -> Vec<u8> {
    let mut out = b"vigo/enroll/v1\0".to_vec();
    put(&mut out, token.as_bytes());
    put(&mut out, hostname.as_bytes());
    put(&mut out, pubkey);
    out
}

/// Bytes the server signs for a bundle: the encoded `Bundle` under its own tag.
pub fn bundle_bytes(encoded_bundle: &[u8]) -> Vec<u8> {
    let mut out = b"vigo/bundle/v1\0".to_vec();
    put(&mut out, encoded_bundle);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signed_field_changes_the_bytes() {
        let base = CheckInRequest { envoy_id: "e".into(), counter: 1, ..Default::default() };
        let variants = [
            CheckInRequest { envoy_id: "f".into(), ..base.clone() },
            CheckInRequest { counter: 2, ..base.clone() },
            CheckInRequest { traits_hash: vec![1], ..base.clone() },
            CheckInRequest { bundle_fingerprint: vec![1], ..base.clone() },
            CheckInRequest { traits_json: "{}".into(), ..base.clone() },
        ];
        for v in variants {
            assert_ne!(check_in_bytes(&v), check_in_bytes(&base));
        }
        // The signature itself is not signed.
        assert_eq!(check_in_bytes(&CheckInRequest { signature: vec![1], ..base.clone() }), check_in_bytes(&base));
    }

    #[test]
    fn a_watch_signature_is_not_a_check_in_signature() {
        let watch = WatchRequest { envoy_id: "e".into(), counter: 1, signature: vec![] };
        let check_in = CheckInRequest { envoy_id: "e".into(), counter: 1, ..Default::default() };
        assert_ne!(watch_bytes(&watch), check_in_bytes(&check_in));
        assert_ne!(watch_bytes(&watch), watch_bytes(&WatchRequest { counter: 2, ..watch.clone() }));
    }
}
