//! The daemon governing a copy of the real ggen marketplace: a flipped byte of one archive withholds its pack from the written and the served catalog, signed; a rollback brings the fixture's catalog back byte for byte; with archives in a folder and over loopback HTTP.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mapek::keys::{verify_hex, KeyPair, TrustStore};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A plain HTTP/1.1 GET on loopback: (status, headers, body).
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, buf[split + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cycles(port: u16) -> u64 {
    let (_, _, body) = get(port, "/metrics", &[]);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            l.strip_prefix("mapek_cycles_total ")
                .map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
        })
        .unwrap_or(0)
}

struct Setup {
    dir: PathBuf,
    checkout: PathBuf,
    config: PathBuf,
    publish: PathBuf,
    port: u16,
    key: KeyPair,
}

/// Keys, the shipped policies and a configuration for a daemon governing `checkout`, its
/// archives at `archives` (a folder by default).
fn setup(
    dir: &Path,
    checkout: PathBuf,
    url: &str,
    archives: Option<String>,
    full_scan: &str,
) -> Setup {
    let key = KeyPair::from_seed("daemon", [9; 32]);
    key.save(dir).expect("key");
    std::fs::write(
        dir.join("trusted-keys.toml"),
        TrustStore::default().to_toml(),
    )
    .expect("trust");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policies");
    for f in ["integrity.toml", "guards.toml"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("policies")
                .join(f),
            policies.join(f),
        )
        .expect("policy");
    }
    let port = free_port();
    let publish = dir.join("www/index.json");
    let archives = archives
        .map(|a| format!("archives = \"{a}\"\n"))
        .unwrap_or_default();
    let config = dir.join("mapek.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{url}\"\npolicies = \"{p}\"\ntrusted_keys = \"{d}/trusted-keys.toml\"\n\
             key_file = \"{d}/daemon.key\"\ninterval = \"300ms\"\nfull_scan_interval = \"{full_scan}\"\n\
             listen = \"127.0.0.1:{port}\"\nlease_ttl = \"1s\"\n\n[registry]\nkind = \"ggen-marketplace\"\ncheckout = \"{c}\"\n\
             publish = \"{w}\"\n{archives}",
            p = policies.display(),
            d = dir.display(),
            c = checkout.display(),
            w = publish.display(),
        ),
    )
    .expect("config");
    Setup {
        dir: dir.to_path_buf(),
        checkout,
        config,
        publish,
        port,
        key,
    }
}

fn mapek(s: &Setup) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mapek"));
    c.arg("--config").arg(&s.config);
    c.env("MAPEK_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("MAPEK_DATABASE_URL");
    c
}

