//! A held session (`SessionRequest` in `agent.proto`): a TLS connection of its own on which
//! check-ins and reports go out as frames, their answers come back in order, and pushes arrive
//! in between.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::WriteHalf;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::{Code, Status};
use vigo_proto::agent::{
    CheckInRequest, CheckInResponse, ReportRequest, ReportResponse, SessionEvent, SessionRequest, session_event,
    session_request,
};
use vigo_proto::session::{read_frame, write_frame};

/// Largest frame taken from the server: an answer carrying a bundle.
const EVENT_BYTES_MAX: usize = 64 * 1024 * 1024;

type Events = Pin<Box<dyn Stream<Item = Result<SessionEvent, Status>> + Send>>;

/// An open session. See the module docs.
pub struct Session {
    writer: WriteHalf<TlsStream<TcpStream>>,
    /// What the server sent, frame by frame; a frame read half-way stays in it when a wait for
    /// a push is given up.
    events: Events,
    /// A push that arrived while an answer was awaited, kept for [`Session::next_push`].
    pushed: Option<u64>,
    /// How the session ended, once it did.
    end: Option<Status>,
}

fn gone(what: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("the session ended: {what}"))
}

impl Session {
    /// Opens a session to `addr` from `source` when given; `config` is the envoy's mTLS client
    /// configuration, made to negotiate sessions with [`vigo_proto::session::client_config`].
    pub async fn connect(
        addr: &str,
        source: Option<IpAddr>,
        config: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Session, Status> {
        let tls = vigo_proto::session::connect(addr, source, config, timeout)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (reader, writer) = tokio::io::split(tls);
        let events: Events = Box::pin(futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match read_frame::<SessionEvent>(&mut reader, EVENT_BYTES_MAX).await {
                Ok(Some(event)) => Some((Ok(event), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(gone(e)), None)),
            }
        }));
        Ok(Session { writer, events, pushed: None, end: None })
    }

    /// One check-in on the session.
    pub async fn check_in(&mut self, req: CheckInRequest) -> Result<CheckInResponse, Status> {
        match self.exchange(session_request::Kind::CheckIn(req)).await? {
            session_event::Kind::CheckIn(response) => Ok(response),
            _ => Err(gone("the server answered a check-in with something else")),
        }
    }

    /// One page of run reports on the session.
    pub async fn report(&mut self, req: ReportRequest) -> Result<ReportResponse, Status> {
        match self.exchange(session_request::Kind::Report(req)).await? {
            session_event::Kind::Report(response) => Ok(response),
            _ => Err(gone("the server answered a report with something else")),
        }
    }

    /// Sends `request` and waits for its answer, keeping a push that comes before it.
    async fn exchange(&mut self, request: session_request::Kind) -> Result<session_event::Kind, Status> {
        if let Some(end) = &self.end {
            return Err(end.clone());
        }
        let frame = SessionRequest { kind: Some(request) };
        if let Err(e) = write_frame(&mut self.writer, &frame).await {
            // The server may have ended the session while this was written: its reason, if it
            // gave one, says more than the broken connection.
            let said = tokio::time::timeout(Duration::from_secs(1), self.next_event()).await;
            return Err(match said {
                Ok(Err(status)) => status,
                _ => self.ended(gone(e)),
            });
        }
        loop {
            match self.next_event().await? {
                session_event::Kind::PushRequested(push) => self.pushed = Some(push.stack_version),
                answer => return Ok(answer),
            }
        }
    }

    /// The next event other than the end; the end as an error.
    async fn next_event(&mut self) -> Result<session_event::Kind, Status> {
        loop {
            let status = match self.events.next().await {
                Some(Ok(SessionEvent { kind: Some(session_event::Kind::Ended(ended)) })) => {
                    Status::new(Code::from(ended.code), ended.message)
                }
                Some(Ok(SessionEvent { kind: Some(kind) })) => return Ok(kind),
                Some(Ok(SessionEvent { kind: None })) => continue,
                Some(Err(status)) => status,
                None => gone("the server closed the connection"),
            };
            return Err(self.ended(status));
        }
    }

    fn ended(&mut self, status: Status) -> Status {
        self.end = Some(status.clone());
        status
    }

    /// The stack version of the next push; `None` when the session ends.
    pub async fn next_push(&mut self) -> Option<u64> {
        if let Some(version) = self.pushed.take() {
            return Some(version);
        }
        loop {
            match self.next_event().await {
                Ok(session_event::Kind::PushRequested(push)) => return Some(push.stack_version),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Whether the server closed the session because it holds as many as it may: the envoy
    /// should then check in without one until a place frees up.
    pub fn refused_for_capacity(&self) -> bool {
        self.end.as_ref().is_some_and(|s| s.code() == Code::ResourceExhausted)
    }
}
