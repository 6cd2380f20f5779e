//! Builds a container's OCI runtime spec (config.json) from the CRI container
//! and sandbox configs, the image config and the sandbox's pinned namespaces.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use protocol::cri;

use crate::users;
use berth_core::error::{Error, Result};
use protocol::shim_launch::{NS_DIR, NS_IPC, NS_NET, NS_PID, NS_USER, NS_UTS};

/// What the sandbox provides to its containers.
#[derive(Clone, Debug)]
pub struct SandboxView {
    /// The sandbox's state folder (resolv.conf, hostname, hosts, ns/).
    pub dir: PathBuf,
    /// Namespaces pinned in `dir/ns` (`net`, `ipc`, `uts`, `pid`).
    pub pinned: Vec<String>,
    /// Hostname of the pod.
    pub hostname: String,
    /// cgroup parent of the pod: a path (cgroupfs) or a slice (systemd).
    pub cgroup_parent: String,
    /// How `cgroup_parent` is spelled and the container's cgroup named.
    pub cgroup_driver: crate::settings::CgroupDriver,
    /// Namespaced sysctls of the pod.
    pub sysctls: std::collections::HashMap<String, String>,
    /// The pod's own user namespace, which its containers join.
    pub user: Option<protocol::shim_launch::UserNamespace>,
    /// The pod's namespace options, for containers that give none.
    pub namespace_options: cri::NamespaceOption,
}

/// Checks that every sysctl belongs to a namespace the pod has of its own
/// (kernel.shm*/msg*/sem and fs.mqueue.* need its ipc namespace, net.* its
/// network namespace); others would change the host.
pub fn check_sysctls(
    sysctls: &std::collections::HashMap<String, String>,
    host_network: bool,
    host_ipc: bool,
) -> Result<()> {
    for (k, v) in sysctls {
        let ipc = k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k == "kernel.sem"
            || k.starts_with("fs.mqueue.");
        let net = k.starts_with("net.");
        let ok = (ipc && !host_ipc) || (net && !host_network);
        if !ok {
            return Err(Error::invalid(format!(
                "sysctl {k}={v} is not namespaced for this pod (allowed: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* without host IPC; net.* without host network)"
            )));
        }
        if v.contains('\n') || k.contains('/') || k.contains("..") {
            return Err(Error::invalid(format!("sysctl {k:?} or its value is malformed")));
        }
    }
    Ok(())
}

/// The image config fields a container inherits.
#[derive(Clone, Debug, Default)]
pub struct ImageDefaults {
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Cmd.
    pub cmd: Vec<String>,
    /// Env, `KEY=value`.
    pub env: Vec<String>,
    /// Working dir.
    pub working_dir: String,
    /// User (`uid`, `uid:gid`, `name`, `name:group`).
    pub user: String,
}

impl ImageDefaults {
    /// Reads the fields from an OCI image config JSON.
    pub fn from_config(config: &serde_json::Value) -> Self {
        let c = &config["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        ImageDefaults {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
            user: c["User"].as_str().unwrap_or("").to_string(),
        }
    }
}

