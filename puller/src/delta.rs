//! NAR deltas: a missing path rebuilt from a path this host holds and a
//! small patch, checked like a downloaded NAR, or else fetched whole.
//!
//! Once per run the agent asks for the signed index (`nardelta`) of the
//! new manifest against the manifest it holds (or the one it applied last);
//! none (404), or one that does not verify, means full NARs. A path of the
//! index is rebuilt when its base is valid in the store:
//!
//! ```text
//! delta → FileSize, FileHash (from the signed index) → [if sealed: age]
//! base  → NAR writer from /nix/store → NarSize, NarHash (from the index) ─┐
//!       → zstd with the base as its reference prefix ◀──────────────────┘
//!       → NarSize cap, sha256 → strict NAR reader → staging (as fetch.rs)
//! ```
//!
//! Nothing is decoded before the delta's FileHash and the base's NarHash
//! hold, and the rebuilt NAR must match the pinned manifest's NarSize and
//! NarHash like any other. Any failure (no base, a damaged one, a delta
//! missing, refused or decoding to another NAR) falls back to the full NAR
//! in the same run, logged and counted, never an error; a delta whose
//! FileHash is wrong is logged as an error, since the publisher signed
//! another one.
//!
//! Memory: a base (at most `nardelta::MAX_NAR`) and the decoder's window
//! (at most the new NAR, whose size the frame records) are held while one
//! path is rebuilt; `MEMORY` bounds what all rebuilds hold at once (one
//! larger than it runs alone).

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nixcast_common::hash::HashingCounter;
use nixcast_common::manifest::Entry;
use nixcast_common::nardelta::{self, Index, NarDelta};
use nixcast_common::pinned;
use nixcast_common::pointer::{Pointer, Verified};
use nixcast_common::seal::{self, Identity};
use nixcast_common::{layout, nar, Sha256Hash, StorePath};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::fetch::{self, Slots};
use crate::source::{FetchError, Source};
use crate::staging::Staging;

/// Bytes of bases and decoder windows held by rebuilds at once.
const MEMORY: u64 = 64 << 20;

/// The deltas this run may use, and what became of them.
pub struct Deltas {
    index: Option<Index>,
    sealed: bool,
    used: AtomicU64,
    fallbacks: AtomicU64,
    memory: Semaphore,
}

impl Deltas {
    pub fn none() -> Self {
        Self::of(None, false)
    }

    fn of(index: Option<Index>, sealed: bool) -> Self {
        Deltas {
            index,
            sealed,
            used: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            memory: Semaphore::new(MEMORY as usize),
        }
    }

    /// The delta to rebuild `e` from, if any.
    pub fn get(&self, e: &Entry) -> Option<&NarDelta> {
        self.index.as_ref()?.get(&e.store_path)
    }

    /// Paths rebuilt from a delta.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Paths fetched whole after their delta could not be used.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Reads the index for the manifest `v` pins, as a host holding one of
    /// the plain manifests `held` (the first that has one), keeping the
    /// entries of `missing` paths whose base is valid in the store. Never
    /// an error: without a usable index every path is fetched whole.
    pub async fn read(
        cfg: &Config,
        v: &Verified<Pointer>,
        held: &[Option<Sha256Hash>],
        ids: &[Identity],
        missing: &[&Entry],
    ) -> Self {
        let m = &v.get().manifest;
        let new_plain = pinned::plain_pin(m).sha256;
        let sealed = m.sealed.is_some();
        let mut tried = Vec::new();
        for from in held.iter().flatten() {
            if *from == new_plain || tried.contains(from) || missing.is_empty() {
                continue;
            }
            tried.push(*from);
            let key = layout::nar_deltas(&m.sha256, from, sealed);
            if let Some(index) = read_index(cfg, &key, m.sha256, *from, sealed, ids).await {
                let (index, absent) = usable(cfg, index, missing);
                let deltas = Self::of(Some(index), sealed);
                deltas.fallbacks.store(absent, Ordering::Relaxed);
                return deltas;
            }
        }
        Self::none()
    }

    /// Logs why `e` was not rebuilt from its delta, and counts it.
    fn fell_back(&self, e: &Entry, why: &Why) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let path = e.store_path.to_string();
        match why {
            Why::FileHash(msg) => tracing::error!(
                %path,
                "refusing its NAR delta before decoding it ({msg}): the index the publisher \
                 signed names other bytes; fetching the full NAR"
            ),
            why => tracing::warn!(%path, "cannot use its NAR delta ({why}); fetching the full NAR"),
        }
    }
}

