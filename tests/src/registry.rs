//! Registry fixtures for pull tests: Debian's docker-registry on loopback
//! with temp storage (plain http, or TLS from a test CA; htpasswd or token
//! auth), a token service the test runs, images built in the test and
//! pushed over the distribution API, and a throttling TCP proxy.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

/// True when docker-registry, openssl and htpasswd are installed.
pub fn registry_available() -> bool {
    crate::have_commands(&["docker-registry", "openssl", "htpasswd"])
}

/// A free loopback port (bound and released; the registry binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
pub struct Pki {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
}

impl Pki {
    /// Makes the files in `dir`.
    pub fn new(dir: &Path) -> Pki {
        let p = |n: &str| dir.join(n);
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=berth test CA"])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem"))
            .stderr(Stdio::piped()));
        run(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr"))
            .stderr(Stdio::piped()));
        std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
            .expect("ext");
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("server.pem"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .stderr(Stdio::piped()));
        Pki { ca: p("ca.pem"), cert: p("server.pem"), key: p("server.key") }
    }
}

/// How the registry authenticates.
pub enum Auth {
    /// Anyone may push and pull.
    None,
    /// htpasswd basic auth with this user and password.
    Basic(String, String),
    /// Bearer tokens from this service.
    Token(Arc<TokenService>),
}

/// A docker-registry process on loopback, killed by pid when dropped.
pub struct Registry {
    /// Temp folder (config, storage, log).
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// The CA that signed its certificate, when it serves TLS.
    pub ca: Option<PathBuf>,
    child: Child,
    basic: Option<String>,
    token: Option<Arc<TokenService>>,
}

impl Registry {
    /// Starts a registry; `tls` serves https with a certificate from a test CA.
    pub fn start(auth: Auth, tls: bool) -> Registry {
        let dir = tempfile::Builder::new().prefix("reg").tempdir().expect("temp dir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("storage").display()
        );
        let mut ca = None;
        if tls {
            let pki = Pki::new(dir.path());
            cfg += &format!("  tls:\n    certificate: {}\n    key: {}\n", pki.cert.display(), pki.key.display());
            ca = Some(pki.ca);
        }
        let mut token = None;
        let basic = match &auth {
            Auth::None => None,
            Auth::Basic(u, p) => {
                let out = Command::new("htpasswd").args(["-Bbn", u, p]).output().expect("htpasswd");
                assert!(out.status.success());
                std::fs::write(dir.path().join("htpasswd"), out.stdout).expect("htpasswd file");
                cfg += &format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                );
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
            }
            Auth::Token(t) => {
                cfg += &format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    t.realm(),
                    TokenService::SERVICE,
                    TokenService::ISSUER,
                    t.cert.display()
                );
                token = Some(t.clone());
                None
            }
        };
        std::fs::write(dir.path().join("config.yml"), cfg).expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let r = Registry { dir, host, ca, child, basic, token };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&r.host).is_err() {
            assert!(Instant::now() < deadline, "registry did not come up:\n{}", r.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// What the registry logged (its access log names every request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many times a blob was fetched (GET) from this registry.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log().lines().filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest} "))).count()
    }

    /// The file the registry serves a blob from.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    fn base(&self) -> String {
        format!("{}://{}", if self.ca.is_some() { "https" } else { "http" }, self.host)
    }

    async fn client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).expect("ca");
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("ca pem"));
        }
        b.build().expect("client")
    }

    fn authed(&self, repo: &str, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.basic, &self.token) {
            (Some(a), _) => r.header("Authorization", a),
            (None, Some(t)) => r.bearer_auth(t.sign("push-helper", repo, &["pull", "push"])),
            (None, None) => r,
        }
    }

    /// Uploads a blob (monolithic upload).
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let c = self.client().await;
        let digest = sha256(data);
        let r = self
            .authed(repo, c.post(format!("{}/v2/{repo}/blobs/uploads/", self.base())))
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status().as_u16(), 202, "starting upload: {}", r.text().await.unwrap_or_default());
        let loc = r.headers()["location"].to_str().expect("location").to_string();
        let loc = if loc.starts_with("http") { loc } else { format!("{}{loc}", self.base()) };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .authed(repo, c.put(format!("{loc}{sep}digest={digest}")))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("put blob");
        assert_eq!(r.status().as_u16(), 201, "putting blob: {}", r.text().await.unwrap_or_default());
        digest
    }

    /// Uploads a manifest or index under a tag or its digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, data: &[u8]) -> String {
        let c = self.client().await;
        let r = self
            .authed(repo, c.put(format!("{}/v2/{repo}/manifests/{reference}", self.base())))
            .header("Content-Type", media_type)
            .body(data.to_vec())
            .send()
            .await
            .expect("put manifest");
        assert_eq!(r.status().as_u16(), 201, "putting manifest: {}", r.text().await.unwrap_or_default());
        sha256(data)
    }

    /// Pushes an image built by [`ImageBuilder`]; returns the manifest digest.
    pub async fn push(&self, repo: &str, tag: &str, image: &BuiltImage) -> String {
        for l in &image.layers {
            self.push_blob(repo, &l.data).await;
        }
        self.push_blob(repo, &image.config).await;
        self.push_manifest(repo, tag, MANIFEST_TYPE, &image.manifest).await
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// OCI image manifest media type.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One layer as pushed.
pub struct Layer {
    /// Compressed (or not) bytes.
    pub data: Vec<u8>,
    /// Its media type.
    pub media_type: &'static str,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
}

/// How a layer is compressed.
#[derive(Clone, Copy)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// A layer from a tar, compressed as asked.
pub fn layer_from_tar(tar: Vec<u8>, c: Compression) -> Layer {
    let diff_id = sha256(&tar);
    let (data, media_type) = match c {
        Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).expect("gzip");
            (e.finish().expect("gzip"), "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Compression::Zstd => {
            (zstd::encode_all(&tar[..], 3).expect("zstd"), "application/vnd.oci.image.layer.v1.tar+zstd")
        }
    };
    Layer { data, media_type, diff_id }
}

