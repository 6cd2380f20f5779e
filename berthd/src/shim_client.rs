//! Starting a sandbox's berth-shim and talking to it over ttrpc. Every call
//! fails with a [`ShimCallError`], whose variants say whether the shim could
//! not be started, reached or understood, or answered with an error; the
//! manager matches on them, and they become its kinds in one `From`.
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::shim::{self as api, ShimClient, API_VERSION};
pub use protocol::shim_launch::ShimArgs;

use berth_core::error::{Error, Kind};

/// A shim could not be started, reached or understood, or refused a call.
#[derive(Debug, thiserror::Error)]
pub enum ShimCallError {
    /// berth-shim did not report readiness in time.
    #[error("berth-shim did not get ready within {}s", .0.as_secs())]
    StartTimedOut(Duration),
    /// The binary could not be run.
    #[error("starting {}: {source}", .binary.display())]
    Spawn {
        /// The berth-shim binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// berth-shim exited with an error before it served.
    #[error("berth-shim failed: {0}")]
    StartFailed(String),
    /// berth-shim exited successfully without its ready line.
    #[error("berth-shim printed no pid")]
    NoPid,
    /// The shim's socket cannot be connected to.
    #[error("connecting to shim at {}: {detail}", .socket.display())]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// Why.
        detail: String,
    },
    /// The socket accepted but the shim did not answer Connect.
    #[error("shim at {} does not answer: {detail}", .socket.display())]
    Silent {
        /// The socket.
        socket: PathBuf,
        /// Why.
        detail: String,
    },
    /// A shim of another build: left alone.
    #[error("shim at {} speaks shim API {theirs}, this berthd speaks {API_VERSION}; leaving it alone", .socket.display())]
    OtherVersion {
        /// The socket.
        socket: PathBuf,
        /// The API version it speaks.
        theirs: u32,
    },
    /// A signal number that is not one.
    #[error("signal {0} is not a signal")]
    BadSignal(i32),
    /// The shim answered the call with an error status.
    #[error("{message}")]
    Answered {
        /// The status code.
        code: ttrpc::Code,
        /// The shim's message.
        message: String,
    },
    /// The call got no answer (the connection broke, or its deadline passed).
    #[error("shim: {0}")]
    NoAnswer(String),
}

impl ShimCallError {
    /// The shim does not know the container.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ShimCallError::Answered { code: ttrpc::Code::NOT_FOUND, .. })
    }
}

impl From<ttrpc::Error> for ShimCallError {
    fn from(e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => ShimCallError::Answered { code: s.code(), message: s.message().to_string() },
            other => ShimCallError::NoAnswer(other.to_string()),
        }
    }
}

impl From<ShimCallError> for Error {
    fn from(e: ShimCallError) -> Self {
        let kind = match &e {
            ShimCallError::StartTimedOut(_)
            | ShimCallError::Spawn { .. }
            | ShimCallError::StartFailed(_)
            | ShimCallError::NoPid => Kind::Internal,
            ShimCallError::Unreachable { .. } | ShimCallError::Silent { .. } | ShimCallError::NoAnswer(_) => {
                Kind::Unavailable
            }
            ShimCallError::OtherVersion { .. } => Kind::FailedPrecondition,
            ShimCallError::BadSignal(_) => Kind::InvalidArgument,
            ShimCallError::Answered { code, .. } => match code {
                ttrpc::Code::NOT_FOUND => Kind::NotFound,
                ttrpc::Code::ALREADY_EXISTS => Kind::AlreadyExists,
                ttrpc::Code::INVALID_ARGUMENT => Kind::InvalidArgument,
                ttrpc::Code::FAILED_PRECONDITION => Kind::FailedPrecondition,
                ttrpc::Code::DEADLINE_EXCEEDED => Kind::DeadlineExceeded,
                ttrpc::Code::UNAVAILABLE => Kind::Unavailable,
                _ => Kind::Internal,
            },
        };
        Error::new(kind, e.to_string())
    }
}

/// Result with [`ShimCallError`].
pub type Result<T> = std::result::Result<T, ShimCallError>;

/// How long a shim may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of ordinary shim calls that do not run the OCI runtime (Wait and
/// ExecSync set their own; calls that run it use [`Shim::runtime_ctx`]).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of the calls that only read (State, List): a
/// shim that does not answer them in this time is hung, not busy.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(3);

/// How to start one shim: the berth-shim binary and its arguments.
#[derive(Clone, Debug)]
pub struct ShimLaunch {
    /// The berth-shim binary.
    pub binary: PathBuf,
    /// What it is started with (the contract both binaries read).
    pub args: ShimArgs,
}

/// Socket of a sandbox's shim.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("shim.sock")
}