/// The index at `key`, verified; `None` (logged) when there is none or it
/// does not verify.
async fn read_index(
    cfg: &Config,
    key: &str,
    manifest: Sha256Hash,
    from: Sha256Hash,
    sealed: bool,
    ids: &[Identity],
) -> Option<Index> {
    let source = &cfg.ports.source;
    let url = source.url_of(key);
    let bytes = match source.get_small(key, nardelta::MAX_SIZE).await {
        Ok(b) => b,
        Err(FetchError::NotFound(_)) => {
            tracing::debug!(%url, "no NAR-delta index");
            return None;
        }
        Err(e) => {
            tracing::warn!(%url, "cannot read the NAR-delta index ({e}); fetching full NARs");
            return None;
        }
    };
    let opened = match sealed {
        false => Ok(bytes),
        true => nixcast_cache::reader::open_sealed(ids, &bytes, nardelta::MAX_SIZE),
    };
    let checked = opened.and_then(|b| {
        nardelta::verify(&b, &cfg.policy.trusted.keys(), manifest, from, sealed)
            .map_err(anyhow::Error::from)
    });
    match checked {
        Ok(index) => Some(index),
        Err(e) => {
            tracing::error!(%url, "refusing the NAR-delta index: {e:#}; fetching full NARs");
            None
        }
    }
}

/// The entries of `index` for `missing` paths whose base is valid in the
/// store, and how many had a base that is not (fetched whole: fallbacks).
fn usable(cfg: &Config, mut index: Index, missing: &[&Entry]) -> (Index, u64) {
    let wanted: std::collections::HashSet<&StorePath> =
        missing.iter().map(|e| &e.store_path).collect();
    index.deltas.retain(|d| wanted.contains(&d.store_path));
    let bases: Vec<&StorePath> = index.deltas.iter().map(|d| &d.base).collect();
    let absent = match cfg.ports.store.missing(&bases) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(
                "cannot ask Nix which delta bases are valid ({e:#}); fetching full NARs"
            );
            let n = index.deltas.len() as u64;
            index.deltas.clear();
            return (index, n);
        }
    };
    let before = index.deltas.len();
    index.deltas.retain(|d| !absent.contains(&d.base));
    let dropped = (before - index.deltas.len()) as u64;
    if dropped > 0 {
        tracing::warn!(
            paths = dropped,
            "delta bases not valid in the store (deleted?); those paths are fetched whole"
        );
    }
    tracing::info!(deltas = index.deltas.len(), "NAR-delta index verified");
    (index, dropped)
}

/// Why a delta was not used.
#[derive(Debug, thiserror::Error)]
enum Why {
    #[error("{0}")]
    Unavailable(String),
    /// The delta's bytes are not the ones the signed index names.
    #[error("{0}")]
    FileHash(String),
    #[error("its base {0}")]
    Base(String),
    #[error("{0}")]
    Decode(String),
}

/// Rebuilds `e` from its delta, if it has one and nothing is staged for it
/// yet, and returns the bytes downloaded; `None`: fetch it whole (why is
/// logged and counted).
pub async fn rebuild(
    source: &Source,
    staging: &Staging,
    e: &Entry,
    deltas: &Deltas,
    progress: &AtomicU64,
    slots: &Slots,
    ids: &Arc<[Identity]>,
) -> Option<u64> {
    let d = deltas.get(e)?;
    let dest = staging.nar(e);
    if dest.exists() {
        // A NAR staged by an earlier run: `fetch_one` checks it again.
        return None;
    }
    match rebuild_one(source, dest, e, d, deltas, progress, slots, ids).await {
        Ok(n) => {
            deltas.used.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(path = %e.store_path, bytes = n, "rebuilt from a delta");
            Some(n)
        }
        Err(why) => {
            deltas.fell_back(e, &why);
            None
        }
    }
}

/// The base first (a damaged one costs no download), then the delta, then
/// the NAR rebuilt from both.
#[allow(clippy::too_many_arguments)]
async fn rebuild_one(
    source: &Source,
    dest: PathBuf,
    e: &Entry,
    d: &NarDelta,
    deltas: &Deltas,
    progress: &AtomicU64,
    slots: &Slots,
    ids: &Arc<[Identity]>,
) -> Result<u64, Why> {
    let need = (d.base_nar_size + e.nar_size + d.file_size).min(MEMORY) as u32;
    let _memory = deltas
        .memory
        .acquire_many(need)
        .await
        .expect("never closed");
    let base = {
        let _slot = slots.decoder().await;
        let d2 = d.clone();
        tokio::task::spawn_blocking(move || base_nar(&d2))
            .await
            .unwrap_or_else(|j| Err(Why::Base(j.to_string())))?
    };
    let bytes = source
        .get_small(&d.url, d.file_size)
        .await
        .map_err(|err| match err {
            FetchError::TooLarge { .. } => {
                Why::FileHash(format!("more bytes than the FileSize of {}", d.file_size))
            }
            err => Why::Unavailable(err.to_string()),
        })?;
    progress.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    check_file(&bytes, d)?;
    let _slot = slots.decoder().await;
    let (e2, ids, sealed) = (e.clone(), ids.clone(), deltas.sealed);
    tokio::task::spawn_blocking(move || decode(&bytes, &base, &e2, &dest, &ids, sealed))
        .await
        .unwrap_or_else(|j| Err(Why::Decode(j.to_string())))?;
    Ok(d.file_size)
}

