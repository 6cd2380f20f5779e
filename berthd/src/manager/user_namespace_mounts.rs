//! A container of a pod with its own user namespace (KEP-127): its bundle
//! made traversable by the pod's root alone, its root filesystem an
//! overlay of idmapped layers and its host-path volumes idmapped clones,
//! all mapped through the pod's pinned user namespace.
use super::*;
use protocol::shim_launch::{UserNamespace, NS_USER};

/// Where a bundle's idmapped volume clones (and the rootfs's staged layers
/// while the overlay is made) are attached.
pub(super) const IDMAPPED_DIR: &str = "idmapped";

impl SandboxMeta {
    /// The pod's own user namespace, if it has one (checked when it ran).
    pub fn user_namespace(&self) -> Option<UserNamespace> {
        let ns = self.config.linux.as_ref()?.security_context.as_ref()?.namespace_options.as_ref()?;
        crate::user_namespaces::of_pod(Some(ns), "", true).ok().flatten()
    }

    /// The pin of the pod's user namespace.
    pub fn user_namespace_pin(&self) -> PathBuf {
        self.dir.join(NS_DIR).join(NS_USER)
    }
}

/// Makes `dir` (a bundle or sandbox folder) traversable by the pod's root
/// and no one else but the node's: group of the pod's root (as seen on the
/// node), mode 0710, as containerd does for user namespaced bundles. runc
/// sets the container up as the pod's root, which has no rights over what
/// the node's root owns.
pub(super) fn open_to_pod_root(dir: &Path, user: &UserNamespace) -> Result<()> {
    std::os::unix::fs::chown(dir, None, Some(user.gids.host_id))
        .map_err(|e| Error::internal(format!("giving {} to the pod's root group: {e}", dir.display())))?;
    crate::dir_modes::set(dir, 0o710)
}

/// Refuses what a user namespaced container cannot have, before anything
/// is made: mount propagation (an idmapped clone is a mount of its own,
/// in no peer group of its source's).
pub(super) fn check_mounts(config: &cri::ContainerConfig) -> Result<()> {
    if let Some(m) = config.mounts.iter().find(|m| m.propagation != cri::MountPropagation::PropagationPrivate as i32) {
        return Err(Error::invalid(format!(
            "mount at {}: a pod with its own user namespace takes only private mounts (its volumes are idmapped clones, which do not propagate); use PROPAGATION_PRIVATE or hostUsers: true",
            m.container_path
        )));
    }
    Ok(())
}

impl Manager {
    /// Attaches an idmapped clone of each host-path volume in `bundle` and
    /// points the mount in `config` at it. Image volumes stay as they are
    /// (read-only, the image's files readable as the node's root made them).
    pub(super) fn idmap_volumes(
        &self,
        bundle: &Path,
        sandbox: &SandboxMeta,
        config: &mut cri::ContainerConfig,
    ) -> Result<()> {
        let pin = sandbox.user_namespace_pin();
        for (i, m) in config.mounts.iter_mut().enumerate() {
            if m.image.is_some() || m.host_path.is_empty() {
                continue;
            }
            let source = std::fs::canonicalize(&m.host_path)
                .map_err(|e| Error::invalid(format!("mount host_path {}: {e}", m.host_path)))?;
            let target = bundle.join(IDMAPPED_DIR).join(format!("volume-{i}"));
            // The request's host path is what cannot be idmapped (a
            // filesystem without idmapped mounts): the caller's to change.
            self.host
                .bind_idmapped(&source, &target, &pin)
                .map_err(|e| Error::invalid(format!("mount at {}: {e}", m.container_path)))?;
            m.host_path = target.display().to_string();
        }
        Ok(())
    }
}
