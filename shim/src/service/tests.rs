//! The shim's service over its real ttrpc API, driven by berthd's client
//! code path (a `ShimClient` on a unix socket), with a fake OCI runtime whose
//! containers are plain processes of the test: states, refusals, rollbacks,
//! exits, execs and shutdown are checked without root.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use protocol::shim::{
    ContainerRequest, ContainerState, CreateRequest, Empty, ExecSyncRequest, KillRequest, ShimClient, Status,
};
use ttrpc::Code;

use super::ShimService;
use crate::namespaces::Pinned;
use crate::oci_runtime::{CreateCall, ExecCall, OciRuntime, RuntimeError};
use crate::reaper::{Reaper, REAP_SERIAL};

/// What the fake runtime's `kill` does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KillAnswer {
    /// Signals the container's init.
    Signal,
    /// Says there is nothing to signal (the container just exited).
    NotRunning,
    /// Fails as a broken runtime would.
    Fails,
}

/// An OCI runtime whose containers are `/bin/sh -c INIT` processes started
/// at create, and whose execs run the process spec's args.
struct FakeRuntime {
    init: Mutex<String>,
    fail_create: Mutex<Option<String>>,
    kill_answer: Mutex<KillAnswer>,
    calls: Mutex<Vec<String>>,
    inits: Mutex<HashMap<String, i32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeRuntime {
    fn new() -> Arc<Self> {
        Arc::new(FakeRuntime {
            init: Mutex::new("exec sleep 600".into()),
            fail_create: Mutex::new(None),
            kill_answer: Mutex::new(KillAnswer::Signal),
            calls: Mutex::new(Vec::new()),
            inits: Mutex::new(HashMap::new()),
        })
    }

    fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn call(&self, c: String) {
        lock(&self.calls).push(c);
    }

    fn signal(&self, id: &str, signal: i32) {
        if let Some(pid) = lock(&self.inits).get(id) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::try_from(signal).ok(),
            );
        }
    }

    /// Starts `script` with the call's stdio, as the runtime would start the
    /// container's process: not through the reaper's spawn, so its exit is
    /// reaped as an unclaimed child until the service subscribes.
    fn spawn(&self, script: &str, stdio: crate::oci_runtime::Stdio, pid_file: &Path) -> std::io::Result<i32> {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]).stdout(stdio.stdout).stderr(stdio.stderr);
        cmd.stdin(stdio.stdin.map(std::process::Stdio::from).unwrap_or_else(std::process::Stdio::null));
        // The service's reaper collects it, as it collects a runtime's.
        #[allow(clippy::zombie_processes)]
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        std::fs::write(pid_file, pid.to_string())?;
        Ok(pid)
    }
}

fn failed(cmd: &str, stderr: &str) -> RuntimeError {
    RuntimeError::Failed { bin: "fake".into(), cmd: cmd.into(), code: 1, stderr: stderr.into() }
}

#[async_trait]
impl OciRuntime for FakeRuntime {
    fn timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    async fn create(&self, call: CreateCall) -> Result<(), RuntimeError> {
        self.call(format!("create {}", call.id));
        if let Some(stderr) = lock(&self.fail_create).clone() {
            return Err(failed("create", &stderr));
        }
        let script = lock(&self.init).clone();
        let pid = self.spawn(&script, call.stdio, &call.pid_file).map_err(|e| failed("create", &e.to_string()))?;
        lock(&self.inits).insert(call.id, pid);
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(format!("start {id}"));
        Ok(())
    }

    async fn exec(&self, call: ExecCall) -> Result<(), RuntimeError> {
        self.call(format!("exec {}", call.id));
        let spec: serde_json::Value = std::fs::read(&call.process)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .ok_or_else(|| failed("exec", "no process spec"))?;
        let args: Vec<String> = serde_json::from_value(spec["args"].clone()).unwrap_or_default();
        let script = args.iter().map(|a| format!("'{}'", a.replace('\'', r"'\''"))).collect::<Vec<_>>().join(" ");
        self.spawn(&format!("exec {script}"), call.stdio, &call.pid_file)
            .map(|_| ())
            .map_err(|e| failed("exec", &e.to_string()))
    }

    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        self.call(format!("kill {id} {signal}{}", if all { " --all" } else { "" }));
        match *lock(&self.kill_answer) {
            KillAnswer::Signal => {
                self.signal(id, signal);
                Ok(())
            }
            KillAnswer::NotRunning => Err(RuntimeError::NotRunning { id: id.into(), stderr: "not running".into() }),
            KillAnswer::Fails => Err(failed("kill", "the runtime broke")),
        }
    }

    async fn update(&self, id: &str, resources: &Path) -> Result<(), RuntimeError> {
        let json = std::fs::read_to_string(resources).unwrap_or_default();
        self.call(format!("update {id} {json}"));
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(format!("delete {id}"));
        self.signal(id, libc::SIGKILL);
        lock(&self.inits).remove(id);
        Ok(())
    }
}

