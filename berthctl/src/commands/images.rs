//! Image commands: images, image import, pull (with progress), rmi, inspecti, imagefsinfo.

use anyhow::{bail, Context, Result};
use protocol::cri;

use crate::cli::*;
use crate::ctl::*;
use crate::output::*;

/// Runs one of this file's commands.
pub(crate) async fn run(c: &mut Ctl, cmd: Cmd) -> Result<i32> {
    match cmd {
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
        other => bail!("{other:?} is not a images command"),
    }
    Ok(0)
}

/// Pulls through Berth's progress stream; a runtime without it (any other
/// CRI runtime) gets a plain CRI PullImage.
pub(crate) async fn pull(c: &mut Ctl, req: protocol::images::PullRequest, quiet: bool) -> Result<String> {
    use std::io::IsTerminal;
    if c.debug {
        eprintln!("DEBUG request: PullRequest {{ image: {:?}, credentials: <redacted> }}", req.image);
    }
    match c.berth.pull(tonic::Request::new(req.clone())).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let stderr = std::io::stderr();
            let tty = stderr.is_terminal();
            let mut view = crate::pull_progress::ProgressView::new(stderr.lock(), tty);
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