/// Host devices the container config asks for: device nodes to create and
/// the cgroup rules that allow them.
fn devices(
    wanted: &[cri::Device],
) -> Result<(Vec<oci_spec::runtime::LinuxDevice>, Vec<oci_spec::runtime::LinuxDeviceCgroup>)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (mut nodes, mut rules) = (Vec::new(), Vec::new());
    for d in wanted {
        let meta =
            std::fs::metadata(&d.host_path).map_err(|e| Error::invalid(format!("device {}: {e}", d.host_path)))?;
        let ft = meta.file_type();
        let typ = if ft.is_char_device() {
            oci_spec::runtime::LinuxDeviceType::C
        } else if ft.is_block_device() {
            oci_spec::runtime::LinuxDeviceType::B
        } else {
            return Err(Error::invalid(format!("{} is not a device", d.host_path)));
        };
        let perms = if d.permissions.is_empty() { "rwm".to_string() } else { d.permissions.clone() };
        if !perms.chars().all(|c| "rwm".contains(c)) {
            return Err(Error::invalid(format!("device permissions {perms:?} must be made of r, w and m")));
        }
        let path = if d.container_path.is_empty() { d.host_path.clone() } else { d.container_path.clone() };
        if !path.starts_with('/') {
            return Err(Error::invalid(format!("device container_path {path:?} must be absolute")));
        }
        let id =
            |n: u64| i64::try_from(n).map_err(|_| Error::invalid(format!("device {} has number {n}", d.host_path)));
        let (major, minor) = (id(nix::sys::stat::major(meta.rdev()))?, id(nix::sys::stat::minor(meta.rdev()))?);
        nodes.push(
            oci_spec::runtime::LinuxDeviceBuilder::default()
                .path(path)
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(oci)?,
        );
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(major)
                .minor(minor)
                .access(perms)
                .build()
                .map_err(oci)?,
        );
    }
    Ok((nodes, rules))
}