/// One shim service on a socket of its own, with its reaper running.
struct Served {
    dir: tempfile::TempDir,
    runtime: Arc<FakeRuntime>,
    svc: Arc<ShimService>,
    client: ShimClient,
    _server: ttrpc::r#async::Server,
    reaping: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.reaping.abort();
        for pid in lock(&self.runtime.inits).values() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let runtime = FakeRuntime::new();
    let reaper = Reaper::default();
    let r = reaper.clone();
    let reaping = tokio::spawn(async move {
        loop {
            r.reap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let pinned = Pinned { dir: dir.path().join("ns"), names: Vec::new(), pod_init: None };
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let rt: Arc<dyn OciRuntime> = runtime.clone();
    let svc = Arc::new(ShimService::new("pod".into(), rt, reaper, pinned, 16 * 1024, log));
    let sock = dir.path().join("shim.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let service: Arc<dyn protocol::shim::Shim + Send + Sync> = svc.clone();
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener.into())
        .register_service(protocol::shim::create_shim(service));
    server.start().await.unwrap();
    let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let client = ShimClient::new(ttrpc::r#async::Client::new(stream.into()));
    Served { dir, runtime, svc, client, _server: server, reaping }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(10_000_000_000)
}

fn code(e: ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other:?}"),
    }
}

impl Served {
    /// A bundle folder for `id`; `shared_pid` makes its config join a pod
    /// pid namespace instead of having one of its own.
    fn bundle(&self, id: &str, shared_pid: bool) -> PathBuf {
        let b = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(&b).unwrap();
        let pid_ns = if shared_pid {
            serde_json::json!({"type": "pid", "path": "/proc/1/ns/pid"})
        } else {
            serde_json::json!({"type": "pid"})
        };
        let config = serde_json::json!({"process": {"args": ["true"]}, "linux": {"namespaces": [pid_ns]}});
        std::fs::write(b.join("config.json"), config.to_string()).unwrap();
        b
    }

    fn create_req(&self, id: &str, bundle: &Path) -> CreateRequest {
        let mut r = CreateRequest::new();
        r.id = id.into();
        r.bundle = bundle.to_string_lossy().into();
        r.log_root = self.dir.path().to_string_lossy().into();
        r.log_path = self.dir.path().join("logs").join(format!("{id}.log")).to_string_lossy().into();
        r
    }

    async fn create(&self, id: &str) -> Result<ContainerState, (Code, String)> {
        let b = self.bundle(id, false);
        self.client.create(ctx(), &self.create_req(id, &b)).await.map_err(code)
    }

    async fn start(&self, id: &str) -> Result<ContainerState, (Code, String)> {
        self.client.start(ctx(), &req(id)).await.map_err(code)
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<Empty, (Code, String)> {
        let mut k = KillRequest::new();
        k.id = id.into();
        k.signal = signal;
        self.client.kill(ctx(), &k).await.map_err(code)
    }

    async fn delete(&self, id: &str) -> Result<ContainerState, (Code, String)> {
        self.client.delete(ctx(), &req(id)).await.map_err(code)
    }

    async fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.client.list(ctx(), &Empty::new()).await.unwrap().containers.into_iter().map(|c| c.id).collect();
        ids.sort();
        ids
    }

    async fn exec(&self, id: &str, args: &[&str], timeout_ms: i64) -> Result<protocol::shim::ExecSyncResponse, Code> {
        let mut r = ExecSyncRequest::new();
        r.id = id.into();
        r.args = args.iter().map(|a| a.to_string()).collect();
        r.timeout_ms = timeout_ms;
        self.client.exec_sync(ctx(), &r).await.map_err(|e| code(e).0)
    }
}

fn req(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.id = id.into();
    r
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

// The reap lock is held for the whole test: the service's reaper collects
// every child of this process.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn a_container_logs_runs_stops_on_its_signal_and_is_deleted() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    *lock(&s.runtime.init) = "echo hello; echo oops >&2; exec sleep 600".into();
    assert_eq!(s.create("c1").await.unwrap().status.enum_value_or_default(), Status::CREATED);
    assert_eq!(s.start("c1").await.unwrap().status.enum_value_or_default(), Status::RUNNING);
    let log = s.dir.path().join("logs/c1.log");
    until("both lines in the CRI log", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(" stdout F hello\n") && text.contains(" stderr F oops\n")
    })
    .await;
    s.kill("c1", 15).await.unwrap();
    let st = s.client.wait(ctx(), &req("c1")).await.unwrap();
    assert_eq!(st.status.enum_value_or_default(), Status::STOPPED);
    assert_eq!((st.exit_code, st.exit_signal), (143, 15));
    // A stopped container takes further signals as done.
    s.kill("c1", 9).await.unwrap();
    assert_eq!(s.delete("c1").await.unwrap().status.enum_value_or_default(), Status::STOPPED);
    assert!(s.ids().await.is_empty());
    assert_eq!(s.runtime.calls(), ["create c1", "start c1", "kill c1 15", "delete c1"]);
}

/// A container that exits is deleted from the runtime then and there, as
/// containerd deletes a task on its exit, and once: Delete later asks the
/// runtime nothing.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn an_exited_container_leaves_the_runtime_at_once_and_once() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    *lock(&s.runtime.init) = "exit 3".into();
    s.create("c1").await.unwrap();
    s.start("c1").await.unwrap();
    let st = s.client.wait(ctx(), &req("c1")).await.unwrap();
    assert_eq!(st.exit_code, 3);
    until("the runtime deleted the exited container", || s.runtime.calls().contains(&"delete c1".to_string())).await;
    assert_eq!(s.delete("c1").await.unwrap().status.enum_value_or_default(), Status::STOPPED);
    assert_eq!(s.runtime.calls(), ["create c1", "start c1", "delete c1"]);
}

