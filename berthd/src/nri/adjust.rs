//! NRI container adjustments: what CreateContainer's plugins asked to
//! change, merged in plugin order, and applied to the container's OCI spec
//! (and its CRI resources, which the spec's cgroup limits come from). Two
//! plugins changing one thing is an error, as in NRI; a key with a leading
//! `-` (annotation, env, mount destination) removes it. What Berth cannot
//! honour (CDI devices, another cgroup) is refused, not ignored.
use std::collections::HashMap;

use oci_spec::runtime::Spec;
use protocol::cri;
use protocol::nri as api;
use serde_json::{json, Value};

use berth_core::error::{Error, Kind, Result};

/// The adjustments of one CreateContainer, by plugin.
#[derive(Default)]
pub struct Adjustments {
    items: Vec<(String, api::ContainerAdjustment)>,
    owners: HashMap<String, String>,
}

fn refused(plugin: &str, what: impl std::fmt::Display) -> Error {
    Error::new(Kind::FailedPrecondition, format!("NRI plugin {plugin} asked for {what}"))
}

impl Adjustments {
    /// Whether no plugin asked for anything.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The plugins that adjusted anything, in order.
    pub fn plugins(&self) -> Vec<String> {
        self.items.iter().map(|(p, _)| p.clone()).collect()
    }

    fn own(&mut self, plugin: &str, field: String) -> Result<()> {
        if let Some(other) = self.owners.insert(field.clone(), plugin.to_string()) {
            if other != plugin {
                return Err(Error::new(
                    Kind::FailedPrecondition,
                    format!("NRI plugins {other} and {plugin} both adjusted {field} of the container"),
                ));
            }
        }
        Ok(())
    }

    /// Adds one plugin's adjustment, checking it against the others'.
    pub fn add(&mut self, plugin: &str, a: api::ContainerAdjustment) -> Result<()> {
        if !a.CDI_devices.is_empty() {
            return Err(refused(plugin, "CDI devices, which Berth does not resolve"));
        }
        for k in a.annotations.keys() {
            self.own(plugin, format!("annotation {:?}", k.trim_start_matches('-')))?;
        }
        for m in &a.mounts {
            self.own(plugin, format!("the mount at {:?}", m.destination.trim_start_matches('-')))?;
        }
        for e in &a.env {
            self.own(plugin, format!("env {:?}", e.key.trim_start_matches('-')))?;
        }
        if !a.args.is_empty() {
            self.own(plugin, "its args".to_string())?;
        }
        for r in &a.rlimits {
            self.own(plugin, format!("rlimit {}", r.type_))?;
        }
        if let Some(l) = a.linux.as_ref() {
            if !l.cgroups_path.is_empty() {
                return Err(refused(plugin, "another cgroup for the container, which Berth keeps in its pod's"));
            }
            for d in &l.devices {
                self.own(plugin, format!("device {:?}", d.path))?;
            }
            for k in l.sysctl.keys() {
                self.own(plugin, format!("sysctl {k:?}"))?;
            }
            for n in &l.namespaces {
                self.own(plugin, format!("its {} namespace", n.type_.trim_start_matches('-')))?;
            }
            if l.oom_score_adj.is_some() {
                self.own(plugin, "its oom_score_adj".to_string())?;
            }
            if let Some(r) = l.resources.as_ref() {
                for f in resource_fields(r) {
                    self.own(plugin, f.to_string())?;
                }
            }
        }
        self.items.push((plugin.to_string(), a));
        Ok(())
    }

