//! PullImage against a real registry (Debian's docker-registry on loopback):
//! tags, digests and indexes, TLS with basic auth, bearer tokens, mirrors,
//! shared layers, hostile layers, damaged blobs, removal while in use, and
//! a deadline that cancels the pull.
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_tests::registry::{
    build_image, busybox_layer, index_of, layer_from_tar, registry_available, tar_of, Auth, Compression, Registry,
    Throttle, TokenService, INDEX_TYPE,
};
use berth_tests::{bin_dir, container_config, Daemon};
use protocol::cri;

fn skip() -> bool {
    if registry_available() {
        return false;
    }
    berth_tests::skip(false, "docker-registry, openssl or htpasswd missing (scripts/test.sh installs them)");
    true
}

/// berthd with a config file holding `toml`.
async fn daemon_with_config(toml: &str) -> (Daemon, tempfile::TempDir) {
    let cfg_dir = tempfile::tempdir().unwrap();
    let path = cfg_dir.path().join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let d = Daemon::start_full(&[], &["--config", path.to_str().unwrap()]).await;
    (d, cfg_dir)
}

async fn pull(d: &mut Daemon, image: &str, auth: Option<cri::AuthConfig>) -> Result<String, tonic::Status> {
    let r = d
        .img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            auth,
            sandbox_config: None,
        })
        .await?;
    Ok(r.into_inner().image_ref)
}

async fn status(d: &mut Daemon, image: &str) -> Option<cri::Image> {
    d.img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

fn creds(user: &str, password: &str) -> Option<cri::AuthConfig> {
    Some(cri::AuthConfig { username: user.into(), password: password.into(), ..Default::default() })
}

fn images_dir(d: &Daemon) -> PathBuf {
    d.dir.path().join("r/images")
}

/// Temp entries left in the blob and snapshot folders.
fn temp_leftovers(d: &Daemon) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["blobs/sha256", "snapshots"] {
        for e in std::fs::read_dir(images_dir(d).join(sub)).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(".tmp-") {
                out.push(format!("{sub}/{n}"));
            }
        }
    }
    out
}

fn has_blob(d: &Daemon, digest: &str) -> bool {
    images_dir(d).join("blobs/sha256").join(digest.trim_start_matches("sha256:")).exists()
}

fn has_snapshot(d: &Daemon, digest: &str) -> bool {
    images_dir(d).join("snapshots").join(digest.trim_start_matches("sha256:")).exists()
}

/// A layer with one file.
fn file_layer(path: &str, content: &[u8], c: Compression) -> berth_tests::registry::Layer {
    layer_from_tar(tar_of(&[(path, tar::EntryType::Regular, content, None)]), c)
}

/// Runs `cmd` in a container of `image` in a fresh pod and returns its output.
async fn run_in(d: &mut Daemon, pod_name: &str, image: &str, cmd: &[&str]) -> String {
    let cfg = d.pod_config(pod_name);
    let pod = d.run_pod(&cfg).await;
    let mut c = container_config("c", &["sleep", "1000"]);
    c.image = Some(cri::ImageSpec { image: image.into(), ..Default::default() });
    let id = d.create_with(&pod, &cfg, c).await.expect("create from pulled image");
    d.start_container(&id).await;
    d.wait_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    d.exec_out(&id, cmd).await
}

