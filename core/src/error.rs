//! Berth's error type inside the manager library. Each error carries the
//! kind a CRI client needs; it becomes a gRPC status once, at the API edge.
use std::fmt;

/// What went wrong, as a CRI client should understand it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bad input; nothing was changed.
    InvalidArgument,
    /// The object does not exist.
    NotFound,
    /// The object (or its name) already exists.
    AlreadyExists,
    /// The object is in the wrong state for the call.
    FailedPrecondition,
    /// The call ran out of time.
    DeadlineExceeded,
    /// A component (a shim, a registry) cannot be reached.
    Unavailable,
    /// A registry refused the credentials, or needs some.
    Unauthenticated,
    /// Anything else: a bug or an OS failure.
    Internal,
}

/// An error of the manager: a kind and a message a person can act on.
#[derive(Clone, Debug, thiserror::Error)]
pub struct Error {
    /// The kind.
    pub kind: Kind,
    /// The message.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
    /// Bad input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::InvalidArgument, message)
    }
    /// Missing object.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }
    /// Duplicate object.
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(Kind::AlreadyExists, message)
    }
    /// Wrong state.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Kind::FailedPrecondition, message)
    }
    /// Internal failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Kind::Internal, message)
    }
    /// Adds context in front of the message, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error { kind: self.kind, message: format!("{what}: {}", self.message) }
    }
}

/// Turns an io::Error into an internal error with context.
pub trait IoContext<T> {
    /// Adds what was being done.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::internal(format!("{}: {e}", what())))
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = match e.kind {
            Kind::InvalidArgument => tonic::Code::InvalidArgument,
            Kind::NotFound => tonic::Code::NotFound,
            Kind::AlreadyExists => tonic::Code::AlreadyExists,
            Kind::FailedPrecondition => tonic::Code::FailedPrecondition,
            Kind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Kind::Unavailable => tonic::Code::Unavailable,
            Kind::Unauthenticated => tonic::Code::Unauthenticated,
            Kind::Internal => tonic::Code::Internal,
        };
        tonic::Status::new(code, e.message)
    }
}
