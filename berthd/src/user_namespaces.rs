//! What Berth does with a CRI `UserNamespace` (KEP-127): a pod runs in the
//! node's user namespace (mode NODE, or no options) or in one of its own
//! (mode POD, kubelet's `hostUsers: false`) with one uid and one gid range
//! that map container id 0 up. Its containers are in the pod's. CONTAINER
//! and TARGET are modes the CRI allows no runtime.
use protocol::cri;
use protocol::shim_launch::{IdRange, UserNamespace};

use berth_core::error::{Error, Result};

fn range(what: &str, kind: &str, maps: &[cri::IdMapping]) -> Result<IdRange> {
    let [m] = maps else {
        return Err(Error::invalid(format!(
            "{what}: a user namespace takes exactly one {kind} mapping, not {}",
            maps.len()
        )));
    };
    if m.container_id != 0 {
        return Err(Error::invalid(format!(
            "{what}: the {kind} mapping starts at container id {}; it must map container id 0 (root)",
            m.container_id
        )));
    }
    if m.length == 0 || m.host_id.checked_add(m.length).is_none() {
        return Err(Error::invalid(format!(
            "{what}: the {kind} mapping of {} ids from host id {} is empty or past the last id",
            m.length, m.host_id
        )));
    }
    if m.host_id == 0 {
        return Err(Error::invalid(format!(
            "{what}: the {kind} mapping maps the container's root to the node's root (host id 0), which a user namespace is there to prevent"
        )));
    }
    Ok(IdRange { host_id: m.host_id, length: m.length })
}

/// The user namespace a pod sandbox asks for (None: the node's). POD needs
/// `supported` (the node can make idmapped mounts) and namespaces of the
/// pod's own: Kubernetes refuses `hostUsers: false` with hostNetwork,
/// hostIPC and hostPID, and a namespace of the node's is not the pod's
/// root's to manage.
pub fn of_pod(options: Option<&cri::NamespaceOption>, what: &str, supported: bool) -> Result<Option<UserNamespace>> {
    let Some(o) = options else { return Ok(None) };
    let Some(u) = o.userns_options.as_ref() else { return Ok(None) };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => Ok(None),
        Ok(cri::NamespaceMode::Pod) => {
            if !supported {
                return Err(Error::invalid(format!(
                    "{what} asks for a user namespace of its own (hostUsers: false), which this node cannot give: \
                     its kernel lacks idmapped mounts on overlayfs layers (Linux 5.19); run it in the node's (hostUsers: true)"
                )));
            }
            for (mode, name) in [(o.network, "network"), (o.ipc, "ipc"), (o.pid, "pid")] {
                if mode == cri::NamespaceMode::Node as i32 {
                    return Err(Error::invalid(format!(
                        "{what}: a pod with its own user namespace cannot use the node's {name} namespace (hostUsers: false with host{})",
                        match name {
                            "network" => "Network",
                            "ipc" => "IPC",
                            _ => "PID",
                        }
                    )));
                }
            }
            Ok(Some(UserNamespace { uids: range(what, "uid", &u.uids)?, gids: range(what, "gid", &u.gids)? }))
        }
        Ok(mode @ (cri::NamespaceMode::Container | cri::NamespaceMode::Target)) => Err(Error::invalid(format!(
            "{what}: user namespace mode {} is not one the CRI allows (POD or NODE)",
            mode.as_str_name()
        ))),
        Err(_) => Err(Error::invalid(format!("{what}: user namespace mode {} is not a mode", u.mode))),
    }
}

