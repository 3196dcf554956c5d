//! Artifacts over HTTP(S), for both registry backends: timeouts, a size limit, bounded concurrency, streaming SHA-256 and conditional GET.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The limits of every fetch (`[registry.fetch]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FetchLimits {
    pub connect_timeout: Duration,
    /// The whole request, body included.
    pub timeout: Duration,
    pub max_bytes: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            max_bytes: 64 << 20,
            concurrency: 8,
        }
    }
}

/// Why an artifact could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The host could not be reached or did not answer in time: the sensors are failing, and
    /// nothing may be judged on what they would have said.
    #[error("{url}: unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: the body ended after {got} of {expected} bytes")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("{url}: {reason}")]
    Other { url: String, reason: String },
}

impl FetchError {
    /// Whether the failure is the network's (the host is down) rather than the artifact's.
    pub fn unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
            || matches!(self, Self::Status { status, .. } if *status >= 500)
    }
}

/// What a fetch gave: new bytes, or the server's word that they are what they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Fresh {
        bytes: Vec<u8>,
        sha256: [u8; 32],
    },
    /// A 304 to a conditional GET: the bytes hash as they did last time.
    Unchanged {
        sha256: [u8; 32],
    },
}

impl Fetched {
    pub fn sha256(&self) -> [u8; 32] {
        match self {
            Self::Fresh { sha256, .. } | Self::Unchanged { sha256 } => *sha256,
        }
    }
}

/// What the last answer for a URL said, to ask again conditionally.
#[derive(Debug, Clone)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
    sha256: [u8; 32],
}

/// An HTTP(S) client for artifacts. Cloning shares the client, the limit on requests in
/// flight and what it remembers of each URL.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    limits: FetchLimits,
    permits: Arc<Semaphore>,
    seen: Arc<Mutex<HashMap<String, Validators>>>,
    /// The runtime blocking callers (the monitor's worker threads) run fetches on.
    handle: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("limits", &self.limits)
            .finish()
    }
}

pub fn is_url(location: &str) -> bool {
    location.starts_with("http://") || location.starts_with("https://")
}

/// An artifact's bytes from `location`, a URL (with `fetcher`) or a file, as every registry
/// reads one: a host that cannot be reached is the registry unavailable; anything else is that
/// artifact's own problem.
pub fn read_artifact(
    fetcher: Option<&Fetcher>,
    location: &str,
    file: &std::path::Path,
) -> Result<Vec<u8>, crate::registry::RegistryError> {
    use crate::registry::RegistryError;
    let artifact = |reason: String| RegistryError::Artifact {
        location: location.into(),
        reason,
    };
    if !is_url(location) {
        return std::fs::read(file).map_err(|e| artifact(e.to_string()));
    }
    let Some(f) = fetcher else {
        return Err(artifact("no HTTP client is configured".into()));
    };
    f.get_blocking(location).map(|(b, _)| b).map_err(|e| {
        if e.unreachable() {
            RegistryError::Unavailable(e.to_string())
        } else {
            artifact(e.to_string())
        }
    })
}

impl Fetcher {
    /// A fetcher; made inside a tokio runtime, blocking callers can use it from plain threads.
    pub fn new(limits: FetchLimits) -> Result<Self, String> {
        // reqwest is built without a TLS provider of its own: rustls with ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.timeout)
            .user_agent(concat!("mapek/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            limits,
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            seen: Arc::default(),
            handle: tokio::runtime::Handle::try_current().ok(),
        })
    }

    pub fn limits(&self) -> FetchLimits {
        self.limits
    }

    /// Fetches `url` in full, whatever was seen before.
    pub async fn get(&self, url: &str) -> Result<(Vec<u8>, [u8; 32]), FetchError> {
        match self.fetch(url, false).await? {
            Fetched::Fresh { bytes, sha256 } => Ok((bytes, sha256)),
            Fetched::Unchanged { .. } => Err(FetchError::Other {
                url: url.into(),
                reason: "answered 304 to an unconditional request".into(),
            }),
        }
    }