fn berthctl(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin_dir().join("berthctl"))
        .arg("--endpoint")
        .arg(format!("unix://{}", d.socket.display()))
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test]
async fn pull_by_tag_digest_and_index_then_run() {
    if skip() {
        return;
    }
    let reg = Registry::start(Auth::None, false);
    let amd = build_image(
        vec![busybox_layer(), file_layer("hello.txt", b"hello from amd64\n", Compression::Zstd)],
        "amd64",
        "VARIANT=amd64",
    );
    let arm = build_image(
        vec![busybox_layer(), file_layer("hello.txt", b"hello from arm64\n", Compression::None)],
        "arm64",
        "VARIANT=arm64",
    );
    let arm_layer = berth_tests::registry::sha256(&arm.layers[1].data);
    for img in [&amd, &arm] {
        for l in &img.layers {
            reg.push_blob("multi/app", &l.data).await;
        }
        reg.push_blob("multi/app", &img.config).await;
        reg.push_manifest("multi/app", &img.digest(), berth_tests::registry::MANIFEST_TYPE, &img.manifest).await;
    }
    let index = index_of(&[(&arm, "arm64"), (&amd, "amd64")]);
    let index_digest = reg.push_manifest("multi/app", "v1", INDEX_TYPE, &index).await;

    let mut d = Daemon::start().await;
    let name = format!("{}/multi/app:v1", reg.host);
    let id = pull(&mut d, &name, None).await.unwrap();
    assert_eq!(id, amd.id(), "the index must resolve to linux/amd64");
    let img = status(&mut d, &name).await.expect("pulled image listed");
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert_eq!(img.repo_digests, vec![format!("{}/multi/app@{index_digest}", reg.host)]);
    assert_eq!(img.uid.map(|u| u.value), Some(1000));
    assert!(!has_blob(&d, &arm_layer), "the arm64 layer was downloaded");
    // The busybox layer was already stored (the test image): not fetched.
    assert_eq!(reg.blob_gets(&berth_tests::registry::sha256(&amd.layers[0].data)), 0, "{}", reg.log());

    // By digest: the same image, recorded under the manifest's digest.
    let by_digest = format!("{}/multi/app@{}", reg.host, amd.digest());
    assert_eq!(pull(&mut d, &by_digest, None).await.unwrap(), amd.id());
    assert!(status(&mut d, &by_digest).await.is_some());

    // It runs, with the zstd layer's file in its rootfs.
    let out = run_in(&mut d, "pulled", &name, &["cat", "/hello.txt"]).await;
    assert_eq!(out, "hello from amd64");

    // Two clients pulling the same new image at once fetch it once.
    let big = build_image(
        vec![busybox_layer(), file_layer("data", &vec![7u8; 3 << 20], Compression::Gzip)],
        "amd64",
        "X=concurrent",
    );
    reg.push("multi/app", "concurrent", &big).await;
    let twice = format!("{}/multi/app:concurrent", reg.host);
    let (mut i1, mut i2) = (d.img.clone(), d.img.clone());
    let req = || cri::PullImageRequest {
        image: Some(cri::ImageSpec { image: twice.clone(), ..Default::default() }),
        ..Default::default()
    };
    let (a, b) = tokio::join!(i1.pull_image(req()), i2.pull_image(req()));
    assert_eq!(a.unwrap().into_inner().image_ref, big.id());
    assert_eq!(b.unwrap().into_inner().image_ref, big.id());
    assert_eq!(reg.blob_gets(&berth_tests::registry::sha256(&big.layers[1].data)), 1, "{}", reg.log());

    // berthctl pull shows each layer and prints the id; images lists it.
    let cli = build_image(vec![busybox_layer(), file_layer("cli", b"cli", Compression::Gzip)], "amd64", "X=cli");
    reg.push("cli/app", "latest", &cli).await;
    let (ok, out, err) = berthctl(&d, &["pull", &format!("{}/cli/app", reg.host)]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), cli.id());
    let short = &berth_tests::registry::sha256(&cli.layers[1].data)[7..19];
    assert!(err.lines().any(|l| l.starts_with(short) && l.contains("done")), "no progress for {short}:\n{err}");
    let (ok, out, _) = berthctl(&d, &["images"]);
    assert!(ok && out.contains(&format!("{}/cli/app", reg.host)) && out.contains("MB"), "{out}");

    // A tag the registry does not have: NotFound, nothing listed.
    let e = pull(&mut d, &format!("{}/multi/app:nope", reg.host), None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(temp_leftovers(&d).is_empty(), "{:?}", temp_leftovers(&d));
}

