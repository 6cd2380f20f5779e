//! berthctl: a CRI client for people. Drives Berth (or any CRI runtime)
//! through its socket; reads the same JSON/YAML configs crictl reads.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth::log_printer;
use clap::{Parser, Subcommand};
use protocol::cri::{self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};
use protocol::images::images_client::ImagesClient;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "berthctl", version, about = "Drive Berth (or any CRI runtime) from the command line")]
struct Cli {
    /// CRI runtime endpoint; default: runtime-endpoint of the config file,
    /// else unix:///run/berth/berth.sock.
    #[arg(
        short = 'r',
        long = "runtime-endpoint",
        visible_alias = "endpoint",
        env = "CONTAINER_RUNTIME_ENDPOINT",
        global = true
    )]
    endpoint: Option<String>,
    /// CRI image endpoint; default: image-endpoint of the config file, else
    /// the runtime endpoint.
    #[arg(short = 'i', long = "image-endpoint", env = "IMAGE_SERVICE_ENDPOINT")]
    image_endpoint: Option<String>,
    /// Timeout of connecting and of each call (2s, 1m, or seconds; 0: none);
    /// default: timeout of the config file, else none. Pulls, logs and
    /// streams are not cut by it.
    #[arg(long)]
    timeout: Option<String>,
    /// crictl's config file (runtime-endpoint, image-endpoint, timeout, debug).
    #[arg(short = 'c', long, env = "CRI_CONFIG_FILE", default_value = "/etc/crictl.yaml")]
    config: PathBuf,
    /// Print every request and response on stderr.
    #[arg(short = 'D', long)]
    debug: bool,
    /// CA certificate (PEM) to trust for an https streaming server
    /// (exec, attach, port-forward); default: the system's.
    #[arg(long, global = true)]
    stream_ca: Option<PathBuf>,
    /// Per-call timeout in seconds (0: none); --timeout is crictl's name.
    #[arg(long = "request-timeout", global = true, hide = true)]
    request_timeout: Option<u64>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Streaming transport, as crictl names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Transport {
    /// SPDY/3.1 (what kubelet speaks).
    #[default]
    Spdy,
    /// WebSocket, v5.channel.k8s.io.
    Websocket,
}

/// Output formats, as crictl names them: JSON is the protobuf JSON mapping
/// (camelCase, enum names), YAML the same document, go-template runs
/// `--template` over it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Format {
    #[default]
    Table,
    Json,
    Yaml,
    #[value(name = "go-template")]
    GoTemplate,
}

/// `-o` and `--template` of a list (a table unless asked otherwise).
#[derive(clap::Args, Debug, Clone)]
struct ListOutput {
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
    /// The Go template for -o go-template.
    #[arg(long)]
    template: Option<String>,
}

/// `-o` and `--template` of an inspect (JSON unless asked otherwise).
#[derive(clap::Args, Debug, Clone)]
struct DocOutput {
    #[arg(short, long, value_enum, default_value = "json")]
    output: Format,
    /// The Go template for -o go-template.
    #[arg(long)]
    template: Option<String>,
}

