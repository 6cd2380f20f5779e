//! Unpacks one image layer (tar, plain, gzip or zstd) into its own snapshot
//! folder, for use as an overlayfs lower layer. OCI whiteouts become overlay
//! whiteouts (a 0/0 character device) and opaque markers become the
//! `trusted.overlay.opaque` xattr. No entry may create or change anything
//! outside the snapshot: `..` components are refused, and nothing is written
//! through a symlink. A failed unpack leaves nothing behind.
#![allow(unsafe_code)] // syscalls libc and nix do not wrap safely; each block has its SAFETY note
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::error::{ImageError, IoContext, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Unpacks `blob` into `dest` (which must not exist yet).
pub fn unpack_layer(blob: &Path, dest: &Path) -> Result<()> {
    let parent = dest.parent().ok_or_else(|| ImageError::Internal("snapshot has no parent folder".into()))?;
    let tmp = parent.join(format!(".tmp-{}", berth_core::ids::new_id()));
    std::fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let result = unpack_into(blob, &tmp).and_then(|()| match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        // Another unpack of the same layer (an import, a pull) finished
        // first; its snapshot is the same content.
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(ImageError::Io { what: "renaming snapshot into place".into(), source: std::sync::Arc::new(e) }),
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn open_layer(blob: &Path) -> Result<Box<dyn Read>> {
    let mut f = std::fs::File::open(blob).ctx(|| format!("opening layer {}", blob.display()))?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match f.read(&mut magic[n..]).ctx(|| "reading layer".into())? {
            0 => break,
            r => n += r,
        }
    }
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let stream = head.chain(f);
    // The compression is read from the content, not the media type: Docker
    // and OCI name it differently, and some registries get it wrong.
    if magic[..n].starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(stream)))
    } else if magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        let z = zstd::stream::read::Decoder::new(stream).ctx(|| "starting zstd decoder".into())?;
        Ok(Box::new(z))
    } else {
        Ok(Box::new(stream))
    }
}

/// The entry's path as plain components, refusing any that climbs out.
fn clean_path(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::BadContent(format!("layer entry {} leaves the layer root", p.display())))
            }
        }
    }
    Ok(out)
}

/// Makes sure every folder on the way to `rel` inside `root` is a real
/// folder (creating missing ones), never a symlink.
fn safe_dir(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(ImageError::BadContent(format!(
                    "layer path {} goes through a non-directory",
                    rel.display()
                )))
            }
            Err(_) => std::fs::create_dir(&cur).ctx(|| format!("creating {}", cur.display()))?,
        }
    }
    Ok(cur)
}

fn unpack_into(blob: &Path, root: &Path) -> Result<()> {
    let damaged = |e: std::io::Error| {
        // tar wraps the cause; show it, it is what a person can act on.
        let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
        ImageError::BadContent(format!("layer {} is damaged: {e}{cause}", blob.display()))
    };
    let mut archive = tar::Archive::new(open_layer(blob)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path = clean_path(&entry.path().map_err(damaged)?)?;
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        let parent_rel = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == OPAQUE_MARKER {
            let dir = safe_dir(root, &parent_rel)?;
            set_opaque(&dir)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let dir = safe_dir(root, &parent_rel)?;
            let target = dir.join(hidden);
            let _ = std::fs::remove_file(&target);
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(std::io::Error::from)
            .ctx(|| format!("creating whiteout {}", target.display()))?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            // The tar crate writes these as regular files; make the node.
            let target = safe_dir(root, &parent_rel)?.join(&name);
            make_node(&target, entry.header(), kind)
                .map_err(|e| e.context(format!("layer entry {}", path.display())))?;
            continue;
        }
        safe_dir(root, &parent_rel)?;
        // unpack_in refuses paths and link targets that would land outside
        // `root`; a refusal is a damaged (or hostile) layer.
        let unpacked = entry.unpack_in(root).map_err(damaged)?;
        if !unpacked {
            return Err(ImageError::BadContent(format!("layer entry {} leaves the layer root", path.display())));
        }
    }
    Ok(())
}

