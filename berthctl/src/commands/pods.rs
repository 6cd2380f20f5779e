//! Pod sandbox commands: runp, pods, inspectp, stopp, rmp.

use anyhow::{bail, Context, Result};
use protocol::cri;

use crate::cli::*;
use crate::ctl::*;
use crate::output::*;

/// Runs one of this file's commands.
pub(crate) async fn run(c: &mut Ctl, cmd: Cmd) -> Result<i32> {
    match cmd {
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
        other => bail!("{other:?} is not a pods command"),
    }
    Ok(0)
}
