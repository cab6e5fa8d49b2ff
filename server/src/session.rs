//! A held session (`SessionRequest` in `agent.proto`): an envoy's check-ins and reports as
//! frames on a TLS connection of their own, answered in order, with pushes in between when a
//! new stack goes live.
//!
//! A session is one task reading frames ([`vigo_proto::session::read_frame`], a buffer the size
//! of each frame, dropped after it is decoded) and writing its answers the same way, so an idle
//! session costs its TLS state and this task, not HTTP/2's frame buffers (benches/README.md).

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tonic::Status;
use vigo_proto::agent::{
    CheckInRequest, PushRequested, ReportRequest, ReportResponse, SessionEnded, SessionEvent, SessionRequest,
    session_event, session_request,
};
use vigo_proto::session::{FrameError, read_frame, write_frame};

use crate::admission::HeldGuard;
use crate::limits::SESSION_REQUEST_BYTES_MAX;
use crate::metrics::ReportOutcome;
use crate::node::{Node, now_ms};
use crate::services::agent::push_delay;

/// Why a session past the cap is closed.
pub const HELD_FULL: &str = "held sessions are at capacity: check in by calls until a place frees up";

/// How long writing one answer may take before the envoy counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the envoy sent, frame by frame.
type Requests = std::pin::Pin<Box<dyn Stream<Item = Result<SessionRequest, FrameError>> + Send>>;

/// Serves one session on `tls` until either side ends it.
pub async fn serve<IO>(node: Arc<Node>, tls: tokio_rustls::server::TlsStream<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let leaf = tls.get_ref().1.peer_certificates().and_then(|certs| certs.first());
    let peer = leaf.map(|leaf| Sha256::digest(leaf).into());
    // Kept only on a bolt, where an envoy it does not know may be taken in on it.
    let leaf = leaf.filter(|_| node.settings.bolt.is_some()).map(|leaf| leaf.to_vec());
    let (reader, mut writer) = tokio::io::split(tls);
    // The stream keeps a frame read half-way when `next` picks a push instead.
    let requests: Requests = Box::pin(futures::stream::unfold(reader, |mut reader| async move {
        match read_frame::<SessionRequest>(&mut reader, SESSION_REQUEST_BYTES_MAX).await {
            Ok(Some(request)) => Some((Ok(request), reader)),
            Ok(None) => None,
            Err(e) => Some((Err(e), reader)),
        }
    }));
    let (held, fits) = node.held.enter();
    let mut session = Session {
        versions: node.stack_version.subscribe(),
        stopping: node.stopping.subscribe(),
        node,
        peer,
        leaf,
        requests,
        envoy_id: None,
        push_at: None,
        _held: held,
        over_cap: !fits,
        closing: None,
    };
    while let Some(event) = session.next().await {
        let last = matches!(event.kind, Some(session_event::Kind::Ended(_)));
        match tokio::time::timeout(WRITE_TIMEOUT, write_frame(&mut writer, &event)).await {
            Ok(Ok(())) if !last => {}
            _ => break,
        }
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.shutdown()).await;
}

/// One open session: where it reads requests, and when it pushes next.
struct Session {
    node: Arc<Node>,
    peer: Option<[u8; 32]>,
    /// The envoy's certificate (DER), on a bolt.
    leaf: Option<Vec<u8>>,
    requests: Requests,
    versions: tokio::sync::watch::Receiver<u64>,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Set by the first accepted check-in: pushes go to envoys known to be there.
    envoy_id: Option<String>,
    push_at: Option<tokio::time::Instant>,
    /// Counts this session among those held while it lives.
    _held: HeldGuard,
    /// Past the cap on held sessions: closed after its first check-in is answered.
    over_cap: bool,
    /// The status to end with once the current answer is sent.
    closing: Option<Status>,
}

enum Step {
    Stop,
    Request(Option<Result<SessionRequest, FrameError>>),
    StackMoved(bool),
    PushDue,
}