/// CPU and memory limits of a container as OCI resources (at create and
/// on UpdateContainerResources).
pub fn resources(res: &cri::LinuxContainerResources) -> Result<oci_spec::runtime::LinuxResources> {
    if res.cpu_shares < 0 || res.cpu_quota < -1 || res.cpu_period < 0 || res.memory_limit_in_bytes < 0 {
        return Err(Error::invalid("resource values must not be negative"));
    }
    let mut cpu = LinuxCpuBuilder::default();
    if res.cpu_shares > 0 {
        cpu = cpu.shares(res.cpu_shares.unsigned_abs());
    }
    if res.cpu_quota != 0 {
        cpu = cpu.quota(res.cpu_quota);
    }
    if res.cpu_period > 0 {
        cpu = cpu.period(res.cpu_period.unsigned_abs());
    }
    if !res.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(res.cpuset_cpus.clone());
    }
    if !res.cpuset_mems.is_empty() {
        cpu = cpu.mems(res.cpuset_mems.clone());
    }
    let mut memory = LinuxMemoryBuilder::default();
    if res.memory_limit_in_bytes > 0 {
        memory = memory.limit(res.memory_limit_in_bytes);
    }
    if res.memory_swap_limit_in_bytes > 0 {
        memory = memory.swap(res.memory_swap_limit_in_bytes);
    }
    // kubelet sends a limit for every page size the kernel has (0 for the
    // sizes a pod does not ask for). Without a hugetlb controller runc
    // refuses any of them: zero limits then go (nothing could enforce them,
    // and refusing would refuse every pod), a real limit is refused.
    let hugetlb = res.hugepage_limits.is_empty() || crate::cgroup_host::has_controller("hugetlb");
    let mut hugepages = Vec::new();
    for h in &res.hugepage_limits {
        if !valid_page_size(&h.page_size) {
            return Err(Error::invalid(format!(
                "hugepage limit page_size {:?} must be a size with a unit, like 2MB or 1GB",
                h.page_size
            )));
        }
        let limit = i64::try_from(h.limit)
            .map_err(|_| Error::invalid(format!("hugepage limit {} for {} is too large", h.limit, h.page_size)))?;
        if !hugetlb {
            if h.limit > 0 {
                return Err(Error::invalid(format!(
                    "hugepage limit {} bytes of {} pages cannot be enforced: this node's cgroup hierarchy has no hugetlb controller",
                    h.limit, h.page_size
                )));
            }
            continue;
        }
        hugepages.push(
            oci_spec::runtime::LinuxHugepageLimitBuilder::default()
                .page_size(h.page_size.clone())
                .limit(limit)
                .build()
                .map_err(oci)?,
        );
    }
    for (key, value) in &res.unified {
        check_unified(key, value)?;
    }
    let mut b = LinuxResourcesBuilder::default().cpu(cpu.build().map_err(oci)?).memory(memory.build().map_err(oci)?);
    if !hugepages.is_empty() {
        b = b.hugepage_limits(hugepages);
    }
    if !res.unified.is_empty() {
        if !crate::cgroup_host::unified_hierarchy() {
            return Err(Error::invalid(format!(
                "unified cgroup resources ({}) need cgroup v2, and this node's /sys/fs/cgroup is cgroup v1",
                res.unified.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        b = b.unified(res.unified.clone());
    }
    b.build().map_err(oci)
}

/// `2MB`, `64KB`, `1GB`: digits, then a unit (what kubelet and runc write).
fn valid_page_size(s: &str) -> bool {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && digits <= 12 && matches!(&s[digits..], "KB" | "MB" | "GB" | "TB" | "PB")
}

/// A unified key names one file of the container's own cgroup
/// (`memory.swap.max`): no path, no hidden file, no cgroup core file that
/// would move processes or change the tree.
fn check_unified(key: &str, value: &str) -> Result<()> {
    let bad = |why: &str| Error::invalid(format!("unified cgroup resource {key:?}: {why}"));
    let (controller, file) = key.split_once('.').ok_or_else(|| bad("must be <controller>.<file>"))?;
    if key.len() > 64
        || controller.is_empty()
        || file.is_empty()
        || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._".contains(&b))
    {
        return Err(bad("must be <controller>.<file>, lowercase letters, digits, '.' and '_'"));
    }
    if controller == "cgroup" {
        return Err(bad("cgroup core files are not resources"));
    }
    if value.len() > 4096 || value.contains(['\n', '\0']) {
        return Err(bad("the value must be one line of at most 4096 bytes"));
    }
    Ok(())
}

/// containerd's default capability set for unprivileged containers.
const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

fn oci(e: oci_spec::OciSpecError) -> Error {
    Error::internal(format!("building OCI spec: {e}"))
}

fn parse_cap(name: &str) -> Result<Capability> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("CAP_").unwrap_or(&n);
    Capability::from_str(n).map_err(|_| Error::invalid(format!("unknown capability {name:?}")))
}

/// The process's arguments under Kubernetes semantics: `command` replaces
/// the image entrypoint (and then the image cmd is not used); `args`
/// replaces the image cmd.
pub fn process_args(config: &cri::ContainerConfig, image: &ImageDefaults) -> Result<Vec<String>> {
    let args = if !config.command.is_empty() {
        config.command.iter().chain(config.args.iter()).cloned().collect::<Vec<_>>()
    } else {
        let tail = if config.args.is_empty() { &image.cmd } else { &config.args };
        image.entrypoint.iter().chain(tail.iter()).cloned().collect()
    };
    if args.is_empty() {
        return Err(Error::invalid("no command: neither the container config nor the image gives one"));
    }
    Ok(args)
}

fn merge_env(image: &[String], cri_envs: &[cri::KeyValue], hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    };
    set("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    set(format!("HOSTNAME={hostname}"));
    for e in image {
        set(e.clone());
    }
    for kv in cri_envs {
        set(format!("{}={}", kv.key, kv.value));
    }
    env
}

/// How the mount holding a path propagates (from a mountinfo text).
#[derive(Debug, PartialEq, Eq)]
struct SourceMount {
    mount_point: PathBuf,
    shared: bool,
    slave: bool,
}

/// The mount of `path` in `mountinfo`: the last mounted of the deepest
/// mount points containing it.
fn source_mount(mountinfo: &str, path: &Path) -> Option<SourceMount> {
    let mut best: Option<SourceMount> = None;
    for l in mountinfo.lines() {
        let Some((left, _)) = l.split_once(" - ") else { continue };
        let fields: Vec<&str> = left.split(' ').collect();
        let Some(mp) = fields.get(4).map(|m| PathBuf::from(crate::rootfs::unescape_mountinfo(m))) else { continue };
        if !path.starts_with(&mp)
            || best.as_ref().is_some_and(|b| b.mount_point.components().count() > mp.components().count())
        {
            continue;
        }
        let optional = fields.get(6..).unwrap_or_default();
        best = Some(SourceMount {
            shared: optional.iter().any(|f| f.starts_with("shared:")),
            slave: optional.iter().any(|f| f.starts_with("master:")),
            mount_point: mp,
        });
    }
    best
}

/// A bidirectional mount needs a shared host source, a host-to-container
/// one a shared or slave source: otherwise nothing would propagate and the
/// pod would silently not see (or not publish) mounts, so it is refused as
/// containerd refuses it.
fn check_source_propagation(container_path: &str, src: &Path, bidirectional: bool) -> Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::internal(format!("reading /proc/self/mountinfo: {e}")))?;
    let Some(m) = source_mount(&info, src) else { return Ok(()) };
    let (ok, want, mode) = if bidirectional {
        (m.shared, "shared", "bidirectional")
    } else {
        (m.shared || m.slave, "shared or a slave", "host-to-container")
    };
    if ok {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "mount at {container_path}: host_path {} is on mount {}, which is not {want}; {mode} propagation needs that (mount --make-rshared {})",
        src.display(),
        m.mount_point.display(),
        m.mount_point.display()
    )))
}

