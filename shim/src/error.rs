//! The shim's errors, and the one place they become ttrpc status codes
//! (berthd turns those codes back into its own kinds).
use ttrpc::{get_status, Code};

use crate::exec::ExecError;
use crate::oci_runtime::RuntimeError;

/// Why a shim call failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No container with that id in this sandbox.
    #[error("container {id} not found in sandbox {sandbox_id}")]
    NotFound {
        /// The container asked for.
        id: String,
        /// This shim's sandbox.
        sandbox_id: String,
    },
    /// Something the call needs is missing (a cgroup, a terminal).
    #[error("{0}")]
    Missing(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// A container with that id exists already.
    #[error("container {0} already exists")]
    Exists(String),
    /// The container is in the wrong state for the call.
    #[error("{0}")]
    WrongState(String),
    /// The OCI runtime failed or timed out.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// An exec could not run.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// An OS call failed while doing `what`.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Anything else that went wrong inside the shim.
    #[error("{0}")]
    Internal(String),
}

impl ShimError {
    /// An OS failure while doing `what`.
    pub fn os(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        ShimError::Os { what: what.into(), source: source.into() }
    }

    /// The ttrpc code berthd reads this as.
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound { .. } | ShimError::Missing(_) => Code::NOT_FOUND,
            ShimError::Invalid(_) => Code::INVALID_ARGUMENT,
            ShimError::Exists(_) => Code::ALREADY_EXISTS,
            ShimError::WrongState(_) => Code::FAILED_PRECONDITION,
            ShimError::Runtime(_) | ShimError::Exec(_) | ShimError::Os { .. } | ShimError::Internal(_) => {
                Code::INTERNAL
            }
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_variant() {
        let nf = ShimError::NotFound { id: "c".into(), sandbox_id: "s".into() };
        assert_eq!(nf.code(), Code::NOT_FOUND);
        assert_eq!(nf.to_string(), "container c not found in sandbox s");
        let t = RuntimeError::Timeout { bin: "runc".into(), cmd: "start".into(), secs: 1.0, stderr: String::new() };
        // A timed-out runc call is an internal failure whose message says so
        // (berthd's own deadline is the client's, not the runtime's).
        assert_eq!(ShimError::Runtime(t).code(), Code::INTERNAL);
        let f = RuntimeError::Failed { bin: "runc".into(), cmd: "start".into(), code: 1, stderr: "x".into() };
        assert_eq!(ShimError::Runtime(f).code(), Code::INTERNAL);
        match ttrpc::Error::from(ShimError::WrongState("not running".into())) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::FAILED_PRECONDITION);
                assert_eq!(s.message(), "not running");
            }
            other => panic!("{other:?}"),
        }
    }
}
