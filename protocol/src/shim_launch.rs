//! How berthd starts a pod's shim, the contract between the two binaries:
//! the launch arguments (berthd writes them, berth-shim reads them), the
//! line the launcher prints once the shim serves, and the names of the
//! namespace pins in the sandbox folder (the shim makes them, berthd's specs
//! and CNI calls name them).
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The folder of namespace pins, inside the sandbox folder.
pub const NS_DIR: &str = "ns";
/// Pin of the pod's network namespace.
pub const NS_NET: &str = "net";
/// Pin of the pod's ipc namespace.
pub const NS_IPC: &str = "ipc";
/// Pin of the pod's uts namespace.
pub const NS_UTS: &str = "uts";
/// Pin of the pod's pid namespace (pid POD only).
pub const NS_PID: &str = "pid";
/// Pin of the pod's user namespace (user namespace POD only), which owns
/// the pod's other namespaces.
pub const NS_USER: &str = "user";

/// The one id range a pod's user namespace maps: container ids
/// `0..length` are host ids `host_id..host_id + length` (as kubelet
/// allocates them, KEP-127).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// The host id of container id 0.
    pub host_id: u32,
    /// How many ids are mapped.
    pub length: u32,
}

impl IdRange {
    /// The line of `/proc/<pid>/uid_map` (or `gid_map`) for this range.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_id, self.length)
    }

    fn to_arg(self) -> String {
        format!("{}:{}", self.host_id, self.length)
    }

    fn parse(s: &str) -> Option<IdRange> {
        let (h, l) = s.split_once(':')?;
        let r = IdRange { host_id: h.parse().ok()?, length: l.parse().ok()? };
        (r.length > 0 && r.host_id.checked_add(r.length).is_some()).then_some(r)
    }
}

/// A pod's own user namespace: its uid and gid ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserNamespace {
    /// The uid range.
    pub uids: IdRange,
    /// The gid range.
    pub gids: IdRange,
}

/// Longest log line before the shim splits it, unless told otherwise.
pub const DEFAULT_MAX_LOG_LINE: usize = 16 * 1024;
/// Longest one OCI runtime call may take, unless told otherwise.
pub const DEFAULT_RUNTIME_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a shim is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimArgs {
    /// Sandbox id.
    pub id: String,
    /// Sandbox state folder.
    pub dir: PathBuf,
    /// OCI runtime binary.
    pub runtime: PathBuf,
    /// OCI runtime state folder.
    pub runtime_root: PathBuf,
    /// Hostname for a new uts namespace (None: host uts).
    pub hostname: Option<String>,
    /// Share the host network namespace.
    pub host_network: bool,
    /// Share the host ipc namespace.
    pub host_ipc: bool,
    /// Give the pod one pid namespace.
    pub pod_pid: bool,
    /// Give the pod a user namespace of its own, made first so that it
    /// owns the others (None: the node's).
    pub user: Option<UserNamespace>,
    /// runc's systemd cgroup driver.
    pub systemd_cgroup: bool,
    /// Longest log line before splitting.
    pub max_log_line: usize,
    /// Longest one OCI runtime call may take.
    pub runtime_timeout: Duration,
}

/// Launch arguments berth-shim cannot take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// A flag without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A value that does not parse.
    #[error("{flag}: {value:?} is not {want}")]
    BadValue {
        /// The flag.
        flag: String,
        /// What it was given.
        value: String,
        /// What it takes.
        want: &'static str,
    },
    /// A required flag is missing.
    #[error("{0} is required")]
    Required(&'static str),
    /// A flag berth-shim does not know.
    #[error("unknown argument {0}")]
    Unknown(String),
}