/// Which of a list to keep, as crictl's filters do.
#[derive(clap::Args, Debug, Clone, Default)]
struct ListFilter {
    /// Only those whose name matches this regular expression.
    #[arg(long)]
    name: Option<String>,
    /// Only those with this label (key=value; repeat for more).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Only the N most recently created.
    #[arg(long)]
    last: Option<usize>,
    /// Only the most recently created.
    #[arg(short = 'l', long)]
    latest: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runtime name and versions.
    Version {
        #[command(flatten)]
        out: ListOutput,
    },
    /// Runtime status and conditions.
    Info {
        #[command(flatten)]
        out: DocOutput,
    },
    /// Run a pod sandbox from a config file; prints its id.
    Runp { config: PathBuf },
    /// List pod sandboxes.
    Pods {
        #[command(flatten)]
        out: ListOutput,
        #[command(flatten)]
        filter: ListFilter,
        /// Only pods whose id starts with this.
        #[arg(long)]
        id: Option<String>,
        /// Only pods in this namespace (a regular expression).
        #[arg(long)]
        namespace: Option<String>,
        /// ready or notready.
        #[arg(short, long)]
        state: Option<String>,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Status of pod sandboxes.
    Inspectp {
        #[command(flatten)]
        out: DocOutput,
        ids: Vec<String>,
    },
    /// Stop pod sandboxes.
    Stopp { ids: Vec<String> },
    /// Remove pod sandboxes.
    Rmp { ids: Vec<String> },
    /// Create a container in a pod from a container and a pod config.
    Create { pod_id: String, container_config: PathBuf, pod_config: PathBuf },
    /// Start containers.
    Start { ids: Vec<String> },
    /// Stop containers (stop signal, then SIGKILL after the timeout).
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "timeout", default_value_t = 10)]
        grace: i64,
        ids: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Stop running containers first.
        #[arg(short, long)]
        force: bool,
        ids: Vec<String>,
    },
    /// List containers.
    Ps {
        /// Show all containers (default: running).
        #[arg(short, long)]
        all: bool,
        /// Only containers of this pod.
        #[arg(short, long)]
        pod: Option<String>,
        /// Only containers in this state (created, running, exited, unknown).
        #[arg(short, long)]
        state: Option<String>,
        /// Only containers of this image (name, digest or id).
        #[arg(long)]
        image: Option<String>,
        /// Only containers whose id starts with this.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        out: ListOutput,
        #[command(flatten)]
        filter: ListFilter,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Status of containers.
    Inspect {
        #[command(flatten)]
        out: DocOutput,
        ids: Vec<String>,
    },
    /// Run a command in a container.
    Exec {
        /// Run with CRI ExecSync (output collected, then printed) instead of
        /// streaming through the runtime's streaming server.
        #[arg(short, long)]
        sync: bool,
        /// Pass stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal (this terminal goes raw; resizes follow).
        #[arg(short, long)]
        tty: bool,
        /// How to reach the streaming server.
        #[arg(long, value_enum, default_value_t)]
        transport: Transport,
        /// Seconds before the command is killed (0: none).
        #[arg(long = "exec-timeout", default_value_t = 0)]
        exec_timeout: i64,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Attach to a running container's stdio (-i sends stdin; a container
    /// with a terminal gets this terminal, in raw mode).
    Attach {
        container: String,
        #[arg(short, long)]
        interactive: bool,
        #[arg(short, long)]
        tty: bool,
        /// How to reach the streaming server.
        #[arg(long, value_enum, default_value_t)]
        transport: Transport,
    },
    /// Forward local ports to ports inside a pod (LOCAL:REMOTE, or PORT for
    /// both), until interrupted.
    PortForward {
        pod: String,
        #[arg(required = true)]
        ports: Vec<String>,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
    /// Print a container's log.
    Logs {
        container: String,
        /// Keep printing (through rotation) until the container has exited and the file is drained.
        #[arg(short, long)]
        follow: bool,
        /// Prefix each line with its timestamp.
        #[arg(short, long)]
        timestamps: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Only lines since a time: RFC3339, a duration (5m, 1h30m) or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// Stop after this many bytes.
        #[arg(long)]
        limit_bytes: Option<u64>,
        /// stdout, stderr or all.
        #[arg(long, default_value = "all")]
        stream: String,
    },
    /// CPU, memory and disk use of running containers.
    Stats {
        /// Only containers of this pod.
        #[arg(short, long)]
        pod: Option<String>,
        /// Refresh every second until interrupted.
        #[arg(short, long)]
        watch: bool,
        #[command(flatten)]
        out: ListOutput,
    },
    /// List images (only those of IMAGE, when given).
    Images {
        image: Option<String>,
        #[command(flatten)]
        out: ListOutput,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Image commands.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Pull an image from its registry, showing each layer's progress;
    /// prints the image id.
    Pull {
        image: String,
        /// Registry credentials, user:password; with only a user name the
        /// password is read from stdin (its first line), so it stays off the
        /// command line.
        #[arg(long)]
        creds: Option<String>,
        /// A file holding user:password (its first line).
        #[arg(long, conflicts_with = "creds")]
        creds_file: Option<PathBuf>,
        /// Registry credentials, base64 of user:password.
        #[arg(long)]
        auth: Option<String>,
        /// Identity (refresh) token for the registry's token service.
        #[arg(long)]
        identity_token: Option<String>,
        /// Bearer token sent to the registry as is.
        #[arg(long)]
        registry_token: Option<String>,
        /// No progress, only the image id.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images.
    Rmi { images: Vec<String> },
    /// Status of an image.
    Inspecti {
        #[command(flatten)]
        out: DocOutput,
        image: String,
    },
    /// Usage of the image filesystem.
    Imagefsinfo {
        #[command(flatten)]
        out: DocOutput,
    },
    /// A completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// Run a pod and a container in it, and start it (prints the container id).
    Run { container_config: PathBuf, pod_config: PathBuf },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Import an OCI image layout folder (berthd reads it; give a path it can see).
    Import { dir: PathBuf, name: Option<String> },
}

/// Listens on each local port and forwards every connection through one
/// port-forward session, until interrupted or the session ends.
async fn port_forward(url: &str, address: std::net::IpAddr, pairs: &[(u16, u16)], ca: Option<&Path>) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let session = berth::stream_client::PortForward::connect_tls(url, ca).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let session = std::sync::Arc::new(tokio::sync::Mutex::new(session));
    let mut listeners = Vec::new();
    for (local, remote) in pairs {
        let l = tokio::net::TcpListener::bind((address, *local))
            .await
            .with_context(|| format!("listening on {address}:{local}"))?;
        eprintln!("Forwarding from {} -> {remote}", l.local_addr()?);
        listeners.push((l, *remote));
    }
    let mut tasks = Vec::new();
    for (l, remote) in listeners {
        let session = std::sync::Arc::clone(&session);
        tasks.push(tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let conn = session.lock().await.open(remote).await;
                let Ok(mut conn) = conn else { break };
                tokio::spawn(async move {
                    let (mut rd, mut wr) = tcp.into_split();
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        tokio::select! {
                            n = rd.read(&mut buf) => match n {
                                Ok(0) | Err(_) => { let _ = conn.close_write().await; break; }
                                Ok(n) => if conn.send(&buf[..n]).await.is_err() { break },
                            },
                            d = conn.recv() => match d {
                                Some(d) => if wr.write_all(&d).await.is_err() { break },
                                None => break,
                            },
                        }
                    }
                    // Whatever the pod still sends after our side closed.
                    while let Some(d) = conn.recv().await {
                        if wr.write_all(&d).await.is_err() {
                            break;
                        }
                    }
                    let err = conn.error().await;
                    if !err.is_empty() {
                        eprintln!("{err}");
                    }
                });
            }
        }));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = futures::future::join_all(tasks) => {}
    }
    Ok(())
}

