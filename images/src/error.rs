//! Why an image operation failed, by what a caller can do about it. Pulls
//! are shared by every caller of the same image, so errors are `Clone`.
//! berthd turns them into its error kinds in one `From`, below.
use std::fmt;
use std::sync::Arc;

use berth_core::error::{Error, Kind};

/// An image operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ImageError {
    /// The caller's input is wrong: a reference, credentials, a digest, a
    /// registry setting.
    #[error("{0}")]
    Invalid(String),
    /// Content (from a registry or a layout) is damaged, or not what it
    /// says it is, or not what Berth reads.
    #[error("{0}")]
    BadContent(String),
    /// The image, platform or registry path does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A registry refused the credentials, or wants some.
    #[error("{0}")]
    Refused(String),
    /// A registry cannot be reached now, or is overloaded.
    #[error("{0}")]
    Unreachable(String),
    /// A registry did not answer in time.
    #[error("{0}")]
    TimedOut(String),
    /// A registry answered something Berth cannot use.
    #[error("{0}")]
    Registry(String),
    /// A file operation on the image store failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: Arc<std::io::Error>,
    },
    /// The image records could not be read or written.
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    /// berthd is stopping; the pull did not start.
    #[error("berthd is shutting down")]
    ShuttingDown,
    /// Every endpoint (mirrors, then the registry) failed.
    #[error("pulling {image}: {}", Attempts(.attempts))]
    PullFailed {
        /// The image asked for.
        image: String,
        /// Each endpoint tried, with its failure, in order.
        attempts: Vec<(String, ImageError)>,
    },
    /// A step of a larger operation failed.
    #[error("{what}: {source}")]
    In {
        /// The step.
        what: String,
        /// Its failure.
        source: Box<ImageError>,
    },
    /// A bug or a broken invariant of the store.
    #[error("{0}")]
    Internal(String),
}

struct Attempts<'a>(&'a [(String, ImageError)]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (endpoint, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{endpoint}: {e}")?;
        }
        Ok(())
    }
}

/// Result with [`ImageError`].
pub type Result<T> = std::result::Result<T, ImageError>;

impl ImageError {
    /// Says which step of a larger operation failed, keeping the cause.
    pub fn context(self, what: impl Into<String>) -> Self {
        ImageError::In { what: what.into(), source: Box::new(self) }
    }

    /// The kind a CRI client sees.
    pub fn kind(&self) -> Kind {
        match self {
            ImageError::Invalid(_) | ImageError::BadContent(_) => Kind::InvalidArgument,
            ImageError::NotFound(_) => Kind::NotFound,
            ImageError::Refused(_) => Kind::Unauthenticated,
            ImageError::Unreachable(_) | ImageError::ShuttingDown => Kind::Unavailable,
            ImageError::TimedOut(_) => Kind::DeadlineExceeded,
            ImageError::Registry(_) | ImageError::Io { .. } | ImageError::Internal(_) => Kind::Internal,
            // The last endpoint is the registry itself (unless skipped): its
            // failure decides.
            ImageError::PullFailed { attempts, .. } => attempts.last().map_or(Kind::Internal, |(_, e)| e.kind()),
            ImageError::In { source, .. } => source.kind(),
            ImageError::Store(e) => e.kind(),
        }
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        Error::new(e.kind(), e.to_string())
    }
}

/// Turns an io::Error into [`ImageError::Io`] saying what was being done.
pub trait IoContext<T> {
    /// Adds what was being done.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ImageError::Io { what: what(), source: Arc::new(e) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pull_reads_as_every_attempt_and_is_of_the_registrys_kind() {
        let e = ImageError::PullFailed {
            image: "docker.io/library/busybox:latest".into(),
            attempts: vec![
                ("mirror http://m".into(), ImageError::Unreachable("connection refused".into())),
                ("registry https://r".into(), ImageError::Refused("no credentials".into()).context("manifest")),
            ],
        };
        assert_eq!(
            e.to_string(),
            "pulling docker.io/library/busybox:latest: mirror http://m: connection refused; \
             registry https://r: manifest: no credentials"
        );
        assert_eq!(e.kind(), Kind::Unauthenticated);
        assert_eq!(Error::from(e).kind, Kind::Unauthenticated);
        assert_eq!(ImageError::PullFailed { image: "x".into(), attempts: vec![] }.kind(), Kind::Internal);
    }
}