    /// Fetches `url`; with `conditional`, asks with the validators of the last answer, so an
    /// unchanged artifact costs a 304.
    pub async fn fetch(&self, url: &str, conditional: bool) -> Result<Fetched, FetchError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| FetchError::Other {
                url: url.into(),
                reason: "the fetcher is closed".into(),
            })?;
        let known = if conditional {
            self.seen.lock().ok().and_then(|s| s.get(url).cloned())
        } else {
            None
        };
        let mut request = self.client.get(url);
        if let Some(v) = &known {
            if let Some(e) = &v.etag {
                request = request.header(reqwest::header::IF_NONE_MATCH, e);
            }
            if let Some(m) = &v.last_modified {
                request = request.header(reqwest::header::IF_MODIFIED_SINCE, m);
            }
        }
        let mut response = request.send().await.map_err(|e| network_error(url, e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            if let Some(v) = known {
                return Ok(Fetched::Unchanged { sha256: v.sha256 });
            }
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.into(),
                status: status.as_u16(),
            });
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(reqwest::header::ETAG);
        let last_modified = header(reqwest::header::LAST_MODIFIED);
        let (bytes, hash) = self.body(url, &mut response).await?;
        let sha256: [u8; 32] = hash.finalize().into();
        if let Ok(mut seen) = self.seen.lock() {
            if etag.is_some() || last_modified.is_some() {
                seen.insert(
                    url.to_string(),
                    Validators {
                        etag,
                        last_modified,
                        sha256,
                    },
                );
            } else {
                seen.remove(url);
            }
        }
        Ok(Fetched::Fresh { bytes, sha256 })
    }

    /// The whole body, hashed as it streams, within the size limit and as long as announced.
    async fn body(
        &self,
        url: &str,
        response: &mut reqwest::Response,
    ) -> Result<(Vec<u8>, Sha256), FetchError> {
        let expected = response.content_length();
        let limit = self.limits.max_bytes;
        let too_large = || FetchError::TooLarge {
            url: url.into(),
            limit,
        };
        if expected.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(expected.unwrap_or(0).min(limit) as usize);
        let mut hash = Sha256::new();
        let truncated = |got: usize, expected: u64| FetchError::Truncated {
            url: url.into(),
            got: got as u64,
            expected,
        };
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(network_error(url, e)),
                Err(_) => return Err(truncated(bytes.len(), expected.unwrap_or(0))),
            };
            if bytes.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            hash.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        if let Some(n) = expected.filter(|n| *n != bytes.len() as u64) {
            return Err(truncated(bytes.len(), n));
        }
        Ok((bytes, hash))
    }

    /// [`Fetcher::fetch`] from a thread outside the runtime (the monitor's workers).
    pub fn fetch_blocking(&self, url: &str, conditional: bool) -> Result<Fetched, FetchError> {
        match &self.handle {
            Some(h) => h.block_on(self.fetch(url, conditional)),
            None => Err(FetchError::Other {
                url: url.into(),
                reason: "no runtime to fetch on (the fetcher was made outside one)".into(),
            }),
        }
    }

    /// [`Fetcher::get`] from a thread outside the runtime (the monitor's workers).
    pub fn get_blocking(&self, url: &str) -> Result<(Vec<u8>, [u8; 32]), FetchError> {
        match &self.handle {
            Some(h) => h.block_on(self.get(url)),
            None => Err(FetchError::Other {
                url: url.into(),
                reason: "no runtime to fetch on (the fetcher was made outside one)".into(),
            }),
        }
    }
}

/// A request that failed on the way: the host down or too slow is the sensors failing.
fn network_error(url: &str, e: reqwest::Error) -> FetchError {
    let reason = describe(&e);
    if e.is_connect() || e.is_timeout() {
        FetchError::Unreachable {
            url: url.into(),
            reason,
        }
    } else {
        FetchError::Other {
            url: url.into(),
            reason,
        }
    }
}

/// The error and its causes, on one line.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