/// Runs an exec through the streaming server: this process's stdin and
/// terminal on one side, the command on the other. Returns its exit code.
async fn exec_stream(url: &str, interactive: bool, tty: bool, transport: Transport, ca: Option<&Path>) -> Result<i32> {
    use berth::stream_client::{exit_code, Channels, Event, ExecStream};
    use std::os::fd::AsFd;
    let ch = Channels { stdin: interactive, stdout: true, stderr: !tty, tty };
    let mut s = match transport {
        Transport::Spdy => ExecStream::connect_tls(url, berth::streaming::EXEC_PROTOCOLS, ch, ca).await,
        Transport::Websocket => ExecStream::connect_ws_tls(url, berth::streaming::WS_EXEC_PROTOCOLS, ca).await,
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stdin_fd = std::io::stdin();
    let _raw = if tty && interactive { berth::terminal::RawMode::enable(stdin_fd.as_fd()) } else { None };
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    if tty {
        if let Some((w, h)) = berth::terminal::size(std::io::stdout()) {
            s.resize(w, h).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    if interactive {
        // A plain thread: reading a terminal blocks, and the process exits
        // with the command whatever this thread is doing.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; 8192];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    } else {
        drop(in_tx);
    }
    let mut stdin_open = interactive;
    let mut status = Vec::new();
    loop {
        tokio::select! {
            ev = s.next() => match ev {
                Some(Event::Stdout(d)) => { let mut o = std::io::stdout(); o.write_all(&d)?; o.flush()?; }
                Some(Event::Stderr(d)) => { let mut o = std::io::stderr(); o.write_all(&d)?; o.flush()?; }
                Some(Event::Status(st)) => status = st,
                Some(Event::Closed) | None => break,
            },
            data = in_rx.recv(), if stdin_open => match data {
                Some(d) => s.send_stdin(&d).await.map_err(|e| anyhow::anyhow!("{e}"))?,
                None => {
                    stdin_open = false;
                    s.close_stdin().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            },
            _ = winch.recv(), if tty => {
                if let Some((w, h)) = berth::terminal::size(std::io::stdout()) {
                    let _ = s.resize(w, h).await;
                }
            }
        }
    }
    Ok(match exit_code(&status) {
        Some(code) => code,
        None if status.is_empty() => 0,
        None => {
            eprintln!("{}", String::from_utf8_lossy(&status));
            1
        }
    })
}

/// Pulls through Berth's progress stream; a runtime without it (any other
/// CRI runtime) gets a plain CRI PullImage.
async fn pull(c: &mut Ctl, req: protocol::images::PullRequest, quiet: bool) -> Result<String> {
    use std::io::IsTerminal;
    if c.debug {
        eprintln!("DEBUG request: PullRequest {{ image: {:?}, credentials: <redacted> }}", req.image);
    }
    match c.berth.pull(tonic::Request::new(req.clone())).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let stderr = std::io::stderr();
            let tty = stderr.is_terminal();
            let mut view = berth::pull_progress::ProgressView::new(stderr.lock(), tty);
            while let Some(msg) = stream.message().await? {
                if !quiet {
                    view.show(&msg.layers)?;
                }
                if !msg.image_id.is_empty() {
                    return Ok(msg.image_id);
                }
            }
            bail!("berthd ended the pull without an image id")
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            let auth = cri::AuthConfig {
                username: req.username,
                password: req.password,
                auth: req.auth,
                identity_token: req.identity_token,
                registry_token: req.registry_token,
                ..Default::default()
            };
            let r = c
                .img
                .pull_image(tonic::Request::new(cri::PullImageRequest {
                    image: Some(cri::ImageSpec { image: req.image, ..Default::default() }),
                    auth: Some(auth),
                    sandbox_config: None,
                }))
                .await?;
            Ok(r.into_inner().image_ref)
        }
        Err(s) => Err(s.into()),
    }
}

fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_slice(&data).with_context(|| format!("parsing {} as JSON", path.display()))
    } else {
        serde_norway::from_slice(&data).with_context(|| format!("parsing {} as YAML", path.display()))
    }
}

struct Ctl {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    berth: ImagesClient<Channel>,
    timeout: Option<Duration>,
    stream_ca: Option<PathBuf>,
    debug: bool,
}

/// crictl's config file (`/etc/crictl.yaml`); keys it does not know are
/// ignored, as crictl ignores them.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(default, rename_all = "kebab-case")]
struct CrictlConfig {
    runtime_endpoint: Option<String>,
    image_endpoint: Option<String>,
    timeout: Option<u64>,
    debug: Option<bool>,
}

