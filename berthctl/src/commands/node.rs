//! Version, info and stats: what the runtime says about itself and its containers' use.
use std::time::Duration;

use anyhow::{bail, Result};
use protocol::cri;

use crate::cli::*;
use crate::ctl::*;
use crate::output::*;

/// Runs one of this file's commands.
pub(crate) async fn run(c: &mut Ctl, cmd: Cmd) -> Result<i32> {
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
        other => bail!("{other:?} is not a node command"),
    }
    Ok(0)
}
