//! berthd: Berth's manager daemon. Serves the Kubernetes CRI v1 API on a
//! unix socket and runs one berth-shim per pod sandbox.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use berthd::manager::{Config, Manager};
use berthd::sd_notify::Notifier;
use berthd::settings::{CgroupDriver, Settings};
use clap::{Parser, Subcommand};
use slog::{error, info, warn, Logger};

/// Flags: each overrides the same setting of the config file (see
/// `berthd config default` for all of them).
#[derive(Parser, Debug, Clone)]
#[command(name = "berthd", version, about = "Berth container runtime daemon (Kubernetes CRI v1)")]
struct Args {
    /// Config file (TOML); default /etc/berth/config.toml, used when it
    /// exists. Drop-ins: config.d/*.toml beside it, in name order.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Persistent state: metadata, images, writable layers [root].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Runtime state: shim sockets, bundles, pinned namespaces [state].
    #[arg(long)]
    state: Option<PathBuf>,
    /// CRI socket to serve (created 0660) [listen].
    #[arg(long)]
    listen: Option<PathBuf>,
    /// OCI runtime binary (name on PATH or path) [runtime.oci_runtime].
    #[arg(long)]
    oci_runtime: Option<String>,
    /// Longest one OCI runtime call may take (30s) [runtime.oci_timeout].
    #[arg(long)]
    oci_runtime_timeout: Option<String>,
    /// berth-shim binary; default: next to berthd, else on PATH [runtime.shim].
    #[arg(long)]
    shim: Option<PathBuf>,
    /// cgroupfs or systemd, as kubelet's cgroupDriver [cgroup_driver].
    #[arg(long)]
    cgroup_driver: Option<String>,
    /// Longest container log line (bytes) before it is split into partial
    /// records [logs.max_line_size].
    #[arg(long)]
    max_container_log_line_size: Option<usize>,
    /// Rotate a running container's log at this size (bytes, or 10Mi
    /// style); unset leaves rotation to kubelet [logs.max_size].
    #[arg(long)]
    container_log_max_size: Option<String>,
    /// Files kept per container log when berthd rotates [logs.max_files].
    #[arg(long)]
    container_log_max_files: Option<usize>,
    /// How often berthd checks log sizes (10s, 500ms) [logs.check_interval].
    #[arg(long)]
    container_log_check_interval: Option<String>,
    /// CNI network configurations [cni.conf_dir].
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Folders with CNI plugin binaries, ':'-separated [cni.bin_dirs].
    #[arg(long)]
    cni_bin_dir: Option<String>,
    /// Longest one CNI plugin run may take (60s) [cni.plugin_timeout].
    #[arg(long)]
    cni_plugin_timeout: Option<String>,
    /// Address of the streaming server; port 0 picks a free one [stream.address].
    #[arg(long)]
    stream_address: Option<String>,
    /// Serve streams over TLS with this PEM certificate chain [stream.tls_cert].
    #[arg(long, requires = "stream_tls_key")]
    stream_tls_cert: Option<PathBuf>,
    /// PEM private key of --stream-tls-cert [stream.tls_key].
    #[arg(long, requires = "stream_tls_cert")]
    stream_tls_key: Option<PathBuf>,
    /// How long an exec URL's token stays valid (1m, 30s) [stream.token_ttl].
    #[arg(long)]
    stream_token_ttl: Option<String>,
    /// Streaming connections served at once [stream.max_connections].
    #[arg(long)]
    stream_max_connections: Option<usize>,
    /// Close streams idle this long (4h, 30m) [stream.idle_timeout].
    #[arg(long)]
    stream_idle_timeout: Option<String>,
    /// Address of the Prometheus metrics endpoint; unset: off [metrics.address].
    #[arg(long)]
    metrics_address: Option<String>,
    /// The socket NRI plugins connect to; empty: NRI off [nri.socket].
    #[arg(long)]
    nri_socket: Option<String>,
    /// error, warn, info, debug or trace [log_level].
    #[arg(long)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// The config file's settings.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
}

#[derive(Subcommand, Debug, Clone)]
enum ConfigCommand {
    /// Prints the full default config.
    Default,
    /// Prints the effective config: files, drop-ins and flags.
    Dump,
}