fn names(catalog: &[u8], key: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_slice(catalog).expect("the catalog is JSON");
    doc[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The whole story on one setup: published as the fixture, a flipped byte withholds the pack
/// within a cycle (written and served, signed), a rollback restores the fixture's bytes, the
/// audit log verifies.
fn tamper_withhold_and_roll_back(s: &Setup, archive_file: &Path, max_cycles: u64) {
    let fixture = common::fixture_catalog(&s.checkout);
    let mut daemon = common::Daemon(
        mapek(s)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the daemon starts"),
    );
    wait_for("the first publication", Duration::from_secs(90), || {
        (std::fs::read(&s.publish).ok()? == fixture).then_some(())
    });
    let (status, head, body) = get(s.port, "/catalog/index.json", &[]);
    assert_eq!(status, 200, "{head}");
    assert!(body == fixture, "served as the fixture");
    let etag = header(&head, "etag").expect("an ETag").to_string();
    let (status, _, _) = get(s.port, "/catalog/index.json", &[("If-None-Match", &etag)]);
    assert_eq!(status, 304);

    let before = cycles(s.port);
    let mut bytes = std::fs::read(archive_file).expect("archive");
    bytes[200] ^= 0x01;
    std::fs::write(archive_file, &bytes).expect("flip one byte");
    // The catalog is written before its signature: a reader that finds a signature that does
    // not verify reads both again (docs/registry.md).
    let published = wait_for("the pack withheld, signed", Duration::from_secs(60), || {
        let b = std::fs::read(&s.publish).ok()?;
        let sig = std::fs::read_to_string(s.dir.join("www/index.json.sig")).ok()?;
        (names(&b, "withheld").contains(&"fastmcp-pack".to_string())
            && verify_hex(&s.key.public(), &b, sig.trim()))
        .then_some(b)
    });
    let after = cycles(s.port);
    // Besides the ticks, the write itself and the store's change (the quarantine) each wake a
    // cycle; the first publication's own cycle may end after `before` was read.
    let woken = 3;
    assert!(
        after <= before + max_cycles + woken,
        "withheld within {max_cycles} cycles of the write: {before} -> {after}"
    );
    assert!(!names(&published, "packs").contains(&"fastmcp-pack".to_string()));
    assert_eq!(names(&published, "packs").len(), 47);
    let (_, _, served) = get(s.port, "/catalog/index.json", &[]);
    assert!(served == published, "the served catalog is the written one");
    let (_, _, served_sig) = get(s.port, "/catalog/index.json.sig", &[]);
    assert!(verify_hex(
        &s.key.public(),
        &served,
        String::from_utf8_lossy(&served_sig).trim()
    ));
    let doc: serde_json::Value = serde_json::from_slice(&published).expect("json");
    let w = &doc["withheld"][0];
    assert_eq!(w["status"], "quarantined");
    assert_eq!(w["version"], "0.1.0");
    assert_eq!(w["reason"], "artifact integrity check failed");
    let id = w["remediation"]
        .as_str()
        .expect("the remediation's id")
        .to_string();

    let out = mapek(s).args(["rollback", &id]).output().expect("rollback");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&s.publish).expect("published") == fixture,
        "the rollback publishes the fixture's catalog again"
    );
    wait_for("the daemon to serve it", Duration::from_secs(30), || {
        (get(s.port, "/catalog/index.json", &[]).2 == fixture).then_some(())
    });
    assert!(
        daemon.try_wait().expect("status").is_none(),
        "the daemon keeps running"
    );
    drop(daemon);
    let out = mapek(s).args(["audit", "verify"]).output().expect("verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_archive_byte_withholds_the_pack_and_a_rollback_restores_the_fixture() {
    let t = common::store().await;
    let Some(checkout) = common::fixture_copy(t.dir.path()) else {
        return;
    };
    let s = setup(t.dir.path(), checkout, &t.url, None, "1h");
    let archive = s.checkout.join("dist/packs/fastmcp-pack-0.1.0.tar.gz");
    // The watcher wakes the cycle after the write (one may be under way when it lands).
    tokio::task::spawn_blocking(move || tamper_withhold_and_roll_back(&s, &archive, 2))
        .await
        .expect("the story holds");
}

/// Serves `dir`'s files over loopback HTTP with an ETag (and 304 to a request that has it).
async fn serve_files(dir: PathBuf) -> u16 {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use sha2::{Digest, Sha256};
    async fn file(
        State(dir): State<PathBuf>,
        UrlPath(name): UrlPath<String>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        if name.contains('/') || name.contains("..") {
            return StatusCode::BAD_REQUEST.into_response();
        }
        let Ok(bytes) = std::fs::read(dir.join(&name)) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
        if headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            == Some(etag.as_str())
        {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
        }
        ([(header::ETAG, etag)], bytes).into_response()
    }
    let app = axum::Router::new()
        .route("/packs/{name}", axum::routing::get(file))
        .with_state(dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_story_holds_with_archives_served_over_loopback_http() {
    let t = common::store().await;
    let Some(checkout) = common::fixture_copy(t.dir.path()) else {
        return;
    };
    // The archives the daemon downloads live outside the checkout, on a web server.
    let served = t.dir.path().join("served");
    std::fs::rename(checkout.join("dist/packs"), &served).expect("move the archives");
    let port = serve_files(served.clone()).await;
    let s = setup(
        t.dir.path(),
        checkout,
        &t.url,
        Some(format!("http://127.0.0.1:{port}/packs")),
        "1s",
    );
    let archive = served.join("fastmcp-pack-0.1.0.tar.gz");
    // Nothing tells the daemon of a change on a web server: the next full scan (every second
    // here, every 300 ms cycle) revalidates each archive with a conditional GET.
    tokio::task::spawn_blocking(move || tamper_withhold_and_roll_back(&s, &archive, 8))
        .await
        .expect("the story holds");
}

/// The published file, read over and over by another thread for as long as the test runs: each
/// read must be a whole catalog (JSON that ends where a catalog ends), never a part.
struct Reader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Reader {
    fn start(path: PathBuf) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut reads, mut torn) = (0u64, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(b) = std::fs::read(&path) {
                    reads += 1;
                    if !b.ends_with(b"}\n")
                        || serde_json::from_slice::<serde_json::Value>(&b).is_err()
                    {
                        torn.push(format!("{} bytes", b.len()));
                    }
                }
            }
            (reads, torn)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle
            .take()
            .map(|h| h.join().expect("reader"))
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_sigkill_at_any_point_the_next_start_converges_to_the_projection() {
    use std::os::unix::process::ExitStatusExt;
    let t = common::store().await;
    let Some(checkout) = common::fixture_copy(t.dir.path()) else {
        return;
    };
    let s = setup(t.dir.path(), checkout, &t.url, None, "1h");
    let reader = Reader::start(s.publish.clone());
    let packs = [
        ("fastmcp-pack-0.1.0", "before_commit"),
        ("crown-conjecture-pack-0.1.0", "after_commit"),
        ("domain-capability-pack-0.1.0", "publish_before_rename"),
        ("anti-llm-cheat-lsp-pack-0.1.0", "publish_after_rename"),
    ];
    let s = tokio::task::spawn_blocking(move || {
        for (archive, point) in packs {
            let file = s.checkout.join(format!("dist/packs/{archive}.tar.gz"));
            let mut bytes = std::fs::read(&file).expect("archive");
            bytes[64] ^= 0x04;
            std::fs::write(&file, &bytes).expect("tamper");
            let mut child = common::Daemon(
                mapek(&s)
                    .arg("run")
                    .env("MAPEK_TEST_CRASH_AT", format!("{point}:1"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("the daemon starts"),
            );
            let status = wait_for(
                &format!("the SIGKILL at {point}"),
                Duration::from_secs(60),
                || child.try_wait().expect("status"),
            );
            assert_eq!(status.signal(), Some(9), "killed at {point}: {status}");
        }
        s
    })
    .await
    .expect("the crashes");
    // Started again, with nothing planned to go wrong: the file converges to the projection of
    // the input catalog and the remediations in force, whatever state the crashes left.
    let daemon = common::Daemon(
        mapek(&s)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts"),
    );
    let s = tokio::task::spawn_blocking(move || {
        let published = wait_for("all four withheld, signed", Duration::from_secs(60), || {
            let b = std::fs::read(&s.publish).ok()?;
            let sig = std::fs::read_to_string(s.dir.join("www/index.json.sig")).ok()?;
            (names(&b, "withheld").len() == 4 && verify_hex(&s.key.public(), &b, sig.trim()))
                .then_some(b)
        });
        drop(daemon);
        let projection = mapek(&s)
            .args(["registry", "catalog"])
            .output()
            .expect("catalog");
        assert!(
            projection.status.success(),
            "{}",
            String::from_utf8_lossy(&projection.stderr)
        );
        assert!(projection.stdout == published, "the file is the projection");
        let sig = std::fs::read_to_string(s.dir.join("www/index.json.sig")).expect("sig");
        assert!(
            verify_hex(&s.key.public(), &published, sig.trim()),
            "and its signature verifies"
        );
        let leftovers: Vec<_> = std::fs::read_dir(s.dir.join("www"))
            .expect("www")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let out = mapek(&s)
            .args(["audit", "verify"])
            .output()
            .expect("verify");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        s
    })
    .await
    .expect("convergence");
    let store = mapek::knowledge::Store::open(&t.url).await.expect("store");
    let executed: i64 = sqlx::Row::get(
        &sqlx::query(
            "SELECT COUNT(*) FROM remediations WHERE status = 'executed' AND action = 'quarantine'",
        )
        .fetch_one(store.raw_pool())
        .await
        .expect("count"),
        0,
    );
    assert_eq!(executed, 4, "each tampered pack quarantined once");
    let _ = s;
    let (reads, torn) = reader.finish();
    assert!(reads > 0);
    assert!(
        torn.is_empty(),
        "a reader saw a part of a catalog: {torn:?} (of {reads} reads)"
    );
}