#[tokio::test]
async fn pull_over_tls_with_basic_auth() {
    if skip() {
        return;
    }
    let reg = Registry::start(Auth::Basic("joe".into(), "s3cret".into()), true);
    let img = build_image(vec![busybox_layer(), file_layer("tls", b"over tls\n", Compression::Gzip)], "amd64", "X=tls");
    reg.push("secure/app", "v1", &img).await;
    let ca = reg.ca.clone().unwrap();
    let (mut d, _cfg) =
        daemon_with_config(&format!("[registries.\"{}\"]\nca = \"{}\"\n", reg.host, ca.display())).await;
    let name = format!("{}/secure/app:v1", reg.host);

    let e = pull(&mut d, &name, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("user name and password"), "{e:?}");
    let e = pull(&mut d, &name, creds("joe", "wrong")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("refused the credentials of user \"joe\""), "{e:?}");
    assert!(status(&mut d, &name).await.is_none());

    assert_eq!(pull(&mut d, &name, creds("joe", "s3cret")).await.unwrap(), img.id());
    // berthctl takes the password from stdin (or a file), off the command line.
    let mut child = Command::new(bin_dir().join("berthctl"))
        .arg("--endpoint")
        .arg(format!("unix://{}", d.socket.display()))
        .args(["pull", "-q", "--creds", "joe", &name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), img.id());
    let file = d.dir.path().join("creds");
    std::fs::write(&file, "joe:s3cret\n").unwrap();
    let (ok, out, err) = berthctl(&d, &["pull", "-q", "--creds-file", file.to_str().unwrap(), &name]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), img.id());
    assert!(!d.log().contains("s3cret"), "a secret reached berthd's log");
    // CRI's `auth` string works the same.
    let auth = Some(cri::AuthConfig { auth: "am9lOnMzY3JldA==".into(), ..Default::default() });
    assert_eq!(pull(&mut d, &name, auth).await.unwrap(), img.id());
    assert_eq!(run_in(&mut d, "tls", &name, &["cat", "/tls"]).await, "over tls");

    // Loopback registries default to plain http: the TLS server says so.
    let mut plain = Daemon::start().await;
    let e = pull(&mut plain, &name, creds("joe", "s3cret")).await.unwrap_err();
    assert!(e.message().contains("HTTP request to an HTTPS server"), "{e:?}");
    // With https but without the CA the certificate is not trusted, and the
    // error says so.
    let (mut plain, _cfg2) = daemon_with_config(&format!("[registries.\"{}\"]\ninsecure = false\n", reg.host)).await;
    let e = pull(&mut plain, &name, creds("joe", "s3cret")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().to_lowercase().contains("certificate"), "{e:?}");
}

#[tokio::test]
async fn pull_with_bearer_tokens() {
    if skip() {
        return;
    }
    let tokens = TokenService::start("ann", "pw");
    let reg = Registry::start(Auth::Token(tokens.clone()), false);
    let img = build_image(vec![busybox_layer(), file_layer("tok", b"token\n", Compression::Gzip)], "amd64", "X=tok");
    reg.push("tok/app", "v1", &img).await;
    let mut d = Daemon::start().await;
    let name = format!("{}/tok/app:v1", reg.host);

    let e = pull(&mut d, &name, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("token service") && e.message().contains("none were given"), "{e:?}");
    let e = pull(&mut d, &name, creds("ann", "nope")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("bad credentials"), "{e:?}");

    let before = tokens.issued.load(Ordering::SeqCst);
    assert_eq!(pull(&mut d, &name, creds("ann", "pw")).await.unwrap(), img.id());
    assert!(tokens.issued.load(Ordering::SeqCst) > before, "no token was fetched");

    // An identity token goes to the token service as an OAuth2 refresh token.
    let rm = |name: &str| cri::RemoveImageRequest {
        image: Some(cri::ImageSpec { image: name.into(), ..Default::default() }),
    };
    d.img.remove_image(rm(&name)).await.unwrap();
    let auth = |t: String| Some(cri::AuthConfig { identity_token: t, ..Default::default() });
    let e = pull(&mut d, &name, auth("not-the-token".into())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert_eq!(pull(&mut d, &name, auth(tokens.refresh_token())).await.unwrap(), img.id());

    // A registry token from the client is used as is.
    d.img
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec { image: name.clone(), ..Default::default() }),
        })
        .await
        .unwrap();
    let token = tokens.sign("ann", "tok/app", &["pull"]);
    let auth = Some(cri::AuthConfig { registry_token: token, ..Default::default() });
    assert_eq!(pull(&mut d, &name, auth).await.unwrap(), img.id());
}

