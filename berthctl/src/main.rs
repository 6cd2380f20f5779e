//! berthctl: a CRI client for people. Drives Berth (or any CRI runtime)
//! through its socket; reads the same JSON/YAML configs crictl reads.
mod cli;
mod commands;
mod ctl;
mod log_printer;
mod output;
mod proto_json;
mod pull_progress;
mod terminal;

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use protocol::cri::{image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};
use protocol::images::images_client::ImagesClient;

use cli::{Cli, Cmd};
use ctl::{parse_timeout, CrictlConfig, Ctl};

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
    let channel = protocol::cri_client::connect(&endpoint, connect_timeout).await?;
    let image_channel = if image_endpoint == endpoint {
        channel.clone()
    } else {
        protocol::cri_client::connect(&image_endpoint, connect_timeout).await?
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

/// Hands a command to the file of its group.
async fn run(c: &mut Ctl, cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Completion { .. } => Ok(0),
        Cmd::Version { .. } | Cmd::Info { .. } | Cmd::Stats { .. } => commands::node::run(c, cmd).await,
        Cmd::Runp { .. } | Cmd::Pods { .. } | Cmd::Inspectp { .. } | Cmd::Stopp { .. } | Cmd::Rmp { .. } => {
            commands::pods::run(c, cmd).await
        }
        Cmd::Create { .. }
        | Cmd::Start { .. }
        | Cmd::Stop { .. }
        | Cmd::Rm { .. }
        | Cmd::Ps { .. }
        | Cmd::Inspect { .. }
        | Cmd::Run { .. } => commands::containers::run(c, cmd).await,
        Cmd::Exec { .. } | Cmd::Attach { .. } | Cmd::PortForward { .. } | Cmd::Logs { .. } => {
            commands::streams::run(c, cmd).await
        }
        Cmd::Images { .. }
        | Cmd::Image { .. }
        | Cmd::Pull { .. }
        | Cmd::Rmi { .. }
        | Cmd::Inspecti { .. }
        | Cmd::Imagefsinfo { .. } => commands::images::run(c, cmd).await,
    }
}
