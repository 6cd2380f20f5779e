//! Image volumes (KEP-4639): a CRI Mount that names an image instead of a
//! host path. The image must be pulled; its layers are mounted read-only in
//! the container's bundle (`image-volumes/<mount index>`), the folder
//! `image_sub_path` names (or the whole image) is bound at the mount's
//! container path, and the image's layers count as the container's own, so
//! no collection takes them while the container exists.
use super::*;

/// Where a container's image volumes are mounted, in its bundle.
const VOLUMES_DIR: &str = "image-volumes";

/// One image volume of a CreateContainer, checked.
pub(super) struct ImageVolume {
    /// The mount's index in the container config.
    pub(super) index: usize,
    /// The image as the mount names it.
    pub(super) name: String,
    /// The image.
    pub(super) image: berth_images::images::ImageRecord,
}

/// Checks an `image_sub_path`: empty (the whole image) or a relative path
/// with no `..`.
fn check_sub_path(container_path: &str, sub: &str) -> Result<()> {
    let p = Path::new(sub);
    if p.is_absolute() {
        return Err(Error::invalid(format!(
            "image volume at {container_path}: image_sub_path {sub:?} must be relative to the image's root"
        )));
    }
    if p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(Error::invalid(format!(
            "image volume at {container_path}: image_sub_path {sub:?} may not leave the image (no ..)"
        )));
    }
    Ok(())
}

impl Manager {
    /// The image volumes `config` asks for, checked before anything is made:
    /// read-only, a sub path inside the image, an image that is pulled.
    pub(super) async fn image_volumes(&self, config: &cri::ContainerConfig) -> Result<Vec<ImageVolume>> {
        let mut volumes = Vec::new();
        for (index, m) in config.mounts.iter().enumerate() {
            let Some(name) = m.image.as_ref().map(|i| i.image.clone()).filter(|i| !i.is_empty()) else { continue };
            if !m.host_path.is_empty() {
                return Err(Error::invalid(format!(
                    "mount at {} names both an image and a host_path; give one",
                    m.container_path
                )));
            }
            if !m.readonly {
                return Err(Error::invalid(format!(
                    "image volume at {} must be read-only (readonly: true): an image is never written",
                    m.container_path
                )));
            }
            check_sub_path(&m.container_path, &m.image_sub_path)?;
            let image = self.image(&name).await.ok_or_else(|| {
                Error::not_found(format!(
                    "image {name:?} of the volume at {} not found; pull it first",
                    m.container_path
                ))
            })?;
            volumes.push(ImageVolume { index, name, image });
        }
        Ok(volumes)
    }

    /// Mounts each volume's layers (`lowers[i]`, bottom first) read-only in
    /// `bundle` and points its mount in `config` at the folder it names.
    pub(super) fn mount_image_volumes(
        &self,
        bundle: &Path,
        volumes: &[ImageVolume],
        lowers: &[Vec<PathBuf>],
        config: &mut cri::ContainerConfig,
    ) -> Result<()> {
        for (v, lowers) in volumes.iter().zip(lowers) {
            let target = bundle.join(VOLUMES_DIR).join(v.index.to_string());
            self.host.mount_read_only(lowers, &target)?;
            let Some(m) = config.mounts.get_mut(v.index) else { continue };
            // Resolved on the host: a symlink in the image that points out of
            // it (to the host's /etc) is refused, not followed there. The
            // root is resolved too (a state folder under /var/run is /run).
            let root = std::fs::canonicalize(&target).ctx(|| format!("resolving {}", target.display()))?;
            let resolved = std::fs::canonicalize(root.join(&m.image_sub_path)).ok().filter(|p| p.starts_with(&root));
            let Some(source) = resolved else {
                return Err(Error::invalid(format!(
                    "image volume at {}: image_sub_path {:?} is not a path in image {}",
                    m.container_path, m.image_sub_path, v.name
                )));
            };
            m.host_path = source.display().to_string();
        }
        Ok(())
    }

    /// Unmounts what a container's bundle holds: its root filesystem, its
    /// image volumes and idmapped clones, and whatever else is mounted in
    /// it. An error means a mount remains and the bundle must not be
    /// removed (the removal would reach into it).
    pub(super) fn unmount_bundle(&self, bundle: &Path) -> Result<()> {
        if let Ok(entries) = std::fs::read_dir(bundle.join(VOLUMES_DIR)) {
            for e in entries.flatten() {
                if let Err(e) = self.host.unmount(&e.path()) {
                    warn!(self.log, "unmounting an image volume failed"; "path" => e.to_string());
                }
            }
        }
        self.host.unmount(&bundle.join("rootfs"))?;
        Ok(self.host.unmount_all_under(bundle)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_stay_inside_the_image() {
        assert!(check_sub_path("/m", "").is_ok());
        assert!(check_sub_path("/m", "etc/ssl").is_ok());
        assert!(check_sub_path("/m", "/etc").unwrap_err().message.contains("relative"));
        assert!(check_sub_path("/m", "a/../../b").unwrap_err().message.contains(".."));
    }
}