/// Starts the shim and waits until it serves. Returns its pid.
pub async fn start(l: &ShimLaunch) -> Result<u32> {
    let mut cmd = tokio::process::Command::new(&l.binary);
    cmd.args(l.args.to_args());
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(START_TIMEOUT, cmd.output())
        .await
        .map_err(|_| ShimCallError::StartTimedOut(START_TIMEOUT))?
        .map_err(|source| ShimCallError::Spawn { binary: l.binary.clone(), source })?;
    if !out.status.success() {
        return Err(ShimCallError::StartFailed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    protocol::shim_launch::parse_ready(&String::from_utf8_lossy(&out.stdout)).ok_or(ShimCallError::NoPid)
}

/// How the manager starts a new pod's shim: a berth-shim process on a
/// node; an in-process shim server in unit tests. Either way the manager
/// then connects to `<dir>/shim.sock` with [`Shim::connect`].
#[async_trait::async_trait]
pub trait ShimLauncher: Send + Sync {
    /// Starts the shim of `launch.id` and returns its pid once it serves.
    async fn start(&self, launch: &ShimLaunch) -> Result<u32>;
}

/// berth-shim processes, started by [`start`].
pub struct ProcessShims;

#[async_trait::async_trait]
impl ShimLauncher for ProcessShims {
    async fn start(&self, launch: &ShimLaunch) -> Result<u32> {
        start(launch).await
    }
}

/// A connected shim.
#[derive(Clone)]
pub struct Shim {
    client: ShimClient,
    /// What the shim said at Connect.
    pub info: api::ConnectResponse,
}

/// A ttrpc context with a deadline.
pub fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    match timeout {
        Some(t) => ttrpc::context::with_timeout(i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)),
        None => ttrpc::context::Context::default(),
    }
}

impl Shim {
    /// Connects and checks the API version.
    pub async fn connect(dir: &Path) -> Result<Shim> {
        let sock = socket_path(dir);
        let unavailable =
            |e: &dyn std::fmt::Display| ShimCallError::Unreachable { socket: sock.clone(), detail: e.to_string() };
        let dial = protocol::socket_path::SocketPath::new(&sock).map_err(|e| unavailable(&e))?;
        let stream = tokio::net::UnixStream::connect(dial.path()).await.map_err(|e| unavailable(&e))?;
        let client = ttrpc::r#async::Client::new(stream.into());
        let client = ShimClient::new(client);
        let info = client
            .connect(ctx(Some(Duration::from_secs(5))), &api::ConnectRequest::new())
            .await
            .map_err(|e| ShimCallError::Silent { socket: sock.clone(), detail: e.to_string() })?;
        if info.api_version != API_VERSION {
            return Err(ShimCallError::OtherVersion { socket: sock, theirs: info.api_version });
        }
        Ok(Shim { client, info })
    }

    /// How long one OCI runtime call may take in this shim (what it said at
    /// Connect; a shim that said nothing has runc's old fixed 30 s).
    pub fn runtime_timeout(&self) -> Duration {
        match self.info.runtime_timeout_ms {
            0 => Duration::from_secs(30),
            ms => Duration::from_millis(ms),
        }
    }

    /// The context of a call that runs the OCI runtime: up to two runs (a
    /// failed create deletes what it made) and the answer. A runtime that
    /// hangs is then reported by the shim, with its stderr, before this
    /// deadline would call the shim itself silent.
    pub fn runtime_ctx(&self) -> ttrpc::context::Context {
        self.runtime_runs_ctx(2)
    }

    /// The context of a call that may run the OCI runtime `runs` times.
    fn runtime_runs_ctx(&self, runs: u32) -> ttrpc::context::Context {
        ctx(Some(self.runtime_timeout() * runs + QUICK_TIMEOUT))
    }

    /// State of one container.
    pub async fn state(&self, id: &str) -> Result<api::ContainerState> {
        Ok(self.client.state(ctx(Some(QUICK_TIMEOUT)), &req(id)).await?)
    }

    /// States of every container.
    pub async fn list(&self) -> Result<Vec<api::ContainerState>> {
        Ok(self.client.list(ctx(Some(QUICK_TIMEOUT)), &api::Empty::new()).await?.containers)
    }