/// A tar of entries: (path, type, data, link target), written raw so that
/// hostile names reach the unpacker unchanged.
pub fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, typ, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*typ);
        h.set_size(data.len() as u64);
        h.set_mode(if typ.is_dir() { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        if let Some(l) = link {
            let lb = l.as_bytes();
            h.as_old_mut().linkname[..lb.len()].copy_from_slice(lb);
        }
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, *data).expect("tar entry");
    }
    b.into_inner().expect("tar")
}

/// An image ready to push.
pub struct BuiltImage {
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Config JSON.
    pub config: Vec<u8>,
    /// Manifest JSON.
    pub manifest: Vec<u8>,
}

impl BuiltImage {
    /// The image id Berth should report (config digest).
    pub fn id(&self) -> String {
        sha256(&self.config)
    }

    /// Manifest digest.
    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }
}

/// Builds an image from layers; `env` marks the config so variants differ.
pub fn build_image(layers: Vec<Layer>, arch: &str, env: &str) -> BuiltImage {
    let diff_ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", env], "Cmd": ["sh"], "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).expect("json");
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": sha256(&l.data), "size": l.data.len()}))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": layer_descs,
    });
    BuiltImage { layers, config, manifest: serde_json::to_vec(&manifest).expect("json") }
}

/// The busybox layer of the test image (gzip), so built images run.
pub fn busybox_layer() -> Layer {
    let dir = crate::test_image();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index")).expect("json");
    let blob = |d: &str| std::fs::read(dir.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).expect("blob");
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().expect("digest"))).expect("json");
    let config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().expect("digest"))).expect("json");
    Layer {
        data: blob(manifest["layers"][0]["digest"].as_str().expect("digest")),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        diff_id: config["rootfs"]["diff_ids"][0].as_str().expect("diff id").to_string(),
    }
}

/// An index of (manifest, platform) pairs.
pub fn index_of(entries: &[(&BuiltImage, &str)]) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(img, arch)| {
            serde_json::json!({
                "mediaType": MANIFEST_TYPE, "digest": img.digest(), "size": img.manifest.len(),
                "platform": {"os": "linux", "architecture": arch},
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests}))
        .expect("json")
}