impl CrictlConfig {
    /// The file, or nothing when it does not exist.
    fn load(path: &Path) -> Result<CrictlConfig> {
        match std::fs::read(path) {
            Ok(data) if data.len() > 1 << 20 => bail!("{} is larger than 1 MiB", path.display()),
            Ok(data) if data.iter().all(u8::is_ascii_whitespace) => Ok(CrictlConfig::default()),
            Ok(data) => serde_norway::from_slice(&data).with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CrictlConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Shows a response with --debug.
fn got<T: std::fmt::Debug>(debug: bool, r: T) -> T {
    if debug {
        eprintln!("DEBUG response: {r:?}");
    }
    r
}

/// A `--timeout` value: a duration (2s, 1m) or whole seconds.
fn parse_timeout(s: &str) -> Result<Duration> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    log_printer::parse_duration(s).with_context(|| format!("--timeout {s:?}: give a duration like 2s or seconds"))
}

/// Prints `doc` (a message in the protobuf JSON mapping) as `format` asks;
/// `table` is what a table would print.
fn emit(
    doc: &serde_json::Value,
    format: Format,
    template: Option<&str>,
    table: impl FnOnce() -> Result<()>,
) -> Result<()> {
    match format {
        Format::Table => table(),
        Format::Json => print_json(doc),
        Format::Yaml => {
            print!("{}", serde_norway::to_string(doc)?);
            Ok(())
        }
        Format::GoTemplate => {
            let t = template.context("-o go-template needs --template")?;
            let out = gtmpl::template(t, berth::proto_json::to_template_value(doc))
                .map_err(|e| anyhow::anyhow!("template: {e}"))?;
            print!("{out}");
            Ok(())
        }
    }
}

/// A message in the protobuf JSON mapping, with a verbose status's `info`
/// values parsed (as crictl prints inspect).
fn doc<M: prost::Message>(msg: &M, name: &str) -> Result<serde_json::Value> {
    berth::proto_json::to_json(msg, name).map_err(|e| anyhow::anyhow!("{e}"))
}

impl ListFilter {
    fn name_regex(&self) -> Result<Option<regex::Regex>> {
        self.name.as_deref().map(|n| regex::Regex::new(n).with_context(|| format!("--name {n:?}"))).transpose()
    }

    /// `--label k=v` as a CRI label selector.
    fn selector(&self) -> Result<HashMap<String, String>> {
        self.labels
            .iter()
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("--label {l:?}: give key=value"))
            })
            .collect()
    }

    /// Keeps the newest `--last N` (or one with `--latest`), newest first.
    fn cut<T>(&self, items: &mut Vec<T>, created: impl Fn(&T) -> i64) {
        let n = if self.latest { Some(1) } else { self.last };
        if let Some(n) = n {
            items.sort_by_key(|i| std::cmp::Reverse(created(i)));
            items.truncate(n);
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(13)]
}

fn ago(nanos: i64) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let s = ((now - nanos) / 1_000_000_000).max(0);
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        3600..=86399 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

/// The one id a prefix matches; with no match the prefix is passed on as
/// given, so the runtime answers NotFound in its own words.
fn unique(prefix: &str, mut ids: Vec<String>, what: &str) -> Result<String> {
    match ids.len() {
        0 => Ok(prefix.to_string()),
        1 => Ok(ids.remove(0)),
        n => bail!("{prefix} matches {n} {what}; give more of the id"),
    }
}

/// A verbose status's `info` map with its JSON values parsed, for printing.
fn info_json(info: &HashMap<String, String>) -> HashMap<String, serde_json::Value> {
    info.iter()
        .map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone()))))
        .collect()
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.2}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

impl Ctl {
    fn req<T: std::fmt::Debug>(&self, msg: T) -> tonic::Request<T> {
        if self.debug {
            eprintln!("DEBUG request: {msg:?}");
        }
        let mut r = tonic::Request::new(msg);
        if let Some(t) = self.timeout {
            r.set_timeout(t);
        }
        r
    }

    async fn pod_id(&mut self, prefix: &str) -> Result<String> {
        let filter = cri::PodSandboxFilter { id: prefix.to_string(), ..Default::default() };
        let r = self.rt.list_pod_sandbox(self.req(cri::ListPodSandboxRequest { filter: Some(filter) })).await?;
        unique(prefix, r.into_inner().items.into_iter().map(|p| p.id).collect(), "pod sandboxes")
    }

    async fn container_id(&mut self, prefix: &str) -> Result<String> {
        let filter = cri::ContainerFilter { id: prefix.to_string(), ..Default::default() };
        let r = self.rt.list_containers(self.req(cri::ListContainersRequest { filter: Some(filter) })).await?;
        unique(prefix, r.into_inner().containers.into_iter().map(|c| c.id).collect(), "containers")
    }

