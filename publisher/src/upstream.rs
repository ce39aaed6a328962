//! Upstream caches (`publish --upstream URL`): a path an upstream already
//! serves is not uploaded; the manifest names the upstream instead.
//!
//! A path counts as served when the upstream's narinfo for it parses, uses
//! an allowed compression and URL shape, describes the same content as our
//! store (NarHash, NarSize, References) and, when upstream keys are given,
//! carries a valid signature by one of them. The agent then fetches the NAR
//! from the upstream and checks it against the NarHash in our signed
//! manifest, so it needs no upstream key.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use nixcast_common::manifest::{self, Compression};
use nixcast_common::narinfo::NarInfo;
use nixcast_common::PublicKey;

use crate::nix::PathInfo;

/// Narinfo look-ups in flight at once.
const CONCURRENCY: usize = 32;
/// The largest narinfo read, from an upstream or our own target.
pub const MAX_NARINFO: usize = 1 << 20;

pub struct Upstreams {
    urls: Vec<String>,
    keys: Vec<PublicKey>,
    client: reqwest::Client,
}

impl Upstreams {
    pub fn new(urls: Vec<String>, keys: Vec<PublicKey>) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            // A narinfo is small: one that trickles in is not worth waiting for.
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("nixcast/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let urls = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        Ok(Self { urls, keys, client })
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// For each path, the first upstream that serves it, with its narinfo.
    pub fn lookup(&self, paths: &[&PathInfo]) -> Result<Vec<Option<(String, NarInfo)>>> {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async {
            futures_util::stream::iter(paths)
                .map(|info| self.find(info))
                .buffered(CONCURRENCY)
                .try_collect()
                .await
        })
    }

    async fn find(&self, info: &PathInfo) -> Result<Option<(String, NarInfo)>> {
        for url in &self.urls {
            let key = format!("{url}/{}.narinfo", info.path.hash_part());
            let Some(text) = self.get(&key).await? else {
                continue;
            };
            match self.acceptable(&text, info) {
                Ok(ni) => return Ok(Some((url.clone(), ni))),
                Err(why) => {
                    tracing::info!(path = %info.path, upstream = %url, "not using the upstream's copy: {why}")
                }
            }
        }
        Ok(None)
    }

    fn acceptable(&self, text: &str, info: &PathInfo) -> Result<NarInfo, String> {
        let ni = NarInfo::parse(text).map_err(|e| e.to_string())?;
        if !info.described_by(&ni) {
            return Err("it describes other content than the local store".into());
        }
        let compression = Compression::from_narinfo(ni.compression_or_default())
            .ok_or_else(|| format!("compression {} is not allowed", ni.compression_or_default()))?;
        if !manifest::is_nar_url(&ni.url, compression) {
            return Err(format!(
                "its URL {:?} is not nar/<hash>.nar{}",
                ni.url,
                compression.extension()
            ));
        }
        if ni.file_hash.is_none() || ni.file_size.is_none() {
            return Err("it has no FileHash or FileSize".into());
        }
        if !self.keys.is_empty() && !ni.verify(&self.keys) {
            return Err("it is not signed by an upstream key".into());
        }
        Ok(ni)
    }

    /// A narinfo's text, or None when the upstream does not have it (404, or
    /// 403 as S3 answers for a missing key).
    async fn get(&self, url: &str) -> Result<Option<String>> {
        if let Some(path) = url.strip_prefix("file://") {
            let file = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("cannot read {path}")),
            };
            let mut bytes = Vec::new();
            file.take(MAX_NARINFO as u64 + 1)
                .read_to_end(&mut bytes)
                .with_context(|| format!("cannot read {path}"))?;
            anyhow::ensure!(
                bytes.len() <= MAX_NARINFO,
                "{url}: narinfo larger than {MAX_NARINFO} bytes"
            );
            return String::from_utf8(bytes)
                .map(Some)
                .with_context(|| format!("{url} is not UTF-8"));
        }
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .with_context(|| format!("cannot reach the upstream: {url}"))?;
        match resp.status().as_u16() {
            200 => {}
            403 | 404 => return Ok(None),
            s => anyhow::bail!("{url}: the upstream answered {s}"),
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_NARINFO as u64)
        {
            anyhow::bail!("{url}: narinfo larger than {MAX_NARINFO} bytes");
        }
        // Chunk by chunk: without a length (or with a false one) the body
        // could be endless, and only what fits the limit is ever held.
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .with_context(|| format!("reading {url}"))?
        {
            anyhow::ensure!(
                bytes.len() + chunk.len() <= MAX_NARINFO,
                "{url}: narinfo larger than {MAX_NARINFO} bytes"
            );
            bytes.extend_from_slice(&chunk);
        }
        String::from_utf8(bytes)
            .map(Some)
            .with_context(|| format!("{url} is not UTF-8"))
    }
}
