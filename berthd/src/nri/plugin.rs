//! One connected NRI plugin: its multiplexed connection, its registration,
//! its configuration, and each call to it under the request timeout. A
//! plugin that hangs, breaks its connection or answers with a transport
//! error is closed and dropped (the call goes on without it, as NRI does);
//! one that answers with an error status fails the call it was asked about.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::nri as api;
use slog::{info, warn, Logger};
use tokio::sync::{mpsc, oneshot, Notify};

use berth_core::error::{Error, Kind, Result};

use super::Unsolicited;

/// Every event a plugin can subscribe to (bits 1..=11 of NRI's mask; pod
/// updates and adjustment validation are not events Berth sends).
pub const VALID_EVENTS: u32 = (1 << 11) - 1;
/// The bits NRI defines at all (through VALIDATE_CONTAINER_ADJUSTMENT).
const KNOWN_EVENTS: u32 = (1 << 14) - 1;

/// A registered, configured plugin.
pub struct Plugin {
    /// `<index>-<name>`, as NRI names it.
    pub name: String,
    /// The index, two digits: plugins are called in ascending order.
    pub index: String,
    events: u32,
    client: api::PluginClient,
    request_timeout: Duration,
    closed: AtomicBool,
    close: Arc<Notify>,
    log: Logger,
    /// The runtime service the plugin calls; kept for the connection's life.
    _server: std::sync::Mutex<ttrpc::r#async::Server>,
}

/// What came of one call to a plugin.
pub enum Answer<R> {
    /// The plugin answered.
    Reply(R),
    /// The plugin is not subscribed to the event.
    NotSubscribed,
    /// The plugin hung or its connection broke: it was closed and dropped.
    Dropped,
}

impl Plugin {
    /// Takes a plugin's connection through registration and Configure. The
    /// returned watcher resolves when the connection closes.
    pub async fn connect(
        stream: tokio::net::UnixStream,
        timeouts: (Duration, Duration),
        runtime: (&str, &str),
        unsolicited: mpsc::Sender<Unsolicited>,
        log: &Logger,
    ) -> Result<(Arc<Plugin>, impl std::future::Future<Output = ()> + Send + 'static)> {
        let (registration_timeout, request_timeout) = timeouts;
        let mux = protocol::nri_mux::split(stream);
        let mut pumps = mux.pumps;
        let (reg_tx, reg_rx) = oneshot::channel();
        let service = Arc::new(RuntimeService {
            registered: std::sync::Mutex::new(Some(reg_tx)),
            name: std::sync::OnceLock::new(),
            unsolicited,
            request_timeout,
        });
        let listener = ttrpc::r#async::transport::Listener::new(futures::stream::iter([Ok::<_, std::io::Error>(
            mux.runtime_service,
        )]));
        let mut server =
            ttrpc::r#async::Server::new().add_listener(listener).register_service(api::create_runtime(service.clone()));
        server.start().await.map_err(|e| Error::internal(format!("serving an NRI plugin's runtime calls: {e}")))?;
        let client = api::PluginClient::new(ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(
            mux.plugin_service,
        )));

        let registered = tokio::select! {
            r = tokio::time::timeout(registration_timeout, reg_rx) => match r {
                Ok(Ok(req)) => req,
                Ok(Err(_)) => return Err(Error::invalid("the NRI plugin's registration was refused")),
                Err(_) => return Err(Error::new(Kind::DeadlineExceeded, format!(
                    "the NRI plugin did not register within {registration_timeout:?}"
                ))),
            },
            () = pumps.closed() => return Err(Error::new(Kind::Unavailable, "the NRI plugin closed its connection before registering")),
        };
        let name = format!("{}-{}", registered.plugin_idx, registered.plugin_name);
        let _ = service.name.set(name.clone());
        let log = log.new(slog::o!("plugin" => name.clone()));

        let mut req = api::ConfigureRequest::new();
        req.runtime_name = runtime.0.to_string();
        req.runtime_version = runtime.1.to_string();
        req.registration_timeout = i64::try_from(registration_timeout.as_millis()).unwrap_or(i64::MAX);
        req.request_timeout = i64::try_from(request_timeout.as_millis()).unwrap_or(i64::MAX);
        req.NRI_version = api::NRI_VERSION.to_string();
        let configured = tokio::select! {
            r = tokio::time::timeout(request_timeout, client.configure(deadline(request_timeout), &req)) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(Error::invalid(format!("NRI plugin {name} failed Configure: {e}"))),
                Err(_) => return Err(Error::new(Kind::DeadlineExceeded, format!("NRI plugin {name} did not answer Configure within {request_timeout:?}"))),
            },
            () = pumps.closed() => return Err(Error::new(Kind::Unavailable, format!("NRI plugin {name} closed its connection in Configure"))),
        };
        let events = u32::try_from(configured.events).unwrap_or(u32::MAX);
        if events & !KNOWN_EVENTS != 0 {
            return Err(Error::invalid(format!("NRI plugin {name} subscribed to unknown events {events:#x}")));
        }
        let events = if events == 0 { VALID_EVENTS } else { events };
        let close = Arc::new(Notify::new());
        let plugin = Arc::new(Plugin {
            name,
            index: registered.plugin_idx,
            events,
            client,
            request_timeout,
            closed: AtomicBool::new(false),
            close: close.clone(),
            log,
            _server: std::sync::Mutex::new(server),
        });
        let watcher = async move {
            tokio::select! {
                () = pumps.closed() => {}
                () = close.notified() => {}
            }
            // Dropping the pumps closes the trunk.
            drop(pumps);
        };
        Ok((plugin, watcher))
    }

    /// Whether the plugin asked for `event`.
    pub fn subscribed(&self, event: api::Event) -> bool {
        let bit = event as u32;
        bit > 0 && self.events & (1 << (bit - 1)) != 0
    }

    /// Whether the plugin was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the plugin's connection; it is dropped from every later call.
    pub fn close(&self, why: &str) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            warn!(self.log, "closing NRI plugin"; "why" => why);
            self.close.notify_one();
        }
    }

    /// The client and a context carrying the request timeout, for a call.
    pub fn client(&self) -> (&api::PluginClient, ttrpc::context::Context) {
        (&self.client, deadline(self.request_timeout))
    }

    /// Runs one call under the request timeout: the plugin's answer, or
    /// Dropped if it hung or broke, or the error status it answered with.
    pub async fn call<R>(
        &self,
        event: api::Event,
        what: &str,
        call: impl std::future::Future<Output = ttrpc::Result<R>>,
    ) -> Result<Answer<R>> {
        if !self.subscribed(event) {
            return Ok(Answer::NotSubscribed);
        }
        self.call_always(what, call).await
    }

    /// As [`Plugin::call`], for calls every plugin gets (Synchronize).
    pub async fn call_always<R>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = ttrpc::Result<R>>,
    ) -> Result<Answer<R>> {
        if self.is_closed() {
            return Ok(Answer::Dropped);
        }
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(r)) => Ok(Answer::Reply(r)),
            Ok(Err(ttrpc::Error::RpcStatus(s))) if s.code() != ttrpc::Code::DEADLINE_EXCEEDED => Err(Error::new(
                Kind::FailedPrecondition,
                format!("NRI plugin {} failed {what}: {}", self.name, s.message()),
            )),
            Ok(Err(e)) => {
                self.close(&format!("{what}: {e}"));
                Ok(Answer::Dropped)
            }
            Err(_) => {
                self.close(&format!("{what} took longer than {:?}", self.request_timeout));
                Ok(Answer::Dropped)
            }
        }
    }

    /// Tells the plugin berthd is going down (best effort).
    pub async fn shutdown(&self) {
        let (c, ctx) = self.client();
        let _ = self.call_always("Shutdown", c.shutdown(ctx, &api::Empty::new())).await;
        info!(self.log, "NRI plugin told of shutdown");
    }
}

