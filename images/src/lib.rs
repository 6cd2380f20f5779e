//! Berth's images: what berthd's ImageService and CreateContainer stand on.
//! References are parsed and normalised (`reference`), registries reached
//! with their mirrors and credentials (`registry`, `registry_config`),
//! images pulled once however many ask (`pull`), stored by digest and
//! collected when nothing uses them (`images`), and layers unpacked into
//! snapshots (`unpack`).
pub mod error;
pub mod images;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod registry_config;
pub mod unpack;

pub use error::ImageError;
pub use pull::PullObserver;