/// Checks a container's own user namespace options against its pod's
/// (`pod`): it runs in the pod's, and options that say otherwise are
/// refused rather than ignored, as is the node's pid namespace in a pod of
/// its own user namespace.
pub fn of_container(own: Option<&cri::NamespaceOption>, pod: Option<&UserNamespace>, what: &str) -> Result<()> {
    if pod.is_some() && own.is_some_and(|o| o.pid == cri::NamespaceMode::Node as i32) {
        // The node's pid namespace belongs to no user namespace the pod's
        // root owns: runc would fail mounting /proc, so say why first.
        return Err(Error::invalid(format!(
            "{what}: a container of a pod with its own user namespace cannot use the node's pid namespace (hostUsers: false with hostPID)"
        )));
    }
    let Some(u) = own.and_then(|o| o.userns_options.as_ref()) else { return Ok(()) };
    let asked = match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => None,
        Ok(cri::NamespaceMode::Pod) => {
            Some(UserNamespace { uids: range(what, "uid", &u.uids)?, gids: range(what, "gid", &u.gids)? })
        }
        Ok(mode @ (cri::NamespaceMode::Container | cri::NamespaceMode::Target)) => {
            return Err(Error::invalid(format!(
                "{what}: user namespace mode {} is not one the CRI allows (POD or NODE)",
                mode.as_str_name()
            )))
        }
        Err(_) => return Err(Error::invalid(format!("{what}: user namespace mode {} is not a mode", u.mode))),
    };
    if asked.as_ref() == pod {
        return Ok(());
    }
    Err(Error::invalid(match pod {
        None => format!("{what} asks for a user namespace its pod does not have; a container runs in its pod's"),
        Some(_) => {
            format!("{what} asks for other user namespace mappings than its pod's; a container runs in its pod's")
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::error::Kind;

    fn map(host_id: u32, container_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping { host_id, container_id, length }
    }

    fn opts(mode: i32, uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::NamespaceOption {
        cri::NamespaceOption { userns_options: Some(cri::UserNamespace { mode, uids, gids }), ..Default::default() }
    }

    fn pod(o: &cri::NamespaceOption) -> Result<Option<UserNamespace>> {
        of_pod(Some(o), "pod sandbox x", true)
    }

    const POD: i32 = cri::NamespaceMode::Pod as i32;

    #[test]
    fn the_nodes_or_one_range_from_root_up() {
        assert_eq!(of_pod(None, "pod", true).unwrap(), None);
        assert_eq!(pod(&cri::NamespaceOption::default()).unwrap(), None);
        assert_eq!(pod(&opts(cri::NamespaceMode::Node as i32, vec![], vec![])).unwrap(), None);
        let u = pod(&opts(POD, vec![map(65536, 0, 65536)], vec![map(131072, 0, 1000)])).unwrap().unwrap();
        assert_eq!(u.uids, IdRange { host_id: 65536, length: 65536 });
        assert_eq!(u.gids, IdRange { host_id: 131072, length: 1000 });
    }

    #[test]
    fn what_the_cri_refuses_is_invalid_argument() {
        let good = || vec![map(65536, 0, 65536)];
        let cases = [
            (opts(cri::NamespaceMode::Container as i32, good(), good()), "mode CONTAINER"),
            (opts(cri::NamespaceMode::Target as i32, good(), good()), "mode TARGET"),
            (opts(99, good(), good()), "not a mode"),
            (opts(POD, vec![map(65536, 0, 1), map(70000, 1, 1)], good()), "exactly one uid"),
            (opts(POD, good(), vec![]), "exactly one gid"),
            (opts(POD, vec![map(65536, 1, 65535)], good()), "container id 0"),
            (opts(POD, vec![map(65536, 0, 0)], good()), "empty"),
            (opts(POD, vec![map(u32::MAX, 0, 2)], good()), "past the last"),
            (opts(POD, vec![map(0, 0, 65536)], good()), "node's root"),
        ];
        for (o, want) in cases {
            let e = pod(&o).unwrap_err();
            assert_eq!(e.kind, Kind::InvalidArgument, "{want}");
            assert!(e.message.contains(want), "{want}: {}", e.message);
        }
        let mut host_net = opts(POD, good(), good());
        host_net.network = cri::NamespaceMode::Node as i32;
        assert!(pod(&host_net).unwrap_err().message.contains("hostNetwork"));
        let e = of_pod(Some(&opts(POD, good(), good())), "pod", false).unwrap_err();
        assert!(e.message.contains("cannot give"), "{}", e.message);
    }

    #[test]
    fn a_container_is_in_its_pods() {
        let o = opts(POD, vec![map(65536, 0, 65536)], vec![map(65536, 0, 65536)]);
        let u = pod(&o).unwrap();
        assert!(of_container(None, u.as_ref(), "c").is_ok());
        assert!(of_container(Some(&cri::NamespaceOption::default()), u.as_ref(), "c").is_ok());
        assert!(of_container(Some(&o), u.as_ref(), "c").is_ok());
        assert!(of_container(Some(&o), None, "c").unwrap_err().message.contains("its pod does not have"));
        let other = opts(POD, vec![map(131072, 0, 65536)], vec![map(65536, 0, 65536)]);
        assert!(of_container(Some(&other), u.as_ref(), "c").unwrap_err().message.contains("other"));
        let host_pid = cri::NamespaceOption { pid: cri::NamespaceMode::Node as i32, ..o.clone() };
        assert!(of_container(Some(&host_pid), u.as_ref(), "c").unwrap_err().message.contains("node's pid"));
        assert!(of_container(Some(&host_pid), None, "c").is_err(), "its pod has no user namespace to match");
        let host_pid_only = cri::NamespaceOption { pid: cri::NamespaceMode::Node as i32, ..Default::default() };
        assert!(of_container(Some(&host_pid_only), None, "c").is_ok());
        let node = opts(cri::NamespaceMode::Node as i32, vec![], vec![]);
        assert!(of_container(Some(&node), None, "c").is_ok());
        assert_eq!(of_container(Some(&node), u.as_ref(), "c").unwrap_err().kind, Kind::InvalidArgument);
    }
}
