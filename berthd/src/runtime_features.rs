//! What the OCI runtime and the kernel can do, probed once when berthd
//! starts: the runtime's `features` JSON (runc ≥ 1.1) and the kernel
//! version. StatusResponse advertises the result per runtime handler, so
//! kubelet asks only for what works.
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The runtime handlers Berth answers to: the default ("") and "runc".
pub const HANDLERS: &[&str] = &["", "runc"];

/// How long `runc features` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `features` answer read (runc's is about 3 KiB).
const MAX_FEATURES: u64 = 1 << 20;

/// Features of one runtime handler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Recursive read-only mounts: the runtime knows the `rro` option and
    /// the kernel has mount_setattr (5.12).
    pub recursive_read_only_mounts: bool,
    /// Pods with a user namespace of their own (KEP-127): berthd makes
    /// the idmapped mounts itself, so it needs only the kernel: user
    /// namespaces and overlayfs on idmapped layers (5.19).
    pub user_namespaces: bool,
}

impl Features {
    /// Probes `runtime` (a runc-compatible binary) and the running kernel.
    pub fn probe(runtime: &Path) -> Features {
        let options = runtime_mount_options(runtime);
        let release = uname_release();
        let rro = options.iter().any(|o| o == "rro") && kernel_at_least(&release, (5, 12));
        let user_namespaces = kernel_at_least(&release, (5, 19)) && Path::new("/proc/self/ns/user").exists();
        Features { recursive_read_only_mounts: rro, user_namespaces }
    }
}

/// The `mountOptions` of `RUNTIME features`; empty when the runtime has no
/// such command (runc < 1.1, other runtimes), fails or takes too long.
fn runtime_mount_options(runtime: &Path) -> Vec<String> {
    let Ok(mut child) =
        Command::new(runtime).arg("features").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()
    else {
        return Vec::new();
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        // The pipe ends when the runtime exits; reading is bounded by size,
        // and a runtime that hangs is killed below, which ends the read.
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.take(MAX_FEATURES).read_to_end(&mut buf);
            buf
        });
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Vec::new();
                }
            }
        }
        out = reader.join().unwrap_or_default();
    }
    let _ = child.wait();
    serde_json::from_slice::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| {
            v.get("mountOptions")
                .and_then(|m| m.as_array())
                .map(|a| a.iter().filter_map(|o| o.as_str().map(str::to_string)).collect())
        })
        .unwrap_or_default()
}

fn uname_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().to_string()).unwrap_or_default()
}

/// Whether a kernel release (`6.1.0-18-amd64`) is at least `want`.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let major = parts.next().and_then(|s| s.parse::<u32>().ok());
    let minor = parts.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    major.is_some_and(|m| (m, minor) >= want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare() {
        assert!(kernel_at_least("6.1.0-18-amd64", (5, 12)));
        assert!(kernel_at_least("5.12.0", (5, 12)));
        assert!(!kernel_at_least("5.10.209-1", (5, 12)));
        assert!(!kernel_at_least("4.19", (5, 12)));
        assert!(!kernel_at_least("", (5, 12)));
    }

    #[test]
    fn a_runtime_without_features_has_none() {
        // User namespaces are the kernel's (berthd makes the idmapped mounts).
        for runtime in ["/bin/false", "/nonexistent/runc"] {
            assert!(!Features::probe(Path::new(runtime)).recursive_read_only_mounts, "{runtime}");
        }
    }
}
