//! Starting a sandbox's berth-shim and talking to it over ttrpc.
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::shim::{self as api, ShimClient, API_VERSION};
pub use protocol::shim_launch::ShimArgs;

use berth_core::error::{Error, Kind, Result};

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
        .map_err(|_| Error::internal(format!("berth-shim did not get ready within {}s", START_TIMEOUT.as_secs())))?
        .map_err(|e| Error::internal(format!("starting {}: {e}", l.binary.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::internal(format!("berth-shim failed: {}", err.trim())));
    }
    protocol::shim_launch::parse_ready(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| Error::internal("berth-shim printed no pid"))
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
        let unavailable = |e: &dyn std::fmt::Display| {
            Error::new(Kind::Unavailable, format!("connecting to shim at {}: {e}", sock.display()))
        };
        let dial = protocol::socket_path::SocketPath::new(&sock).map_err(|e| unavailable(&e))?;
        let stream = tokio::net::UnixStream::connect(dial.path()).await.map_err(|e| unavailable(&e))?;
        let client = ttrpc::r#async::Client::new(stream.into());
        let client = ShimClient::new(client);
        let info = client
            .connect(ctx(Some(Duration::from_secs(5))), &api::ConnectRequest::new())
            .await
            .map_err(|e| Error::new(Kind::Unavailable, format!("shim at {} does not answer: {e}", sock.display())))?;
        if info.api_version != API_VERSION {
            return Err(Error::new(
                Kind::FailedPrecondition,
                format!(
                    "shim at {} speaks shim API {}, this berthd speaks {API_VERSION}; leaving it alone",
                    sock.display(),
                    info.api_version
                ),
            ));
        }
        Ok(Shim { client, info })
    }

    /// The raw client.
    pub fn api(&self) -> &ShimClient {
        &self.client
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
        ctx(Some(self.runtime_timeout() * 2 + QUICK_TIMEOUT))
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
        r.signal = u32::try_from(signal).map_err(|_| Error::invalid(format!("signal {signal} is not a signal")))?;
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
        assert_eq!(e.kind, Kind::FailedPrecondition);
        assert!(e.message.contains(&format!("speaks shim API {}", API_VERSION + 1)), "{}", e.message);
        assert!(e.message.contains("leaving it alone"), "{}", e.message);
        let _ = server.shutdown().await;
    }
}