/// FileSize and FileHash of a delta, before any decoder sees it.
fn check_file(bytes: &[u8], d: &NarDelta) -> Result<(), Why> {
    let hash = Sha256Hash::digest(bytes);
    if bytes.len() as u64 != d.file_size || hash != d.file_hash {
        return Err(Why::FileHash(format!(
            "FileSize/FileHash mismatch: expected {} bytes {}, got {} bytes {hash}",
            d.file_size,
            d.file_hash,
            bytes.len()
        )));
    }
    Ok(())
}

/// The delta (opened if sealed) decoded against the base's NAR into a
/// verified staged NAR at `dest`.
fn decode(
    delta: &[u8],
    base: &[u8],
    e: &Entry,
    dest: &Path,
    ids: &[Identity],
    sealed: bool,
) -> Result<(), Why> {
    if !sealed {
        return patch(delta, base, e, dest);
    }
    let opened =
        seal::open(ids, delta).map_err(|err| Why::Decode(format!("cannot open it: {err}")))?;
    patch(
        io::BufReader::with_capacity(64 << 10, opened),
        base,
        e,
        dest,
    )
}

/// The NAR of the base as the agent's own writer makes it from the store,
/// held to the index's NarSize and NarHash (a damaged base stops there).
fn base_nar(d: &NarDelta) -> Result<Vec<u8>, Why> {
    let path = PathBuf::from(d.base.to_string());
    let out = HashingCounter::new(Capped {
        buf: Vec::with_capacity(d.base_nar_size as usize),
        cap: d.base_nar_size,
    });
    let out =
        nar::dump_path(&path, out).map_err(|err| Why::Base(format!("cannot be read: {err}")))?;
    let (capped, hash, size) = out.finish();
    if size != d.base_nar_size || hash != d.base_nar_hash {
        return Err(Why::Base(format!(
            "is damaged: its NAR is {size} bytes {hash}, the index says {} bytes {}",
            d.base_nar_size, d.base_nar_hash
        )));
    }
    Ok(capped.buf)
}