#[tokio::test]
async fn mirrors_fall_back_and_catch_all() {
    if skip() {
        return;
    }
    let upstream = Registry::start(Auth::None, false);
    let mirror = Registry::start(Auth::None, false);
    let dead = format!("127.0.0.1:{}", berth_tests::registry::free_port());
    let up_img =
        build_image(vec![busybox_layer(), file_layer("up", b"upstream\n", Compression::Gzip)], "amd64", "X=up");
    let mir_img = build_image(vec![busybox_layer(), file_layer("mir", b"mirror\n", Compression::Gzip)], "amd64", "X=m");
    upstream.push("lib/only-upstream", "1", &up_img).await;
    mirror.push("lib/only-mirror", "1", &mir_img).await;
    let toml = format!(
        "[registries.\"{up}\"]\nmirrors = [\"http://{dead}\", \"{mir}\"]\n\n[registries.\"*\"]\nmirrors = [\"{mir}\"]\nskip_upstream = true\n",
        up = upstream.host,
        mir = mirror.host
    );
    let (mut d, _cfg) = daemon_with_config(&toml).await;

    // The dead mirror is skipped and the live one lacks it: the upstream serves.
    let name = format!("{}/lib/only-upstream:1", upstream.host);
    assert_eq!(pull(&mut d, &name, None).await.unwrap(), up_img.id());
    // Only the mirror has this one: it is used, and the tag is the upstream's.
    let name = format!("{}/lib/only-mirror:1", upstream.host);
    assert_eq!(pull(&mut d, &name, None).await.unwrap(), mir_img.id());
    assert_eq!(status(&mut d, &name).await.unwrap().repo_tags, vec![name.clone()]);
    assert_eq!(mirror.blob_gets(&berth_tests::registry::sha256(&mir_img.layers[1].data)), 1);
    // The catch-all sends a registry with no entry of its own (that does
    // not even resolve) to the mirror, never to the registry itself.
    let name = "registry.invalid/lib/only-mirror:1";
    assert_eq!(pull(&mut d, name, None).await.unwrap(), mir_img.id());
    let e = pull(&mut d, "registry.invalid/lib/absent:1", None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(!e.message().contains("registry.invalid:"), "the upstream was tried: {e:?}");
}

#[tokio::test]
async fn shared_layers_are_stored_once_and_removal_keeps_users_working() {
    if skip() {
        return;
    }
    let reg = Registry::start(Auth::None, false);
    let base = file_layer("base", &vec![1u8; 1 << 20], Compression::Gzip);
    let base_digest = berth_tests::registry::sha256(&base.data);
    let base2 =
        layer_from_tar(tar_of(&[("base", tar::EntryType::Regular, &vec![1u8; 1 << 20], None)]), Compression::Gzip);
    let a = build_image(vec![busybox_layer(), base, file_layer("a", b"a\n", Compression::Gzip)], "amd64", "X=a");
    let b = build_image(vec![busybox_layer(), base2, file_layer("b", b"b\n", Compression::Gzip)], "amd64", "X=b");
    reg.push("shared/a", "1", &a).await;
    reg.push("shared/b", "1", &b).await;
    let mut d = Daemon::start().await;
    let (na, nb) = (format!("{}/shared/a:1", reg.host), format!("{}/shared/b:1", reg.host));
    pull(&mut d, &na, None).await.unwrap();
    pull(&mut d, &nb, None).await.unwrap();
    assert_eq!(reg.blob_gets(&base_digest), 1, "the shared layer was fetched again:\n{}", reg.log());
    assert!(has_snapshot(&d, &base_digest));

    // Removing a keeps the shared layer for b; a's own layer goes.
    let a_own = berth_tests::registry::sha256(&a.layers[2].data);
    d.img
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec { image: na.clone(), ..Default::default() }),
        })
        .await
        .unwrap();
    assert!(status(&mut d, &na).await.is_none());
    assert!(!has_snapshot(&d, &a_own) && !has_blob(&d, &a_own), "a's own layer was kept");
    assert!(has_snapshot(&d, &base_digest), "the shared layer went with a");
    let out = run_in(&mut d, "shared", &nb, &["sh", "-c", "cat /b; wc -c < /base"]).await;
    assert_eq!(out, "b\n1048576");

    // RemoveImage while a container of it runs: it keeps running, its
    // rootfs intact; the layers go once the container is removed.
    let ctr = d.rt.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    let id = ctr[0].id.clone();
    d.img
        .remove_image(cri::RemoveImageRequest { image: Some(cri::ImageSpec { image: b.id(), ..Default::default() }) })
        .await
        .unwrap();
    assert!(status(&mut d, &nb).await.is_none());
    assert_eq!(d.exec_out(&id, &["sh", "-c", "cat /b; ls /bin/busybox"]).await, "b\n/bin/busybox");
    assert_eq!(d.status(&id).await.state(), cri::ContainerState::ContainerRunning);
    let b_own = berth_tests::registry::sha256(&b.layers[2].data);
    assert!(has_snapshot(&d, &b_own));
    d.rt.remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
    assert!(!has_snapshot(&d, &b_own) && !has_snapshot(&d, &base_digest), "layers outlived their last user");

    // ImageFsInfo counts the store.
    let fs = d.img.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap().into_inner();
    assert!(fs.image_filesystems[0].used_bytes.unwrap().value > 0);
}