#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn bad_requests_are_refused_with_their_code_and_change_nothing() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    for bad in ["", "../x", "a/b", &"x".repeat(129)] {
        assert_eq!(s.create(bad).await.unwrap_err().0, Code::INVALID_ARGUMENT, "{bad:?}");
    }
    let mut no_config = s.create_req("c1", &s.dir.path().join("nowhere"));
    no_config.log_path.clear();
    let (c, msg) = code(s.client.create(ctx(), &no_config).await.unwrap_err());
    assert_eq!(c, Code::INVALID_ARGUMENT);
    assert!(msg.contains("has no config.json"), "{msg}");
    assert!(s.runtime.calls().is_empty(), "the runtime was called: {:?}", s.runtime.calls());

    assert_eq!(s.start("ghost").await.unwrap_err().0, Code::NOT_FOUND);
    s.create("c1").await.unwrap();
    assert_eq!(s.create("c1").await.unwrap_err().0, Code::ALREADY_EXISTS);
    assert_eq!(s.exec("c1", &["true"], 0).await.unwrap_err(), Code::FAILED_PRECONDITION);
    s.start("c1").await.unwrap();
    assert_eq!(s.start("c1").await.unwrap_err().0, Code::FAILED_PRECONDITION);
    let (c, msg) = s.delete("c1").await.unwrap_err();
    assert_eq!(c, Code::FAILED_PRECONDITION);
    assert!(msg.contains("stop it first"), "{msg}");
    assert_eq!(s.exec("c1", &[], 0).await.unwrap_err(), Code::INVALID_ARGUMENT);
    assert_eq!(s.kill("c1", u32::MAX).await.unwrap_err().0, Code::INVALID_ARGUMENT);
    assert_eq!(s.ids().await, ["c1"]);
    assert_eq!(s.runtime.calls(), ["create c1", "start c1"]);
}

/// Create asks the runtime nothing; Start has it create the container, then
/// start it. A create the runtime fails ends the container there: Stopped,
/// exit 128, the runtime's words as its start error, nothing left in the
/// runtime, and the id free again once it is deleted.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn the_runtime_creates_at_start_and_a_failed_create_ends_the_container() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    assert_eq!(s.create("c1").await.unwrap().status.enum_value_or_default(), Status::CREATED);
    let st = s.client.state(ctx(), &req("c1")).await.unwrap();
    assert_eq!((st.status.enum_value_or_default(), st.pid), (Status::CREATED, 0));
    assert!(s.runtime.calls().is_empty(), "Create ran the runtime: {:?}", s.runtime.calls());

    *lock(&s.runtime.fail_create) = Some("no such image layer".into());
    let (c, msg) = s.start("c1").await.unwrap_err();
    assert_eq!(c, Code::INTERNAL);
    assert!(msg.contains("no such image layer"), "the runtime's words are kept: {msg}");
    let st = s.client.state(ctx(), &req("c1")).await.unwrap();
    assert_eq!(st.status.enum_value_or_default(), Status::STOPPED);
    assert!(st.start_failed && st.message.contains("no such image layer"), "{st:?}");
    assert_eq!(st.exit_code, 128);
    assert!(st.finished_at > 0);
    // Its Wait returns; it cannot be started again.
    s.client.wait(ctx(), &req("c1")).await.unwrap();
    assert_eq!(s.start("c1").await.unwrap_err().0, Code::FAILED_PRECONDITION);
    assert_eq!(s.runtime.calls(), ["create c1", "delete c1"]);
    s.delete("c1").await.unwrap();
    assert!(s.ids().await.is_empty());
    assert_eq!(s.runtime.calls(), ["create c1", "delete c1"], "the delete asked the runtime again");

    *lock(&s.runtime.fail_create) = None;
    s.create("c1").await.unwrap();
    assert_eq!(s.start("c1").await.unwrap().status.enum_value_or_default(), Status::RUNNING);
    assert!(s.client.state(ctx(), &req("c1")).await.unwrap().pid > 0);
}

