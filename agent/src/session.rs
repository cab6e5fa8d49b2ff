//! A held `Agent.Session`: check-ins go out as messages on one stream, their answers come back
//! in order, and pushes arrive in between. Traits never travel on a session (see `agent.proto`):
//! the caller sends them with a `CheckIn` call.

use tonic::Status;
use tonic::transport::Channel;
use vigo_proto::agent::agent_client::AgentClient;
use vigo_proto::agent::{CheckInRequest, CheckInResponse, SessionEvent, session_event};

/// An open session. See the module docs.
pub struct Session {
    tx: tokio::sync::mpsc::Sender<CheckInRequest>,
    events: tonic::Streaming<SessionEvent>,
    /// A push that arrived while an answer was awaited, kept for [`Session::next_push`].
    pushed: Option<u64>,
    /// How the session ended, once it did with an error.
    end: Option<Status>,
}

fn ended() -> Status {
    Status::unavailable("the session ended")
}

impl Session {
    /// Opens a session on `client` with `first` as its first check-in; returns the session and
    /// the answer to `first`.
    pub async fn open(
        client: &mut AgentClient<Channel>,
        first: CheckInRequest,
    ) -> Result<(Session, CheckInResponse), Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(first).await.map_err(|_| ended())?;
        let events = client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let mut session = Session { tx, events, pushed: None, end: None };
        let answer = session.answer().await?;
        Ok((session, answer))
    }

    /// One check-in on the open session.
    pub async fn check_in(&mut self, req: CheckInRequest) -> Result<CheckInResponse, Status> {
        self.tx.send(req).await.map_err(|_| ended())?;
        self.answer().await
    }

    /// The next answer, keeping a push that comes before it.
    async fn answer(&mut self) -> Result<CheckInResponse, Status> {
        loop {
            let Some(event) = self.events.message().await? else { return Err(ended()) };
            match event.kind {
                Some(session_event::Kind::CheckIn(response)) => return Ok(response),
                Some(session_event::Kind::PushRequested(push)) => self.pushed = Some(push.stack_version),
                None => continue,
            }
        }
    }

    /// The stack version of the next push; `None` when the session ends.
    pub async fn next_push(&mut self) -> Option<u64> {
        if let Some(version) = self.pushed.take() {
            return Some(version);
        }
        loop {
            match self.events.message().await {
                Ok(Some(SessionEvent { kind: Some(session_event::Kind::PushRequested(push)) })) => {
                    return Some(push.stack_version);
                }
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => {
                    self.end = Some(status);
                    return None;
                }
            }
        }
    }

    /// Whether the server closed the session because it holds as many as it may: the envoy
    /// should then let go of its connection and check in by calls, each on a new one.
    pub fn refused_for_capacity(&self) -> bool {
        self.end.as_ref().is_some_and(|s| s.code() == tonic::Code::ResourceExhausted)
    }
}
