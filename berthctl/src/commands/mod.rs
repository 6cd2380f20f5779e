//! One file per group of commands, as crictl groups them.
pub(crate) mod containers;
pub(crate) mod images;
pub(crate) mod node;
pub(crate) mod pods;
pub(crate) mod streams;