    async fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        self.rt
            .container_status(self.req(cri::ContainerStatusRequest { container_id: id.to_string(), verbose: false }))
            .await?
            .into_inner()
            .status
            .context("runtime returned no status")
    }

    async fn logs(&mut self, container: &str, follow: bool, opts: log_printer::Options) -> Result<()> {
        let id = self.container_id(container).await?;
        let st = self.container_status(&id).await?;
        if st.log_path.is_empty() {
            bail!("container {id} has no log file (its pod has no log_directory or it has no log_path)");
        }
        let path = PathBuf::from(&st.log_path);
        let mut follower =
            log_printer::Follower::open(&path, opts.tail).with_context(|| format!("opening {}", path.display()))?;
        let mut printer = log_printer::Printer::new(opts, std::io::stdout().lock(), std::io::stderr().lock());
        loop {
            // Whether it runs is asked before reading, so the last read after
            // it stopped sees everything it wrote.
            let running = follow
                && self
                    .container_status(&id)
                    .await
                    .map(|s| s.state != cri::ContainerState::ContainerExited as i32)
                    .unwrap_or(false);
            follower.poll(|l| if printer.done() { Ok(()) } else { printer.line(l) })?;
            printer.flush()?;
            if !running || printer.done() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Completion { shell } = cli.cmd {
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "berthctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    // Flags (and their environment variables) over crictl's config file.
    let file = match CrictlConfig::load(&cli.config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("berthctl: {e:#}");
            std::process::exit(1);
        }
    };
    let endpoint =
        cli.endpoint.clone().or(file.runtime_endpoint.clone()).unwrap_or_else(|| "unix:///run/berth/berth.sock".into());
    let image_endpoint = cli.image_endpoint.clone().or(file.image_endpoint.clone()).unwrap_or_else(|| endpoint.clone());
    let timeout = match (&cli.timeout, cli.request_timeout, file.timeout) {
        (Some(t), _, _) => parse_timeout(t)?,
        (None, Some(secs), _) | (None, None, Some(secs)) => Duration::from_secs(secs),
        (None, None, None) => Duration::ZERO,
    };
    let connect_timeout = if timeout.is_zero() { Duration::from_secs(5) } else { timeout };
    let debug = cli.debug || file.debug.unwrap_or(false);
    if debug {
        eprintln!("DEBUG runtime endpoint {endpoint}, image endpoint {image_endpoint}, timeout {timeout:?}");
    }
    let channel = berth::cri_client::connect(&endpoint, connect_timeout).await?;
    let image_channel = if image_endpoint == endpoint {
        channel.clone()
    } else {
        berth::cri_client::connect(&image_endpoint, connect_timeout).await?
    };
    let mut c = Ctl {
        rt: RuntimeServiceClient::new(channel),
        img: ImageServiceClient::new(image_channel.clone()),
        berth: ImagesClient::new(image_channel),
        timeout: (!timeout.is_zero()).then_some(timeout),
        stream_ca: cli.stream_ca.clone(),
        debug,
    };
    match run(&mut c, cli.cmd).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("berthctl: {:?}: {}", s.code(), s.message()),
                None => eprintln!("berthctl: {e:#}"),
            }
            std::process::exit(1);
        }
    }
}

