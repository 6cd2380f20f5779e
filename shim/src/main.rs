//! berth-shim: one per pod sandbox. Started by berthd as
//! `berth-shim --id ID --dir SANDBOX_DIR ...`; forks a daemon (new session,
//! child subreaper, stdio on its own log file) that pins the sandbox's
//! namespaces and serves the shim API on `SANDBOX_DIR/shim.sock`, then
//! exits once the daemon is ready, printing its pid. The daemon is then no
//! child of berthd and outlives it.
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use nix::unistd::{fork, ForkResult};
use slog::{error, info, o, Drain, Logger};

use berth_shim::io_server;
use berth_shim::namespaces::{self, NamespaceOptions};
use berth_shim::reaper::Reaper;
use berth_shim::runc::Runc;
use berth_shim::service::ShimService;
use protocol::shim_launch::{ShimArgs, NS_DIR};

fn parse_args() -> Result<ShimArgs> {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("berth-shim {} (shim API {})", env!("CARGO_PKG_VERSION"), protocol::shim::API_VERSION);
        std::process::exit(0);
    }
    Ok(ShimArgs::parse(std::env::args().skip(1))?)
}

fn main() {
    let code = match launch() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth-shim: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// The launcher half: forks the daemon and relays its readiness.
#[allow(unsafe_code)] // fork
fn launch() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let (ready_r, ready_w) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: nothing has started a thread yet; the child continues as a
    // single-threaded copy of this process.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => {
            drop(ready_w);
            // One line: the daemon's (and its namespace holders') copies of
            // the pipe may outlive the message, so EOF is not the signal.
            let mut msg = String::new();
            std::io::BufReader::new(File::from(ready_r)).read_line(&mut msg).context("reading shim readiness")?;
            let msg = msg.trim_end().to_string();
            match msg.strip_prefix("ok ") {
                Some(pid) => {
                    let pid: u32 = pid.trim().parse().context("the shim reported no pid")?;
                    print!("{}", protocol::shim_launch::ready_line(pid));
                    Ok(())
                }
                None if msg.is_empty() => {
                    bail!("shim exited before it was ready (see {})", args.dir.join("shim.log").display())
                }
                None => bail!("{}", msg.trim_start_matches("err ").trim()),
            }
        }
        ForkResult::Child => {
            drop(ready_r);
            let mut ready = Some(File::from(ready_w));
            if let Err(e) = daemon(args, &mut ready) {
                if let Some(mut r) = ready {
                    let _ = r.write_all(format!("err {}\n", format!("{e:#}").replace('\n', " ")).as_bytes());
                }
                std::process::exit(1);
            }
            std::process::exit(0);
        }
    }
}

#[allow(unsafe_code)] // prctl and signal dispositions
fn detach(dir: &std::path::Path) -> Result<()> {
    nix::unistd::setsid().context("setsid")?;
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!("set child subreaper: {}", std::io::Error::last_os_error());
    }
    // Dispositions and the mask are inherited by runc and every container:
    // undo whatever berthd's launcher left (a shell's background job ignores
    // SIGINT and SIGQUIT, for one). SIGPIPE stays ignored in the shim itself;
    // std resets it to default in every child it spawns.
    nix::sys::signal::SigSet::empty().thread_set_mask().context("clearing signal mask")?;
    for sig in nix::sys::signal::Signal::iterator() {
        use nix::sys::signal::Signal::*;
        if matches!(sig, SIGKILL | SIGSTOP | SIGPIPE) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code in a handler; this process
        // is still single-threaded.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
    // SIGHUP gets a no-op handler rather than SIG_IGN: an ignored signal
    // stays ignored across exec, into runc and the containers.
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::new(std::sync::atomic::AtomicBool::new(false)))
        .context("SIGHUP handler")?;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("shim.log")).context("opening shim.log")?;
    let null = File::open("/dev/null").context("/dev/null")?;
    nix::unistd::dup2_stdin(&null).context("stdin")?;
    nix::unistd::dup2_stdout(&log).context("stdout")?;
    nix::unistd::dup2_stderr(&log).context("stderr")?;
    std::env::set_current_dir("/").context("chdir /")?;
    Ok(())
}

