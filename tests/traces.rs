//! Traces: with an OTLP endpoint the daemon exports one trace per cycle (a span per stage) and a span per remediation carrying its id, to a collector of the test's own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use mapek::knowledge::remediations::Status;
use mapek::knowledge::Store;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;

/// A minimal OTLP/HTTP collector: stores every request body, answers 200.
fn collector() -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0usize;
            let mut path = String::new();
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if l.starts_with("post ") {
                    path = l.clone();
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            if path.contains("/v1/traces") {
                kept.lock().expect("lock").push(body);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (port, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cycle_is_a_trace_and_each_remediation_a_span_with_its_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, bodies) = collector();
    let status = Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(["--demo", "run", "--cycles", "2"])
        .current_dir(dir.path())
        .env("MAPEK_LOG", "warn")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("MAPEK_INTERVAL", "100ms")
        .stdout(Stdio::null())
        .status()
        .expect("the daemon runs");
    assert!(status.success());
    let requests = bodies.lock().expect("lock").clone();
    assert!(!requests.is_empty(), "nothing was exported");
    let mut spans = Vec::new();
    let mut services = Vec::new();
    for body in &requests {
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for rs in request.resource_spans {
            services.extend(
                rs.resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .filter(|kv| kv.key == "service.name")
                    .map(|kv| format!("{:?}", kv.value)),
            );
            spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans));
        }
    }
    assert!(services.iter().all(|s| s.contains("mapek")) && !services.is_empty());
    let cycles: Vec<_> = spans.iter().filter(|s| s.name == "cycle").collect();
    assert_eq!(cycles.len(), 2, "one trace per cycle");
    for stage in ["monitor", "analyze", "plan", "execute"] {
        let of_stage: Vec<_> = spans.iter().filter(|s| s.name == stage).collect();
        assert_eq!(of_stage.len(), 2, "a `{stage}` span per cycle");
        for s in of_stage {
            assert!(
                cycles
                    .iter()
                    .any(|c| c.span_id == s.parent_span_id && c.trace_id == s.trace_id),
                "`{stage}` is a child of its cycle"
            );
        }
    }
    let attribute = |s: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(any_value::Value::StringValue(text)) => Some(text.clone()),
                _ => None,
            })
    };
    let remediation_ids: Vec<String> = spans
        .iter()
        .filter(|s| s.name == "remediation")
        .filter_map(|s| attribute(s, "id"))
        .collect();
    let store = Store::open(&dir.path().join("mapek-demo/mapek.db").display().to_string())
        .await
        .expect("the demo's store");
    let executed = store
        .remediations_with_status(Status::Executed)
        .await
        .expect("remediations");
    assert_eq!(executed.len(), 3);
    for r in &executed {
        let n = remediation_ids.iter().filter(|id| **id == r.id).count();
        assert_eq!(n, 2, "{}: a span when planned and one when executed", r.id);
    }
}
