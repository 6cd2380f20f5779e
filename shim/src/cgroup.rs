//! Reading a container's cgroups (v1, v2, or both on a hybrid host): where
//! they are, how often the OOM killer struck, CPU and memory usage.
use std::collections::HashMap;
use std::path::PathBuf;

/// A process's cgroup folders.
#[derive(Clone, Debug, Default)]
pub struct Cgroups {
    /// cgroup v1 folder per controller.
    v1: HashMap<String, PathBuf>,
    /// The cgroup v2 folder, when the process has one with controllers.
    v2: Option<PathBuf>,
}

/// Mount points of cgroup v1 controllers and of cgroup2.
fn mounts() -> (HashMap<String, PathBuf>, Option<PathBuf>) {
    let mut v1 = HashMap::new();
    let mut v2 = None;
    for line in std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mountpoint = left.split(' ').nth(4).unwrap_or("");
        let mut r = right.split(' ');
        let (fstype, _source, opts) = (r.next().unwrap_or(""), r.next(), r.next().unwrap_or(""));
        match fstype {
            "cgroup" => {
                for o in opts.split(',') {
                    v1.insert(o.to_string(), PathBuf::from(mountpoint));
                }
            }
            "cgroup2" => v2 = Some(PathBuf::from(mountpoint)),
            _ => {}
        }
    }
    (v1, v2)
}

impl Cgroups {
    /// The cgroups of `pid`, from /proc/<pid>/cgroup.
    pub fn of(pid: i32) -> Option<Cgroups> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let (v1_mounts, v2_mount) = mounts();
        let mut cg = Cgroups::default();
        for line in text.lines() {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            let rel = path.trim_start_matches('/');
            if controllers.is_empty() {
                if let Some(m) = &v2_mount {
                    let dir = m.join(rel);
                    // On a hybrid host the v2 tree has no controllers enabled.
                    if dir.join("memory.events").exists() {
                        cg.v2 = Some(dir);
                    }
                }
            } else {
                for c in controllers.split(',') {
                    if let Some(m) = v1_mounts.get(c) {
                        cg.v1.insert(c.to_string(), m.join(rel));
                    }
                }
            }
        }
        Some(cg)
    }

    fn read_key(file: PathBuf, key: &str) -> Option<u64> {
        std::fs::read_to_string(file)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
    }

    fn read_u64(file: PathBuf) -> Option<u64> {
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// How many processes the OOM killer has killed in the cgroup.
    pub fn oom_kills(&self) -> u64 {
        // cgroup v2: memory.events `oom_kill` (not `oom`, which counts
        // reclaim failures that killed nothing); v1: memory.oom_control.
        if let Some(d) = &self.v2 {
            return Self::read_key(d.join("memory.events"), "oom_kill ").unwrap_or(0);
        }
        self.v1.get("memory").and_then(|d| Self::read_key(d.join("memory.oom_control"), "oom_kill ")).unwrap_or(0)
    }

    /// Cumulative CPU time in nanoseconds.
    pub fn cpu_nanos(&self) -> Option<u64> {
        if let Some(d) = &self.v2 {
            return Self::read_key(d.join("cpu.stat"), "usage_usec ").map(|u| u * 1000);
        }
        self.v1.get("cpuacct").and_then(|d| Self::read_u64(d.join("cpuacct.usage")))
    }

    /// The `cgroup.procs` file listing the cgroup's processes (v2, or the v1
    /// pids hierarchy, or any v1 hierarchy: each lists the same processes).
    pub fn procs_file(&self) -> Option<PathBuf> {
        if let Some(d) = &self.v2 {
            return Some(d.join("cgroup.procs"));
        }
        ["pids", "memory", "cpu", "cpuacct"].iter().find_map(|c| self.v1.get(*c)).map(|d| d.join("cgroup.procs"))
    }

    /// The cgroup's pid limit; None when there is none (`max`) or no pids
    /// controller.
    pub fn pids_max(&self) -> Option<u64> {
        let dir = self.v2.as_ref().or_else(|| self.v1.get("pids"))?;
        Self::read_u64(dir.join("pids.max"))
    }

    /// Memory (usage, working set) in bytes; the working set leaves out
    /// inactive file cache, as kubelet counts it.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let (usage, inactive) = if let Some(d) = &self.v2 {
            (
                Self::read_u64(d.join("memory.current"))?,
                Self::read_key(d.join("memory.stat"), "inactive_file ").unwrap_or(0),
            )
        } else {
            let d = self.v1.get("memory")?;
            (
                Self::read_u64(d.join("memory.usage_in_bytes"))?,
                Self::read_key(d.join("memory.stat"), "total_inactive_file ").unwrap_or(0),
            )
        };
        Some((usage, usage.saturating_sub(inactive)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_cgroups() {
        let cg = Cgroups::of(i32::try_from(std::process::id()).unwrap()).unwrap();
        // Whatever the host, memory usage of our own cgroup is readable
        // where a memory controller is mounted.
        if cg.v1.contains_key("memory") || cg.v2.is_some() {
            assert!(cg.memory().is_some());
        }
    }
}