impl Args {
    /// The config files, then the flags over them.
    fn settings(&self) -> Result<Settings> {
        let (main, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(berthd::settings::DEFAULT_PATH), false),
        };
        let files = berthd::settings::sources(&main, required).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut s = Settings::load(&files).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.apply(&mut s)?;
        s.validate().map_err(|e| anyhow::anyhow!("flags: {e}"))?;
        Ok(s)
    }

    fn apply(&self, s: &mut Settings) -> Result<()> {
        let path = |p: &PathBuf| p.clone();
        if let Some(v) = &self.root {
            s.root = path(v);
        }
        if let Some(v) = &self.state {
            s.state = path(v);
        }
        if let Some(v) = &self.listen {
            s.listen = path(v);
        }
        if let Some(v) = &self.oci_runtime {
            s.runtime.oci_runtime = v.clone();
        }
        if let Some(v) = &self.oci_runtime_timeout {
            s.runtime.oci_timeout = v.clone();
        }
        if let Some(v) = &self.shim {
            s.runtime.shim = v.display().to_string();
        }
        if let Some(v) = &self.cgroup_driver {
            s.cgroup_driver = match v.as_str() {
                "cgroupfs" => CgroupDriver::Cgroupfs,
                "systemd" => CgroupDriver::Systemd,
                _ => bail!("--cgroup-driver {v:?}: give cgroupfs or systemd"),
            };
        }
        if let Some(v) = self.max_container_log_line_size {
            s.logs.max_line_size = v;
        }
        if let Some(v) = &self.container_log_max_size {
            s.logs.max_size = v.clone();
        }
        if let Some(v) = self.container_log_max_files {
            s.logs.max_files = v;
        }
        if let Some(v) = &self.container_log_check_interval {
            s.logs.check_interval = v.clone();
        }
        if let Some(v) = &self.cni_conf_dir {
            s.cni.conf_dir = path(v);
        }
        if let Some(v) = &self.cni_bin_dir {
            s.cni.bin_dirs = std::env::split_paths(v).collect();
        }
        if let Some(v) = &self.cni_plugin_timeout {
            s.cni.plugin_timeout = v.clone();
        }
        if let Some(v) = &self.stream_address {
            s.stream.address = v.clone();
        }
        if let Some(v) = &self.stream_tls_cert {
            s.stream.tls_cert = v.display().to_string();
        }
        if let Some(v) = &self.stream_tls_key {
            s.stream.tls_key = v.display().to_string();
        }
        if let Some(v) = &self.stream_token_ttl {
            s.stream.token_ttl = v.clone();
        }
        if let Some(v) = self.stream_max_connections {
            s.stream.max_connections = v;
        }
        if let Some(v) = &self.stream_idle_timeout {
            s.stream.idle_timeout = v.clone();
        }
        if let Some(v) = &self.metrics_address {
            s.metrics.address = v.clone();
        }
        if let Some(v) = &self.nri_socket {
            s.nri.socket = v.clone();
        }
        if let Some(v) = &self.log_level {
            s.log_level = v.clone();
        }
        Ok(())
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or(None)
}

