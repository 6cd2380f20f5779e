//! Links berth-shim as a fixed-address (non-PIE) executable and builds the
//! pod init it carries.
//!
//! - Non-PIE: a position-independent Rust binary has ~70 KiB of pointers
//!   (vtables, panic locations, the GOT) that the loader rewrites at every
//!   start, so each shim kept its own dirty copy, a fifth of its memory. At a
//!   fixed address they are resolved at link time and shared, clean, by every
//!   shim. The shim's code loses address randomization; its inputs are
//!   berthd's requests on a root-only socket and the bytes containers write,
//!   which it only splits into lines.
//! - pod-init/pod_init.c: pid 1 of a pod pid namespace, freestanding (no libc,
//!   no loader), written with the C compiler to `$OUT_DIR/pod-init` and
//!   embedded by `namespaces.rs`.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rustc-link-arg-bin=berth-shim=-no-pie");
    println!("cargo:rerun-if-changed=pod-init/pod_init.c");
    println!("cargo:rerun-if-env-changed=CC");
    let Some(out_dir) = std::env::var_os("OUT_DIR") else { panic!("cargo sets OUT_DIR") };
    let out = PathBuf::from(out_dir).join("pod-init");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-Os",
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-no-pie",
            "-Wall",
            "-Werror",
            "-Wl,--build-id=none",
            // One page: text, data and headers packed, no alignment padding.
            "-Wl,-n",
            "-s",
            "-o",
        ])
        .arg(&out)
        .arg("pod-init/pod_init.c")
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("building shim/pod-init/pod_init.c with {cc} (set CC to another C compiler): {other:?}"),
    }
}
