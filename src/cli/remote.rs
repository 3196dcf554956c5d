//! The command line's client of a running daemon's admin API (`admin_url` and `admin_token_file` in the configuration).

use anyhow::Context as _;
use std::time::Duration;

use crate::config::Config;

pub struct Remote {
    url: String,
    token: String,
    client: reqwest::Client,
}

/// A refusal by the daemon: its HTTP status and what it said.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: serde_json::Value,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let error = self.body["error"].as_str().unwrap_or("no reason given");
        write!(f, "the daemon answered {}: {error}", self.status)?;
        if let Some(leader) = self.body["leader"].as_str().filter(|l| !l.is_empty()) {
            write!(f, " (the leader is {leader})")?;
        }
        Ok(())
    }
}

impl Remote {
    /// The daemon named by the configuration, if one is; an error if it is named without a token.
    pub fn of(config: &Config) -> anyhow::Result<Option<Self>> {
        let Some(url) = &config.admin_url else {
            return Ok(None);
        };
        let token = config.admin_token.clone().with_context(|| {
            format!("admin_url is {url} but no admin_token_file is configured to call it with")
        })?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("mapek-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("the admin API client")?;
        Ok(Some(Self {
            url: url.clone(),
            token,
            client,
        }))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls `method path` with an optional JSON body; Ok(Err) is the daemon's refusal, Err
    /// means it could not be reached or did not answer JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Result<serde_json::Value, Refused>> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            request = request
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("the daemon at {} is unreachable", self.url))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer of {}{path}", self.url))?;
        let body: serde_json::Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}{path} answered {status} with something that is not JSON",
                self.url
            )
        })?;
        Ok(if status.is_success() {
            Ok(body)
        } else {
            Err(Refused {
                status: status.as_u16(),
                body,
            })
        })
    }
}

/// `mapek plans` through the daemon: the list it answers, or a decision signed here with the
/// maintainer's key file and checked there.
pub async fn plans(
    remote: &Remote,
    config: &Config,
    command: super::policy::PlansCommand,
) -> anyhow::Result<std::process::ExitCode> {
    use super::policy::PlansCommand;
    use crate::knowledge::approvals::{Approval, Decision};
    use std::process::ExitCode;
    let listed = remote
        .call(reqwest::Method::GET, "/v1/admin/plans", None)
        .await?;
    let pending = match listed {
        Ok(body) => body["pending"].as_array().cloned().unwrap_or_default(),
        Err(refused) => {
            eprintln!("refused: {refused}");
            return Ok(ExitCode::from(1));
        }
    };
    let (id, key, decision) = match command {
        PlansCommand::List { json } => {
            super::policy::print_pending(&pending, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        PlansCommand::Approve { id, key } => (id, key, Decision::Approve),
        PlansCommand::Reject { id, key } => (id, key, Decision::Reject),
    };
    let Some(r) = pending
        .iter()
        .find(|r| r["id"].as_str() == Some(id.as_str()))
    else {
        eprintln!("refused: no remediation `{id}` is waiting");
        return Ok(ExitCode::from(1));
    };
    let trust = crate::keys::TrustStore::load(&config.trusted_keys)?;
    let maintainer = super::policy::maintainer(&trust, &key)?;
    let at = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let msg = Approval::signing_bytes(
        decision,
        &id,
        r["signature"].as_str().unwrap_or_default(),
        &maintainer.key_id,
        at,
    );
    let body = serde_json::json!({
        "key_id": maintainer.key_id,
        "at": at,
        "signature": maintainer.sign(&msg),
    });
    let path = format!("/v1/admin/plans/{id}/{}", decision.as_str());
    match remote
        .call(reqwest::Method::POST, &path, Some(body))
        .await?
    {
        Ok(_) => {
            println!(
                "{} recorded by the daemon: `{}` on {id}; it applies at its next cycle",
                decision.as_str(),
                maintainer.key_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(refused) => {
            eprintln!("refused: {refused}");
            Ok(ExitCode::from(1))
        }
    }
}
