//! berthctl's command line: its flags, commands and output options, named
//! as crictl names them.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "berthctl", version, about = "Drive Berth (or any CRI runtime) from the command line")]
pub(crate) struct Cli {
    /// CRI runtime endpoint; default: runtime-endpoint of the config file,
    /// else unix:///run/berth/berth.sock.
    #[arg(
        short = 'r',
        long = "runtime-endpoint",
        visible_alias = "endpoint",
        env = "CONTAINER_RUNTIME_ENDPOINT",
        global = true
    )]
    pub(crate) endpoint: Option<String>,
    /// CRI image endpoint; default: image-endpoint of the config file, else
    /// the runtime endpoint.
    #[arg(short = 'i', long = "image-endpoint", env = "IMAGE_SERVICE_ENDPOINT")]
    pub(crate) image_endpoint: Option<String>,
    /// Timeout of connecting and of each call (2s, 1m, or seconds; 0: none);
    /// default: timeout of the config file, else none. Pulls, logs and
    /// streams are not cut by it.
    #[arg(long)]
    pub(crate) timeout: Option<String>,
    /// crictl's config file (runtime-endpoint, image-endpoint, timeout, debug).
    #[arg(short = 'c', long, env = "CRI_CONFIG_FILE", default_value = "/etc/crictl.yaml")]
    pub(crate) config: PathBuf,
    /// Print every request and response on stderr.
    #[arg(short = 'D', long)]
    pub(crate) debug: bool,
    /// CA certificate (PEM) to trust for an https streaming server
    /// (exec, attach, port-forward); default: the system's.
    #[arg(long, global = true)]
    pub(crate) stream_ca: Option<PathBuf>,
    /// Per-call timeout in seconds (0: none); --timeout is crictl's name.
    #[arg(long = "request-timeout", global = true, hide = true)]
    pub(crate) request_timeout: Option<u64>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

/// Streaming transport, as crictl names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Transport {
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
pub(crate) enum Format {
    #[default]
    Table,
    Json,
    Yaml,
    #[value(name = "go-template")]
    GoTemplate,
}

/// `-o` and `--template` of a list (a table unless asked otherwise).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ListOutput {
    #[arg(short, long, value_enum, default_value_t)]
    pub(crate) output: Format,
    /// The Go template for -o go-template.
    #[arg(long)]
    pub(crate) template: Option<String>,
}

/// `-o` and `--template` of an inspect (JSON unless asked otherwise).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DocOutput {
    #[arg(short, long, value_enum, default_value = "json")]
    pub(crate) output: Format,
    /// The Go template for -o go-template.
    #[arg(long)]
    pub(crate) template: Option<String>,
}

/// Which of a list to keep, as crictl's filters do.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct ListFilter {
    /// Only those whose name matches this regular expression.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Only those with this label (key=value; repeat for more).
    #[arg(long = "label")]
    pub(crate) labels: Vec<String>,
    /// Only the N most recently created.
    #[arg(long)]
    pub(crate) last: Option<usize>,
    /// Only the most recently created.
    #[arg(short = 'l', long)]
    pub(crate) latest: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
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
pub(crate) enum ImageCmd {
    /// Import an OCI image layout folder (berthd reads it; give a path it can see).
    Import { dir: PathBuf, name: Option<String> },
}
