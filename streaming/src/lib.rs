//! Berth's streaming: the server kubelet redirects exec, attach and
//! port-forward to (`server`, over SPDY/3.1 in `spdy` or WebSocket), with
//! its idle limit (`idle_timeout`) and its way into a pod's network
//! namespace (`netns_socket`), and the client half berthctl and the tests
//! dial it with (`client`).
pub mod client;
pub mod idle_timeout;
pub mod netns_socket;
pub mod server;
pub mod spdy;
