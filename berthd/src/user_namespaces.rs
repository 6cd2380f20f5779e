//! What Berth does with a CRI `UserNamespace` (KEP-127): a pod or container
//! may run in the node's user namespace (mode NODE, or no options); one
//! that asks for its own (mode POD, kubelet's `hostUsers: false`) is refused
//! until Berth makes them, rather than run with the node's ids as if it had
//! asked for nothing; CONTAINER and TARGET are modes the CRI allows no
//! runtime.
use protocol::cri;

use berth_core::error::{Error, Result};

/// Checks the user namespace `what` (a pod sandbox, a container) asks for.
pub fn check(options: Option<&cri::NamespaceOption>, what: &str) -> Result<()> {
    let Some(u) = options.and_then(|o| o.userns_options.as_ref()) else { return Ok(()) };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => Ok(()),
        Ok(cri::NamespaceMode::Pod) => Err(Error::invalid(format!(
            "{what} asks for a user namespace of its own (hostUsers: false), which Berth does not make yet \
             (its runtime handlers do not advertise user namespaces); run it in the node's (hostUsers: true)"
        ))),
        Ok(mode @ (cri::NamespaceMode::Container | cri::NamespaceMode::Target)) => Err(Error::invalid(format!(
            "{what}: user namespace mode {} is not one the CRI allows (POD or NODE)",
            mode.as_str_name()
        ))),
        Err(_) => Err(Error::invalid(format!("{what}: user namespace mode {} is not a mode", u.mode))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: i32) -> cri::NamespaceOption {
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace { mode, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_nodes_user_namespace_runs() {
        assert!(check(None, "pod").is_ok());
        assert!(check(Some(&cri::NamespaceOption::default()), "pod").is_ok());
        assert!(check(Some(&opts(cri::NamespaceMode::Node as i32)), "pod").is_ok());
        for bad in [cri::NamespaceMode::Pod as i32, cri::NamespaceMode::Container as i32, 3, 99] {
            let e = check(Some(&opts(bad)), "pod sandbox x").unwrap_err();
            assert_eq!(e.kind, berth_core::error::Kind::InvalidArgument);
            assert!(e.message.contains("user namespace"), "{}", e.message);
        }
    }
}