async fn run(c: &mut Ctl, cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Version { out } => {
            let v = got(c.debug, c.rt.version(c.req(cri::VersionRequest { version: "v1".into() })).await?.into_inner());
            emit(&doc(&v, "VersionResponse")?, out.output, out.template.as_deref(), || {
                println!(
                    "Version:  {}\nRuntimeName:  {}\nRuntimeVersion:  {}\nRuntimeApiVersion:  {}",
                    v.version, v.runtime_name, v.runtime_version, v.runtime_api_version
                );
                Ok(())
            })?;
        }
        Cmd::Info { out } => {
            let s = got(c.debug, c.rt.status(c.req(cri::StatusRequest { verbose: true })).await?.into_inner());
            let mut d = doc(&s, "StatusResponse")?;
            d["info"] = serde_json::to_value(info_json(&s.info))?;
            emit(&d, out.output, out.template.as_deref(), || print_json(&d))?;
        }
        Cmd::Completion { .. } => {}
        Cmd::Runp { config } => {
            let config: cri::PodSandboxConfig = read_config(&config)?;
            let r =
                c.rt.run_pod_sandbox(
                    c.req(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }),
                )
                .await?;
            println!("{}", r.into_inner().pod_sandbox_id);
        }
        Cmd::Pods { out, filter: f, id, namespace, state, quiet } => {
            let state = match state.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None => None,
                Some("ready") => Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }),
                Some("notready") => {
                    Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxNotready as i32 })
                }
                Some(s) => bail!("unknown state {s:?}: ready or notready"),
            };
            let name = f.name_regex()?;
            let namespace = namespace
                .as_deref()
                .map(|n| regex::Regex::new(n).with_context(|| format!("--namespace {n:?}")))
                .transpose()?;
            let filter = cri::PodSandboxFilter { id: id.unwrap_or_default(), state, label_selector: f.selector()? };
            let mut items =
                got(c.debug, c.rt.list_pod_sandbox(c.req(cri::ListPodSandboxRequest { filter: Some(filter) })).await?)
                    .into_inner()
                    .items;
            items.retain(|p| {
                let m = p.metadata.clone().unwrap_or_default();
                name.as_ref().is_none_or(|r| r.is_match(&m.name))
                    && namespace.as_ref().is_none_or(|r| r.is_match(&m.namespace))
            });
            items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
            f.cut(&mut items, |p| p.created_at);
            if quiet {
                items.iter().for_each(|p| println!("{}", p.id));
                return Ok(0);
            }
            let d = doc(&cri::ListPodSandboxResponse { items: items.clone() }, "ListPodSandboxResponse")?;
            emit(&d, out.output, out.template.as_deref(), || {
                println!(
                    "{:<13}  {:<16}  {:<10}  {:<24}  {:<16}  {:<7}",
                    "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT"
                );
                for p in items {
                    let m = p.metadata.unwrap_or_default();
                    let st = cri::PodSandboxState::try_from(p.state)
                        .map(|s| s.as_str_name().trim_start_matches("SANDBOX_").to_string())
                        .unwrap_or_default();
                    println!(
                        "{:<13}  {:<16}  {:<10}  {:<24}  {:<16}  {:<7}",
                        short(&p.id),
                        ago(p.created_at),
                        st,
                        m.name,
                        m.namespace,
                        m.attempt
                    );
                }
                Ok(())
            })?;
        }
        Cmd::Inspectp { out, ids } => {
            for id in ids {
                let id = c.pod_id(&id).await?;
                let r = got(
                    c.debug,
                    c.rt.pod_sandbox_status(c.req(cri::PodSandboxStatusRequest { pod_sandbox_id: id, verbose: true }))
                        .await?
                        .into_inner(),
                );
                let mut d = doc(&r, "PodSandboxStatusResponse")?;
                d["info"] = serde_json::to_value(info_json(&r.info))?;
                emit(&d, out.output, out.template.as_deref(), || print_json(&d))?;
            }
        }
        Cmd::Stopp { ids } => {
            for id in ids {
                let id = c.pod_id(&id).await?;
                c.rt.stop_pod_sandbox(c.req(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() })).await?;
                println!("Stopped sandbox {id}");
            }
        }
        Cmd::Rmp { ids } => {
            for id in ids {
                let id = c.pod_id(&id).await?;
                c.rt.remove_pod_sandbox(c.req(cri::RemovePodSandboxRequest { pod_sandbox_id: id.clone() })).await?;
                println!("Removed sandbox {id}");
            }
        }
        Cmd::Create { pod_id, container_config, pod_config } => {
            let config: cri::ContainerConfig = read_config(&container_config)?;
            let sandbox: cri::PodSandboxConfig = read_config(&pod_config)?;
            let pod_id = c.pod_id(&pod_id).await?;
            let r =
                c.rt.create_container(c.req(cri::CreateContainerRequest {
                    pod_sandbox_id: pod_id,
                    config: Some(config),
                    sandbox_config: Some(sandbox),
                }))
                .await?;
            println!("{}", r.into_inner().container_id);
        }
        Cmd::Start { ids } => {
            for id in ids {
                let id = c.container_id(&id).await?;
                c.rt.start_container(c.req(cri::StartContainerRequest { container_id: id.clone() })).await?;
                println!("{id}");
            }
        }
        Cmd::Stop { grace, ids } => {
            for id in ids {
                let id = c.container_id(&id).await?;
                c.rt.stop_container(c.req(cri::StopContainerRequest { container_id: id.clone(), timeout: grace }))
                    .await?;
                println!("{id}");
            }
        }
        Cmd::Rm { force, ids } => {
            for id in ids {
                let id = c.container_id(&id).await?;
                let st = c.container_status(&id).await;
                if let Ok(st) = st {
                    if st.state == cri::ContainerState::ContainerRunning as i32 && !force {
                        bail!("container {id} is running; stop it first or use --force");
                    }
                }
                c.rt.remove_container(c.req(cri::RemoveContainerRequest { container_id: id.clone() })).await?;
                println!("{id}");
            }
        }
        Cmd::Ps { all, pod, state, image, id, out, filter: f, quiet } => {
            let mut filter = cri::ContainerFilter {
                id: id.unwrap_or_default(),
                label_selector: f.selector()?,
                ..Default::default()
            };
            if let Some(p) = pod {
                filter.pod_sandbox_id = c.pod_id(&p).await?;
            }
            let want = match state.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None if all || f.latest || f.last.is_some() => None,
                None => Some(cri::ContainerState::ContainerRunning),
                Some("created") => Some(cri::ContainerState::ContainerCreated),
                Some("running") => Some(cri::ContainerState::ContainerRunning),
                Some("exited") => Some(cri::ContainerState::ContainerExited),
                Some("unknown") => Some(cri::ContainerState::ContainerUnknown),
                Some(s) => bail!("unknown state {s:?}: created, running, exited or unknown"),
            };
            filter.state = want.map(|s| cri::ContainerStateValue { state: s as i32 });
            let mut cs =
                got(c.debug, c.rt.list_containers(c.req(cri::ListContainersRequest { filter: Some(filter) })).await?)
                    .into_inner()
                    .containers;
            let name = f.name_regex()?;
            // An image filter is resolved to its id, so a tag, a digest and an id all match.
            let image_id = match &image {
                Some(i) => c
                    .img
                    .image_status(c.req(cri::ImageStatusRequest {
                        image: Some(cri::ImageSpec { image: i.clone(), ..Default::default() }),
                        verbose: false,
                    }))
                    .await?
                    .into_inner()
                    .image
                    .map(|i| i.id),
                None => None,
            };
            cs.retain(|x| {
                let m = x.metadata.clone().unwrap_or_default();
                let img = x.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
                name.as_ref().is_none_or(|r| r.is_match(&m.name))
                    && image.as_ref().is_none_or(|i| img == i || image_id.as_deref() == Some(x.image_id.as_str()))
            });
            cs.sort_by_key(|x| std::cmp::Reverse(x.created_at));
            f.cut(&mut cs, |x| x.created_at);
            if quiet {
                cs.iter().for_each(|x| println!("{}", x.id));
                return Ok(0);
            }
            let d = doc(&cri::ListContainersResponse { containers: cs.clone() }, "ListContainersResponse")?;
            emit(&d, out.output, out.template.as_deref(), || {
                println!(
                    "{:<13}  {:<28}  {:<16}  {:<18}  {:<20}  {:<7}  {:<13}",
                    "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"
                );
                for x in cs {
                    let m = x.metadata.unwrap_or_default();
                    let st = cri::ContainerState::try_from(x.state)
                        .map(|s| s.as_str_name().trim_start_matches("CONTAINER_").to_string())
                        .unwrap_or_default();
                    let image = x.image.map(|i| i.image).unwrap_or_default();
                    println!(
                        "{:<13}  {:<28}  {:<16}  {:<18}  {:<20}  {:<7}  {:<13}",
                        short(&x.id),
                        image,
                        ago(x.created_at),
                        st,
                        m.name,
                        m.attempt,
                        short(&x.pod_sandbox_id)
                    );
                }
                Ok(())
            })?;
        }
        Cmd::Inspect { out, ids } => {
            for id in ids {
                let id = c.container_id(&id).await?;
                let r = got(
                    c.debug,
                    c.rt.container_status(c.req(cri::ContainerStatusRequest { container_id: id, verbose: true }))
                        .await?
                        .into_inner(),
                );
                let mut d = doc(&r, "ContainerStatusResponse")?;
                d["info"] = serde_json::to_value(info_json(&r.info))?;
                emit(&d, out.output, out.template.as_deref(), || print_json(&d))?;
            }
        }
        Cmd::Exec { sync: false, interactive, tty, transport, container, cmd, .. } => {
            let id = c.container_id(&container).await?;
            let url =
                c.rt.exec(c.req(cri::ExecRequest {
                    container_id: id,
                    cmd,
                    tty,
                    stdin: interactive,
                    stdout: true,
                    stderr: !tty,
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .url;
            return exec_stream(&url, interactive, tty, transport, c.stream_ca.as_deref()).await;
        }
        Cmd::Attach { container, interactive, tty, transport } => {
            let id = c.container_id(&container).await?;
            let url =
                c.rt.attach(c.req(cri::AttachRequest {
                    container_id: id,
                    stdin: interactive,
                    tty,
                    stdout: true,
                    stderr: !tty,
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .url;
            return exec_stream(&url, interactive, tty, transport, c.stream_ca.as_deref()).await;
        }
        Cmd::PortForward { pod, ports, address } => {
            let id = c.pod_id(&pod).await?;
            let mut pairs = Vec::new();
            for p in &ports {
                let (local, remote) = p.split_once(':').unwrap_or((p, p));
                let parse = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
                match (parse(local), parse(remote)) {
                    (Some(l), Some(r)) => pairs.push((l, r)),
                    _ => bail!("{p:?}: give LOCAL:REMOTE or PORT (1-65535)"),
                }
            }
            let remotes = pairs.iter().map(|(_, r)| *r as i32).collect();
            let url =
                c.rt.port_forward(c.req(cri::PortForwardRequest { pod_sandbox_id: id, port: remotes }))
                    .await?
                    .into_inner()
                    .url;
            port_forward(&url, address, &pairs, c.stream_ca.as_deref()).await?;
        }
        Cmd::Exec { sync: true, exec_timeout, container, cmd, .. } => {
            let id = c.container_id(&container).await?;
            let r =
                c.rt.exec_sync(c.req(cri::ExecSyncRequest { container_id: id, cmd, timeout: exec_timeout }))
                    .await?
                    .into_inner();
            std::io::stdout().write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            return Ok(r.exit_code);
        }
        Cmd::Logs { container, follow, timestamps, tail, since, limit_bytes, stream } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            let since = match since {
                Some(s) => Some(
                    log_printer::parse_since(&s, now)
                        .with_context(|| format!("--since {s:?}: give RFC3339, a duration like 5m, or Unix seconds"))?,
                ),
                None => None,
            };
            let stream = match stream.as_str() {
                "all" | "" => log_printer::StreamFilter::All,
                "stdout" => log_printer::StreamFilter::Stdout,
                "stderr" => log_printer::StreamFilter::Stderr,
                other => bail!("--stream {other:?}: stdout, stderr or all"),
            };
            c.logs(&container, follow, log_printer::Options { tail, since, timestamps, limit_bytes, stream }).await?
        }
        Cmd::Stats { pod, watch, out } => {
            let pod_sandbox_id = match pod {
                Some(p) => c.pod_id(&p).await?,
                None => String::new(),
            };
            let filter = cri::ContainerStatsFilter { pod_sandbox_id, ..Default::default() };
            // The CPU rate needs two samples: take one, wait, then print.
            c.rt.list_container_stats(c.req(cri::ListContainerStatsRequest { filter: Some(filter.clone()) })).await?;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let stats =
                    c.rt.list_container_stats(c.req(cri::ListContainerStatsRequest { filter: Some(filter.clone()) }))
                        .await?
                        .into_inner()
                        .stats;
                if out.output != Format::Table {
                    let d = doc(&cri::ListContainerStatsResponse { stats }, "ListContainerStatsResponse")?;
                    emit(&d, out.output, out.template.as_deref(), || Ok(()))?;
                } else {
                    println!(
                        "{:<13}  {:<20}  {:>7}  {:>10}  {:>10}  {:>7}",
                        "CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"
                    );
                    for st in stats {
                        let a = st.attributes.unwrap_or_default();
                        let cpu = st
                            .cpu
                            .and_then(|c| c.usage_nano_cores)
                            .map(|v| format!("{:.2}", v.value as f64 / 1e7))
                            .unwrap_or_else(|| "-".into());
                        let mem = st
                            .memory
                            .and_then(|m| m.working_set_bytes)
                            .map(|v| human(v.value))
                            .unwrap_or_else(|| "-".into());
                        let wl = st.writable_layer.unwrap_or_default();
                        let disk = wl.used_bytes.map(|v| human(v.value)).unwrap_or_else(|| "-".into());
                        let inodes = wl.inodes_used.map(|v| v.value.to_string()).unwrap_or_else(|| "-".into());
                        println!(
                            "{:<13}  {:<20}  {:>7}  {:>10}  {:>10}  {:>7}",
                            short(&a.id),
                            a.metadata.unwrap_or_default().name,
                            cpu,
                            mem,
                            disk,
                            inodes
                        );
                    }
                }
                if !watch {
                    break;
                }
            }
        }
        Cmd::Images { image, out, quiet } => {
            let filter =
                image.map(|i| cri::ImageFilter { image: Some(cri::ImageSpec { image: i, ..Default::default() }) });
            let imgs =
                got(c.debug, c.img.list_images(c.req(cri::ListImagesRequest { filter })).await?.into_inner()).images;
            if quiet {
                imgs.iter().for_each(|i| println!("{}", i.id));
            } else if out.output != Format::Table {
                let d = doc(&cri::ListImagesResponse { images: imgs }, "ListImagesResponse")?;
                emit(&d, out.output, out.template.as_deref(), || Ok(()))?;
            } else {
                println!("{:<40}  {:<12}  {:<13}  {:>10}", "IMAGE", "TAG", "IMAGE ID", "SIZE");
                for i in imgs {
                    let id = i.id.trim_start_matches("sha256:").to_string();
                    let size = format!("{:.1}MB", i.size as f64 / 1e6);
                    if i.repo_tags.is_empty() {
                        println!("{:<40}  {:<12}  {:<13}  {:>10}", "<none>", "<none>", short(&id), size);
                    }
                    for t in &i.repo_tags {
                        let (repo, tag) = t.rsplit_once(':').unwrap_or((t, ""));
                        println!("{:<40}  {:<12}  {:<13}  {:>10}", repo, tag, short(&id), size);
                    }
                }
            }
        }
        Cmd::Image { cmd: ImageCmd::Import { dir, name } } => {
            let dir = std::fs::canonicalize(&dir).with_context(|| format!("{}", dir.display()))?;
            let r = c
                .berth
                .import(c.req(protocol::images::ImportRequest {
                    path: dir.display().to_string(),
                    name: name.unwrap_or_default(),
                }))
                .await?
                .into_inner();
            println!("Imported {} as {}", r.id, r.repo_tags.join(", "));
        }
        Cmd::Pull { image, creds, creds_file, auth, identity_token, registry_token, quiet } => {
            let first_line = |text: String| text.lines().next().unwrap_or("").to_string();
            let creds = match creds_file {
                Some(f) => {
                    Some(first_line(std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?))
                }
                None => creds,
            };
            let (username, password) = match creds.as_deref().map(|c| c.split_once(':')) {
                Some(Some((u, p))) => (u.to_string(), p.to_string()),
                Some(None) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
                    let password = line.trim_end_matches(['\n', '\r']).to_string();
                    if password.is_empty() {
                        bail!("--creds {:?} has no password and stdin gave none", creds.unwrap_or_default());
                    }
                    (creds.unwrap_or_default(), password)
                }
                None => Default::default(),
            };
            let req = protocol::images::PullRequest {
                image: image.clone(),
                username,
                password,
                auth: auth.unwrap_or_default(),
                identity_token: identity_token.unwrap_or_default(),
                registry_token: registry_token.unwrap_or_default(),
            };
            let id = pull(c, req, quiet).await?;
            println!("{id}");
        }
        Cmd::Rmi { images } => {
            for i in images {
                c.img
                    .remove_image(c.req(cri::RemoveImageRequest {
                        image: Some(cri::ImageSpec { image: i.clone(), ..Default::default() }),
                    }))
                    .await?;
                println!("Deleted: {i}");
            }
        }
        Cmd::Inspecti { out, image } => {
            let r = c
                .img
                .image_status(c.req(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec { image: image.clone(), ..Default::default() }),
                    verbose: true,
                }))
                .await?
                .into_inner();
            if r.image.is_none() {
                bail!("image {image:?} not found");
            }
            let mut d = doc(&r, "ImageStatusResponse")?;
            d["status"] = d["image"].take();
            if let Some(o) = d.as_object_mut() {
                o.remove("image");
            }
            d["info"] = serde_json::to_value(info_json(&r.info))?;
            emit(&d, out.output, out.template.as_deref(), || print_json(&d))?;
        }
        Cmd::Imagefsinfo { out } => {
            let r = got(c.debug, c.img.image_fs_info(c.req(cri::ImageFsInfoRequest {})).await?.into_inner());
            let d = doc(&r, "ImageFsInfoResponse")?;
            emit(&d, out.output, out.template.as_deref(), || print_json(&d))?;
        }
        Cmd::Run { container_config, pod_config } => {
            let config: cri::ContainerConfig = read_config(&container_config)?;
            let sandbox: cri::PodSandboxConfig = read_config(&pod_config)?;
            let pod =
                c.rt.run_pod_sandbox(
                    c.req(cri::RunPodSandboxRequest { config: Some(sandbox.clone()), runtime_handler: String::new() }),
                )
                .await?
                .into_inner()
                .pod_sandbox_id;
            let id =
                c.rt.create_container(c.req(cri::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(config),
                    sandbox_config: Some(sandbox),
                }))
                .await?
                .into_inner()
                .container_id;
            c.rt.start_container(c.req(cri::StartContainerRequest { container_id: id.clone() })).await?;
            println!("{id}");
        }
    }
    Ok(0)
}