#[tokio::test]
async fn hostile_layers_change_nothing_outside() {
    if skip() {
        return;
    }
    let reg = Registry::start(Auth::None, false);
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display().to_string();
    let host_file = outside.path().join("host-file");
    std::fs::write(&host_file, b"original").unwrap();
    let climb = format!("../../../../../../../../../..{o}/climbed");
    let abs = format!("{o}/absolute");
    let evil_through_link = "esc/evil".to_string();
    let host_file_s = host_file.display().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", tar_of(&[(&climb, tar::EntryType::Regular, b"x", None)])),
        ("absolute", tar_of(&[(&abs, tar::EntryType::Regular, b"x", None)])),
        (
            "symlink",
            tar_of(&[
                ("esc", tar::EntryType::Symlink, b"", Some(&o)),
                (&evil_through_link, tar::EntryType::Regular, b"x", None),
            ]),
        ),
        (
            "symlink-file",
            tar_of(&[
                ("s", tar::EntryType::Symlink, b"", Some(&host_file_s)),
                ("s", tar::EntryType::Regular, b"overwritten", None),
            ]),
        ),
        (
            "hardlink",
            tar_of(&[
                ("hl", tar::EntryType::Link, b"", Some(&host_file_s)),
                ("hl", tar::EntryType::Regular, b"overwritten", None),
            ]),
        ),
    ];
    let mut d = Daemon::start().await;
    for (name, tar) in cases {
        let img = build_image(vec![busybox_layer(), layer_from_tar(tar, Compression::Gzip)], "amd64", name);
        reg.push(&format!("hostile/{name}"), "1", &img).await;
        let r = pull(&mut d, &format!("{}/hostile/{name}:1", reg.host), None).await;
        if let Err(e) = &r {
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
            assert!(status(&mut d, &format!("{}/hostile/{name}:1", reg.host)).await.is_none());
        }
        let mut names: Vec<_> =
            std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["host-file"], "{name}: something was created outside the snapshot");
        assert_eq!(std::fs::read(&host_file).unwrap(), b"original", "{name}: the host file changed");
        assert!(temp_leftovers(&d).is_empty(), "{name}: {:?}", temp_leftovers(&d));
        eprintln!("{name}: {}", if r.is_ok() { "confined" } else { "refused" });
    }
}

#[tokio::test]
async fn a_damaged_blob_is_rejected_and_leaves_nothing() {
    if skip() {
        return;
    }
    let reg = Registry::start(Auth::None, false);
    let img =
        build_image(vec![busybox_layer(), file_layer("f", &vec![3u8; 100_000], Compression::None)], "amd64", "X=d");
    reg.push("damaged/app", "1", &img).await;
    let layer = berth_tests::registry::sha256(&img.layers[1].data);
    // Same size, other bytes: only the digest can tell.
    let file = reg.blob_file(&layer);
    let mut data = std::fs::read(&file).unwrap();
    let n = data.len();
    data[n - 2000] ^= 0xff;
    std::fs::write(&file, data).unwrap();

    let mut d = Daemon::start().await;
    let name = format!("{}/damaged/app:1", reg.host);
    let e = pull(&mut d, &name, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("damaged") && e.message().contains(&layer), "{e:?}");
    assert!(status(&mut d, &name).await.is_none());
    assert!(!has_blob(&d, &layer) && !has_snapshot(&d, &layer));
    assert!(temp_leftovers(&d).is_empty(), "{:?}", temp_leftovers(&d));
}

