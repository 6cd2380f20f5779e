//! A client of the OCI distribution API for one repository on one endpoint:
//! manifests and blobs over HTTP(S), with the registry's auth challenges
//! answered (basic auth, and the bearer-token flow with a password, an
//! identity token or a given registry token).
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};
use crate::registry_config::Endpoint;

/// Manifest media types a pull accepts, most wanted first.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Largest manifest or index read into memory.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Credentials for one pull, from CRI's AuthConfig. Its Debug shows the
/// user name only: secrets never reach a log line.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// User name for basic auth or the token service.
    pub username: String,
    /// Password for basic auth or the token service.
    pub password: String,
    /// OAuth2 refresh token for the token service.
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &secret(&self.password))
            .field("identity_token", &secret(&self.identity_token))
            .field("registry_token", &secret(&self.registry_token))
            .finish()
    }
}

impl Credentials {
    /// From CRI's fields; `auth` is base64 of `user:password`.
    pub fn new(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Option<Self>> {
        let (mut username, mut password) = (username.to_string(), password.to_string());
        if !auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| ImageError::Invalid(format!("auth is not base64: {e}")))?;
            let text = String::from_utf8(raw).map_err(|_| ImageError::Invalid("auth is not UTF-8".into()))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| ImageError::Invalid("auth must be base64 of user:password".into()))?;
            (username, password) = (u.to_string(), p.to_string());
        }
        let c = Credentials {
            username,
            password,
            identity_token: identity_token.to_string(),
            registry_token: registry_token.to_string(),
        };
        Ok((c != Credentials::default()).then_some(c))
    }
}

/// A manifest or index as fetched.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// Media type from the response (or the document).
    pub media_type: String,
}

enum Auth {
    None,
    Basic,
    Bearer(String),
}

/// One repository on one endpoint, with its auth state.
pub struct Session {
    client: reqwest::Client,
    /// The endpoint.
    pub endpoint: Endpoint,
    repo: String,
    creds: Option<Credentials>,
    auth: Mutex<Auth>,
}

/// Builds an HTTP client trusting the system's CAs and `ca`, if given.
pub fn http_client(ca: Option<&PathBuf>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| ImageError::Invalid(format!("reading CA {}: {e}", ca.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ImageError::Invalid(format!("CA {} is not PEM: {e}", ca.display())))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| ImageError::Internal(format!("building HTTP client: {e}")))
}

