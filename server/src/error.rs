//! Maps every error the services produce to a gRPC status, in one place.

use tonic::Status;
use vigo_log::LogError;
use vigo_state::{ControlError, TraitsError};

use crate::check_in::Refusal;
use crate::node::WriteError;

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        let msg = r.to_string();
        match r {
            Refusal::UnknownEnvoy(_) | Refusal::IdentityMismatch(_) | Refusal::BadSignature(_) => {
                Status::unauthenticated(msg)
            }
            Refusal::Revoked(_) | Refusal::Replay(_) => Status::permission_denied(msg),
            Refusal::Malformed(_) => Status::invalid_argument(msg),
            Refusal::Traits(TraitsError::Full) => Status::resource_exhausted(msg),
            Refusal::Traits(_) => Status::invalid_argument(msg),
            Refusal::Bundle(_) => Status::failed_precondition(msg),
            // Answered with a redirect before they get here (bolt.rs); reports and watches of a
            // moved envoy are told where it belongs.
            Refusal::Moved { .. } | Refusal::Elsewhere { .. } => Status::failed_precondition(msg),
        }
    }
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Refused(c) => refused(c),
            WriteError::Log(e) => log_status(e),
        }
    }
}

/// How a log error reaches a client: refusals as what was wrong with the request, a missing
/// leader or quorum as `UNAVAILABLE` (try again, or elsewhere), a broken log as `INTERNAL`.
pub fn log_status(e: LogError) -> Status {
    let msg = e.to_string();
    match e {
        LogError::Refused(c) => refused(c),
        LogError::RefusedByLeader(_) | LogError::Stale(_) | LogError::Membership(_) => Status::failed_precondition(msg),
        LogError::BadRequest(_) => Status::invalid_argument(msg),
        LogError::NotLeader { .. }
        | LogError::NoLeader
        | LogError::NoQuorum(_)
        | LogError::LeaderUnreachable { .. }
        | LogError::Peer { .. } => Status::unavailable(msg),
        LogError::Storage(_) | LogError::Chain { .. } | LogError::Shutdown | LogError::Fatal(_) => {
            Status::internal(msg)
        }
    }
}

/// A control request refused by validation.
pub fn refused(e: ControlError) -> Status {
    let msg = e.to_string();
    match e {
        ControlError::TokenUnknown | ControlError::TokenUsedUp | ControlError::TokenExpired => {
            Status::permission_denied(msg)
        }
        ControlError::HostnameTaken { .. } | ControlError::EnvoyIdTaken(_) | ControlError::TokenExists => {
            Status::already_exists(msg)
        }
        ControlError::TokenKind(_) => Status::permission_denied(msg),
        ControlError::EnvoyUnknown(_) | ControlError::PeerUnknown(_) | ControlError::BoltUnknown(_) => {
            Status::not_found(msg)
        }
        ControlError::AlreadyRevoked(_)
        | ControlError::Moved { .. }
        | ControlError::StackVersion { .. }
        | ControlError::KeysExist
        | ControlError::PeerId { .. } => Status::failed_precondition(msg),
        ControlError::Empty | ControlError::Malformed(_) | ControlError::BoltId(_) | ControlError::Glob(_) => {
            Status::invalid_argument(msg)
        }
    }
}
