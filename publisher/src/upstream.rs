//! Upstream caches (`publish --upstream URL`): a path an upstream already
//! serves is not uploaded; the manifest names the upstream instead.
//!
//! A path counts as served when the upstream's narinfo for it parses, uses
//! an allowed compression and URL shape, describes the same content as our
//! store (NarHash, NarSize, References) and, when upstream keys are given,
//! carries a valid signature by one of them. The agent then fetches the NAR
//! from the upstream and checks it against the NarHash in our signed
//! manifest, so it needs no upstream key.

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use nixcast_cache::{Cache, HttpOptions, Secrets};
use nixcast_common::layout;
use nixcast_common::manifest::{self, Compression};
use nixcast_common::narinfo::NarInfo;
use nixcast_common::PublicKey;

use crate::nix::PathInfo;

/// Narinfo look-ups in flight at once.
const CONCURRENCY: usize = 32;
/// The largest narinfo read, from an upstream or our own target.
pub const MAX_NARINFO: usize = 1 << 20;

pub struct Upstreams {
    /// Each upstream's URL as given, and the cache it names.
    caches: Vec<(String, Cache)>,
    keys: Vec<PublicKey>,
}

impl Upstreams {
    pub fn new(urls: Vec<String>, keys: Vec<PublicKey>) -> Result<Self> {
        let opts = HttpOptions {
            // The operator named the upstream; its narinfos are checked
            // against our own store whatever carried them.
            allow_insecure_http: true,
            stall_timeout: Duration::from_secs(30),
            // A narinfo is small: one that trickles in is not worth
            // waiting for (1 MiB within about two minutes).
            min_rate: 8 << 10,
            ..HttpOptions::default()
        };
        let caches = urls
            .into_iter()
            .map(|u| {
                let u = u.trim_end_matches('/').to_owned();
                let cache = Cache::new(&u, &opts, &Secrets::default())
                    .with_context(|| format!("--upstream {u}"))?;
                Ok((u, cache))
            })
            .collect::<Result<_>>()?;
        Ok(Self { caches, keys })
    }

    pub fn is_empty(&self) -> bool {
        self.caches.is_empty()
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
        let key = layout::narinfo(&info.path);
        for (url, cache) in &self.caches {
            // Not there: 404, or 403 as S3 answers for a missing key.
            let got = cache.get_if_any(&key, MAX_NARINFO as u64).await;
            let Some(bytes) = got.map_err(|e| match e {
                nixcast_cache::Error::TooLarge { url, .. } => {
                    anyhow::anyhow!("{url}: narinfo larger than {MAX_NARINFO} bytes")
                }
                e => e.into(),
            })?
            else {
                continue;
            };
            let text = String::from_utf8(bytes)
                .with_context(|| format!("{} is not UTF-8", cache.url_of(&key)))?;
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
}
