//! berthd's settings: one TOML config file (`/etc/berth/config.toml`, with
//! a `version` key), drop-ins beside it (`config.d/*.toml`, merged in name
//! order, tables key by key), then command-line flags over both. Every key
//! has a default, so an empty file is a full config; an unknown key, a value
//! of the wrong type or a bad value stops berthd with the file, the key and
//! the reason. `berthd config default` prints [`Settings::default`],
//! `berthd config dump` the effective settings.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use berth_core::error::{Error, Result};
use berth_images::registry_config::{FileConfig, RegistryHost};

/// The config format this berthd reads.
pub const VERSION: u32 = 1;
/// Where berthd looks for its config file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/berth/config.toml";

/// Every setting of berthd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Config format version (1).
    pub version: u32,
    /// Persistent state: metadata, images, writable layers.
    pub root: PathBuf,
    /// Runtime state: shim sockets, bundles, pinned namespaces.
    pub state: PathBuf,
    /// The CRI socket (created 0660).
    pub listen: PathBuf,
    /// error, warn, info, debug or trace (reloaded on SIGHUP).
    pub log_level: String,
    /// How container cgroups are named and made: "cgroupfs" (paths) or
    /// "systemd" (slices and scopes through runc's systemd driver); must
    /// match kubelet's `cgroupDriver`.
    pub cgroup_driver: CgroupDriver,
    /// The OCI runtime and the shim.
    pub runtime: RuntimeSettings,
    /// Container log files.
    pub logs: LogSettings,
    /// Pod networking.
    pub cni: CniSettings,
    /// The streaming server (exec, attach, port-forward).
    pub stream: StreamSettings,
    /// Prometheus metrics.
    pub metrics: MetricsSettings,
    /// NRI plugins.
    pub nri: NriSettings,
    /// Settings by registry host (`host[:port]`, `docker.io`, or `*`);
    /// reloaded on SIGHUP.
    pub registries: BTreeMap<String, RegistryHost>,
}

/// cgroup driver names, as kubelet spells them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// cgroupfs paths (`/kubepods/burstable/pod<uid>`).
    #[default]
    Cgroupfs,
    /// systemd slices (`kubepods-burstable-pod<uid>.slice`).
    Systemd,
}

impl CgroupDriver {
    /// The name kubelet uses.
    pub fn name(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }
}

/// `[runtime]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// OCI runtime binary (a name on PATH or a path).
    pub oci_runtime: String,
    /// berth-shim binary; empty: next to berthd, else on PATH.
    pub shim: String,
    /// Longest one OCI runtime call (create, start, kill, delete, exec,
    /// update) may take before the shim kills it and fails the CRI call.
    pub oci_timeout: String,
}

/// `[logs]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Longest container log line (bytes) before it is split into P records.
    pub max_line_size: usize,
    /// Rotate a running container's log at this size (`10Mi`); empty leaves
    /// rotation to kubelet.
    pub max_size: String,
    /// Files kept per container log when berthd rotates (the current one included).
    pub max_files: usize,
    /// How often berthd checks log sizes.
    pub check_interval: String,
}

/// `[cni]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniSettings {
    /// Network configurations (the first `*.conflist`/`*.conf` is used).
    pub conf_dir: PathBuf,
    /// Folders with plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
    /// Longest one plugin run (ADD, DEL) may take before it is killed.
    pub plugin_timeout: String,
}

/// `[stream]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// Address of the streaming server; port 0 picks a free one.
    pub address: String,
    /// PEM certificate chain to serve TLS with (with `tls_key`); empty: plain.
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// How long an Exec/Attach/PortForward URL stays usable (once).
    pub token_ttl: String,
    /// A stream with no traffic either way for this long is closed (and
    /// its exec ended), as kubelet's streaming-connection-idle-timeout.
    pub idle_timeout: String,
    /// Connections served at once; more are closed as they come.
    pub max_connections: usize,
}

/// `[metrics]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct MetricsSettings {
    /// Address of the Prometheus endpoint (`127.0.0.1:9338`); empty: off.
    pub address: String,
}

/// `[nri]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NriSettings {
    /// The socket NRI plugins connect to (root's alone); empty: NRI off.
    pub socket: String,
    /// How long a connected plugin has to register.
    pub registration_timeout: String,
    /// How long a plugin has to answer one event; one that does not is
    /// closed and dropped.
    pub request_timeout: String,
}

