//! Wire types of Berth and the contracts between its processes: the
//! Kubernetes CRI v1 API (gRPC, tonic/prost), the berth-shim API (ttrpc,
//! rust-protobuf), NRI (ttrpc over a multiplexed socket), the io stream
//! framing and how sockets are reached. No other crate
//! in the workspace defines a type that crosses a process boundary.

/// Kubernetes CRI `runtime.v1`: RuntimeService and ImageService.
pub mod cri {
    #![allow(
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap,
        missing_docs
    )]
    tonic::include_proto!("runtime.v1");
}

/// Berth's own gRPC calls beside CRI (image import from local files).
pub mod images {
    #![allow(
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap,
        missing_docs
    )]
    tonic::include_proto!("berth.images.v1");
}

/// The CRI and Berth image protos as a `FileDescriptorSet`, for the
/// protobuf JSON mapping (field names, enum names) clients print and read.
pub const CRI_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cri_descriptor_set.bin"));

pub mod cri_client;
pub mod cri_log;
pub mod cri_time;
pub mod io_stream;
pub mod shim_launch;
pub mod socket_path;

/// The berth-shim ttrpc API (`berth.shim.v1`).
pub mod shim {
    #![allow(
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap,
        missing_docs,
        unused_imports,
        unused_qualifications,
        unused_mut,
        nonstandard_style
    )]
    /// Messages of the shim API (the generated glue names this module `shim`).
    #[allow(clippy::module_inception)]
    pub mod shim {
        include!(concat!(env!("OUT_DIR"), "/shim/shim.rs"));
    }
    /// ttrpc client and server glue of the shim API.
    pub mod shim_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/shim/shim_ttrpc.rs"));
    }
    pub use shim::*;
    pub use shim_ttrpc::{create_shim, Shim, ShimClient};

    /// Version of the shim API this build speaks; bumped on incompatible change.
    pub const API_VERSION: u32 = 1;
}

/// The NRI protocol (`nri.pkg.api.v1alpha1`, containerd/nri's): the Plugin
/// service berthd calls and the Runtime service it serves, over one
/// connection split by [`nri_mux`].
pub mod nri {
    #![allow(
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap,
        missing_docs,
        unused_imports,
        unused_qualifications,
        unused_mut,
        nonstandard_style
    )]
    /// Messages of the NRI API (the generated glue names this module `api`).
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/nri/api.rs"));
    }
    /// ttrpc client and server glue of the NRI API.
    pub mod api_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/nri/api_ttrpc.rs"));
    }
    pub use api::*;
    pub use api_ttrpc::{create_plugin, create_runtime, Plugin, PluginClient, Runtime, RuntimeClient};

    /// The NRI version Berth speaks, as plugins and runtimes report it.
    pub const NRI_VERSION: &str = "v0.9.0";
}
pub mod nri_mux;