/// A buffer that refuses to grow past `cap` bytes.
struct Capped {
    buf: Vec<u8>,
    cap: u64,
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if (self.buf.len() + data.len()) as u64 > self.cap {
            return Err(io::Error::other(format!("larger than {} bytes", self.cap)));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes one zstd frame of `input` with `base` as its prefix through the
/// checks of a downloaded NAR, refuses bytes after the frame, and stages
/// the result at `dest`.
fn patch<R: BufRead>(input: R, base: &[u8], e: &Entry, dest: &Path) -> Result<(), Why> {
    let decode = |err: io::Error| Why::Decode(err.to_string());
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(input, base)
        .map_err(decode)?
        .single_frame();
    dec.window_log_max(nardelta::WINDOW_LOG_MAX)
        .map_err(decode)?;
    let tmp = fetch::check_into(&mut dec, e, dest).map_err(Why::Decode)?;
    match dec.finish().fill_buf() {
        Ok([]) => {}
        Ok(_) => return Err(Why::Decode("trailing data after the delta".to_owned())),
        Err(err) => return Err(decode(err)),
    }
    tmp.persist(dest)
        .map_err(|err| Why::Decode(format!("cannot rename to {}: {err}", dest.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixcast_common::manifest::{nar_url, Compression};
    use std::io::Read;

    fn nar_of(dir: &Path) -> Vec<u8> {
        nar::dump_path(dir, Vec::new()).unwrap()
    }

    /// A delta made as the publisher makes it (`zstd --patch-from`).
    fn patch_of(base: &[u8], new: &[u8]) -> Vec<u8> {
        let mut enc = zstd::Encoder::with_ref_prefix(Vec::new(), 9, base).unwrap();
        enc.include_contentsize(true).unwrap();
        enc.set_pledged_src_size(Some(new.len() as u64)).unwrap();
        enc.window_log(20).unwrap();
        enc.long_distance_matching(true).unwrap();
        enc.write_all(new).unwrap();
        enc.finish().unwrap()
    }

    fn entry(nar: &[u8]) -> Entry {
        let p: StorePath = "/nix/store/si52d1150q5y2r6361zybm110k6plxjf-x"
            .parse()
            .unwrap();
        let fh = Sha256Hash::digest(b"full");
        Entry {
            store_path: p,
            nar_hash: Sha256Hash::digest(nar),
            nar_size: nar.len() as u64,
            references: vec![],
            deriver: None,
            sigs: vec![],
            url: nar_url(&fh, Compression::Zstd),
            compression: Compression::Zstd,
            file_hash: fh,
            file_size: 1000,
            cache: None,
            sealed_to: None,
        }
    }

    struct Pair {
        _dir: tempfile::TempDir,
        base: Vec<u8>,
        new: Vec<u8>,
        staged: PathBuf,
    }

    fn pair() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let (b, n) = (dir.path().join("b"), dir.path().join("n"));
        for (d, v) in [(&b, "1"), (&n, "2")] {
            std::fs::create_dir(d).unwrap();
            let text: String = (0..2000)
                .map(|i| format!("line {i} of the library\n"))
                .collect();
            std::fs::write(d.join("lib"), text).unwrap();
            std::fs::write(d.join("version"), v).unwrap();
        }
        std::fs::create_dir(dir.path().join("nar")).unwrap();
        let staged = dir.path().join("nar/x.nar");
        Pair {
            base: nar_of(&b),
            new: nar_of(&n),
            staged,
            _dir: dir,
        }
    }

    #[test]
    fn a_patch_rebuilds_the_new_nar_into_staging() {
        let p = pair();
        let delta = patch_of(&p.base, &p.new);
        assert!(delta.len() * 20 < p.new.len(), "{} bytes", delta.len());
        patch(&delta[..], &p.base, &entry(&p.new), &p.staged).unwrap();
        let mut staged = Vec::new();
        std::fs::File::open(&p.staged)
            .unwrap()
            .read_to_end(&mut staged)
            .unwrap();
        assert_eq!(staged, p.new);
    }

    #[test]
    fn a_patch_that_makes_another_nar_or_has_trailing_bytes_is_refused() {
        let p = pair();
        let delta = patch_of(&p.base, &p.new);
        // Against another base it decodes to other bytes (or fails).
        let mut other = p.base.clone();
        let at = other.len() / 2;
        other[at] ^= 1;
        let r = patch(&delta[..], &other, &entry(&p.new), &p.staged);
        assert!(matches!(r, Err(Why::Decode(_))), "{r:?}");
        assert!(!p.staged.exists());
        // The entry says another NAR: refused on NarHash.
        let mut wrong = entry(&p.new);
        wrong.nar_hash = Sha256Hash::digest(b"other");
        let r = patch(&delta[..], &p.base, &wrong, &p.staged);
        assert!(
            matches!(&r, Err(Why::Decode(m)) if m.contains("NarHash")),
            "{r:?}"
        );
        let mut longer = delta.clone();
        longer.push(0);
        let r = patch(&longer[..], &p.base, &entry(&p.new), &p.staged);
        assert!(
            matches!(&r, Err(Why::Decode(m)) if m.contains("trailing")),
            "{r:?}"
        );
        assert!(!p.staged.exists());
    }

    #[test]
    fn a_delta_is_held_to_its_file_hash_and_a_base_to_its_nar_hash() {
        let p = pair();
        let delta = patch_of(&p.base, &p.new);
        let d = NarDelta {
            store_path: entry(&p.new).store_path,
            base: "/nix/store/si52d1150q5y2r6361zybm110k6plxjf-b"
                .parse()
                .unwrap(),
            base_nar_hash: Sha256Hash::digest(&p.base),
            base_nar_size: p.base.len() as u64,
            url: layout::Key::NarDelta(Sha256Hash::digest(&delta)).to_string(),
            compression: nardelta::DeltaCompression::ZstdPatch,
            file_hash: Sha256Hash::digest(&delta),
            file_size: delta.len() as u64,
        };
        check_file(&delta, &d).unwrap();
        let mut bad = delta.clone();
        bad[4] ^= 1;
        assert!(matches!(check_file(&bad, &d), Err(Why::FileHash(_))));
        // Not in this machine's store: the base cannot be read.
        assert!(matches!(base_nar(&d), Err(Why::Base(_))));
        let mut w = Capped {
            buf: Vec::new(),
            cap: 3,
        };
        assert!(w.write_all(b"1234").is_err());
    }
}