impl ShimArgs {
    /// The pins this shim makes, in `<dir>/ns/`.
    pub fn pins(&self) -> Vec<&'static str> {
        let mut pins = Vec::new();
        if self.user.is_some() {
            pins.push(NS_USER);
        }
        if !self.host_network {
            pins.push(NS_NET);
        }
        if !self.host_ipc {
            pins.push(NS_IPC);
        }
        // A hostname means a uts namespace of the pod's own.
        if self.hostname.is_some() {
            pins.push(NS_UTS);
        }
        if self.pod_pid {
            pins.push(NS_PID);
        }
        pins
    }

    /// The command line, without the program name.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--id".into(),
            self.id.clone().into(),
            "--dir".into(),
            self.dir.clone().into(),
            "--runtime".into(),
            self.runtime.clone().into(),
            "--runtime-root".into(),
            self.runtime_root.clone().into(),
            "--max-log-line".into(),
            self.max_log_line.to_string().into(),
            "--runtime-timeout-ms".into(),
            self.runtime_timeout.as_millis().max(1).to_string().into(),
        ];
        if let Some(h) = &self.hostname {
            a.push("--hostname".into());
            a.push(h.clone().into());
        }
        if let Some(u) = &self.user {
            a.extend(["--uid-map".into(), u.uids.to_arg().into(), "--gid-map".into(), u.gids.to_arg().into()]);
        }
        for (on, flag) in [
            (self.host_network, "--host-network"),
            (self.host_ipc, "--host-ipc"),
            (self.pod_pid, "--pod-pid"),
            (self.systemd_cgroup, "--systemd-cgroup"),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        a
    }

    /// Reads a command line (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<ShimArgs, ArgsError> {
        let mut id = None;
        let mut dir = None;
        let mut s = ShimArgs {
            id: String::new(),
            dir: PathBuf::new(),
            runtime: PathBuf::from("runc"),
            runtime_root: PathBuf::from("/run/berth/runc"),
            hostname: None,
            host_network: false,
            host_ipc: false,
            pod_pid: false,
            user: None,
            systemd_cgroup: false,
            max_log_line: DEFAULT_MAX_LOG_LINE,
            runtime_timeout: DEFAULT_RUNTIME_TIMEOUT,
        };
        let (mut uids, mut gids) = (None, None);
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().ok_or_else(|| ArgsError::MissingValue(a.clone()));
            let bad = |value: String, want| ArgsError::BadValue { flag: a.clone(), value, want };
            match a.as_str() {
                "--id" => id = Some(val()?),
                "--dir" => dir = Some(PathBuf::from(val()?)),
                "--runtime" => s.runtime = PathBuf::from(val()?),
                "--runtime-root" => s.runtime_root = PathBuf::from(val()?),
                "--hostname" => s.hostname = Some(val()?),
                "--host-network" => s.host_network = true,
                "--host-ipc" => s.host_ipc = true,
                "--pod-pid" => s.pod_pid = true,
                "--systemd-cgroup" => s.systemd_cgroup = true,
                "--uid-map" | "--gid-map" => {
                    let v = val()?;
                    let r = IdRange::parse(&v).ok_or_else(|| bad(v, "HOST_ID:LENGTH (a length above 0)"))?;
                    *if a == "--uid-map" { &mut uids } else { &mut gids } = Some(r);
                }
                "--runtime-timeout-ms" => {
                    let v = val()?;
                    match v.parse::<u64>() {
                        Ok(ms) if ms > 0 => s.runtime_timeout = Duration::from_millis(ms),
                        _ => return Err(bad(v, "a number of milliseconds above 0")),
                    }
                }
                "--max-log-line" => {
                    let v = val()?;
                    s.max_log_line = v.parse().map_err(|_| bad(v, "a number of bytes"))?;
                }
                other => return Err(ArgsError::Unknown(other.to_string())),
            }
        }
        s.user = match (uids, gids) {
            (Some(uids), Some(gids)) => Some(UserNamespace { uids, gids }),
            (None, None) => None,
            (Some(_), None) => return Err(ArgsError::Required("--gid-map (with --uid-map)")),
            (None, Some(_)) => return Err(ArgsError::Required("--uid-map (with --gid-map)")),
        };
        s.id = id.ok_or(ArgsError::Required("--id"))?;
        s.dir = dir.ok_or(ArgsError::Required("--dir"))?;
        Ok(s)
    }
}

/// What the launcher prints on stdout once the shim serves: its pid.
pub fn ready_line(pid: u32) -> String {
    format!("{pid}\n")
}

/// The shim's pid from the launcher's stdout.
pub fn parse_ready(out: &str) -> Option<u32> {
    out.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_read_back_as_written() {
        let a = ShimArgs {
            id: "abc".into(),
            dir: "/run/berth/sandboxes/abc".into(),
            runtime: "/usr/bin/runc".into(),
            runtime_root: "/run/berth/runc".into(),
            hostname: Some("pod-a".into()),
            host_network: false,
            host_ipc: true,
            pod_pid: true,
            user: Some(UserNamespace {
                uids: IdRange { host_id: 65536, length: 65536 },
                gids: IdRange { host_id: 131072, length: 1000 },
            }),
            systemd_cgroup: true,
            max_log_line: 1000,
            runtime_timeout: Duration::from_millis(2500),
        };
        let argv: Vec<String> = a.to_args().into_iter().map(|s| s.to_string_lossy().to_string()).collect();
        assert_eq!(ShimArgs::parse(argv).unwrap(), a);
        assert_eq!(a.pins(), vec![NS_USER, NS_NET, NS_UTS, NS_PID]);
        assert_eq!(parse_ready(&ready_line(42)), Some(42));
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let p = |a: &[&str]| ShimArgs::parse(a.iter().map(|s| s.to_string()));
        assert_eq!(p(&["--dir", "/d"]).unwrap_err(), ArgsError::Required("--id"));
        assert_eq!(p(&["--id"]).unwrap_err(), ArgsError::MissingValue("--id".into()));
        assert!(matches!(
            p(&["--id", "a", "--dir", "/d", "--runtime-timeout-ms", "0"]),
            Err(ArgsError::BadValue { .. })
        ));
        assert_eq!(p(&["--nope"]).unwrap_err(), ArgsError::Unknown("--nope".into()));
        for bad in ["0:0", "1", "x:1", "4294967295:2"] {
            assert!(
                matches!(p(&["--id", "a", "--dir", "/d", "--uid-map", bad]), Err(ArgsError::BadValue { .. })),
                "{bad}"
            );
        }
        assert!(matches!(p(&["--id", "a", "--dir", "/d", "--uid-map", "1:1"]), Err(ArgsError::Required(_))));
    }
}