impl Default for NriSettings {
    fn default() -> Self {
        // NRI's own defaults.
        NriSettings {
            socket: "/var/run/nri/nri.sock".into(),
            registration_timeout: "5s".into(),
            request_timeout: "2s".into(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            version: VERSION,
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            listen: "/run/berth/berth.sock".into(),
            log_level: "info".into(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            runtime: RuntimeSettings::default(),
            logs: LogSettings::default(),
            cni: CniSettings::default(),
            stream: StreamSettings::default(),
            metrics: MetricsSettings::default(),
            nri: NriSettings::default(),
            registries: BTreeMap::new(),
        }
    }
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings { oci_runtime: "runc".into(), shim: String::new(), oci_timeout: "30s".into() }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { max_line_size: 16 * 1024, max_size: String::new(), max_files: 5, check_interval: "10s".into() }
    }
}

impl Default for CniSettings {
    fn default() -> Self {
        CniSettings {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            plugin_timeout: "60s".into(),
        }
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            address: "127.0.0.1:0".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            token_ttl: "1m".into(),
            idle_timeout: "4h".into(),
            max_connections: berth_streaming::server::MAX_CONNECTIONS,
        }
    }
}

/// Largest config file read (a config is a few KiB).
const MAX_FILE: u64 = 1 << 20;

