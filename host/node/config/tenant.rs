//! A tenant's entry in the configuration (`[tenants.NAME]`): the credentials that name it
//! and the limits it is held to, checked and turned into the request layer's policy.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::request::Priority;
use crate::request::tenant::{ANONYMOUS, Rate, TenantPolicy};

/// The largest tenant weight.
const MAX_WEIGHT: u32 = 1000;

/// One tenant of the node's data plane: the credentials that name it and what it may use.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// SHA-256 digests (hex) of its API keys, sent as `x-api-key: KEY` or
    /// `authorization: Bearer KEY` (`printf %s KEY | sha256sum`).
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// SHA-256 digests (hex) of its client certificates (DER), for mTLS (`server.tls_client_ca`).
    #[serde(default)]
    pub client_cert_sha256: Vec<String>,
    /// Its share of a contended queue against other tenants queued there.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Requests it may have in flight at once on this node; beyond: 429.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Sustained requests a second; beyond (after the burst): 429.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Requests it may send at once above the rate [default: one second's worth, at least 1].
    #[serde(default)]
    pub burst: Option<u32>,
    /// The highest `x-edge-priority` its requests may ask for; a header asking more gets this.
    #[serde(default, with = "PrioritySetting")]
    pub max_priority: Priority,
}

fn default_weight() -> u32 {
    1
}

/// How the config file spells a [`Priority`].
#[derive(Deserialize, Serialize)]
#[serde(remote = "Priority", rename_all = "lowercase")]
enum PrioritySetting {
    High,
    Normal,
    Low,
}

impl TenantConfig {
    /// Checks the tenant named `name`.
    pub(super) fn validate(&self, name: &str) -> anyhow::Result<()> {
        if name == ANONYMOUS && self.has_credentials() {
            bail!("the anonymous tenant has no credentials: name another tenant");
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            bail!("`weight`: from 1 to {MAX_WEIGHT}");
        }
        if self.max_concurrency == Some(0) {
            bail!("`max_concurrency` must be at least 1");
        }
        if self.requests_per_second.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
            bail!("`requests_per_second` must be a number above 0");
        }
        if self.burst == Some(0) {
            bail!("`burst` must be at least 1");
        }
        if self.burst.is_some() && self.requests_per_second.is_none() {
            bail!("`burst` needs `requests_per_second`");
        }
        for (field, digests) in
            [("api_key_sha256", &self.api_key_sha256), ("client_cert_sha256", &self.client_cert_sha256)]
        {
            for (index, digest) in digests.iter().enumerate() {
                parse_digest(digest).with_context(|| format!("`{field}[{index}]`"))?;
            }
        }
        Ok(())
    }

    /// Whether any credential names the tenant.
    pub(super) fn has_credentials(&self) -> bool {
        !self.api_key_sha256.is_empty() || !self.client_cert_sha256.is_empty()
    }

    /// What the tenant named `name` is allowed, for the request layer.
    pub(super) fn policy(&self, name: &str) -> TenantPolicy {
        let digests = |hex: &[String]| hex.iter().filter_map(|digest| parse_digest(digest).ok()).collect();
        TenantPolicy {
            name: name.to_string(),
            weight: self.weight,
            max_priority: self.max_priority,
            max_concurrency: self.max_concurrency,
            rate: self.requests_per_second.map(|per_second| Rate {
                per_second,
                burst: self.burst.unwrap_or_else(|| per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32),
            }),
            api_keys: digests(&self.api_key_sha256),
            client_certificates: digests(&self.client_cert_sha256),
        }
    }
}

/// A SHA-256 digest written as 64 hex digits.
fn parse_digest(hex: &str) -> anyhow::Result<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        bail!("a SHA-256 digest is 64 hex digits, this has {}", hex.len());
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let text = std::str::from_utf8(pair).ok().filter(|pair| pair.bytes().all(|b| b.is_ascii_hexdigit()));
        *byte = u8::from_str_radix(text.context("not hex digits")?, 16)?;
    }
    Ok(digest)
}