fn bind(dest: &str, source: &Path, readonly: bool, extra: &[&str]) -> Result<Mount> {
    let mut options = vec!["rbind".to_string(), if readonly { "ro" } else { "rw" }.to_string()];
    options.extend(extra.iter().map(|s| s.to_string()));
    MountBuilder::default().destination(dest).typ("bind").source(source).options(options).build().map_err(oci)
}

/// oom_score_adj the container can actually get: without CAP_SYS_RESOURCE a
/// process cannot go below its own value, so clamp to it (as containerd does).
fn clamp_oom_score_adj(want: i64) -> i32 {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    i32::try_from(want.clamp(own.max(-1000), 1000)).unwrap_or(0)
}

/// Builds the spec. `rootfs` is the mounted root filesystem (read for
/// /etc/passwd and /etc/group when resolving users).
pub fn build(
    id: &str,
    config: &cri::ContainerConfig,
    sandbox: &SandboxView,
    image: &ImageDefaults,
    rootfs: &Path,
) -> Result<Spec> {
    let linux_cfg = config.linux.clone().unwrap_or_default();
    let sc = linux_cfg.security_context.clone().unwrap_or_default();
    let res = linux_cfg.resources.clone().unwrap_or_default();

    // User: CRI run_as_user/run_as_username override the image's User.
    let user_spec = if let Some(u) = &sc.run_as_user {
        match &sc.run_as_group {
            Some(g) => format!("{}:{}", u.value, g.value),
            None => u.value.to_string(),
        }
    } else if !sc.run_as_username.is_empty() {
        match &sc.run_as_group {
            Some(g) => format!("{}:{}", sc.run_as_username, g.value),
            None => sc.run_as_username.clone(),
        }
    } else {
        if sc.run_as_group.is_some() {
            return Err(Error::invalid("run_as_group needs run_as_user or run_as_username"));
        }
        image.user.clone()
    };
    let ident = users::resolve(rootfs, &user_spec)?;
    // SupplementalGroupsPolicy (KEP-3619): Merge adds the image's
    // /etc/group memberships of the user, Strict only what was asked.
    let strict = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
    let mut gids: Vec<u32> = if strict { Vec::new() } else { ident.additional_gids.clone() };
    for g in &sc.supplemental_groups {
        let g = u32::try_from(*g).map_err(|_| Error::invalid(format!("supplemental group {g} is out of range")))?;
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    let user = UserBuilder::default().uid(ident.uid).gid(ident.gid).additional_gids(gids).build().map_err(oci)?;

    let mut caps: HashSet<Capability> =
        if sc.privileged { all_caps() } else { DEFAULT_CAPS.iter().map(|c| parse_cap(c)).collect::<Result<_>>()? };
    if let Some(c) = &sc.capabilities {
        for a in &c.add_capabilities {
            if a.eq_ignore_ascii_case("ALL") {
                caps = all_caps();
            } else {
                caps.insert(parse_cap(a)?);
            }
        }
        for d in &c.drop_capabilities {
            if d.eq_ignore_ascii_case("ALL") {
                caps.clear();
            } else {
                caps.remove(&parse_cap(d)?);
            }
        }
    }
    // Every set given: the builder's defaults would put AUDIT_WRITE, KILL and
    // NET_BIND_SERVICE in the inheritable and ambient sets, which a non-root
    // process then keeps and which make dropping ALL fail in runc.
    // containerd leaves both empty.
    let bounding = caps.clone();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(oci)?;

    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".to_string()
    };
    if !cwd.starts_with('/') {
        return Err(Error::invalid(format!("working_dir {cwd:?} must be absolute")));
    }
    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(user)
        .args(process_args(config, image)?)
        .env(merge_env(&image.env, &config.envs, &sandbox.hostname))
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(sc.no_new_privs)
        .rlimits(Vec::new())
        .build()
        .map_err(oci)?;
    if res.oom_score_adj != 0 {
        process.set_oom_score_adj(Some(clamp_oom_score_adj(res.oom_score_adj)));
    }

    let root = RootBuilder::default().path("rootfs").readonly(sc.readonly_rootfs).build().map_err(oci)?;

    // Mounts: the runtime defaults, the pod's files, then the CRI mounts.
    let mut mounts = oci_spec::runtime::get_default_mounts();
    let ro_sys = !sc.privileged;
    for m in mounts.iter_mut() {
        if m.destination() == Path::new("/sys") && !ro_sys {
            m.set_options(Some(vec!["nosuid".into(), "noexec".into(), "nodev".into(), "rw".into()]));
        }
    }
    let pod_files = [("/etc/hostname", "hostname"), ("/etc/hosts", "hosts"), ("/etc/resolv.conf", "resolv.conf")];
    let user_dests: HashSet<&str> = config.mounts.iter().map(|m| m.container_path.as_str()).collect();
    if sc.privileged {
        // A privileged container sees the host's devices.
        // The host's /dev replaces the tmpfs in place, so the container's own
        // /dev/shm and /dev/mqueue still mount on top of it.
        mounts.retain(|m| !m.destination().starts_with("/dev/pts"));
        if let Some(i) = mounts.iter().position(|m| m.destination() == Path::new("/dev")) {
            mounts[i] = bind("/dev", Path::new("/dev"), false, &[])?;
        }
    }
    for (dest, file) in pod_files {
        if !user_dests.contains(dest) {
            mounts.push(bind(dest, &sandbox.dir.join(file), sc.readonly_rootfs, &[])?);
        }
    }
    for m in &config.mounts {
        if !m.container_path.starts_with('/') {
            return Err(Error::invalid(format!("mount container_path {:?} must be absolute", m.container_path)));
        }
        if m.host_path.is_empty() {
            return Err(Error::invalid(format!("mount at {} has no host_path", m.container_path)));
        }
        let src = std::fs::canonicalize(&m.host_path)
            .map_err(|e| Error::invalid(format!("mount host_path {}: {e}", m.host_path)))?;
        let propagation = match m.propagation {
            1 => "rslave",
            2 => "rshared",
            _ => "rprivate",
        };
        if m.propagation == 1 || m.propagation == 2 {
            check_source_propagation(&m.container_path, &src, m.propagation == 2)?;
        }
        if m.recursive_read_only && (!m.readonly || m.propagation != 0) {
            return Err(Error::invalid(format!(
                "mount at {}: recursive_read_only needs readonly and private propagation",
                m.container_path
            )));
        }
        let mut extra = vec![propagation];
        if m.recursive_read_only {
            // runc's recursive read-only (mount_setattr, Linux 5.12+).
            extra.push("rro");
        }
        mounts.retain(|x| x.destination() != Path::new(&m.container_path));
        mounts.push(bind(&m.container_path, &src, m.readonly, &extra)?);
    }
    let (devices, device_rules) = devices(&config.devices)?;

    // Namespaces: join the sandbox's pinned ones by path.
    let ns_opts = sc.namespace_options.clone().unwrap_or_else(|| sandbox.namespace_options.clone());
    let mut namespaces = vec![LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Mount).build().map_err(oci)?];
    let ns_dir = sandbox.dir.join(NS_DIR);
    if sandbox.user.is_some() {
        // runc joins it first: it owns the pod's other namespaces.
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .path(ns_dir.join(NS_USER))
                .build()
                .map_err(oci)?,
        );
    }
    for (name, typ) in
        [(NS_NET, LinuxNamespaceType::Network), (NS_IPC, LinuxNamespaceType::Ipc), (NS_UTS, LinuxNamespaceType::Uts)]
    {
        if sandbox.pinned.iter().any(|p| p == name) {
            namespaces.push(LinuxNamespaceBuilder::default().typ(typ).path(ns_dir.join(name)).build().map_err(oci)?);
        }
    }
    // pid: NODE shares the host's; POD joins the pod's; CONTAINER (kubelet's
    // default for v1 pods) gets its own.
    match ns_opts.pid {
        2 => {}
        0 if sandbox.pinned.iter().any(|p| p == NS_PID) => {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .path(ns_dir.join(NS_PID))
                    .build()
                    .map_err(oci)?,
            );
        }
        3 => return Err(Error::invalid("pid namespace mode TARGET is not supported")),
        _ => namespaces.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Pid).build().map_err(oci)?),
    }

    let mut resources = resources(&res)?;
    let mut cgroup_devices = if sc.privileged {
        vec![LinuxDeviceCgroupBuilder::default().allow(true).access("rwm").build().map_err(oci)?]
    } else {
        // Deny everything; runc adds its standard allowed devices after this.
        vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(oci)?]
    };
    cgroup_devices.extend(device_rules);
    resources.set_devices(Some(cgroup_devices));

    let cgroups_path = crate::pod_cgroup::container_path(&sandbox.cgroup_parent, id, sandbox.cgroup_driver);
    let mut linux = LinuxBuilder::default()
        .devices(devices)
        .sysctl(sandbox.sysctls.clone())
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(cgroups_path)
        .build()
        .map_err(oci)?;
    if let Some(u) = &sandbox.user {
        // runc (before 1.2) wants the mappings of a user namespace it joins
        // by path; they are the pod's.
        let map = |r: protocol::shim_launch::IdRange| {
            LinuxIdMappingBuilder::default().container_id(0u32).host_id(r.host_id).size(r.length).build().map_err(oci)
        };
        linux.set_uid_mappings(Some(vec![map(u.uids)?]));
        linux.set_gid_mappings(Some(vec![map(u.gids)?]));
    }
    // runc makes the container's / rslave unless told otherwise, and a
    // bind of a slave copy never reaches the host's peer group: a
    // bidirectional mount needs the rootfs rshared, a host-to-container one
    // rslave (as containerd sets them).
    if config.mounts.iter().any(|m| m.propagation == cri::MountPropagation::PropagationBidirectional as i32) {
        linux.set_rootfs_propagation(Some("rshared".into()));
    } else if config.mounts.iter().any(|m| m.propagation == cri::MountPropagation::PropagationHostToContainer as i32) {
        linux.set_rootfs_propagation(Some("rslave".into()));
    }
    linux.set_seccomp(crate::seccomp::for_container(&sc, &bounding)?);
    if sc.privileged {
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
    } else {
        linux.set_masked_paths(Some(if sc.masked_paths.is_empty() {
            oci_spec::runtime::get_default_maskedpaths()
        } else {
            sc.masked_paths.clone()
        }));
        linux.set_readonly_paths(Some(if sc.readonly_paths.is_empty() {
            oci_spec::runtime::get_default_readonly_paths()
        } else {
            sc.readonly_paths.clone()
        }));
    }

    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(None);
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    let mut annotations = config.annotations.clone();
    annotations.insert("io.kubernetes.cri.container-type".into(), "container".into());
    annotations.insert("io.kubernetes.cri.container-name".into(), config.metadata.clone().unwrap_or_default().name);
    spec.set_annotations(Some(annotations));
    Ok(spec)
}