/// The files a config is made of, in the order they apply: the main file
/// (when it exists; it must when `required`), then `config.d/*.toml` beside it.
pub fn sources(main: &Path, required: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    match std::fs::metadata(main) {
        Ok(_) => out.push(main.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
        Err(e) => return Err(Error::invalid(format!("config {}: {e}", main.display()))),
    }
    let dropins = main.parent().unwrap_or(Path::new("/")).join("config.d");
    if let Ok(entries) = std::fs::read_dir(&dropins) {
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

impl Settings {
    /// The settings of `files` merged in order over the defaults.
    pub fn load(files: &[PathBuf]) -> Result<Settings> {
        let mut merged = toml::Table::new();
        for path in files {
            let text = read_bounded(path)?;
            let named = |e: &dyn std::fmt::Display| Error::invalid(format!("config {}: {e}", path.display()));
            // Alone first, so an error names the file it is in.
            let alone: Settings = toml::from_str(&text).map_err(|e| named(&e))?;
            alone.validate().map_err(|e| named(&e.message))?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| named(&e))?;
            merge(&mut merged, table);
        }
        let settings: Settings =
            toml::Value::Table(merged).try_into().map_err(|e| Error::invalid(format!("config: {e}")))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value that has more to it than its type.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::invalid(format!("{key}: {why}")));
        if self.version != VERSION {
            return bad("version", format!("{} is not a config version this berthd reads ({VERSION})", self.version));
        }
        if crate::logging::parse_level(&self.log_level).is_none() {
            return bad("log_level", format!("{:?} is not one of error, warn, info, debug, trace", self.log_level));
        }
        if self.runtime.oci_runtime.is_empty() {
            return bad("runtime.oci_runtime", "must name a binary".into());
        }
        if self.logs.max_line_size < 64 {
            return bad("logs.max_line_size", format!("{} is too small (at least 64 bytes)", self.logs.max_line_size));
        }
        if !self.logs.max_size.is_empty() && crate::log_rotation::parse_size(&self.logs.max_size).is_none() {
            return bad("logs.max_size", format!("{:?}: give bytes or a size like 10Mi", self.logs.max_size));
        }
        if !self.logs.max_size.is_empty() && self.logs.max_files < 2 {
            return bad("logs.max_files", "must be at least 2".into());
        }
        for (key, value) in [
            ("logs.check_interval", &self.logs.check_interval),
            ("runtime.oci_timeout", &self.runtime.oci_timeout),
            ("cni.plugin_timeout", &self.cni.plugin_timeout),
            ("stream.token_ttl", &self.stream.token_ttl),
            ("stream.idle_timeout", &self.stream.idle_timeout),
            ("nri.registration_timeout", &self.nri.registration_timeout),
            ("nri.request_timeout", &self.nri.request_timeout),
        ] {
            if duration(value).is_none() {
                return bad(key, format!("{value:?}: give a duration like 10s or 1m"));
            }
        }
        if self.stream.address.parse::<std::net::SocketAddr>().is_err() {
            return bad("stream.address", format!("{:?} is not an address like 127.0.0.1:0", self.stream.address));
        }
        if self.stream.max_connections == 0 {
            return bad("stream.max_connections", "must be at least 1".into());
        }
        if self.stream.tls_cert.is_empty() != self.stream.tls_key.is_empty() {
            return bad("stream.tls_cert", "tls_cert and tls_key go together".into());
        }
        if !self.nri.socket.is_empty() && !Path::new(&self.nri.socket).is_absolute() {
            return bad("nri.socket", format!("{:?} must be an absolute path (or empty: NRI off)", self.nri.socket));
        }
        if !self.metrics.address.is_empty() && self.metrics.address.parse::<std::net::SocketAddr>().is_err() {
            return bad("metrics.address", format!("{:?} is not an address like 127.0.0.1:9338", self.metrics.address));
        }
        Ok(self.registry_config().validate().map_err(|e| e.context("registries"))?)
    }

    /// The registry part, as pulls use it.
    pub fn registry_config(&self) -> FileConfig {
        FileConfig { registries: self.registries.clone() }
    }

    /// The settings as a TOML document.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// A duration like `10s`, `500ms`, `1m` (non-zero).
pub fn duration(s: &str) -> Option<Duration> {
    berth_core::duration::parse_duration(s).filter(|d| !d.is_zero())
}

fn read_bounded(path: &Path) -> Result<String> {
    use std::io::Read;
    let named = |e: &dyn std::fmt::Display| Error::invalid(format!("config {}: {e}", path.display()));
    let f = std::fs::File::open(path).map_err(|e| named(&e))?;
    let mut text = String::new();
    f.take(MAX_FILE + 1).read_to_string(&mut text).map_err(|e| named(&e))?;
    if text.len() as u64 > MAX_FILE {
        return Err(named(&format!("larger than {MAX_FILE} bytes")));
    }
    Ok(text)
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_default_config_round_trips_and_is_valid() {
        let d = Settings::default();
        d.validate().unwrap();
        let text = d.to_toml();
        assert!(text.contains("version = 1"), "{text}");
        assert!(text.contains("[logs]"), "{text}");
        let back: Settings = toml::from_str(&text).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn drop_ins_merge_in_name_order_over_the_main_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "version = 1\nlog_level = \"warn\"\n[logs]\nmax_files = 7\n[registries.\"a.example\"]\ninsecure = true\n",
        );
        write(dir.path(), "config.d/20-b.toml", "log_level = \"debug\"\n");
        write(
            dir.path(),
            "config.d/10-a.toml",
            "log_level = \"error\"\n[logs]\nmax_line_size = 1000\n[registries.\"b.example\"]\ninsecure = true\n",
        );
        write(dir.path(), "config.d/notes.txt", "not toml at all [");
        let files = sources(&main, true).unwrap();
        assert_eq!(files.len(), 3);
        let s = Settings::load(&files).unwrap();
        assert_eq!(s.log_level, "debug");
        assert_eq!((s.logs.max_files, s.logs.max_line_size), (7, 1000));
        assert_eq!(s.registries.keys().collect::<Vec<_>>(), ["a.example", "b.example"]);
        assert_eq!(s.cni, CniSettings::default());
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.toml", "version = 1\n");
        let cases = [
            ("[logs]\nmax_filez = 3\n", "max_filez"),
            ("log_level = \"loud\"\n", "log_level"),
            ("[logs]\nmax_files = \"five\"\n", "max_files"),
            ("[stream]\ntoken_ttl = \"soon\"\n", "stream.token_ttl"),
            ("cgroup_driver = \"openrc\"\n", "cgroup_driver"),
            ("version = 2\n", "version"),
            ("[registries.\"x.example\"]\nca = \"/nonexistent.pem\"\n", "registries"),
        ];
        for (text, key) in cases {
            let bad = write(dir.path(), "config.d/50-bad.toml", text);
            let e = Settings::load(&sources(&main, true).unwrap()).unwrap_err();
            assert!(e.message.contains(&bad.display().to_string()), "{text}: {}", e.message);
            assert!(e.message.contains(key), "{text}: {}", e.message);
        }
        std::fs::remove_file(dir.path().join("config.d/50-bad.toml")).unwrap();
        assert!(sources(&dir.path().join("missing.toml"), true).is_err());
        assert!(sources(&dir.path().join("missing.toml"), false).unwrap().is_empty());
    }
}