    /// Applies every adjustment to `spec`, and the resource ones to `res`
    /// (the container's CRI resources) from which the spec's limits are
    /// computed again.
    pub fn apply(&self, spec: &mut Spec, res: &mut cri::LinuxContainerResources) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        let mut v = serde_json::to_value(&*spec).map_err(|e| Error::internal(format!("encoding the spec: {e}")))?;
        let mut pids = None;
        for (plugin, a) in &self.items {
            apply_one(&mut v, a).map_err(|e| refused(plugin, e))?;
            if let Some(r) = a.linux.as_ref().and_then(|l| l.resources.as_ref()) {
                merge_resources(r, res);
                if let Some(p) = r.pids.as_ref() {
                    pids = Some(p.limit);
                }
            }
        }
        let mut adjusted: Spec = serde_json::from_value(v)
            .map_err(|e| Error::invalid(format!("the NRI-adjusted spec is not valid: {e}")))?;
        if self.items.iter().any(|(_, a)| a.linux.as_ref().is_some_and(|l| l.resources.is_some())) {
            let mut limits = crate::spec::resources(res)?;
            let linux = adjusted.linux_mut().get_or_insert_with(Default::default);
            let devices = linux.resources().as_ref().and_then(|r| r.devices().clone());
            limits.set_devices(devices);
            if let Some(p) = pids {
                limits.set_pids(Some(
                    oci_spec::runtime::LinuxPidsBuilder::default()
                        .limit(p)
                        .build()
                        .map_err(|e| Error::invalid(format!("pids limit: {e}")))?,
                ));
            } else if let Some(p) = linux.resources().as_ref().and_then(|r| *r.pids()) {
                limits.set_pids(Some(p));
            }
            linux.set_resources(Some(limits));
        }
        *spec = adjusted;
        Ok(())
    }
}

/// The resource fields an adjustment sets, for conflicts.
fn resource_fields(r: &api::LinuxResources) -> Vec<&'static str> {
    let mut f = Vec::new();
    if let Some(m) = r.memory.as_ref() {
        m.limit.is_some().then(|| f.push("its memory limit"));
        m.swap.is_some().then(|| f.push("its memory+swap limit"));
    }
    if let Some(c) = r.cpu.as_ref() {
        c.shares.is_some().then(|| f.push("its cpu shares"));
        c.quota.is_some().then(|| f.push("its cpu quota"));
        c.period.is_some().then(|| f.push("its cpu period"));
        (!c.cpus.is_empty()).then(|| f.push("its cpuset cpus"));
        (!c.mems.is_empty()).then(|| f.push("its cpuset mems"));
    }
    r.pids.is_some().then(|| f.push("its pids limit"));
    (!r.hugepage_limits.is_empty()).then(|| f.push("its hugepage limits"));
    f
}

/// Merges NRI resources into CRI ones (what NRI leaves unset stays).
pub fn merge_resources(r: &api::LinuxResources, res: &mut cri::LinuxContainerResources) {
    if let Some(m) = r.memory.as_ref() {
        if let Some(l) = m.limit.as_ref() {
            res.memory_limit_in_bytes = l.value;
        }
        if let Some(s) = m.swap.as_ref() {
            res.memory_swap_limit_in_bytes = s.value;
        }
    }
    if let Some(c) = r.cpu.as_ref() {
        if let Some(s) = c.shares.as_ref() {
            res.cpu_shares = i64::try_from(s.value).unwrap_or(i64::MAX);
        }
        if let Some(q) = c.quota.as_ref() {
            res.cpu_quota = q.value;
        }
        if let Some(p) = c.period.as_ref() {
            res.cpu_period = i64::try_from(p.value).unwrap_or(i64::MAX);
        }
        if !c.cpus.is_empty() {
            res.cpuset_cpus = c.cpus.clone();
        }
        if !c.mems.is_empty() {
            res.cpuset_mems = c.mems.clone();
        }
    }
    for h in &r.hugepage_limits {
        res.hugepage_limits.retain(|x| x.page_size != h.page_size);
        res.hugepage_limits.push(cri::HugepageLimit { page_size: h.page_size.clone(), limit: h.limit });
    }
    for (k, v) in &r.unified {
        res.unified.insert(k.clone(), v.clone());
    }
}

/// The entries of the JSON array at `v[key]`, made if missing.
fn array<'a>(v: &'a mut Value, key: &str) -> std::result::Result<&'a mut Vec<Value>, String> {
    let obj = v.as_object_mut().ok_or("a spec that is not an object")?;
    let slot = obj.entry(key.to_string()).or_insert_with(|| json!([]));
    if slot.is_null() {
        *slot = json!([]);
    }
    slot.as_array_mut().ok_or_else(|| format!("a spec whose {key} is not a list"))
}

