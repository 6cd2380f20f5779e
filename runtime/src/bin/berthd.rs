//! berthd: Berth's manager daemon. Serves the Kubernetes CRI v1 API on a
//! unix socket and runs one berth-shim per pod sandbox.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use berth::manager::{Config, Manager};
use clap::Parser;
use slog::{error, info};

#[derive(Parser, Debug)]
#[command(name = "berthd", version, about = "Berth container runtime daemon (Kubernetes CRI v1)")]
struct Args {
    /// Persistent state: metadata, images, writable layers.
    #[arg(long, default_value = "/var/lib/berth")]
    root: PathBuf,
    /// Runtime state: shim sockets, bundles, pinned namespaces.
    #[arg(long, default_value = "/run/berth")]
    state: PathBuf,
    /// CRI socket to serve (created 0660).
    #[arg(long, default_value = "/run/berth/berth.sock")]
    listen: PathBuf,
    /// OCI runtime binary (name on PATH or path).
    #[arg(long, default_value = "runc")]
    oci_runtime: String,
    /// berth-shim binary; default: next to berthd, else on PATH.
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Longest container log line (bytes) before it is split into partial records.
    #[arg(long, default_value_t = 16 * 1024)]
    max_container_log_line_size: usize,
    /// Rotate a running container's log when it reaches this size (bytes, or
    /// 10Mi style); unset leaves rotation to kubelet.
    #[arg(long)]
    container_log_max_size: Option<String>,
    /// Files kept per container log when berthd rotates, the current one included.
    #[arg(long, default_value_t = 5)]
    container_log_max_files: usize,
    /// How often berthd checks log sizes (a duration like 10s or 500ms).
    #[arg(long, default_value = "10s")]
    container_log_check_interval: String,
    /// CNI network configurations (the first *.conflist/*.conf is used).
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Folders with CNI plugin binaries, ':'-separated.
    #[arg(long, default_value = "/opt/cni/bin:/usr/lib/cni")]
    cni_bin_dir: String,
    /// Config file (TOML) with registry mirrors, CAs and plain-http hosts;
    /// default /etc/berth/config.toml, used when it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the CRI streaming server (exec); port 0 picks a free one.
    /// Exec URLs carry the address actually bound.
    #[arg(long, default_value = "127.0.0.1:0")]
    stream_address: std::net::SocketAddr,
    /// Serve streams over TLS with this PEM certificate chain (with --stream-tls-key).
    #[arg(long, requires = "stream_tls_key")]
    stream_tls_cert: Option<PathBuf>,
    /// PEM private key of --stream-tls-cert.
    #[arg(long, requires = "stream_tls_cert")]
    stream_tls_key: Option<PathBuf>,
    /// How long an exec URL's token stays valid (a duration like 1m or 30s).
    #[arg(long, default_value = "1m")]
    stream_token_ttl: String,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or(None)
}

fn shim_binary(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p);
    }
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("berth-shim")));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Ok(p);
    }
    find_on_path("berth-shim").context("berth-shim not found next to berthd or on PATH; give --shim")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let Some(level) = berth::logging::parse_level(&args.log_level) else {
        bail!("unknown --log-level {:?}", args.log_level);
    };
    let runtime = find_on_path(&args.oci_runtime).with_context(|| {
        format!("OCI runtime {:?} not found (install runc or give --oci-runtime)", args.oci_runtime)
    })?;
    let log_rotation = match &args.container_log_max_size {
        None => None,
        Some(s) => {
            let max_size = berth::log_rotation::parse_size(s)
                .with_context(|| format!("--container-log-max-size {s:?}: give bytes or a size like 10Mi"))?;
            if args.container_log_max_files < 2 {
                bail!("--container-log-max-files must be at least 2");
            }
            Some(berth::log_rotation::Policy { max_size, max_files: args.container_log_max_files })
        }
    };
    let stream_token_ttl = berth::log_printer::parse_duration(&args.stream_token_ttl)
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--stream-token-ttl {:?}: give a duration like 1m", args.stream_token_ttl))?;
    let log_check_interval = berth::log_printer::parse_duration(&args.container_log_check_interval)
        .filter(|d| !d.is_zero())
        .with_context(|| {
            format!("--container-log-check-interval {:?}: give a duration like 10s", args.container_log_check_interval)
        })?;
    let file = match &args.config {
        Some(p) => berth::registry_config::FileConfig::load(p, true),
        None => berth::registry_config::FileConfig::load(Path::new("/etc/berth/config.toml"), false),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = Config {
        root: absolute(&args.root)?,
        state: absolute(&args.state)?,
        shim_binary: shim_binary(args.shim)?,
        runtime,
        max_log_line: args.max_container_log_line_size,
        log_rotation,
        log_check_interval,
        cni: berth::cni::Cni {
            conf_dir: args.cni_conf_dir.clone(),
            bin_dirs: std::env::split_paths(&args.cni_bin_dir).collect(),
        },
        file,
    };
    let (log, _guard) = berth::logging::init(level);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let result = rt.block_on(async {
        let started = Instant::now();
        let mgr = Arc::new(Manager::open(cfg.clone(), log.clone()).map_err(|e| anyhow::anyhow!("{e}"))?);
        let r = mgr.recover().await.map_err(|e| anyhow::anyhow!("recovering: {e}"))?;
        info!(log, "berthd ready";
            "version" => berth::cri_server::VERSION,
            "listen" => args.listen.display().to_string(),
            "root" => cfg.root.display().to_string(),
            "state" => cfg.state.display().to_string(),
            "oci_runtime" => cfg.runtime.display().to_string(),
            "sandboxes_recovered" => r.recovered,
            "sandboxes_lost" => r.lost,
            "rolled_back" => r.rolled_back,
            "removals_finished" => r.finished_removals,
            "orphans_cleaned" => r.orphans,
            "recovery_ms" => started.elapsed().as_millis() as u64);
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        let tls = args.stream_tls_cert.clone().zip(args.stream_tls_key.clone());
        let stream = berth::streaming::StreamServer::start(args.stream_address, stream_token_ttl, tls, log.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        berth::server::serve(&args.listen, mgr, stream, log.clone(), shutdown)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        info!(log, "berthd stopped; shims and containers keep running");
        Ok::<_, anyhow::Error>(())
    });
    if let Err(e) = &result {
        error!(log, "berthd failed"; "error" => format!("{e:#}"));
    }
    drop(rt);
    result
}