#[tokio::test]
async fn a_pull_past_its_deadline_stops_and_lists_nothing() {
    if skip() {
        return;
    }
    let reg = Registry::start(Auth::None, false);
    // 16 MiB that does not compress, behind a 2 MiB/s link.
    let mut big = vec![0u8; 16 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let img = build_image(vec![busybox_layer(), file_layer("big", &big, Compression::None)], "amd64", "X=slow");
    reg.push("slow/app", "1", &img).await;
    let proxy = Throttle::start(&reg.host, 2 << 20);
    let mut d = Daemon::start().await;
    let name = format!("{}/slow/app:1", proxy.host);

    let mut req = tonic::Request::new(cri::PullImageRequest {
        image: Some(cri::ImageSpec { image: name.clone(), ..Default::default() }),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(1500));
    let e = d.img.pull_image(req).await.unwrap_err();
    // The client's own timer may fire first (Cancelled); either way berthd
    // saw the call end.
    assert!(matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{e:?}");

    // The download stops: no more bytes flow and its temp file goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = proxy.sent.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(700)).await;
        if proxy.sent.load(Ordering::SeqCst) == before && temp_leftovers(&d).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the pull goes on: {before} bytes, {:?}", temp_leftovers(&d));
    }
    assert!(proxy.sent.load(Ordering::SeqCst) < big.len(), "the whole layer was sent");
    assert!(status(&mut d, &name).await.is_none());
    assert!(!has_blob(&d, &berth_tests::registry::sha256(&img.layers[1].data)));
}

/// An image's user databases are its own and bounded: a 64 MiB /etc/group
/// (of newlines, 64 KiB gzipped) is refused with a clear error instead of
/// being read into berthd, and an /etc that is a symlink climbing out of the
/// rootfs does not make berthd resolve a user name from the host's passwd.
#[tokio::test]
async fn hostile_user_databases_are_bounded_and_confined() {
    if skip() {
        return;
    }
    let reg = Registry::start(Auth::None, false);
    let huge = vec![b'\n'; 64 << 20];
    let img = build_image(
        vec![
            busybox_layer(),
            layer_from_tar(tar_of(&[("etc/group", tar::EntryType::Regular, &huge, None)]), Compression::Gzip),
        ],
        "amd64",
        "X=huge",
    );
    drop(huge);
    reg.push("hostile/group", "1", &img).await;
    // /etc → a path that climbs out when resolved on the host, and loops
    // when resolved inside the rootfs.
    let climbing = build_image(
        vec![layer_from_tar(
            tar_of(&[("etc", tar::EntryType::Symlink, b"", Some("/../../../../../../../../../etc"))]),
            Compression::Gzip,
        )],
        "amd64",
        "X=climb",
    );
    reg.push("hostile/etclink", "1", &climbing).await;
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("userdb");
    let pod = d.run_pod(&cfg).await;
    for (image, user, want) in [
        ("hostile/group", "app", "larger than 4 MiB"),
        // `_apt` is in the host's /etc/passwd, not in this image.
        ("hostile/etclink", "_apt", "not in the image's /etc/passwd"),
    ] {
        let name = format!("{}/{image}:1", reg.host);
        pull(&mut d, &name, None).await.unwrap();
        let mut c = container_config("u", &["true"]);
        c.image = Some(cri::ImageSpec { image: name.clone(), ..Default::default() });
        c.linux.as_mut().unwrap().security_context =
            Some(cri::LinuxContainerSecurityContext { run_as_username: user.into(), ..Default::default() });
        let started = Instant::now();
        let e = d.create_with(&pod, &cfg, c).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{image}: {e}");
        assert!(e.message().contains(want), "{image}: {e}");
        assert!(started.elapsed() < Duration::from_secs(10), "{image}: took {:?}", started.elapsed());
    }
    let vm_hwm = d.peak_rss_kb();
    assert!(vm_hwm < 256 * 1024, "berthd peaked at {vm_hwm} kB");
    let list = d.rt.list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner();
    assert!(list.containers.is_empty());
}

/// A hostile registry: a 5xx whose body never ends, and a token service
/// that answers with 256 MiB. berthd reads the start of the one and refuses
/// the other, quickly and without holding them in memory.
#[tokio::test]
async fn hostile_registry_bodies_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") {
                    if conn.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    req.push(b[0]);
                }
                let req = String::from_utf8_lossy(&req).to_string();
                let huge = 256usize << 20;
                let head = if req.contains("/token") {
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {huge}\r\n\r\n")
                } else if req.contains("/v2/tok/") {
                    // It closes the connection after the 401: say so, or the
                    // client may send the token request on the closed one.
                    format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"x\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                } else {
                    format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {huge}\r\n\r\n")
                };
                if conn.write_all(head.as_bytes()).await.is_err() || head.contains("Length: 0") {
                    return;
                }
                let chunk = vec![b'a'; 1 << 16];
                let mut sent = 0;
                while sent < huge && conn.write_all(&chunk).await.is_ok() {
                    sent += chunk.len();
                }
            });
        }
    });
    let mut d = Daemon::start().await;
    for (image, want) in [("err/app:1", tonic::Code::Unavailable), ("tok/app:1", tonic::Code::InvalidArgument)] {
        let started = Instant::now();
        let e = pull(&mut d, &format!("{addr}/{image}"), None).await.unwrap_err();
        assert_eq!(e.code(), want, "{image}: {e:?}");
        assert!(started.elapsed() < Duration::from_secs(20), "{image} took {:?}", started.elapsed());
        if image.starts_with("tok") {
            assert!(e.message().contains("token response is larger than"), "{e:?}");
        }
    }
    let vm_hwm = d.peak_rss_kb();
    assert!(vm_hwm < 128 * 1024, "berthd peaked at {vm_hwm} kB");
}

