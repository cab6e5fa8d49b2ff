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
        }
    }
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Refused(c) => refused(c),
            WriteError::Log(LogError::NotLeader { leader_hint }) => Status::unavailable(match leader_hint {
                Some(leader) => format!("not the leader; try {leader}"),
                None => "not the leader and no leader is known; retry shortly".to_string(),
            }),
            WriteError::Log(other) => Status::unavailable(format!("log write failed: {other}")),
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
        ControlError::EnvoyUnknown(_) => Status::not_found(msg),
        ControlError::AlreadyRevoked(_) | ControlError::StackVersion { .. } => Status::failed_precondition(msg),
        ControlError::Empty | ControlError::Malformed(_) => Status::invalid_argument(msg),
    }
}