    /// Signals a container.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let mut r = api::KillRequest::new();
        r.id = id.to_string();
        r.signal = u32::try_from(signal).map_err(|_| ShimCallError::BadSignal(signal))?;
        r.all = all;
        self.client.kill(ctx(Some(self.runtime_timeout() + QUICK_TIMEOUT)), &r).await?;
        Ok(())
    }

    /// Waits at most `timeout` for the container to stop; true if it did.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<bool> {
        match tokio::time::timeout(timeout, self.client.wait(ctx(None), &req(id))).await {
            Err(_) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Waits, with no deadline, for the container to stop; its final state.
    pub async fn wait_exit(&self, id: &str) -> Result<api::ContainerState> {
        Ok(self.client.wait(ctx(None), &req(id)).await?)
    }

    /// Prepares a container from its bundle (the runtime creates it at Start).
    pub async fn create(&self, r: &api::CreateRequest) -> Result<api::ContainerState> {
        Ok(self.client.create(self.runtime_ctx(), r).await?)
    }

    /// Starts a created container: the runtime's create (and, should it
    /// fail, its delete), then its start.
    pub async fn start(&self, id: &str) -> Result<api::ContainerState> {
        Ok(self.client.start(self.runtime_runs_ctx(3), &req(id)).await?)
    }

    /// Removes a stopped (or created) container from the shim and the runtime.
    pub async fn delete(&self, id: &str) -> Result<api::ContainerState> {
        Ok(self.client.delete(self.runtime_ctx(), &req(id)).await?)
    }

    /// Applies new resources to a running container.
    pub async fn update(&self, r: &api::UpdateRequest) -> Result<()> {
        self.client.update(self.runtime_ctx(), r).await?;
        Ok(())
    }

    /// Runs a command in a running container; `deadline` bounds the call.
    pub async fn exec_sync(
        &self,
        r: &api::ExecSyncRequest,
        deadline: Option<Duration>,
    ) -> Result<api::ExecSyncResponse> {
        Ok(self.client.exec_sync(ctx(deadline), r).await?)
    }

    /// Reopens a container's log file (after rotation).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        self.client.reopen_log(ctx(Some(CALL_TIMEOUT)), &req(id)).await?;
        Ok(())
    }

    /// Resizes a terminal container's pty.
    pub async fn resize_pty(&self, id: &str, width: u32, height: u32) -> Result<()> {
        let mut r = api::ResizePtyRequest::new();
        r.id = id.to_string();
        (r.width, r.height) = (width, height);
        self.client.resize_pty(ctx(Some(QUICK_TIMEOUT)), &r).await?;
        Ok(())
    }

    /// Closes the stdin the shim holds open for a container.
    pub async fn close_io(&self, id: &str) -> Result<()> {
        self.client.close_io(ctx(Some(QUICK_TIMEOUT)), &req(id)).await?;
        Ok(())
    }

    /// CPU and memory of a running container; with `counts`, also its
    /// processes and the interfaces it sees (a /proc walk in the shim).
    pub async fn stats(&self, id: &str, counts: bool) -> Result<api::StatsResponse> {
        let mut r = api::StatsRequest::new();
        r.id = id.to_string();
        r.counts = counts;
        Ok(self.client.stats(ctx(Some(CALL_TIMEOUT)), &r).await?)
    }

    /// Kills and deletes every container, releases the pod's namespaces and
    /// ends the shim.
    pub async fn shutdown(&self) -> Result<()> {
        self.client.shutdown(ctx(Some(CALL_TIMEOUT)), &api::Empty::new()).await?;
        Ok(())
    }
}

/// A request naming one container.
pub fn req(id: &str) -> api::ContainerRequest {
    let mut r = api::ContainerRequest::new();
    r.id = id.to_string();
    r
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use protocol::shim::{create_shim, ConnectRequest, ConnectResponse, Shim as ShimApi};
    use ttrpc::r#async::TtrpcContext;

    use super::*;

    /// A shim from another build, speaking an API version this berthd does not know.
    struct FutureShim;

    #[async_trait::async_trait]
    impl ShimApi for FutureShim {
        async fn connect(&self, _ctx: &TtrpcContext, _req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
            let mut r = ConnectResponse::new();
            r.api_version = API_VERSION + 1;
            r.shim_pid = 4242;
            Ok(r)
        }
    }

    #[tokio::test]
    async fn refuses_a_shim_of_an_unknown_api_version() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::UnixListener::bind(socket_path(dir.path())).unwrap();
        let mut server = ttrpc::r#async::Server::new()
            .add_listener(listener.into())
            .register_service(create_shim(Arc::new(FutureShim)));
        server.start().await.unwrap();
        let e = Shim::connect(dir.path()).await.err().expect("an unknown version must be refused");
        assert!(matches!(e, ShimCallError::OtherVersion { theirs, .. } if theirs == API_VERSION + 1), "{e}");
        let e = Error::from(e);
        assert_eq!(e.kind, Kind::FailedPrecondition);
        assert!(e.message.contains(&format!("speaks shim API {}", API_VERSION + 1)), "{}", e.message);
        assert!(e.message.contains("leaving it alone"), "{}", e.message);
        let _ = server.shutdown().await;
    }
}