/// An image of 130 layers runs: the overlay's lower dirs no longer have to
/// fit in one page of mount options (38 absolute snapshot paths did not).
#[tokio::test]
async fn an_image_of_130_layers_runs() {
    if skip() {
        return;
    }
    let reg = Registry::start(Auth::None, false);
    let mut layers = vec![busybox_layer()];
    for i in 0..129 {
        layers.push(file_layer(&format!("l{i}"), format!("layer {i}\n").as_bytes(), Compression::Gzip));
    }
    let img = build_image(layers, "amd64", "X=deep");
    reg.push("deep/app", "v1", &img).await;
    let mut d = Daemon::start().await;
    let name = format!("{}/deep/app:v1", reg.host);
    pull(&mut d, &name, None).await.unwrap();
    let out = run_in(&mut d, "deep", &name, &["sh", "-c", "cat /l0 /l128"]).await;
    assert_eq!(out, "layer 0\nlayer 128");
}

/// RemoveImage racing CreateContainer of the same image (kubelet's image GC
/// against a pod start): the create either gets the image, whose layers then
/// stay for the container, or is told the image is gone; it never fails
/// half-way at the overlay mount, and a created container runs.
#[tokio::test]
async fn removing_an_image_while_a_container_is_created_from_it() {
    if skip() {
        return;
    }
    let reg = Registry::start(Auth::None, false);
    let img =
        build_image(vec![busybox_layer(), file_layer("race.txt", b"raced\n", Compression::Gzip)], "amd64", "RACE=1");
    reg.push("race/app", "v1", &img).await;
    let name = format!("{}/race/app:v1", reg.host);
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("race");
    let pod = d.run_pod(&cfg).await;
    let (mut created, mut refused) = (0, 0);
    for round in 0..40u64 {
        pull(&mut d, &name, None).await.expect("pull");
        let mut cc = container_config(&format!("c{round}"), &["cat", "/race.txt"]);
        cc.image = Some(cri::ImageSpec { image: name.clone(), ..Default::default() });
        let (mut rt, mut img_client) = (d.rt.clone(), d.img.clone());
        let create = rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cc),
            sandbox_config: Some(cfg.clone()),
        });
        // Later and later: the first rounds race the create's first steps,
        // the last ones its mount.
        let spec = cri::ImageSpec { image: name.clone(), ..Default::default() };
        let remove = async move {
            tokio::time::sleep(Duration::from_millis(round % 10 * 2)).await;
            img_client.remove_image(cri::RemoveImageRequest { image: Some(spec) }).await
        };
        let (c, r) = tokio::join!(create, remove);
        r.expect("RemoveImage");
        match c {
            Ok(c) => {
                let id = c.into_inner().container_id;
                d.start_container(&id).await;
                d.wait_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
                let log =
                    std::fs::read_to_string(d.logs.join("race").join(format!("c{round}.log"))).unwrap_or_default();
                assert!(log.contains("raced"), "round {round}: the container did not see its image: {log:?}");
                d.rt.remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
                created += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::NotFound, "round {round}: {e:?}");
                refused += 1;
            }
        }
        assert!(d.leftovers().iter().all(|p| !p.starts_with(d.dir.path().join("s/containers"))), "round {round}");
    }
    eprintln!("created {created}, refused {refused}");
    assert!(created > 0, "no create ever won the race, so the created path was not checked");
}
