//! What `herald relay` serves to operators: Prometheus metrics (`--metrics-addr`) and
//! liveness and readiness probes (`--health-addr`).
//!
//! Both are plain HTTP/1.1 GETs answered by a small server of our own: one request per
//! connection, answered and closed, which is all Prometheus and a kubelet ask for.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::store::AnyStore;
use crate::transport::AnyTransport;

/// Histogram buckets of the `_seconds` metrics: 1 ms to 5 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets of the relay's batch sizes (rows).
const ROWS_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 512.0, 1024.0];

/// How long one readiness check may take before its dependency counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs the Prometheus recorder as the process's `metrics` recorder, describes Herald's
/// metrics, and keeps its histograms trimmed until `shutdown`.
pub fn install_recorder(shutdown: CancellationToken) -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_rows".into()), ROWS_BUCKETS)?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    herald_relay::metrics::describe();
    herald_consumer::metrics::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => upkeep.run_upkeep(),
            }
        }
    });
    Ok(handle)
}

/// Serves `GET /metrics` on `addr` until `shutdown`.
pub async fn serve_metrics(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = bind(addr, "metrics").await?;
    let handle = Arc::new(handle);
    Ok(tokio::spawn(serve(listener, shutdown, move |path| {
        let handle = handle.clone();
        async move {
            match path.as_str() {
                "/metrics" => Response {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: handle.render(),
                },
                _ => Response::not_found(),
            }
        }
    })))
}

/// What readiness depends on.
#[derive(Clone)]
pub struct Dependencies {
    /// The outbox's database.
    pub store: AnyStore,
    /// The broker.
    pub transport: AnyTransport,
}

/// One dependency's state in a readiness answer.
#[derive(Debug, Serialize)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Check {
    async fn run(check: impl Future<Output = herald_core::Result<()>>) -> Check {
        match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(Ok(())) => Check {
                ok: true,
                error: None,
            },
            Ok(Err(error)) => Check {
                ok: false,
                error: Some(error.chain()),
            },
            Err(_) => Check {
                ok: false,
                error: Some(format!("no answer within {CHECK_TIMEOUT:?}")),
            },
        }
    }
}

/// The body of a readiness answer.
#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    database: Check,
    broker: Check,
}

impl Dependencies {
    /// Asks the database and the broker, both at once.
    async fn readiness(&self) -> Readiness {
        let (database, broker) = tokio::join!(
            Check::run(self.store.ping()),
            Check::run(self.transport.ping())
        );
        Readiness {
            ready: database.ok && broker.ok,
            database,
            broker,
        }
    }
}

/// Whether the database and the broker answer, as `herald_dependency_up{dependency="database"}`
/// and `{dependency="broker"}` gauges (1 or 0), asked every `interval` until `shutdown`.
pub async fn watch_dependencies(
    dependencies: Dependencies,
    interval: Duration,
    shutdown: CancellationToken,
) {
    metrics::describe_gauge!(
        DEPENDENCY_UP,
        metrics::Unit::Count,
        "Whether a dependency (database, broker) answered the last check: 1 or 0."
    );
    loop {
        let readiness = dependencies.readiness().await;
        for (dependency, check) in [
            ("database", &readiness.database),
            ("broker", &readiness.broker),
        ] {
            metrics::gauge!(DEPENDENCY_UP, "dependency" => dependency)
                .set(f64::from(u8::from(check.ok)));
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// The gauge [`watch_dependencies`] sets.
pub const DEPENDENCY_UP: &str = "herald_dependency_up";

/// Serves `GET /livez` (the process answers: 200) and `GET /readyz` (200 when the database and
/// the broker both answer, else 503; the body says which failed) on `addr` until `shutdown`.
/// `/healthz` is `/livez`.
pub async fn serve_health(
    addr: SocketAddr,
    dependencies: Dependencies,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = bind(addr, "health").await?;
    Ok(tokio::spawn(serve(listener, shutdown, move |path| {
        let dependencies = dependencies.clone();
        async move {
            match path.as_str() {
                "/livez" | "/healthz" => Response::json(200, "{\"live\":true}".into()),
                "/readyz" => {
                    let readiness = dependencies.readiness().await;
                    let status = if readiness.ready { 200 } else { 503 };
                    let body = serde_json::to_string(&readiness)
                        .unwrap_or_else(|_| "{\"ready\":false}".into());
                    Response::json(status, body)
                }
                _ => Response::not_found(),
            }
        }
    })))
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))?;
    info!(addr = %listener.local_addr()?, "serving {what}");
    Ok(listener)
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn json(status: u16, body: String) -> Self {
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn not_found() -> Self {
        Response {
            status: 404,
            content_type: "text/plain; charset=utf-8",
            body: "not found\n".into(),
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            400 => "Bad Request",
            _ => "Service Unavailable",
        }
    }
}

/// Accepts connections until `shutdown`; each gets one answer from `route` (given the path).
async fn serve<F, Fut>(listener: TcpListener, shutdown: CancellationToken, route: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    debug!(%error, "accept failed");
                    continue;
                }
            },
        };
        let route = route.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, route).await {
                debug!(%error, "an operations request failed");
            }
        });
    }
}

/// Reads one request's head (bounded in size and time) and writes the answer.
async fn answer<F, Fut>(mut stream: TcpStream, route: F) -> std::io::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Response>,
{
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("").to_owned();
    let response = match method {
        "GET" | "HEAD" => route(path).await,
        "" => Response {
            status: 400,
            content_type: "text/plain; charset=utf-8",
            body: "bad request\n".into(),
        },
        _ => Response {
            status: 405,
            content_type: "text/plain; charset=utf-8",
            body: "only GET\n".into(),
        },
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        response.status,
        response.reason(),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(response.body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}
