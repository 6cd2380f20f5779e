//! A fault-injecting OCI runtime and CNI plugin for the tests: shell
//! wrappers that run the real runc and the real bridge plugin, except at the
//! one call named in their control file, which they fail (with a message,
//! as the real tool would give it) or hang at (until they are killed).
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a wrapper does at the chosen call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Exits 1 with `berth-fault: injected failure at ...`.
    Fail,
    /// Never returns (it becomes `sleep`, so killing it by pid ends it).
    Hang,
}

impl How {
    fn word(self) -> &'static str {
        match self {
            How::Fail => "fail",
            How::Hang => "hang",
        }
    }
}

/// The wrappers and their control file, in a temp folder.
pub struct Faults {
    dir: tempfile::TempDir,
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("writing a wrapper");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod a wrapper");
}

fn real(name: &str) -> Option<PathBuf> {
    let out = std::process::Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().ok()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!p.is_empty()).then(|| PathBuf::from(p))
}

/// The folder holding Debian's (or the upstream) CNI plugins.
pub fn cni_plugins() -> Option<PathBuf> {
    ["/usr/lib/cni", "/opt/cni/bin"].into_iter().map(PathBuf::from).find(|d| d.join("bridge").exists())
}

impl Faults {
    /// Writes `faulty-runc` (around runc on PATH) and `faulty-bridge`
    /// (around the bridge plugin, when CNI plugins are installed).
    pub fn new() -> Faults {
        let dir = tempfile::Builder::new().prefix("faults").tempdir_in("/tmp").expect("temp dir");
        let ctl = dir.path().join("fault");
        let runc = real("runc").expect("runc on PATH");
        // The subcommand is matched as a whole argument: container ids are
        // hex and paths have slashes, so neither can be taken for it.
        script(
            &dir.path().join("faulty-runc"),
            &format!(
                r#"ctl={ctl}
if [ -f "$ctl" ]; then
  read at how < "$ctl"
  for a in "$@"; do
    [ "$a" = "$at" ] || continue
    [ "$how" = hang ] && exec sleep 3600
    msg="berth-fault: injected failure at runc $at"
    log=; prev=
    for b in "$@"; do [ "$prev" = --log ] && log=$b; prev=$b; done
    # A real runc writes its errors to --log when it is given one.
    if [ -n "$log" ]; then printf '{{"level":"error","msg":"%s"}}\n' "$msg" >> "$log"; else echo "$msg" >&2; fi
    exit 1
  done
fi
exec {runc} "$@""#,
                ctl = ctl.display(),
                runc = runc.display()
            ),
        );
        if let Some(plugins) = cni_plugins() {
            script(
                &dir.path().join("faulty-bridge"),
                &format!(
                    r#"ctl={ctl}
if [ -f "$ctl" ]; then
  read at how < "$ctl"
  if [ "$CNI_COMMAND" = "$at" ]; then
    [ "$how" = hang ] && exec sleep 3600
    printf '{{"cniVersion":"1.0.0","code":11,"msg":"berth-fault: injected failure at CNI %s"}}\n' "$at"
    exit 1
  fi
fi
exec {bridge}"#,
                    ctl = ctl.display(),
                    bridge = plugins.join("bridge").display()
                ),
            );
        }
        Faults { dir }
    }

    /// The wrapping OCI runtime (give it to berthd's `--oci-runtime`).
    pub fn runtime(&self) -> PathBuf {
        self.dir.path().join("faulty-runc")
    }

    /// The folder with `faulty-bridge` (first in berthd's `--cni-bin-dir`).
    pub fn bin_dir(&self) -> &Path {
        self.dir.path()
    }

    /// From now on, the call `at` (a runc subcommand, or ADD/DEL) does `how`.
    pub fn set(&self, at: &str, how: How) {
        std::fs::write(self.dir.path().join("fault"), format!("{at} {}\n", how.word())).expect("writing the fault");
    }

    /// Every call goes to the real tool again.
    pub fn clear(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("fault"));
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults::new()
    }
}
