//! Prometheus metrics over HTTP (O7), shared by the server and the gateway.
//!
//! Two kinds of metric live in one `prometheus_client` registry: instruments the code updates
//! as things happen (histograms such as push latency and store commit time), registered by the
//! role; and values read from the role's live state at each scrape (sessions, seats, cache
//! counters), which the role gathers asynchronously into a [`Sample`] right before the
//! registry is encoded. The second kind keeps the hot paths free of metric bookkeeping: the
//! counters they already keep for `status` are what the scrape reads.
//!
//! Only `GET /metrics` is served, in the OpenMetrics text format, on the address the role's
//! configuration gives (`metrics.listen`; off when empty). Nothing here is authenticated:
//! bind it to loopback or a management network.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// `[metrics]` in a role's configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// TCP address of the Prometheus endpoint (`GET /metrics`), e.g. `127.0.0.1:9464`. Not set:
    /// no endpoint. It is not authenticated: keep it on loopback or a management network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// Label pairs of one point.
pub type Labels = Vec<(&'static str, String)>;

/// One metric family read at a scrape.
#[derive(Debug, Clone)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    points: Vec<(Labels, f64)>,
}

/// The values read from live state for one scrape.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    families: Vec<Family>,
}

impl Sample {
    /// A counter (only ever grows while the process runs; the name gets `_total`).
    pub fn counter(&mut self, name: &'static str, help: &'static str, v: u64) -> &mut Self {
        self.counters(name, help, [(vec![], v)])
    }

    /// A counter with labelled points.
    pub fn counters(
        &mut self,
        name: &'static str,
        help: &'static str,
        points: impl IntoIterator<Item = (Labels, u64)>,
    ) -> &mut Self {
        self.families.push(Family {
            name,
            help,
            counter: true,
            points: points.into_iter().map(|(l, v)| (l, v as f64)).collect(),
        });
        self
    }

    /// A gauge.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, v: f64) -> &mut Self {
        self.gauges(name, help, [(vec![], v)])
    }

    /// A gauge with labelled points.
    pub fn gauges(
        &mut self,
        name: &'static str,
        help: &'static str,
        points: impl IntoIterator<Item = (Labels, f64)>,
    ) -> &mut Self {
        self.families.push(Family {
            name,
            help,
            counter: false,
            points: points.into_iter().collect(),
        });
        self
    }
}

/// The collector holding the latest [`Sample`].
#[derive(Debug, Default)]
struct Latest(Mutex<Sample>);

impl Collector for Latest {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = self.0.lock().expect("metrics sample lock").clone();
        for f in &sample.families {
            let kind = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut m = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            match f.points.as_slice() {
                // One point without labels: `name value`, not `name{} value`.
                [(labels, v)] if labels.is_empty() => put(f.counter, m, *v)?,
                points => {
                    for (labels, v) in points {
                        put(f.counter, m.encode_family(labels)?, *v)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn put(counter: bool, e: MetricEncoder<'_>, v: f64) -> Result<(), std::fmt::Error> {
    if counter {
        ConstCounter::new(v as u64).encode(e)
    } else {
        ConstGauge::new(v).encode(e)
    }
}

/// Gathers a role's live values for one scrape.
pub type Gather = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Sample> + Send>> + Send + Sync>;

/// A role's metrics: its registry (register instruments in it before serving) and the
/// scrape-time values.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    latest: Arc<Latest>,
    /// One scrape at a time: gather, then encode what was gathered.
    scrape: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let latest = Arc::new(Latest::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(latest.clone()));
        Metrics {
            registry: Mutex::new(registry),
            latest,
            scrape: tokio::sync::Mutex::new(()),
        }
    }
}

impl Metrics {
    /// Registers an instrument (`name` without `_total` for counters).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .expect("metrics registry lock")
            .register(name, help, metric);
    }

    /// The text of one scrape.
    pub async fn render(&self, gather: &Gather) -> String {
        let _one = self.scrape.lock().await;
        let sample = gather().await;
        *self.latest.0.lock().expect("metrics sample lock") = sample;
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding to a String does not fail");
        out
    }
}

/// OpenMetrics text, as Prometheus asks for it.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` (refusing with the reason when it cannot) and serves `GET /metrics` until
/// `stop`. Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    gather: Gather,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("metrics.listen {addr}: {e} (pick a free address, or leave it empty to turn metrics off)"),
        )
    })?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let gather = gather.clone();
            async move {
                let body = metrics.render(&gather).await;
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
            }
        }),
    );
    info!(addr = %bound, "metrics served at /metrics");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// Seconds histogram buckets from 0.5 ms to ~16 s (doubling).
pub fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}
