//! The per-sandbox files bind-mounted into every container of the pod:
//! `hostname`, `hosts` and `resolv.conf`, written in the sandbox folder.
use std::path::Path;

use protocol::cri;

use berth_core::error::{Error, Result};

/// Writes `data` to `path` through a temp file and rename, so a reader (or a
/// crash) never sees half a file.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| Error::internal(format!("writing {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::internal(format!("renaming to {}: {e}", path.display())))
}

/// Checks a hostname (RFC 1123 labels, at most 64 bytes as the kernel allows).
pub fn check_hostname(h: &str) -> Result<()> {
    let ok = h.len() <= 64
        && h.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "hostname {h:?} is not a valid hostname (letters, digits, '-', '.'; at most 64 bytes)"
        )))
    }
}

/// resolv.conf from the pod's DNS config, or the host's when it gives none.
pub fn resolv_conf(dns: Option<&cri::DnsConfig>) -> Result<String> {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for n in &d.servers {
                if n.parse::<std::net::IpAddr>().is_err() {
                    return Err(Error::invalid(format!("DNS server {n:?} is not an IP address")));
                }
                s.push_str(&format!("nameserver {n}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            for part in d.searches.iter().chain(d.options.iter()) {
                if part.contains('\n') {
                    return Err(Error::invalid("DNS searches and options must not contain newlines"));
                }
            }
            Ok(s)
        }
        _ => Ok(std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
    }
}

/// Writes the three files into `dir`.
pub fn write(dir: &Path, hostname: &str, host_network: bool, dns: Option<&cri::DnsConfig>) -> Result<()> {
    let hosts = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
        )
    };
    write_atomic(&dir.join("hostname"), format!("{hostname}\n").as_bytes())?;
    write_atomic(&dir.join("hosts"), hosts.as_bytes())?;
    write_atomic(&dir.join("resolv.conf"), resolv_conf(dns)?.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_from_config() {
        let d = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["svc.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(resolv_conf(Some(&d)).unwrap(), "search svc.local\nnameserver 10.0.0.10\noptions ndots:5\n");
        let bad = cri::DnsConfig { servers: vec!["x; rm".into()], ..Default::default() };
        assert!(resolv_conf(Some(&bad)).is_err());
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("web-0.example").is_ok());
        assert!(check_hostname("a/b").is_err());
        assert!(check_hostname(&"a".repeat(65)).is_err());
    }
}