fn shim_binary(configured: &str) -> Result<PathBuf> {
    if !configured.is_empty() {
        return Ok(PathBuf::from(configured));
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

/// The manager's config from the settings.
fn manager_config(s: &Settings) -> Result<Config> {
    let runtime = find_on_path(&s.runtime.oci_runtime).with_context(|| {
        format!("OCI runtime {:?} not found (install runc or set runtime.oci_runtime)", s.runtime.oci_runtime)
    })?;
    let log_rotation = if s.logs.max_size.is_empty() {
        None
    } else {
        // validate() checked both.
        let max_size = berthd::log_rotation::parse_size(&s.logs.max_size).context("logs.max_size")?;
        Some(berthd::log_rotation::Policy { max_size, max_files: s.logs.max_files })
    };
    Ok(Config {
        root: absolute(&s.root)?,
        state: absolute(&s.state)?,
        shim_binary: shim_binary(&s.runtime.shim)?,
        runtime,
        runtime_timeout: berthd::settings::duration(&s.runtime.oci_timeout).context("runtime.oci_timeout")?,
        max_log_line: s.logs.max_line_size,
        log_rotation,
        log_check_interval: berthd::settings::duration(&s.logs.check_interval).context("logs.check_interval")?,
        cni: berthd::cni::Cni {
            conf_dir: s.cni.conf_dir.clone(),
            bin_dirs: s.cni.bin_dirs.clone(),
            timeout: berthd::settings::duration(&s.cni.plugin_timeout).context("cni.plugin_timeout")?,
        },
        file: s.registry_config(),
        cgroup_driver: s.cgroup_driver,
        nri: berthd::nri::Settings {
            socket: (!s.nri.socket.is_empty()).then(|| PathBuf::from(&s.nri.socket)),
            registration_timeout: berthd::settings::duration(&s.nri.registration_timeout)
                .context("nri.registration_timeout")?,
            request_timeout: berthd::settings::duration(&s.nri.request_timeout).context("nri.request_timeout")?,
        },
    })
}

/// Tells systemd (Type=notify) something; a failure is only logged.
fn notify(log: &Logger, what: std::io::Result<()>) {
    if let Err(e) = what {
        warn!(log, "telling systemd failed"; "error" => %e);
    }
}

/// SIGHUP: reads the config files again (the flags still win) and applies
/// what can change while running: registries and the log level. Anything
/// else that changed is logged as needing a restart. A bad config is
/// logged and changes nothing.
fn reload(
    args: &Args,
    running: &mut Settings,
    mgr: &Manager,
    level: &berthd::logging::LevelHandle,
    systemd: &Notifier,
    log: &Logger,
) {
    notify(log, systemd.reloading());
    match args.settings() {
        Err(e) => error!(log, "config reload failed; keeping the config in force"; "error" => format!("{e:#}")),
        Ok(new) => {
            mgr.set_registry_config(new.registry_config());
            if let Some(l) = berthd::logging::parse_level(&new.log_level) {
                level.set(l);
            }
            let mut restart = Vec::new();
            let (mut a, mut b) = (running.clone(), new.clone());
            for s in [&mut a, &mut b] {
                s.registries.clear();
                s.log_level.clear();
            }
            if a != b {
                let (ta, tb) = (a.to_toml(), b.to_toml());
                let (la, lb): (Vec<&str>, Vec<&str>) = (ta.lines().collect(), tb.lines().collect());
                restart.extend(lb.iter().filter(|l| !la.contains(l)).map(|l| l.to_string()));
            }
            info!(log, "config reloaded";
                "registries" => new.registries.len(),
                "log_level" => &new.log_level,
                "needs_restart" => restart.join("; "));
            *running = new;
        }
    }
    notify(log, systemd.ready());
}

fn main() -> Result<()> {
    // Before any thread: see sd_notify.rs.
    let systemd = Notifier::from_env();
    let args = Args::parse();
    match &args.command {
        Some(Command::Config { what: ConfigCommand::Default }) => {
            print!("{}", Settings::default().to_toml());
            return Ok(());
        }
        Some(Command::Config { what: ConfigCommand::Dump }) => {
            print!("{}", args.settings()?.to_toml());
            return Ok(());
        }
        None => {}
    }
    let mut settings = args.settings()?;
    let Some(level) = berthd::logging::parse_level(&settings.log_level) else {
        bail!("log_level {:?} is not a level", settings.log_level);
    };
    let cfg = manager_config(&settings)?;
    let stream_address: std::net::SocketAddr = settings.stream.address.parse().context("stream.address")?;
    let stream_token_ttl = berthd::settings::duration(&settings.stream.token_ttl).context("stream.token_ttl")?;
    let stream_idle = berthd::settings::duration(&settings.stream.idle_timeout).context("stream.idle_timeout")?;
    let tls = (!settings.stream.tls_cert.is_empty())
        .then(|| (PathBuf::from(&settings.stream.tls_cert), PathBuf::from(&settings.stream.tls_key)));
    let listen = absolute(&settings.listen)?;
    let metrics_address = settings.metrics.address.clone();
    let (log, _guard, level_handle) = berthd::logging::init(level);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let result = rt.block_on(async {
        let started = Instant::now();
        let mgr = Arc::new(Manager::open(cfg.clone(), log.clone()).map_err(|e| anyhow::anyhow!("{e}"))?);
        let r = mgr.recover().await.map_err(|e| anyhow::anyhow!("recovering: {e}"))?;
        mgr.metrics().set_recovery_seconds(started.elapsed().as_secs_f64());
        mgr.start_nri().map_err(|e| anyhow::anyhow!("NRI: {e}"))?;
        info!(log, "berthd ready";
            "version" => berthd::cri_server::VERSION,
            "listen" => listen.display().to_string(),
            "root" => cfg.root.display().to_string(),
            "state" => cfg.state.display().to_string(),
            "oci_runtime" => cfg.runtime.display().to_string(),
            "cgroup_driver" => cfg.cgroup_driver.name(),
            "sandboxes_recovered" => r.recovered,
            "sandboxes_lost" => r.lost,
            "rolled_back" => r.rolled_back,
            "removals_finished" => r.finished_removals,
            "orphans_cleaned" => r.orphans,
            "recovery_ms" => u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        if !metrics_address.is_empty() {
            let addr = metrics_address.parse().context("metrics.address")?;
            let bound = berthd::metrics_server::start(addr, mgr.clone(), log.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            info!(log, "serving metrics"; "address" => bound.to_string());
        }
        let stream = berth_streaming::server::StreamServer::start(
            stream_address,
            stream_token_ttl,
            stream_idle,
            settings.stream.max_connections,
            tls,
            log.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut hup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("SIGHUP handler")?;
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let shutdown = {
            let (mgr, log, args) = (mgr.clone(), log.clone(), args.clone());
            async move {
                // The socket serves from here: recovery is done.
                if ready_rx.await.is_ok() {
                    notify(&log, systemd.ready());
                }
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        _ = term.recv() => break,
                        _ = hup.recv() => reload(&args, &mut settings, &mgr, &level_handle, &systemd, &log),
                    }
                }
                notify(&log, systemd.stopping());
            }
        };
        berthd::server::serve(&listen, mgr.clone(), stream, log.clone(), ready_tx, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        mgr.nri().shutdown().await;
        info!(log, "berthd stopped; shims and containers keep running");
        Ok::<_, anyhow::Error>(())
    });
    if let Err(e) = &result {
        error!(log, "berthd failed"; "error" => format!("{e:#}"));
    }
    drop(rt);
    result
}
