//! Logs and traces: `tracing` to stdout (pretty or JSON), and OpenTelemetry spans exported with OTLP over HTTP when a collector is named.
//!
//! The collector is `otlp_endpoint` in the configuration, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (spans go to `<endpoint>/v1/traces`). Without one, no
//! OpenTelemetry layer is installed at all: nothing is exported and nothing slows down.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::config::LogFormat;

/// Flushes and stops the exporter when dropped (at the end of `mapek run`).
pub struct Traces(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(error) = p.shutdown() {
                eprintln!("mapek: flushing traces to the OTLP collector failed: {error}");
            }
        }
    }
}

/// The collector's traces URL: the configured endpoint, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn endpoint(configured: Option<&str>) -> Option<String> {
    let base = configured
        .map(str::to_string)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty())?;
    let base = base.trim().trim_end_matches('/');
    Some(if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    })
}

/// Installs the global subscriber: the log format, filtered by `MAPEK_LOG`, and the OTLP layer
/// when `otlp` names a collector. A second call keeps the first subscriber.
pub fn init(format: LogFormat, otlp: Option<String>) -> Traces {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("MAPEK_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
    };
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        // Colours only on a terminal: in a journal, a file or a pipe they are noise.
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    let (otel, provider) = match otlp.map(|url| exporter(&url)) {
        Some(Ok(provider)) => {
            let tracer = provider.tracer("mapek");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::EnvFilter::new("mapek=info"));
            (Some(layer), Some(provider))
        }
        Some(Err(error)) => {
            eprintln!("mapek: no traces: the OTLP exporter cannot be built: {error}");
            (None, None)
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .try_init();
    Traces(provider)
}

fn exporter(url: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("mapek")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn the_configured_endpoint_gets_the_traces_path_once() {
        assert_eq!(
            endpoint(Some("http://collector:4318")).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            endpoint(Some("http://collector:4318/v1/traces/")).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
    }
}