/// Capability names by their bit number.
const CAP_BITS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability this process may hand on (its bounding set): "all"
/// cannot be more than that, and on hosts where root lacks some (this one
/// has no CAP_SYS_RESOURCE) asking for them makes the runtime fail.
fn all_caps() -> HashSet<Capability> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapBnd:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok()))
        })
        .unwrap_or(u64::MAX);
    CAP_BITS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .filter_map(|(_, c)| parse_cap(c).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_mount_is_the_deepest_and_its_propagation_read() {
        let info = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
                    30 22 8:1 /a /srv/shared rw shared:5 - ext4 /dev/sda1 rw\n\
                    31 30 8:1 /b /srv/shared/slave rw master:5 - ext4 /dev/sda1 rw\n\
                    32 22 0:40 / /srv/with\\040space rw - tmpfs tmpfs rw\n";
        let at = |p: &str| source_mount(info, Path::new(p)).unwrap();
        assert_eq!(at("/srv/other"), SourceMount { mount_point: "/".into(), shared: false, slave: false });
        assert_eq!(at("/srv/shared/x"), SourceMount { mount_point: "/srv/shared".into(), shared: true, slave: false });
        assert_eq!(
            at("/srv/shared/slave/y"),
            SourceMount { mount_point: "/srv/shared/slave".into(), shared: false, slave: true }
        );
        // A prefix that is not a path component is not the mount.
        assert_eq!(at("/srv/sharedness").mount_point, PathBuf::from("/"));
        assert_eq!(at("/srv/with space/z").mount_point, PathBuf::from("/srv/with space"));
    }

    fn cfg(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn unified_keys_and_page_sizes_are_checked() {
        for ok in ["memory.swap.max", "memory.high", "cpu.weight", "io.max", "memory.oom.group"] {
            assert!(check_unified(ok, "1").is_ok(), "{ok}");
        }
        for bad in ["", "memory", "../x.y", "memory/../../x", "cgroup.procs", "Memory.max", ".x", "memory."] {
            assert!(check_unified(bad, "1").is_err(), "{bad}");
        }
        assert!(check_unified("memory.max", "1\n2").is_err());
        for ok in ["2MB", "1GB", "64KB"] {
            assert!(valid_page_size(ok), "{ok}");
        }
        for bad in ["", "MB", "2mb", "2MiB", "2MB/..", "-2MB"] {
            assert!(!valid_page_size(bad), "{bad}");
        }
    }

    #[test]
    fn kubernetes_command_semantics() {
        let img = ImageDefaults { entrypoint: vec!["/ep".into()], cmd: vec!["c1".into()], ..Default::default() };
        assert_eq!(process_args(&cfg(&[], &[]), &img).unwrap(), vec!["/ep", "c1"]);
        assert_eq!(process_args(&cfg(&[], &["a"]), &img).unwrap(), vec!["/ep", "a"]);
        assert_eq!(process_args(&cfg(&["/x"], &[]), &img).unwrap(), vec!["/x"]);
        assert_eq!(process_args(&cfg(&["/x"], &["y"]), &img).unwrap(), vec!["/x", "y"]);
        assert!(process_args(&cfg(&[], &[]), &ImageDefaults::default()).is_err());
    }

    #[test]
    fn env_later_wins() {
        let env = merge_env(
            &["A=1".into(), "PATH=/img".into()],
            &[cri::KeyValue { key: "A".into(), value: "2".into() }],
            "h",
        );
        assert!(env.contains(&"A=2".to_string()));
        assert!(env.contains(&"PATH=/img".to_string()));
        assert!(env.contains(&"HOSTNAME=h".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("A=")).count(), 1);
    }

    #[test]
    fn capabilities_parse() {
        assert!(parse_cap("CAP_NET_ADMIN").is_ok());
        assert!(parse_cap("net_admin").is_ok());
        assert!(parse_cap("NOPE").is_err());
        assert!(all_caps().len() > 30);
    }
}