fn object<'a>(v: &'a mut Value, key: &str) -> std::result::Result<&'a mut serde_json::Map<String, Value>, String> {
    let obj = v.as_object_mut().ok_or("a spec that is not an object")?;
    let slot = obj.entry(key.to_string()).or_insert_with(|| json!({}));
    if slot.is_null() {
        *slot = json!({});
    }
    slot.as_object_mut().ok_or_else(|| format!("a spec whose {key} is not an object"))
}

fn hook(h: &api::Hook) -> Value {
    let mut v = json!({ "path": h.path });
    if !h.args.is_empty() {
        v["args"] = json!(h.args);
    }
    if !h.env.is_empty() {
        v["env"] = json!(h.env);
    }
    if let Some(t) = h.timeout.as_ref() {
        v["timeout"] = json!(t.value);
    }
    v
}

fn apply_one(spec: &mut Value, a: &api::ContainerAdjustment) -> std::result::Result<(), String> {
    let annotations = object(spec, "annotations")?;
    for (k, val) in &a.annotations {
        match k.strip_prefix('-') {
            Some(k) => {
                annotations.remove(k);
            }
            None => {
                annotations.insert(k.clone(), json!(val));
            }
        }
    }
    let mounts = array(spec, "mounts")?;
    for m in &a.mounts {
        let dest = m.destination.trim_start_matches('-');
        if !dest.starts_with('/') {
            return Err(format!("a mount at {dest:?}, which is not an absolute path"));
        }
        mounts.retain(|x| x["destination"].as_str() != Some(dest));
        if !m.destination.starts_with('-') {
            let mut v = json!({ "destination": dest, "type": m.type_, "source": m.source });
            if !m.options.is_empty() {
                v["options"] = json!(m.options);
            }
            mounts.push(v);
        }
    }
    let process = object(spec, "process")?;
    let env = process.entry("env").or_insert_with(|| json!([]));
    if env.is_null() {
        *env = json!([]);
    }
    let env = env.as_array_mut().ok_or("a spec whose env is not a list")?;
    for kv in &a.env {
        let key = kv.key.trim_start_matches('-');
        if key.is_empty() || key.contains('=') {
            return Err(format!("env variable {key:?}, which is no name"));
        }
        env.retain(|e| e.as_str().and_then(|s| s.split_once('=')).map(|(k, _)| k) != Some(key));
        if !kv.key.starts_with('-') {
            env.push(json!(format!("{key}={}", kv.value)));
        }
    }
    if !a.args.is_empty() {
        process.insert("args".to_string(), json!(a.args));
    }
    let rlimits = process.entry("rlimits").or_insert_with(|| json!([]));
    if rlimits.is_null() {
        *rlimits = json!([]);
    }
    let rlimits = rlimits.as_array_mut().ok_or("a spec whose rlimits is not a list")?;
    for r in &a.rlimits {
        rlimits.retain(|x| x["type"].as_str() != Some(r.type_.as_str()));
        rlimits.push(json!({ "type": r.type_, "hard": r.hard, "soft": r.soft }));
    }
    if let Some(l) = a.linux.as_ref() {
        if let Some(o) = l.oom_score_adj.as_ref() {
            process.insert("oomScoreAdj".to_string(), json!(o.value));
        }
    }
    if let Some(h) = a.hooks.as_ref() {
        let hooks = object(spec, "hooks")?;
        for (key, list) in [
            ("prestart", &h.prestart),
            ("createRuntime", &h.create_runtime),
            ("createContainer", &h.create_container),
            ("startContainer", &h.start_container),
            ("poststart", &h.poststart),
            ("poststop", &h.poststop),
        ] {
            if list.is_empty() {
                continue;
            }
            let slot = hooks.entry(key.to_string()).or_insert_with(|| json!([]));
            if slot.is_null() {
                *slot = json!([]);
            }
            let slot = slot.as_array_mut().ok_or("a spec whose hooks are not lists")?;
            slot.extend(list.iter().map(hook));
        }
    }
    if let Some(l) = a.linux.as_ref() {
        let linux = object(spec, "linux")?;
        let mut lv = Value::Object(std::mem::take(linux));
        let sysctl = object(&mut lv, "sysctl")?;
        for (k, val) in &l.sysctl {
            sysctl.insert(k.clone(), json!(val));
        }
        let namespaces = array(&mut lv, "namespaces")?;
        for n in &l.namespaces {
            let typ = n.type_.trim_start_matches('-');
            namespaces.retain(|x| x["type"].as_str() != Some(typ));
            if !n.type_.starts_with('-') {
                let mut v = json!({ "type": typ });
                if !n.path.is_empty() {
                    v["path"] = json!(n.path);
                }
                namespaces.push(v);
            }
        }
        let devices = array(&mut lv, "devices")?;
        let mut rules = Vec::new();
        for d in &l.devices {
            if !d.path.starts_with("/dev/") {
                return Err(format!("device {:?}, which is not under /dev", d.path));
            }
            devices.retain(|x| x["path"].as_str() != Some(d.path.as_str()));
            let mut v = json!({ "path": d.path, "type": d.type_, "major": d.major, "minor": d.minor });
            if let Some(m) = d.file_mode.as_ref() {
                v["fileMode"] = json!(m.value);
            }
            if let Some(u) = d.uid.as_ref() {
                v["uid"] = json!(u.value);
            }
            if let Some(g) = d.gid.as_ref() {
                v["gid"] = json!(g.value);
            }
            devices.push(v);
            rules.push(json!({ "allow": true, "type": d.type_, "major": d.major, "minor": d.minor, "access": "rwm" }));
        }
        if !rules.is_empty() {
            let resources = object(&mut lv, "resources")?;
            let mut rv = Value::Object(std::mem::take(resources));
            array(&mut rv, "devices")?.extend(rules);
            *object(&mut lv, "resources")? = rv.as_object().cloned().unwrap_or_default();
        }
        *object(spec, "linux")? = lv.as_object().cloned().unwrap_or_default();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        let mut s = Spec::default();
        s.process_mut().as_mut().unwrap().set_env(Some(vec!["PATH=/bin".into(), "KEEP=1".into(), "DROP=1".into()]));
        s
    }

    fn kv(key: &str, value: &str) -> api::KeyValue {
        let mut k = api::KeyValue::new();
        k.key = key.into();
        k.value = value.into();
        k
    }

    #[test]
    fn env_mounts_annotations_and_args_are_set_and_removed() {
        let mut a = api::ContainerAdjustment::new();
        a.env = vec![kv("NEW", "x"), kv("-DROP", ""), kv("PATH", "/usr/bin")];
        a.annotations.insert("nri.test/a".into(), "1".into());
        let mut m = api::Mount::new();
        m.destination = "/mnt/nri".into();
        m.type_ = "bind".into();
        m.source = "/tmp".into();
        m.options = vec!["rbind".into(), "ro".into()];
        a.mounts.push(m);
        a.args = vec!["sleep".into(), "5".into()];
        let mut adj = Adjustments::default();
        adj.add("10-a", a).unwrap();
        let mut s = spec();
        let mut res = cri::LinuxContainerResources::default();
        adj.apply(&mut s, &mut res).unwrap();
        let env = s.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env, vec!["KEEP=1", "NEW=x", "PATH=/usr/bin"]);
        assert_eq!(s.annotations().as_ref().unwrap()["nri.test/a"], "1");
        assert!(s.mounts().as_ref().unwrap().iter().any(|m| m.destination() == std::path::Path::new("/mnt/nri")));
        assert_eq!(s.process().as_ref().unwrap().args().clone().unwrap(), vec!["sleep", "5"]);
    }

    #[test]
    fn two_plugins_changing_one_thing_is_an_error() {
        let mut a = api::ContainerAdjustment::new();
        a.env = vec![kv("X", "1")];
        let mut b = api::ContainerAdjustment::new();
        b.env = vec![kv("-X", "")];
        let mut adj = Adjustments::default();
        adj.add("10-a", a).unwrap();
        let e = adj.add("20-b", b).unwrap_err();
        assert!(e.message.contains("10-a and 20-b"), "{}", e.message);
    }

    #[test]
    fn resources_go_through_the_cri_limits_and_keep_the_device_rules() {
        let mut a = api::ContainerAdjustment::new();
        let mut r = api::LinuxResources::new();
        let mut m = api::LinuxMemory::new();
        let mut l = api::OptionalInt64::new();
        l.value = 64 << 20;
        m.limit = Some(l).into();
        r.memory = Some(m).into();
        let mut p = api::LinuxPids::new();
        p.limit = 42;
        r.pids = Some(p).into();
        let mut lin = api::LinuxContainerAdjustment::new();
        lin.resources = Some(r).into();
        a.linux = Some(lin).into();
        let mut adj = Adjustments::default();
        adj.add("10-a", a).unwrap();
        let mut s = spec();
        let rule = oci_spec::runtime::LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap();
        let mut lr = oci_spec::runtime::LinuxResources::default();
        lr.set_devices(Some(vec![rule]));
        s.linux_mut().get_or_insert_with(Default::default).set_resources(Some(lr));
        let mut res = cri::LinuxContainerResources::default();
        adj.apply(&mut s, &mut res).unwrap();
        assert_eq!(res.memory_limit_in_bytes, 64 << 20);
        let lr = s.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(lr.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(lr.pids().unwrap().limit(), 42);
        assert_eq!(lr.devices().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn hooks_rlimits_and_devices_reach_the_spec() {
        let mut a = api::ContainerAdjustment::new();
        let mut h = api::Hook::new();
        h.path = "/usr/local/bin/nri-hook".into();
        h.args = vec!["nri-hook".into(), "start".into()];
        let mut hooks = api::Hooks::new();
        hooks.create_runtime.push(h);
        a.hooks = Some(hooks).into();
        let mut r = api::POSIXRlimit::new();
        r.type_ = "RLIMIT_NOFILE".into();
        r.hard = 4096;
        r.soft = 1024;
        a.rlimits.push(r);
        let mut d = api::LinuxDevice::new();
        d.path = "/dev/nri-null".into();
        d.type_ = "c".into();
        d.major = 1;
        d.minor = 3;
        let mut lin = api::LinuxContainerAdjustment::new();
        lin.devices.push(d);
        a.linux = Some(lin).into();
        let mut adj = Adjustments::default();
        adj.add("10-a", a).unwrap();
        let mut s = spec();
        adj.apply(&mut s, &mut cri::LinuxContainerResources::default()).unwrap();
        let hook = &s.hooks().as_ref().unwrap().create_runtime().as_ref().unwrap()[0];
        assert_eq!(hook.path(), std::path::Path::new("/usr/local/bin/nri-hook"));
        let rl = &s.process().as_ref().unwrap().rlimits().as_ref().unwrap()[0];
        assert_eq!((rl.hard(), rl.soft()), (4096, 1024));
        let linux = s.linux().as_ref().unwrap();
        let dev = &linux.devices().as_ref().unwrap()[0];
        assert_eq!((dev.major(), dev.minor()), (1, 3));
        let rule = linux.resources().as_ref().unwrap().devices().as_ref().unwrap().last().unwrap().clone();
        assert!(rule.allow() && rule.major() == Some(1) && rule.minor() == Some(3), "the device is allowed");
        let mut bad = api::ContainerAdjustment::new();
        let mut d = api::LinuxDevice::new();
        d.path = "/etc/shadow".into();
        let mut lin = api::LinuxContainerAdjustment::new();
        lin.devices.push(d);
        bad.linux = Some(lin).into();
        let mut adj = Adjustments::default();
        adj.add("10-a", bad).unwrap();
        let e = adj.apply(&mut spec(), &mut cri::LinuxContainerResources::default()).unwrap_err();
        assert!(e.message.contains("not under /dev"), "{}", e.message);
    }

    #[test]
    fn what_berth_cannot_honour_is_refused() {
        let mut a = api::ContainerAdjustment::new();
        a.CDI_devices.push(api::CDIDevice::new());
        assert!(Adjustments::default().add("10-a", a).unwrap_err().message.contains("CDI"));
        let mut a = api::ContainerAdjustment::new();
        let mut lin = api::LinuxContainerAdjustment::new();
        lin.cgroups_path = "/elsewhere".into();
        a.linux = Some(lin).into();
        assert!(Adjustments::default().add("10-a", a).unwrap_err().message.contains("cgroup"));
    }
}
