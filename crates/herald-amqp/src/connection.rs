//! A recovering connection: connects on first use, notices when the connection is gone
//! (broker restart, network failure, missed heartbeats), and reconnects with jittered
//! exponential backoff on the next use, so that whoever needs a channel gets one as soon as
//! the broker is back.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use herald_core::{Error, Result};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::LongString;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::AmqpConfig;
use crate::error::{self, ResultExt, Secrets};

/// One AMQP connection for one role (publishing or consuming), re-established on demand.
pub(crate) struct Link {
    role: &'static str,
    config: Arc<AmqpConfig>,
    secrets: Secrets,
    state: Mutex<LinkState>,
    closed: AtomicBool,
}

#[derive(Default)]
struct LinkState {
    connection: Option<Connection>,
    /// Failed attempts since the last success.
    failures: u32,
    /// No attempt before this instant (the backoff after a failure).
    retry_at: Option<Instant>,
    /// Connections established so far (1 for the first).
    generation: u64,
}

impl Link {
    pub(crate) fn new(role: &'static str, config: Arc<AmqpConfig>, secrets: Secrets) -> Self {
        Link {
            role,
            config,
            secrets,
            state: Mutex::new(LinkState::default()),
            closed: AtomicBool::new(false),
        }
    }

    /// A new channel on the current connection, connecting first if there is none or it was
    /// lost. After a failed attempt the next one waits out the backoff (callers queue behind
    /// it). Returns the channel and the connection's generation.
    pub(crate) async fn channel(&self) -> Result<(Channel, u64)> {
        let mut state = self.state.lock().await;
        if self.is_closed() {
            return Err(error::permanent("connect", "transport is closed"));
        }
        if let Some(connection) = &state.connection {
            if connection.status().connected() {
                match connection.create_channel().await {
                    Ok(channel) => return Ok((channel, state.generation)),
                    Err(err) => {
                        warn!(role = self.role, error = %self.secrets.scrub(&err.to_string()), "cannot open a channel; reconnecting");
                    }
                }
            } else {
                warn!(
                    role = self.role,
                    "connection to the broker lost; reconnecting"
                );
            }
            state.connection = None;
        }
        if let Some(at) = state.retry_at {
            tokio::time::sleep_until(at).await;
        }
        if self.is_closed() {
            return Err(error::permanent("connect", "transport is closed"));
        }
        match self.connect().await {
            Ok(connection) => {
                let channel = connection
                    .create_channel()
                    .await
                    .amqp("open a channel", &self.secrets)?;
                state.generation += 1;
                if state.failures > 0 {
                    info!(
                        role = self.role,
                        attempts = state.failures + 1,
                        "reconnected to the broker"
                    );
                } else {
                    info!(role = self.role, url = %self.redacted_url(), "connected to the broker");
                }
                state.failures = 0;
                state.retry_at = None;
                state.connection = Some(connection);
                Ok((channel, state.generation))
            }
            Err(err) => {
                state.failures = state.failures.saturating_add(1);
                let delay = self.config.reconnect.delay(state.failures);
                state.retry_at = Some(Instant::now() + delay);
                warn!(
                    role = self.role,
                    attempt = state.failures,
                    retry_in = ?delay,
                    error = %err.chain(),
                    "cannot connect to the broker"
                );
                Err(err)
            }
        }
    }

    /// Closes the connection for good; later [`channel`](Self::channel) calls fail.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let connection = self.state.lock().await.connection.take();
        if let Some(connection) = connection
            && connection.status().connected()
        {
            let _ = connection.close(200, "closed by herald".into()).await;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn redacted_url(&self) -> String {
        herald_core::redact::redact_url(&self.config.url)
    }

    /// One connection attempt, bounded by the connect timeout.
    async fn connect(&self) -> Result<Connection> {
        let mut uri: AMQPUri = self.config.url.parse().map_err(|e: String| {
            Error::Config(format!(
                "invalid AMQP URL `{}`: {}",
                self.redacted_url(),
                self.secrets.scrub(&e)
            ))
        })?;
        if uri.query.heartbeat.is_none() {
            let secs = self.config.heartbeat.as_secs().min(u64::from(u16::MAX));
            uri.query.heartbeat = Some(secs as u16);
        }
        let name = format!("{} {}", self.config.connection_name, self.role);
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(name))
            .with_client_property("product".into(), "herald-amqp".into())
            .with_client_property("version".into(), env!("CARGO_PKG_VERSION").into());
        let tls = self.tls()?;
        let runtime = lapin::runtime::default_runtime().amqp("connect", &self.secrets)?;
        let attempt = Connection::connect_uri_with_config(uri, properties, tls, runtime);
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(result) => result.amqp("connect", &self.secrets),
            Err(_) => Err(error::transient(
                "connect",
                format!(
                    "no connection to {} within {:?}",
                    self.redacted_url(),
                    self.config.connect_timeout
                ),
            )),
        }
    }

    /// The TLS settings, files read now (so that rotated certificates are picked up on the
    /// next reconnection).
    fn tls(&self) -> Result<OwnedTLSConfig> {
        let read = |what: &str, path: &std::path::Path| {
            fs::read(path).map_err(|e| {
                Error::Config(format!(
                    "cannot read the TLS {what} `{}`: {e}",
                    path.display()
                ))
            })
        };
        let tls = &self.config.tls;
        let cert_chain = match &tls.ca_file {
            Some(path) => Some(String::from_utf8(read("CA file", path)?).map_err(|_| {
                Error::Config(format!("TLS CA file `{}` is not PEM text", path.display()))
            })?),
            None => None,
        };
        let identity = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read("client certificate", cert)?,
                key: read("client key", key)?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}