/// A device node or fifo with the entry's mode, owner and device numbers.
fn make_node(target: &Path, h: &tar::Header, kind: tar::EntryType) -> Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let bad = |e: std::io::Error| ImageError::BadContent(format!("bad header: {e}"));
    let mode = h.mode().map_err(bad)? & 0o7777;
    let major = h.device_major().map_err(bad)?.unwrap_or(0);
    let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
    let flag = if kind.is_character_special() {
        SFlag::S_IFCHR
    } else if kind.is_block_special() {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFIFO
    };
    if std::fs::symlink_metadata(target).is_ok_and(|m| !m.is_dir()) {
        let _ = std::fs::remove_file(target);
    }
    let err = |what: &str, e: nix::Error| ImageError::Internal(format!("{what} {}: {e}", target.display()));
    mknod(target, flag, Mode::from_bits_truncate(mode), makedev(major.into(), minor.into()))
        .map_err(|e| err("creating", e))?;
    let (uid, gid) = (h.uid().map_err(bad)?, h.gid().map_err(bad)?);
    let owner = |n: u64| ImageError::BadContent(format!("{}: owner id {n} is beyond 32 bits", target.display()));
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        target,
        Some(nix::unistd::Uid::from_raw(u32::try_from(uid).map_err(|_| owner(uid))?)),
        Some(nix::unistd::Gid::from_raw(u32::try_from(gid).map_err(|_| owner(gid))?)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| err("chown", e))?;
    // mknod's mode went through the umask; set it as the layer says.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        target,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| err("chmod", e))
}

fn set_opaque(dir: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| ImageError::BadContent("NUL in layer path".into()))?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and live across the call; the
    // value pointer and length describe a 1-byte buffer.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        return Err(ImageError::Io {
            what: format!("marking {} opaque", dir.display()),
            source: std::sync::Arc::new(std::io::Error::last_os_error()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(std::fs::File::create(f.path()).unwrap());
        for (path, typ, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*typ);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Write the raw name so hostile paths reach the unpacker.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
        f
    }

    #[test]
    fn whiteouts_and_files() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped as a normal user: whiteouts are 0/0 character devices, and mknod needs root (CI runs it as root)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let l = layer(&[
            ("a/file", tar::EntryType::Regular, b"hi", None),
            ("a/.wh.gone", tar::EntryType::Regular, b"", None),
            ("b/.wh..wh..opq", tar::EntryType::Regular, b"", None),
        ]);
        let dest = d.path().join("snap");
        unpack_layer(l.path(), &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("a/file")).unwrap(), b"hi");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(dest.join("a/gone")).unwrap().file_type().is_char_device());
        assert!(dest.join("b").is_dir());
    }

    #[test]
    fn modes_and_devices_are_kept_as_the_layer_says() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped as a normal user: mknod of the layer's devices needs root (CI runs it as root)");
            return;
        }
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(std::fs::File::create(f.path()).unwrap());
        for (name, typ, mode) in [
            ("suid", tar::EntryType::Regular, 0o4755),
            ("plain", tar::EntryType::Regular, 0o644),
            ("null", tar::EntryType::Char, 0o666),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(typ);
            h.set_size(0);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            if typ == tar::EntryType::Char {
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
            }
            h.set_path(name).unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        b.finish().unwrap();
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("snap");
        unpack_layer(f.path(), &dest).unwrap();
        assert_eq!(std::fs::metadata(dest.join("suid")).unwrap().permissions().mode() & 0o7777, 0o4755);
        assert_eq!(std::fs::metadata(dest.join("plain")).unwrap().permissions().mode() & 0o7777, 0o644);
        let null = std::fs::symlink_metadata(dest.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    }

    #[test]
    fn escapes_are_refused_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        for bad in [
            layer(&[("../evil", tar::EntryType::Regular, b"x", None)]),
            layer(&[
                ("link", tar::EntryType::Symlink, b"", Some("/")),
                ("link/etc/evil", tar::EntryType::Regular, b"x", None),
            ]),
            layer(&[("hl", tar::EntryType::Link, b"", Some("../../outside"))]),
        ] {
            let dest = d.path().join("snap");
            assert!(unpack_layer(bad.path(), &dest).is_err());
            assert!(!dest.exists());
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "temp folders left behind");
    }
}