/// A ttrpc context whose deadline the plugin sees.
fn deadline(t: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(t.as_nanos()).unwrap_or(i64::MAX))
}

/// NRI's rule for a plugin name: a non-empty name without path separators
/// or spaces, and an index of two digits.
pub fn check_registration(name: &str, index: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 64 || name.contains(['/', ' ', '\0']) || name.starts_with('.') {
        return Err(format!("invalid plugin name {name:?}"));
    }
    if index.len() != 2 || !index.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid plugin index {index:?}: two digits, 00 to 99"));
    }
    Ok(())
}

/// The runtime service one plugin calls: RegisterPlugin once, then
/// UpdateContainers (its unsolicited updates and evictions).
struct RuntimeService {
    registered: std::sync::Mutex<Option<oneshot::Sender<api::RegisterPluginRequest>>>,
    name: std::sync::OnceLock<String>,
    unsolicited: mpsc::Sender<Unsolicited>,
    request_timeout: Duration,
}

fn status(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

#[async_trait::async_trait]
impl api::Runtime for RuntimeService {
    async fn register_plugin(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: api::RegisterPluginRequest,
    ) -> ttrpc::Result<api::Empty> {
        check_registration(&req.plugin_name, &req.plugin_idx).map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e))?;
        let tx = self.registered.lock().map_err(|_| status(ttrpc::Code::INTERNAL, "poisoned"))?.take();
        let Some(tx) = tx else {
            return Err(status(ttrpc::Code::ALREADY_EXISTS, "the plugin is already registered"));
        };
        tx.send(req).map_err(|_| status(ttrpc::Code::UNAVAILABLE, "registration is over"))?;
        Ok(api::Empty::new())
    }

    async fn update_containers(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: api::UpdateContainersRequest,
    ) -> ttrpc::Result<api::UpdateContainersResponse> {
        let Some(plugin) = self.name.get().cloned() else {
            return Err(status(ttrpc::Code::FAILED_PRECONDITION, "register the plugin first"));
        };
        let (reply, failed) = oneshot::channel();
        let msg = Unsolicited { plugin, updates: req.update, evictions: req.evict, reply: Some(reply) };
        self.unsolicited
            .try_send(msg)
            .map_err(|_| status(ttrpc::Code::RESOURCE_EXHAUSTED, "too many updates in flight"))?;
        let failed = tokio::time::timeout(self.request_timeout * 4, failed)
            .await
            .map_err(|_| status(ttrpc::Code::DEADLINE_EXCEEDED, "the updates did not finish in time"))?
            .map_err(|_| status(ttrpc::Code::UNAVAILABLE, "berthd is going down"))?;
        let mut resp = api::UpdateContainersResponse::new();
        resp.failed = failed;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indexes_follow_nri() {
        assert!(check_registration("test", "10").is_ok());
        assert!(check_registration("", "10").is_err());
        assert!(check_registration("a/b", "10").is_err());
        assert!(check_registration("x", "1").is_err());
        assert!(check_registration("x", "1a").is_err());
        assert!(check_registration("x", "100").is_err());
    }

    #[test]
    fn the_mask_has_one_bit_per_event() {
        assert_eq!(VALID_EVENTS & (1 << (api::Event::RUN_POD_SANDBOX as u32 - 1)), 1);
        assert_ne!(VALID_EVENTS & (1 << (api::Event::REMOVE_CONTAINER as u32 - 1)), 0);
        assert_eq!(VALID_EVENTS & (1 << (api::Event::UPDATE_POD_SANDBOX as u32 - 1)), 0);
    }
}
