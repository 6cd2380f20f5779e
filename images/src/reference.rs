//! Image references normalized as kubelet and containerd do:
//! `busybox` is `docker.io/library/busybox:latest`.
use crate::error::{ImageError, Result};

/// A parsed, normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port).
    pub domain: String,
    /// Repository path inside the registry.
    pub path: String,
    /// Tag, when given (or `latest` when neither tag nor digest is).
    pub tag: Option<String>,
    /// Digest (`sha256:...`), when given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalizes a reference.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| ImageError::Invalid(format!("invalid image reference {s:?}: {why}"));
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("empty or contains spaces or control characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d.strip_prefix("sha256:").ok_or_else(|| bad("only sha256 digests are supported"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                    return Err(bad("digest must be sha256: and 64 lowercase hex characters"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            if t.is_empty() || t.len() > 128 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(bad("tag must be 1-128 of [A-Za-z0-9._-]"));
            }
        }
        if name.is_empty() {
            return Err(bad("no repository name"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
        for comp in path.split('/') {
            if comp.is_empty()
                || !comp.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            {
                return Err(bad("repository path components must be lowercase [a-z0-9._-]"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { domain, path, tag, digest })
    }

    /// `domain/path`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `domain/path:tag`, when there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.repository()))
    }

    /// `domain/path@digest`, when there is a digest.
    pub fn digested(&self) -> Option<String> {
        self.digest.as_ref().map(|d| format!("{}@{d}", self.repository()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_kubelet() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.tagged().unwrap(), "docker.io/library/busybox:latest");
        let r = Reference::parse("quay.io/a/b:v1").unwrap();
        assert_eq!(r.tagged().unwrap(), "quay.io/a/b:v1");
        let r = Reference::parse("localhost:5000/x").unwrap();
        assert_eq!(r.tagged().unwrap(), "localhost:5000/x:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("user/app@{d}")).unwrap();
        assert_eq!(r.digested().unwrap(), format!("docker.io/user/app@{d}"));
        assert_eq!(r.tag, None);
        assert!(Reference::parse("Bad/Name").is_err());
        assert!(Reference::parse("a:").is_err());
        assert!(Reference::parse("a@sha256:abc").is_err());
    }
}
