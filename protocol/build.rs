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

    ttrpc_code(&out.join("shim"), "proto/shim/shim.proto", "proto/shim", ["shim.rs", "shim_ttrpc.rs"]);
    ttrpc_code(&out.join("nri"), "proto/nri/api.proto", "proto/nri", ["api.rs", "api_ttrpc.rs"]);
}

/// rust-protobuf messages and async ttrpc glue for one proto, in `out`.
fn ttrpc_code(out: &Path, proto: &str, include: &str, generated: [&str; 2]) {
    std::fs::create_dir_all(out).expect("create ttrpc out dir");
    ttrpc_codegen::Codegen::new()
        .out_dir(out)
        .inputs([proto])
        .include(include)
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize { async_all: true, ..Default::default() })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .unwrap_or_else(|e| panic!("generate ttrpc code of {proto}: {e}"));
    for name in generated {
        strip_inner_attributes(&out.join(name));
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