/// A token service for the registry's bearer-token auth: answers
/// `GET /token?service=..&scope=..` with a signed JWT when the basic
/// credentials match, 401 otherwise.
pub struct TokenService {
    /// Signing key and self-signed certificate (the registry trusts it).
    key: PathBuf,
    cert: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
    /// Tokens issued.
    pub issued: AtomicUsize,
}

impl TokenService {
    const SERVICE: &'static str = "berth-test-registry";
    const ISSUER: &'static str = "berth-test-issuer";

    /// Starts the service (a thread on a loopback port) for `user`/`password`.
    pub fn start(user: &str, password: &str) -> Arc<TokenService> {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("token.key");
        let cert = dir.path().join("token.pem");
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=berth token signer"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::piped()));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let svc = Arc::new(TokenService { key, cert, port, _dir: dir, issued: AtomicUsize::new(0) });
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        // Weak: the service (and its key folder) goes with the test's last
        // handle; a request after that ends the thread.
        let weak = Arc::downgrade(&svc);
        let refresh = svc.refresh_token();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Some(me) = weak.upgrade() else { return };
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut authorized = false;
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") && v.trim() == want {
                            authorized = true;
                        }
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                // The OAuth2 form: a POST with an identity (refresh) token.
                let mut form = vec![0u8; length.min(64 * 1024)];
                let _ = reader.read_exact(&mut form);
                let form = String::from_utf8_lossy(&form).to_string();
                let post = request.starts_with("POST ");
                if post {
                    authorized = form.contains("grant_type=refresh_token")
                        && form.split('&').any(|kv| kv == format!("refresh_token={refresh}"));
                }
                let params = if post { form.clone() } else { request.clone() };
                let scope = params
                    .split(['?', '&', ' '])
                    .find_map(|p| p.strip_prefix("scope="))
                    .map(|s| s.replace("%3A", ":").replace("%2F", "/"))
                    .unwrap_or_default();
                let repo = scope.split(':').nth(1).unwrap_or("").to_string();
                let (status, body) = if authorized {
                    me.issued.fetch_add(1, Ordering::SeqCst);
                    let field = if post { "access_token" } else { "token" };
                    ("200 OK", format!("{{\"{field}\":\"{}\"}}", me.sign("test-user", &repo, &["pull"])))
                } else {
                    ("401 Unauthorized", "{\"errors\":[{\"message\":\"bad credentials\"}]}".to_string())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        svc
    }

    /// The identity (refresh) token the service accepts.
    pub fn refresh_token(&self) -> String {
        format!("refresh-{}", self.port)
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// A JWT for `repo` (`*` for all) with `actions`, signed RS256 with the
    /// certificate in its x5c header.
    pub fn sign(&self, sub: &str, repo: &str, actions: &[&str]) -> String {
        let b64 = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
        let pem = std::fs::read_to_string(&self.cert).expect("cert");
        let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [der_b64]});
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
        let claims = serde_json::json!({
            "iss": Self::ISSUER, "sub": sub, "aud": Self::SERVICE,
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": format!("{now}-{}", rand_suffix()),
            "access": [{"type": "repository", "name": repo, "actions": actions}],
        });
        let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl");
        child.stdin.take().expect("stdin").write_all(signing_input.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("openssl");
        assert!(out.status.success());
        format!("{signing_input}.{}", b64(&out.stdout))
    }
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    (std::process::id() as u64) << 20 | N.fetch_add(1, Ordering::SeqCst) as u64
}

/// A TCP proxy to `upstream` that sends the upstream's bytes at about
/// `bytes_per_sec`; counts the bytes it passed on.
pub struct Throttle {
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// Bytes sent to clients so far.
    pub sent: Arc<AtomicUsize>,
}

impl Throttle {
    /// Starts the proxy thread.
    pub fn start(upstream: &str, bytes_per_sec: usize) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let sent = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_string();
        let counter = sent.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (mut c_read, mut s_write) =
                    (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let (mut s_read, mut c_write) = (server, client);
                    let chunk = (bytes_per_sec / 20).max(1);
                    let mut buf = vec![0u8; chunk];
                    loop {
                        match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if c_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                counter.fetch_add(n, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                    let _ = s_read.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Throttle { host, sent }
    }
}