fn event(kind: session_event::Kind) -> SessionEvent {
    SessionEvent { kind: Some(kind) }
}

/// The last event of a session that ends with `status`.
fn ended(status: &Status) -> SessionEvent {
    event(session_event::Kind::Ended(SessionEnded {
        code: status.code() as i32,
        message: status.message().to_string(),
    }))
}

impl Session {
    /// The next event to send, or `None` when the session is over without one.
    async fn next(&mut self) -> Option<SessionEvent> {
        if let Some(status) = self.closing.take() {
            return Some(ended(&status));
        }
        loop {
            let push_at = self.push_at;
            let watching = self.envoy_id.is_some() && push_at.is_none();
            let step = tokio::select! {
                _ = self.stopping.wait_for(|s| *s) => Step::Stop,
                request = self.requests.next() => Step::Request(request),
                moved = self.versions.changed(), if watching => Step::StackMoved(moved.is_ok()),
                _ = tokio::time::sleep_until(push_at.unwrap_or_else(tokio::time::Instant::now)), if push_at.is_some() => {
                    Step::PushDue
                }
            };
            match step {
                Step::Stop | Step::StackMoved(false) => {
                    return Some(ended(&Status::unavailable("the server is stopping")));
                }
                Step::Request(None) => return None,
                Step::Request(Some(Err(e))) => {
                    let status = match e {
                        FrameError::Io(_) => return None,
                        e => Status::invalid_argument(format!("bad session frame: {e}")),
                    };
                    return Some(ended(&status));
                }
                Step::StackMoved(true) => {
                    let envoy_id = self.envoy_id.as_deref().unwrap_or_default();
                    let delay = push_delay(envoy_id, self.node.control().n_envoys());
                    self.push_at = Some(tokio::time::Instant::now() + delay);
                }
                Step::PushDue => {
                    self.push_at = None;
                    let stack_version = *self.versions.borrow_and_update();
                    return Some(event(session_event::Kind::PushRequested(PushRequested { stack_version })));
                }
                Step::Request(Some(Ok(request))) => {
                    let answered = match request.kind {
                        Some(session_request::Kind::CheckIn(req)) => self.check_in(req).await,
                        Some(session_request::Kind::Report(req)) => {
                            answer_report(&self.node, self.peer, &req).map(session_event::Kind::Report)
                        }
                        None => Err(Status::invalid_argument("bad session frame: a request with nothing in it")),
                    };
                    return Some(match answered {
                        Ok(kind) => event(kind),
                        Err(status) => ended(&status),
                    });
                }
            }
        }
    }

    async fn check_in(&mut self, req: CheckInRequest) -> Result<session_event::Kind, Status> {
        let peer = self.peer;
        let answered = self.node.answer_check_in(|ctx| crate::check_in::check_in(ctx, peer, &req, now_ms()));
        let response =
            crate::bolt::follow_up(&self.node, answered, self.leaf.as_deref()).await.map_err(Status::from)?;
        if self.envoy_id.is_none() {
            // Only later publishes push.
            self.versions.borrow_and_update();
            self.envoy_id = Some(req.envoy_id);
        }
        if self.over_cap {
            self.closing = Some(Status::resource_exhausted(HELD_FULL));
        }
        Ok(session_event::Kind::CheckIn(response))
    }
}

/// Takes an envoy's run reports, as the `ReportResults` call and a session do.
pub fn answer_report(node: &Node, peer: Option<[u8; 32]>, req: &ReportRequest) -> Result<ReportResponse, Status> {
    let answered = node.with_check_in(|ctx| crate::check_in::report(ctx, peer, req, now_ms()));
    let outcome = if answered.is_ok() { ReportOutcome::Accepted } else { ReportOutcome::Refused };
    node.metrics.record_report(outcome);
    Ok(ReportResponse { accepted: answered? })
}
