//! A SQLite store on a full filesystem (a small tmpfs) and on a read-only mount: the cycle fails with a clear error, the daemon says it is not ready, nothing is half-written, and it carries on by itself when space or writes return. Needs root to mount (CI runs it).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mapek::knowledge::Store;
use mapek::registry::SqlRegistry;

/// A small tmpfs, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(at: &Path) -> Option<Self> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_path_buf()))
    }

    fn remount(&self, how: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {how}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn wait_ready(port: u16, want: u16, contains: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, text) = common::readyz(port);
        if code == want && text.contains(contains) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz says {code}: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn quarantined_once(store: &Store, package: &str, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::executed_quarantines(store, package).await == 0 {
        assert!(
            Instant::now() < deadline,
            "{what}: {package} never quarantined; the daemon said:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fills the filesystem at `dir` until it refuses another byte.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_and_a_read_only_store_stop_the_daemon_cleanly_and_it_resumes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(mount) = Mount::new(&dir.path().join("small")) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and mounts a tmpfs for this test"
        );
        common::skip(
            "full disk and read-only store",
            "cannot mount a tmpfs (needs root; CI runs it)",
        );
        return;
    };
    let db = mount.0.join("mapek.db");
    let demo = common::prepare_demo(dir.path(), &db.display().to_string());
    common::integrity_only(&demo);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = dir.path().join("mapek.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{db}\"\npolicies = \"{0}/policies\"\ntrusted_keys = \"{0}/trusted-keys.toml\"\n\
             key_file = \"{0}/daemon.key\"\nartifact_root = \"{0}/artifacts\"\ninterval = \"200ms\"\n\
             full_scan_interval = \"1s\"\nlisten = \"127.0.0.1:{port}\"\n",
            demo.display(),
            db = db.display()
        ),
    )
    .expect("config");
    let url = format!("sqlite://{}", db.display());
    let store = Store::open(&url).await.expect("the store");
    let registry = SqlRegistry::new(store.clone(), demo.join("artifacts"));
    let log = dir.path().join("daemon.log");
    let mut child = common::replica_logged(&config, &log);
    wait_ready(port, 200, "ready:", "at start");
    let first_log = log.with_extension("1.log");

    // 1. The disk fills up; a release is tampered with meanwhile.
    let filler = fill(&mount.0);
    common::tamper(&registry, "pkg-00160").await;
    let said = wait_ready(port, 503, "full", "disk full");
    assert!(
        said.contains("not ready: knowledge store unusable"),
        "{said}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        common::executed_quarantines(&store, "pkg-00160").await,
        0,
        "nothing done while full"
    );
    // Space returns: ready again, and the loop does what it could not.
    std::fs::remove_file(&filler).expect("free the space");
    wait_ready(port, 200, "ready:", "space returned");
    quarantined_once(&store, "pkg-00160", "after the disk full", &log).await;
    std::fs::copy(&log, &first_log).expect("keep the first daemon's log");

    // 2. The store's filesystem turns read-only. A mount with a file open for writing cannot be
    // remounted read-only (EBUSY), so the daemon is stopped first; started on the read-only
    // store it refuses with the reason and changes nothing, and started once the store is
    // writable again (systemd's Restart=on-failure) it carries on.
    let _ = child.kill();
    let _ = child.wait();
    common::tamper(&registry, "pkg-00161").await;
    store.close().await;
    mount.remount("ro");
    let refused = Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(["--config", &config.display().to_string(), "run", "--once"])
        .env("MAPEK_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("the daemon runs");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(said.contains("mapek.db"), "names the store: {said}");
    let lower = said.to_lowercase();
    assert!(
        lower.contains("readonly") || lower.contains("read-only"),
        "{said}"
    );
    mount.remount("rw");
    let store = Store::open(&url).await.expect("the store again");
    assert_eq!(
        common::executed_quarantines(&store, "pkg-00161").await,
        0,
        "nothing done while read-only"
    );
    let mut child = common::replica_logged(&config, &log);
    wait_ready(port, 200, "ready:", "writable again");
    quarantined_once(&store, "pkg-00161", "after read-only", &log).await;

    let _ = child.kill();
    let _ = child.wait();
    for p in ["pkg-00160", "pkg-00161"] {
        assert_eq!(
            common::executed_quarantines(&store, p).await,
            1,
            "{p}: once"
        );
    }
    let text = std::fs::read_to_string(&first_log).unwrap_or_default();
    assert!(
        text.contains("database or disk is full"),
        "a clear error: {text}"
    );
    store.close().await;
    let verified = Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(["--config", &config.display().to_string(), "audit", "verify"])
        .env("MAPEK_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .expect("audit verify");
    assert!(
        verified.success(),
        "nothing half-written: the audit chain holds"
    );
}