impl Session {
    /// A session for `repo` (path inside the registry) on `endpoint`.
    pub fn new(client: reqwest::Client, endpoint: Endpoint, repo: &str, creds: Option<Credentials>) -> Self {
        let auth = match &creds {
            Some(c) if !c.registry_token.is_empty() => Auth::Bearer(c.registry_token.clone()),
            _ => Auth::None,
        };
        Session { client, endpoint, repo: repo.to_string(), creds, auth: Mutex::new(auth) }
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}/v2/{}/{kind}/{reference}", self.endpoint.base_url, self.repo)
    }

    /// Fetches a manifest or index by tag or digest; a digest reference is
    /// verified against the bytes.
    pub async fn manifest(&self, reference: &str) -> Result<Fetched> {
        let resp = self.get(&self.url("manifests", reference), Some(&MANIFEST_TYPES.join(", "))).await?;
        let header_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES, "manifest").await.map_err(|e| self.context(e))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if reference.starts_with("sha256:") && digest != reference {
            return Err(ImageError::BadContent(format!(
                "{}: manifest {reference} arrived with digest {digest}: content is damaged",
                self.endpoint.host
            )));
        }
        let doc_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string));
        let media_type = match doc_type {
            Some(t) => t,
            None if MANIFEST_TYPES.contains(&header_type.as_str()) => header_type,
            None => "application/vnd.oci.image.manifest.v1+json".to_string(),
        };
        Ok(Fetched { bytes, digest, media_type })
    }

    /// Starts fetching a blob; the caller streams and verifies the body.
    pub async fn blob(&self, digest: &str) -> Result<reqwest::Response> {
        self.get(&self.url("blobs", digest), None).await
    }

    fn context(&self, e: ImageError) -> ImageError {
        e.context(format!("registry {}", self.endpoint.host))
    }

    fn net_error(&self, e: reqwest::Error) -> ImageError {
        // reqwest's Display hides the cause (refused, TLS, timeout); show it.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        let msg = format!("registry {}: {msg}", self.endpoint.base_url);
        if e.is_timeout() {
            ImageError::TimedOut(msg)
        } else {
            ImageError::Unreachable(msg)
        }
    }

    async fn get(&self, url: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let mut challenged = false;
        loop {
            let mut req = self.client.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            req = match &*lock(&self.auth) {
                Auth::None => req,
                Auth::Basic => {
                    let c = self.creds.clone().unwrap_or_default();
                    req.basic_auth(c.username, Some(c.password))
                }
                Auth::Bearer(t) => req.bearer_auth(t),
            };
            let resp = req.send().await.map_err(|e| self.net_error(e))?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.answer(&challenge).await?;
                continue;
            }
            if status.is_success() {
                return Ok(resp);
            }
            // An error body is only read for its message: its start is enough.
            let body = String::from_utf8_lossy(&read_prefix(resp, MAX_ERROR_BODY).await).into_owned();
            return Err(self.status_error(status, url, &body));
        }
    }

    fn status_error(&self, status: reqwest::StatusCode, url: &str, body: &str) -> ImageError {
        let detail = registry_message(body);
        let host = &self.endpoint.host;
        match status.as_u16() {
            401 | 403 => {
                let who = match &self.creds {
                    Some(c) if !c.username.is_empty() => format!("the credentials of user {:?}", c.username),
                    Some(_) => "the given token".to_string(),
                    None => "anonymous access (give credentials)".to_string(),
                };
                ImageError::Refused(format!("registry {host} refused {who} for {}{detail}", self.repo))
            }
            404 => ImageError::NotFound(format!("registry {host} has no {url}{detail}")),
            429 | 500..=599 => ImageError::Unreachable(format!("registry {host} answered {status} for {url}{detail}")),
            _ => ImageError::Registry(format!("registry {host} answered {status} for {url}{detail}")),
        }
    }

    /// Answers a 401 challenge by choosing basic auth or fetching a token.
    async fn answer(&self, challenge: &str) -> Result<()> {
        let (scheme, params) = parse_challenge(challenge);
        let host = &self.endpoint.host;
        if scheme.eq_ignore_ascii_case("basic") {
            match &self.creds {
                Some(c) if !c.username.is_empty() => {
                    *lock(&self.auth) = Auth::Basic;
                    return Ok(());
                }
                _ => {
                    return Err(ImageError::Refused(format!(
                        "registry {host} needs a user name and password for {}",
                        self.repo
                    )))
                }
            }
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ImageError::Refused(format!(
                "registry {host} asks for auth scheme {scheme:?}, which Berth does not speak"
            )));
        }
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| ImageError::Refused(format!("registry {host}: bearer challenge has no realm")))?;
        let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone()).unwrap_or_default();
        let scope = params
            .iter()
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let token = self.fetch_token(&realm, &service, &scope).await?;
        *lock(&self.auth) = Auth::Bearer(token);
        Ok(())
    }

    async fn fetch_token(&self, realm: &str, service: &str, scope: &str) -> Result<String> {
        let host = &self.endpoint.host;
        let creds = self.creds.clone().unwrap_or_default();
        let req = if !creds.identity_token.is_empty() {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", &creds.identity_token)
                .append_pair("service", service)
                .append_pair("scope", scope)
                .append_pair("client_id", "berth")
                .finish();
            self.client
                .post(realm)
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
        } else {
            let mut url = url::Url::parse(realm)
                .map_err(|e| ImageError::Registry(format!("registry {host}: token realm {realm:?}: {e}")))?;
            url.query_pairs_mut().append_pair("service", service).append_pair("scope", scope);
            let req = self.client.get(url);
            if creds.username.is_empty() {
                req
            } else {
                req.basic_auth(&creds.username, Some(&creds.password))
            }
        };
        let resp = req.send().await.map_err(|e| self.net_error(e))?;
        let status = resp.status();
        let body = if status.is_success() {
            String::from_utf8_lossy(&read_limited(resp, MAX_TOKEN_RESPONSE, "token response").await?).into_owned()
        } else {
            String::from_utf8_lossy(&read_prefix(resp, MAX_ERROR_BODY).await).into_owned()
        };
        if !status.is_success() {
            if status.as_u16() == 401 || status.as_u16() == 403 {
                let none = if creds == Credentials::default() { " (none were given)" } else { "" };
                return Err(ImageError::Refused(format!(
                    "token service {realm} for registry {host} refused the credentials{none}{}",
                    registry_message(&body)
                )));
            }
            return Err(self.status_error(status, realm, &body));
        }
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| ImageError::Registry(format!("token service {realm} answered no JSON: {e}")))?;
        v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ImageError::Registry(format!("token service {realm} answered no token")))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How much of an error body is read (for its message).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest token service answer (a JWT is a few KiB).
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// The whole body, refused past `max` bytes.
async fn read_limited(mut resp: reqwest::Response, max: usize, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ImageError::Unreachable(format!("reading: {e}")))? {
        if out.len() + chunk.len() > max {
            return Err(ImageError::BadContent(format!("{what} is larger than {max} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// At most the first `max` bytes of a body (the rest is never read).
async fn read_prefix(mut resp: reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk[..chunk.len().min(max - out.len())]),
            _ => break,
        }
    }
    out
}

/// The first error message of a registry's JSON error body, as ": msg".
fn registry_message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    match v["errors"][0]["message"].as_str() {
        Some(m) => format!(": {m}"),
        // Not the API's JSON (a proxy, or "Client sent an HTTP request to
        // an HTTPS server"): its first line says what is wrong.
        None => match body.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(l) if !l.starts_with('{') && !l.starts_with('<') => {
                format!(": {}", l.chars().take(200).collect::<String>())
            }
            _ => String::new(),
        },
    }
}

/// Splits `Bearer realm="x",service="y"` into the scheme and its params.
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_string();
        }
        params.push((key, value));
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials {
            username: "joe".into(),
            password: "s3cret".into(),
            identity_token: "refresh-me".into(),
            registry_token: String::new(),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("joe") && shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("s3cret") && !shown.contains("refresh-me"), "{shown}");
    }

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p, vec![("realm".into(), "Registry Realm".into())]);
    }

    #[test]
    fn credentials_from_cri() {
        let auth = base64::engine::general_purpose::STANDARD.encode("joe:s3:cret");
        let c = Credentials::new("", "", &auth, "", "").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("joe", "s3:cret"));
        assert!(Credentials::new("", "", "", "", "").unwrap().is_none());
        assert!(Credentials::new("", "", "!!", "", "").is_err());
    }
}
