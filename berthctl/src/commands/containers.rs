//! Container commands: create, start, stop, rm, ps, inspect, run.

use anyhow::{bail, Result};
use protocol::cri;

use crate::cli::*;
use crate::ctl::*;
use crate::output::*;

/// Runs one of this file's commands.
pub(crate) async fn run(c: &mut Ctl, cmd: Cmd) -> Result<i32> {
    match cmd {
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
        other => bail!("{other:?} is not a containers command"),
    }
    Ok(0)
}
