//! Registry configuration (the `registries` tables of berthd's config
//! file, see `settings.rs`): per-registry mirrors,
//! a catch-all entry, plain-http registries and per-registry CA
//! certificates. Decides, for an image's registry, which endpoints a pull
//! tries and in what order.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{ImageError, Result};

/// The key of the entry that applies to every registry without its own.
pub const CATCH_ALL: &str = "*";

/// The registry settings pulls use. Unknown keys are refused, so a typo is
/// an error rather than a setting silently ignored.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Settings by registry host (`host[:port]`, `docker.io`, or `*`).
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryHost>,
}

/// Settings of one registry host.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryHost {
    /// Mirrors tried in order before the registry itself: `host[:port]`,
    /// or a URL `http://host[:port]` / `https://host[:port]`.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// When true the registry itself is never contacted, only its mirrors.
    #[serde(default)]
    pub skip_upstream: bool,
    /// Plain http. Unset: true for localhost and loopback addresses
    /// (unless a CA is given), false for every other host.
    pub insecure: Option<bool>,
    /// PEM CA certificate(s) to trust for this host, besides the system's.
    pub ca: Option<PathBuf>,
}

/// How to talk to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The host as configured (`host[:port]`).
    pub host: String,
    /// `http://host[:port]` or `https://host[:port]`.
    pub base_url: String,
    /// Extra CA to trust.
    pub ca: Option<PathBuf>,
    /// True for a mirror, false for the registry itself.
    pub mirror: bool,
}

impl FileConfig {
    /// Checks hosts, mirrors and CA files.
    pub fn validate(&self) -> Result<()> {
        for (host, h) in &self.registries {
            if host != CATCH_ALL {
                check_host(host)?;
            }
            for m in &h.mirrors {
                let (_, bare) = split_scheme(m)?;
                check_host(bare).map_err(|e| e.context(format!("mirror of {host}")))?;
            }
            if h.skip_upstream && h.mirrors.is_empty() {
                return Err(ImageError::Invalid(format!(
                    "registries.\"{host}\": skip_upstream needs at least one mirror"
                )));
            }
            if let Some(ca) = &h.ca {
                if !ca.is_file() {
                    return Err(ImageError::Invalid(format!(
                        "registries.\"{host}\": CA file {} does not exist",
                        ca.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The endpoints a pull from `domain` (a reference's registry) tries, in
    /// order: the mirrors of its own entry (else of the catch-all), then the
    /// registry itself unless that entry skips it.
    pub fn endpoints(&self, domain: &str) -> Vec<Endpoint> {
        let entry = self.registries.get(domain).or_else(|| self.registries.get(CATCH_ALL));
        let mut out = Vec::new();
        if let Some(e) = entry {
            for m in &e.mirrors {
                if let Ok((scheme, host)) = split_scheme(m) {
                    out.push(self.endpoint(host, scheme, true));
                }
            }
        }
        if !entry.is_some_and(|e| e.skip_upstream) {
            // Docker Hub's API lives on its own host.
            let api_host = if domain == "docker.io" { "registry-1.docker.io" } else { domain };
            let mut ep = self.endpoint(api_host, None, false);
            ep.host = domain.to_string();
            out.push(ep);
        }
        out
    }

    fn endpoint(&self, host: &str, scheme: Option<&str>, mirror: bool) -> Endpoint {
        // Only a host's own entry says how to reach it; the catch-all is
        // about where pulls go, not about TLS.
        let own = self.registries.get(host);
        let ca = own.and_then(|h| h.ca.clone());
        let insecure = match scheme {
            Some(s) => s == "http",
            None => own.and_then(|h| h.insecure).unwrap_or(ca.is_none() && is_loopback(host)),
        };
        let scheme = if insecure { "http" } else { "https" };
        Endpoint { host: host.to_string(), base_url: format!("{scheme}://{host}"), ca, mirror }
    }
}

fn split_scheme(m: &str) -> Result<(Option<&str>, &str)> {
    let (scheme, rest) = match m.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (Some(s), rest),
        Some((s, _)) => return Err(ImageError::Invalid(format!("mirror {m:?}: scheme {s:?} is not http or https"))),
        None => (None, m),
    };
    Ok((scheme, rest.trim_end_matches('/')))
}

fn check_host(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        && !host.contains("..");
    if ok {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!("{host:?} is not a registry host (host[:port])")))
    }
}

fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> FileConfig {
        let c: FileConfig = toml::from_str(s).unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn defaults_to_the_registry_itself() {
        let c = FileConfig::default();
        let e = c.endpoints("docker.io");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].base_url, "https://registry-1.docker.io");
        assert_eq!(c.endpoints("localhost:5000")[0].base_url, "http://localhost:5000");
        assert_eq!(c.endpoints("127.0.0.1:5000")[0].base_url, "http://127.0.0.1:5000");
        assert_eq!(c.endpoints("quay.io")[0].base_url, "https://quay.io");
    }

    #[test]
    fn mirrors_then_upstream_and_catch_all() {
        let c = parse(
            r#"
            [registries."docker.io"]
            mirrors = ["mirror.local:5000", "http://10.0.0.5:5000"]
            [registries."mirror.local:5000"]
            ca = "/etc/hostname"
            [registries."*"]
            mirrors = ["http://127.0.0.1:5001"]
            skip_upstream = true
            [registries."plain.example:80"]
            insecure = true
            "#,
        );
        let e = c.endpoints("docker.io");
        let urls: Vec<_> = e.iter().map(|e| e.base_url.as_str()).collect();
        assert_eq!(urls, ["https://mirror.local:5000", "http://10.0.0.5:5000", "https://registry-1.docker.io"]);
        assert_eq!(e[0].ca.as_deref(), Some(std::path::Path::new("/etc/hostname")));
        assert!(e[0].mirror && !e[2].mirror);
        let e = c.endpoints("quay.io");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].base_url, "http://127.0.0.1:5001");
        assert_eq!(c.endpoints("plain.example:80")[0].base_url, "http://plain.example:80");
    }

    #[test]
    fn bad_configs_are_refused() {
        for bad in [
            "[registries.\"a\"]\nmirrors = [\"ftp://x\"]",
            "[registries.\"a\"]\nskip_upstream = true",
            "[registries.\"a\"]\nca = \"/no/such/ca.pem\"",
            "[registries.\"a b\"]",
        ] {
            let c: FileConfig = toml::from_str(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<FileConfig>("[registries.\"a\"]\nmirorrs = []").is_err());
    }
}