/// A container created and never started is deleted without a runtime call.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn a_container_never_started_is_deleted_without_the_runtime() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    s.create("c1").await.unwrap();
    assert_eq!(s.delete("c1").await.unwrap().status.enum_value_or_default(), Status::STOPPED);
    assert!(s.ids().await.is_empty());
    assert!(s.runtime.calls().is_empty(), "{:?}", s.runtime.calls());
    s.create("c1").await.unwrap();
}

#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn a_kill_racing_the_exit_succeeds_and_a_broken_runtime_is_reported() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    s.create("c1").await.unwrap();
    s.start("c1").await.unwrap();
    *lock(&s.runtime.kill_answer) = KillAnswer::NotRunning;
    s.kill("c1", 15).await.unwrap();
    *lock(&s.runtime.kill_answer) = KillAnswer::Fails;
    let (c, msg) = s.kill("c1", 15).await.unwrap_err();
    assert_eq!(c, Code::INTERNAL);
    assert!(msg.contains("the runtime broke"), "{msg}");
}

#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn a_container_in_the_pods_pid_namespace_takes_its_leftovers_with_it() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    *lock(&s.runtime.init) = "exit 3".into();
    for (id, shared) in [("own", false), ("shared", true)] {
        let b = s.bundle(id, shared);
        s.client.create(ctx(), &s.create_req(id, &b)).await.unwrap();
        s.client.start(ctx(), &req(id)).await.unwrap();
        let st = s.client.wait(ctx(), &req(id)).await.unwrap();
        assert_eq!(st.exit_code, 3);
    }
    let calls = s.runtime.calls();
    assert!(calls.contains(&"kill shared 9 --all".to_string()), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("kill own")), "{calls:?}");
}

#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn deleting_a_container_the_shim_lost_makes_the_runtime_forget_it() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    let st = s.delete("ghost").await.unwrap();
    assert_eq!(st.status.enum_value_or_default(), Status::STOPPED);
    assert_eq!(s.runtime.calls(), ["delete ghost"]);
}

#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn exec_sync_returns_output_and_exit_code_and_enforces_its_timeout() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    s.create("c1").await.unwrap();
    s.start("c1").await.unwrap();
    let r = s.exec("c1", &["sh", "-c", "echo out; echo err >&2; exit 3"], 0).await.unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code, r.timed_out),
        (&b"out\n"[..], &b"err\n"[..], 3, false)
    );
    let r = s.exec("c1", &["sleep", "30"], 200).await.unwrap();
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 137);
    let left: Vec<_> = std::fs::read_dir(s.dir.path().join("bundles/c1"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("exec-"))
        .collect();
    assert!(left.is_empty(), "exec files left behind: {left:?}");
}

#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn update_hands_the_resources_to_the_runtime() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    s.create("c1").await.unwrap();
    let mut u = protocol::shim::UpdateRequest::new();
    u.id = "c1".into();
    u.resources = br#"{"cpu":{"shares":512}}"#.to_vec();
    assert_eq!(code(s.client.update(ctx(), &u).await.unwrap_err()).0, Code::FAILED_PRECONDITION);
    s.start("c1").await.unwrap();
    s.client.update(ctx(), &u).await.unwrap();
    assert!(s.runtime.calls().contains(&r#"update c1 {"cpu":{"shares":512}}"#.to_string()));
    assert!(!s.dir.path().join("bundles/c1/update.json").exists(), "the resources file is removed");
}

#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn shutdown_kills_and_deletes_every_container() {
    let _serial = lock(&REAP_SERIAL);
    let s = serve().await;
    for id in ["a", "b"] {
        s.create(id).await.unwrap();
        s.start(id).await.unwrap();
    }
    s.create("created").await.unwrap();
    let pids: Vec<i32> = lock(&s.runtime.inits).values().copied().collect();
    let done = Arc::clone(&s.svc.shutdown);
    let notified = done.notified();
    s.client.shutdown(ctx(), &Empty::new()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), notified).await.expect("shutdown was not signalled");
    assert!(s.ids().await.is_empty());
    let calls = s.runtime.calls();
    for id in ["a", "b"] {
        assert!(calls.contains(&format!("kill {id} 9 --all")), "{id} not killed: {calls:?}");
        assert!(calls.contains(&format!("delete {id}")), "{id} not deleted: {calls:?}");
    }
    // The runtime never made the one never started: it has nothing to end.
    assert!(!calls.iter().any(|c| c.contains("created")), "{calls:?}");
    until("every init reaped", || pids.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists())).await;
}
