//! How a new peer joins a cluster (`vigosrv run --join ADDR --token vgp1_…`), and how the
//! founding peer puts the cluster keys on the log.
//!
//! Joining, in order:
//! 1. **Identity.** Fetch the CA from `ADDR` and check it against the token's pin; make a key;
//!    call `Peer.Join` with the token's secret. The leader records `PeerAdmitted` (using up the
//!    token), and answers with a node id, a `vigo-peer:<id>` certificate and the seal key,
//!    which [`crate::pki::write_joined`] keeps in the data dir.
//! 2. **Catch-up.** Open the empty log as a peer that waits to be added, serve only the peer
//!    service, and ask the leader (`Peer.AddVoter`) to replicate to it as a learner — a snapshot
//!    of the whole history first when the leader's log was compacted — and then make it a
//!    voter.
//! 3. **Keys.** Once the history it received holds `ClusterKeysSealed`, the peer unseals them
//!    and starts serving envoys and operators like any other.
//!
//! A peer that stops half way resumes from step 2 on its next start.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use rand::RngCore;
use rustls::pki_types::CertificateDer;
use vigo_log::LogNode;
use vigo_proto::events::event::Kind;
use vigo_proto::events::{Event, EventProposal, PeerAdmitted};
use vigo_proto::peer::peer_client::PeerClient;
use vigo_proto::peer::{AddVoterRequest, JoinRequest};
use vigo_proto::tls::{client_config, connect, fetch_pinned_ca};
use vigo_proto::token::{Token, TokenKind};

use crate::limits;
use crate::node::now_ms;
use crate::pki::{self, Joined, Paths, PeerIdentity};

/// Where to join and with what.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// host:port of any peer of the cluster.
    pub addr: String,
    /// The `vgp1_` join token.
    pub token: String,
}

/// Step 1: asks the cluster at `join.addr` to admit this peer, reachable at `own_addr`, and
/// records the identity it is given in the empty data dir `paths`.
pub async fn request_identity(paths: &Paths, join: &JoinConfig, own_addr: &str) -> anyhow::Result<u64> {
    let token = Token::parse_as(TokenKind::Join, &join.token)?;
    let ca_der = fetch_pinned_ca(&join.addr, &token.ca_pin, limits::JOIN_CALL_TIMEOUT).await?;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let pubkey = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let tls = client_config(&CertificateDer::from(ca_der.clone()), None)?;
    let channel = connect(&join.addr, tls, limits::JOIN_CALL_TIMEOUT).await?;
    let request =
        JoinRequest { token_secret: token.secret.to_vec(), pubkey: pubkey.to_vec(), addr: own_addr.to_string() };
    let reply = PeerClient::new(channel)
        .join(request)
        .await
        .map_err(|s| anyhow::anyhow!("the cluster at {} refused to admit this peer: {}", join.addr, s.message()))?
        .into_inner();
    if reply.ca_cert_der != ca_der {
        bail!("the cluster at {} answered with a different CA than it presented", join.addr);
    }
    let seal_key: [u8; 32] =
        reply.seal_key.as_slice().try_into().map_err(|_| anyhow::anyhow!("the join answer holds no seal key"))?;
    pki::write_joined(
        paths,
        &Joined {
            node_id: reply.node_id,
            ca_der: &ca_der,
            cert_der: &reply.cert_der,
            key_seed: &seed,
            seal_key: &seal_key,
        },
    )?;
    std::fs::write(join_addr_path(paths), &reply.leader_addr).context("cannot record the address joined")?;
    tracing::info!(node_id = reply.node_id, leader = reply.leader_addr, "admitted to the cluster");
    Ok(reply.node_id)
}

/// Where a joining peer records the peer it joined through, to resume after a restart.
fn join_addr_path(paths: &Paths) -> std::path::PathBuf {
    paths.root.join("joined-via")
}

/// Step 2: asks the leader, through the peer this one joined by (or `join_addr` when given),
/// to add this peer as a voter; returns once it is one, retrying while the cluster is
/// unreachable or leaderless.
pub async fn become_voter(paths: &Paths, identity: &PeerIdentity, join_addr: Option<&str>) -> anyhow::Result<()> {
    let addr = match join_addr {
        Some(addr) => addr.to_string(),
        None => std::fs::read_to_string(join_addr_path(paths))
            .context("this peer joined no cluster yet: start it with --join ADDR --token T")?,
    };
    let tls = identity.peer_client_tls()?;
    let started = Instant::now();
    loop {
        let attempt = async {
            let channel = connect(&addr, tls.clone(), limits::JOIN_CALL_TIMEOUT).await?;
            let mut request = tonic::Request::new(AddVoterRequest { node_id: identity.node_id });
            request.set_timeout(vigo_log::limits::CATCH_UP_WAIT);
            PeerClient::new(channel).add_voter(request).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() < limits::JOIN_WAIT => {
                tracing::warn!(via = addr, "not a voter yet: {e:#}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => bail!("could not become a voter through {addr} within {:?}: {e:#}", limits::JOIN_WAIT),
        }
    }
}

/// On the founding peer's first start: puts the sealed cluster keys and the peer's own
/// admission on the log (each only if not there yet).
pub async fn found(log: &LogNode, paths: &Paths, identity: &PeerIdentity, addr: &str) -> anyhow::Result<()> {
    let propose = |kind: Kind| EventProposal {
        proposed_at_ms: now_ms(),
        actor: "server".to_string(),
        event: Some(Event { kind: Some(kind) }),
    };
    if log.state().keys().is_none() {
        let keys = pki::founding_keys(paths)?
            .context("the log holds no cluster keys and this peer has none to put there (pki/keys.sealed)")?;
        log.propose(propose(Kind::ClusterKeysSealed(keys))).await.context("cannot put the cluster keys on the log")?;
    }
    if log.state().peer(identity.node_id).is_none() {
        use sha2::Digest;
        let cert = pem::parse(&identity.cert_pem).context("server.crt is not PEM")?.into_contents();
        let admitted = PeerAdmitted {
            node_id: identity.node_id,
            addr: addr.to_string(),
            cert_sha256: sha2::Sha256::digest(&cert).to_vec(),
            token_sha256: Vec::new(),
        };
        log.propose(propose(Kind::PeerAdmitted(admitted))).await.context("cannot record the founding peer")?;
    }
    Ok(())
}