/// The daemon half: everything that must happen before threads exist, then
/// a current-thread runtime serving the shim API.
fn daemon(args: ShimArgs, ready: &mut Option<File>) -> Result<()> {
    detach(&args.dir)?;
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    // A full disk under shim.log must not stop the shim: failed writes are
    // dropped (a fused drain would panic on the first one).
    let drain = slog_term::FullFormat::new(decorator).build().ignore_res();
    let log = Logger::root(drain, o!("sandbox_id" => args.id.clone()));

    let ns = NamespaceOptions {
        network: !args.host_network,
        ipc: !args.host_ipc,
        hostname: args.hostname.clone(),
        pod_pid: args.pod_pid,
        user: args.user,
    };
    let pinned = namespaces::create(&args.dir.join(NS_DIR), &ns).context("creating sandbox namespaces")?;
    std::fs::write(args.dir.join("shim.pid"), std::process::id().to_string()).context("writing shim.pid")?;

    // A shim watches a handful of descriptors: 64 events a poll, not
    // tokio's 1024 (a 12 KiB buffer in every shim).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_io_events_per_tick(64)
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(serve(args, pinned, log.clone(), ready));
    if let Err(e) = &result {
        error!(log, "shim failed"; "error" => format!("{e:#}"));
    }
    result
}

async fn serve(args: ShimArgs, pinned: namespaces::Pinned, log: Logger, ready: &mut Option<File>) -> Result<()> {
    let reaper = Reaper::default();
    let mut sigchld = signal_hook_tokio::Signals::new([signal_hook::consts::SIGCHLD]).context("SIGCHLD handler")?;
    let r = reaper.clone();
    tokio::spawn(async move {
        while sigchld.next().await.is_some() {
            r.reap();
        }
    });
    // Children may have exited before the handler existed.
    reaper.reap();

    let runtime = Arc::new(Runc::new(
        args.runtime.clone(),
        args.runtime_root.clone(),
        args.systemd_cgroup,
        args.runtime_timeout,
        reaper.clone(),
    ));
    let pod_init = pinned.pod_init;
    let svc = Arc::new(ShimService::new(args.id.clone(), runtime, reaper, pinned, args.max_log_line, log.clone()));
    let shutdown = Arc::clone(&svc.shutdown);

    let sock = args.dir.join("shim.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = protocol::socket_path::SocketPath::new(&sock)
        .and_then(|p| tokio::net::UnixListener::bind(p.path()))
        .with_context(|| format!("binding {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).context("chmod shim.sock")?;
    let io_sock = args.dir.join("io.sock");
    let _ = std::fs::remove_file(&io_sock);
    let io_listener = protocol::socket_path::SocketPath::new(&io_sock)
        .and_then(|p| tokio::net::UnixListener::bind(p.path()))
        .with_context(|| format!("binding {}", io_sock.display()))?;
    std::fs::set_permissions(&io_sock, std::fs::Permissions::from_mode(0o600)).context("chmod io.sock")?;
    tokio::spawn(io_server::serve(io_listener, Arc::clone(&svc)));
    let mut server =
        ttrpc::r#async::Server::new().add_listener(listener.into()).register_service(protocol::shim::create_shim(svc));
    server.start().await.context("starting ttrpc server")?;
    info!(log, "shim ready"; "socket" => sock.display().to_string(), "pod_init_pid" => pod_init.unwrap_or(0));
    if let Some(mut r) = ready.take() {
        r.write_all(format!("ok {}\n", std::process::id()).as_bytes()).context("reporting readiness")?;
    }

    shutdown.notified().await;
    // Give the Shutdown reply a moment to be written, then go: a graceful
    // server shutdown would wait for berthd to hang up first. berthd does
    // not need the reply (everything was released before it; berthd waits
    // for this process's exit on a pidfd), so the pause is short: it was
    // 20 ms, most of RemovePodSandbox's time.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let _ = server.stop_listen().await;
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(args.dir.join("shim.pid"));
    Ok(())
}
