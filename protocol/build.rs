//! Generates the CRI gRPC code (prost + tonic, from descriptors compiled by
//! protox so no protoc is needed) and the shim ttrpc code (rust-protobuf,
//! parsed in pure Rust by ttrpc-codegen), and the NRI ttrpc code the same way.
// A build script that cannot generate the code fails the build, with the
// reason: that is what its panics are.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(["proto/cri/api.proto", "proto/berth/images.proto"], ["proto/cri", "proto/berth"])
        .expect("compile CRI proto");
    // The descriptors themselves, for the protobuf JSON mapping berthctl
    // prints and reads (as crictl does).
    std::fs::write(out.join("cri_descriptor_set.bin"), prost::Message::encode_to_vec(&fds))
        .expect("write CRI descriptor set");
    tonic_prost_build::configure()
        // serde lets berthctl read crictl's JSON/YAML pod and container configs
        // and print `-o json`; every field is optional there, as in protobuf.
        .message_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .enum_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(fds.clone())
        .expect("generate CRI code");

    let shim_out = out.join("shim");
    std::fs::create_dir_all(&shim_out).expect("create shim out dir");
    ttrpc_codegen::Codegen::new()
        .out_dir(&shim_out)
        .inputs(["proto/shim/shim.proto"])
        .include("proto/shim")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize { async_all: true, ..Default::default() })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generate shim ttrpc code");
    for name in ["shim.rs", "shim_ttrpc.rs"] {
        strip_inner_attributes(&shim_out.join(name));
    }

    let nri_out = out.join("nri");
    std::fs::create_dir_all(&nri_out).expect("create nri out dir");
    ttrpc_codegen::Codegen::new()
        .out_dir(&nri_out)
        .inputs(["proto/nri/api.proto"])
        .include("proto/nri")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize { async_all: true, ..Default::default() })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generate NRI ttrpc code");
    for name in ["api.rs", "api_ttrpc.rs"] {
        strip_inner_attributes(&nri_out.join(name));
    }
}

/// `include!` cannot take a file that starts with inner attributes (`#![...]`)
/// or inner doc comments, which both generators emit.
fn strip_inner_attributes(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read generated file");
    let kept: Vec<&str> =
        text.lines().filter(|l| !l.trim_start().starts_with("#![") && !l.trim_start().starts_with("//!")).collect();
    std::fs::write(path, kept.join("\n")).expect("write generated file");
}
