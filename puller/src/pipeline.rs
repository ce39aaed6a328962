//! Steps 6 and 7 of a run, overlapped: fetch the missing NARs and import them
//! while the rest still download.
//!
//! Downloads run `jobs` at a time, the large ones first and then the rest in
//! dependency order. Each NAR that passed every check (see `fetch`) joins the
//! staging cache. One `nix-store --realise` at a time, with the staging cache
//! as its only substituter, imports every staged path whose missing
//! references are already imported or in the same batch (Nix orders a batch
//! itself and imports several of its paths at once). Running it alongside
//! the downloads instead of after them takes its time off the run. As each
//! batch is a Nix process (~25 ms of CPU before its first path), a batch
//! waits, while NARs still arrive, until it holds 64 paths or 64 MiB, or no
//! NAR was verified for 250 ms (`worth_a_batch`). Each batch's staged files
//! go once it is imported. Every path imported is verified and its closure is complete;
//! a run that fails half-way leaves such paths behind, as Nix would,
//! and a later run does not fetch them again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::anyhow;
use futures_util::StreamExt;
use nixcast_common::manifest::{Entry, Manifest};
use nixcast_common::pinned::Pinned;
use nixcast_common::seal::Identity;
use nixcast_common::{PublicKey, Sha256Hash, StorePath};

use crate::config::{Config, RunError};
use crate::delta::{self, Deltas};
use crate::fetch::{self, NarError};
use crate::host::Store;
use crate::source::Source;
use crate::staging::{self, Staging};
use crate::store;

/// NARs at least this large are fetched first: decoding them takes longest.
const LARGE: u64 = 4 << 20;

/// How many large NARs download at once, each spooled to disk until decoded:
/// four more than there are CPUs (decoders). A spooled NAR that waits for a
/// decoder holds its place, so with one more only, a link slower than the
/// decoders went idle whenever two waited (xz through 100 Mbit/s on one
/// core: 25.5 s against 23.9 s with four more, `nix-store -r` 23.7 s). They
/// wait on disk, not in memory.
pub fn spooled_at_once() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) + 4
}

/// Fetches, verifies and imports `entries` (the paths the store lacks).
/// Returns the bytes downloaded.
///
/// When Nix's import from the staging cache fails, the run goes once more
/// from an empty staging directory for the paths still missing: whatever
/// was wrong in staging is gone then, and a second failure is Nix's own.
pub async fn fetch_and_import(
    cfg: &Config,
    staging: &Staging,
    manifest: &Pinned,
    entries: &[&Entry],
    total: u64,
    ids: &Arc<[Identity]>,
    deltas: &Deltas,
) -> Result<u64, RunError> {
    let (fetched, why) = match attempt(cfg, staging, manifest, entries, total, ids, deltas).await {
        Ok(n) => {
            tracing::debug!(
                peak_rss_kib = peak_rss_kib(),
                cpu_ms = own_cpu_ms(),
                "the agent's own peak resident set and CPU time (without Nix's)"
            );
            return Ok(n);
        }
        Err(Failed::Run(e)) => return Err(e),
        Err(Failed::Import { fetched, why }) => (fetched, why),
    };
    tracing::warn!(
        "importing from the staging cache failed; once more from an empty staging directory: {why:#}"
    );
    let entries = afresh(cfg, staging, entries)?;
    let total = entries.iter().map(|e| e.file_size).sum();
    match attempt(cfg, staging, manifest, &entries, total, ids, deltas).await {
        Ok(n) => Ok(fetched + n),
        Err(Failed::Run(e)) => Err(e),
        Err(Failed::Import { why, .. }) => Err(RunError::Import(why)),
    }
}

/// Empties the staging directory; returns the entries still missing.
fn afresh<'a>(
    cfg: &Config,
    staging: &Staging,
    entries: &[&'a Entry],
) -> Result<Vec<&'a Entry>, RunError> {
    staging
        .empty()
        .map_err(|e| RunError::Other(e.context("cannot empty the staging directory")))?;
    let asked: Vec<&StorePath> = entries.iter().map(|e| &e.store_path).collect();
    let still = cfg.ports.store.missing(&asked).map_err(RunError::Other)?;
    Ok(entries
        .iter()
        .filter(|e| still.contains(&e.store_path))
        .copied()
        .collect())
}

enum Failed {
    /// Nix's import from the staging cache failed (after `fetched` bytes).
    Import {
        fetched: u64,
        why: anyhow::Error,
    },
    Run(RunError),
}

impl From<RunError> for Failed {
    fn from(e: RunError) -> Self {
        Failed::Run(e)
    }
}

/// One pass of downloads and imports, overlapped: the NARs of `entries`
/// fetched and verified into staging, and each batch imported as soon as
/// its references are (`Attempt` holds where it stands). Returns the bytes
/// downloaded.
async fn attempt(
    cfg: &Config,
    staging: &Staging,
    manifest: &Pinned,
    entries: &[&Entry],
    total: u64,
    ids: &Arc<[Identity]>,
    deltas: &Deltas,
) -> Result<u64, Failed> {
    let mut at = Attempt::new(cfg, staging, manifest, entries)?;
    // A path rebuilt from a delta is not fetched whole: it cannot go first.
    let whole: Vec<&Entry> = entries
        .iter()
        .filter(|e| deltas.get(e).is_none())
        .copied()
        .collect();
    let first = hubs(&whole);
    let order = at.plan.download_order(entries, &first);
    let progress = Arc::new(AtomicU64::new(0));
    let (bar, ticker) = show_progress(total, &progress);
    let upstreams = upstream_sources(cfg, entries)?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let slots = fetch::Slots::new(cpus).first(first.iter().map(|e| e.file_hash).collect());
    let ports = Ports {
        upstreams: &upstreams,
        progress: &progress,
        slots: &slots,
        ids,
        deltas,
        spooling: tokio::sync::Semaphore::new(spooled_at_once()),
    };
    let mut downloads = downloads(cfg, staging, order, &ports);
    loop {
        let now = tokio::time::Instant::now();
        let wake = at.import_what_is_ready(now);
        if at.is_over() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
            next = downloads.next(), if at.downloads_wanted() => at.downloaded(next),
            done = async { at.importing.as_mut().expect("guarded").await }, if at.importing.is_some() => {
                at.imported(done)
            }
        }
    }
    drop(downloads);
    ticker.abort();
    bar.finish_and_clear();
    at.finish()
}

/// What the downloads share.
struct Ports<'a> {
    upstreams: &'a HashMap<String, Source>,
    progress: &'a Arc<AtomicU64>,
    slots: &'a fetch::Slots,
    ids: &'a Arc<[Identity]>,
    deltas: &'a Deltas,
    spooling: tokio::sync::Semaphore,
}

/// The downloads of `order`, each NAR verified into staging as it comes;
/// a path with a usable delta is rebuilt from it (`delta.rs`), or else
/// fetched whole.
///
/// Requests and decoders are counted apart: `jobs` requests for small
/// NARs (most of a closure) wait on the network and are read into memory
/// (8 MiB of them at most); larger NARs are spooled to disk, four more of
/// them at a time than there are CPUs. Either is decoded only once all
/// its bytes are here, in one of the decoder slots (`slots`), one per CPU:
/// many round trips are in flight without many threads fighting over the
/// cores, and each decoder may hold an xz window (8 MiB for `xz -6`), so
/// the slots bound the agent's memory too.
fn downloads<'a>(
    cfg: &'a Config,
    staging: &'a Staging,
    order: Vec<&'a Entry>,
    p: &'a Ports<'a>,
) -> impl futures_util::Stream<Item = Result<(&'a Entry, u64), NarError>> + 'a {
    let source_of = move |e: &Entry| match e.cache.as_deref() {
        Some(url) if !p.upstreams.is_empty() => &p.upstreams[url],
        _ => &cfg.ports.source,
    };
    // A path rebuilt from a delta spools nothing (the delta is in memory,
    // the base bounded by `delta.rs`): it goes with the small ones, many
    // round trips at once, whatever its size.
    let (spooled, small): (Vec<&Entry>, Vec<&Entry>) = order
        .into_iter()
        .partition(|e| staging::spools(e) && p.deltas.get(e).is_none());
    let fetch = move |e: &'a Entry| {
        let progress = p.progress.clone();
        async move {
            // Deltas live in this cache, whoever serves the full NAR.
            let source = &cfg.ports.source;
            if let Some(n) =
                delta::rebuild(source, staging, e, p.deltas, &progress, p.slots, p.ids).await
            {
                return Ok((e, n));
            }
            // A large NAR fetched whole spools, at most `spooled_at_once`
            // of them, whichever stream it came by.
            let _spool = match staging::spools(e) {
                true => Some(p.spooling.acquire().await.expect("never closed")),
                false => None,
            };
            fetch::fetch_one(source_of(e), staging, e, progress, p.slots, p.ids)
                .await
                .map(|n| (e, n))
        }
    };
    futures_util::stream::select(
        futures_util::stream::iter(spooled)
            .map(fetch)
            .buffer_unordered(spooled_at_once()),
        futures_util::stream::iter(small)
            .map(fetch)
            .buffer_unordered(cfg.apply.jobs.max(1)),
    )
}

/// Where an attempt stands: what is staged, importing and imported, and
/// what went wrong.
struct Attempt<'a> {
    cfg: &'a Config,
    staging: &'a Staging,
    plan: Plan<'a>,
    /// NARs two paths share (the same bytes): staged once, kept to the end.
    shared: HashSet<Sha256Hash>,
    fetched: u64,
    /// When the last NAR was verified: a small batch goes once none has been
    /// for a while (a stalled download holds back no import).
    last_verified: tokio::time::Instant,
    downloading: bool,
    importing: Option<tokio::task::JoinHandle<anyhow::Result<Vec<StorePath>>>>,
    /// A NAR that cannot be had now does not stop the others (they are
    /// verified and imported, and the next run need not fetch them again);
    /// one that fails verification or a local failure stops the run at once.
    unavailable: Vec<NarError>,
    failure: Option<Failed>,
}

impl<'a> Attempt<'a> {
    fn new(
        cfg: &'a Config,
        staging: &'a Staging,
        manifest: &'a Pinned,
        entries: &[&'a Entry],
    ) -> Result<Self, Failed> {
        staging.write_cache(entries).map_err(RunError::Other)?;
        let mut seen = HashSet::new();
        let shared = entries
            .iter()
            .filter(|e| !seen.insert(e.nar_hash))
            .map(|e| e.nar_hash)
            .collect();
        Ok(Attempt {
            cfg,
            staging,
            plan: Plan::new(manifest, entries),
            shared,
            fetched: 0,
            last_verified: tokio::time::Instant::now(),
            downloading: true,
            importing: None,
            unavailable: Vec::new(),
            failure: None,
        })
    }

    /// Starts a batch if none is importing and what is ready is worth one;
    /// else, when to look again.
    fn import_what_is_ready(&mut self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        if self.importing.is_some() || self.failure.is_some() {
            return None;
        }
        let quiet = now >= self.last_verified + QUIET;
        let downloading = self.downloading;
        let ready = self.plan.ready(|b| worth_a_batch(b, downloading, quiet));
        if !ready.is_empty() {
            self.importing = Some(start_import(self.cfg, self.staging, &self.shared, &ready));
            None
        } else if !quiet && self.plan.has_waiting() {
            Some(self.last_verified + QUIET)
        } else {
            None
        }
    }

    /// Nothing is importing, and nothing more will be downloaded.
    fn is_over(&self) -> bool {
        self.importing.is_none() && (!self.downloading || self.failure.is_some())
    }

    fn downloads_wanted(&self) -> bool {
        self.downloading && self.failure.is_none()
    }

    fn downloaded(&mut self, next: Option<Result<(&'a Entry, u64), NarError>>) {
        match next {
            Some(Ok((e, n))) => {
                self.fetched += n;
                self.plan.staged(e);
                self.last_verified = tokio::time::Instant::now();
            }
            Some(Err(e @ NarError::Fetch { .. })) => {
                self.unavailable.push(e);
                if let Some(f) = failing_origin(&self.unavailable) {
                    self.failure = Some(f.into());
                }
            }
            Some(Err(e)) => self.failure = Some(nar_error(e).into()),
            None => {
                tracing::debug!("every NAR fetched and verified");
                self.downloading = false;
            }
        }
    }

    fn imported(&mut self, done: Result<anyhow::Result<Vec<StorePath>>, tokio::task::JoinError>) {
        self.importing = None;
        match done {
            Ok(Ok(batch)) => {
                tracing::debug!(paths = batch.len(), "imported a batch");
                self.plan.imported(batch);
            }
            Ok(Err(why)) => {
                self.failure = Some(Failed::Import {
                    fetched: self.fetched,
                    why,
                })
            }
            Err(e) => self.failure = Some(RunError::Import(e.into()).into()),
        }
    }

    /// The attempt's end: its first failure, NARs that could not be had, or
    /// the bytes downloaded.
    fn finish(self) -> Result<u64, Failed> {
        if let Some(f) = self.failure {
            return Err(f);
        }
        if let Some(first) = self.unavailable.first() {
            let more = match self.unavailable.len() {
                1 => String::new(),
                n => format!(" (and {} more NARs)", n - 1),
            };
            return Err(RunError::Fetch(anyhow!("{first}{more}")).into());
        }
        if !self.plan.waiting.is_empty() {
            // Cannot happen for a closed manifest; say so rather than loop.
            return Err(RunError::Other(anyhow!(
                "{} verified paths could not be imported: their references are missing",
                self.plan.waiting.len()
            ))
            .into());
        }
        Ok(self.fetched)
    }
}

/// The progress bar, and the task that moves it.
fn show_progress(
    total: u64,
    progress: &Arc<AtomicU64>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = progress_bar(total);
    let (b, progress) = (bar.clone(), progress.clone());
    let ticker = tokio::spawn(async move {
        loop {
            b.set_position(progress.load(Ordering::Relaxed));
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    (bar, ticker)
}

/// A batch started while NARs still arrive holds this many paths at least,
/// or this many bytes, unless no NAR was verified for `QUIET`.
const BATCH_PATHS: usize = 64;
const BATCH_BYTES: u64 = 64 << 20;
const QUIET: std::time::Duration = std::time::Duration::from_millis(250);

/// Whether the paths `ready` to import are worth a batch now. Each batch is
/// a Nix process (~25 ms of CPU before its first path): while NARs still
/// arrive, a batch waits until it is worth that (when decoding is slow, as
/// for xz on one core, batches of a few paths each cost more than the import
/// itself), unless the downloads went `quiet` (one stalls). An update of two
/// paths is one batch: the first waits for the second.
fn worth_a_batch(ready: &[&Entry], downloading: bool, quiet: bool) -> bool {
    !downloading
        || quiet
        || ready.len() >= BATCH_PATHS
        || ready.iter().map(|e| e.nar_size).sum::<u64>() >= BATCH_BYTES
}

/// Imports `ready` in the background; once imported, their staged files go
/// (but a NAR another path shares), which keeps the disk a run needs small
/// and leaves little to clear at its end.
fn start_import(
    cfg: &Config,
    staging: &Staging,
    shared: &HashSet<Sha256Hash>,
    ready: &[&Entry],
) -> tokio::task::JoinHandle<anyhow::Result<Vec<StorePath>>> {
    let (staging, trusted) = (staging.clone(), cfg.policy.trusted.keys());
    let nix = cfg.ports.store.clone();
    let batch: Vec<StorePath> = ready.iter().map(|e| e.store_path.clone()).collect();
    let staged: Vec<PathBuf> = ready
        .iter()
        .flat_map(|e| {
            let nar = (!shared.contains(&e.nar_hash)).then(|| staging.nar(e));
            [Some(staging.narinfo(&e.store_path)), nar]
        })
        .flatten()
        .collect();
    tokio::task::spawn_blocking(move || {
        import(&*nix, &staging, &batch, &trusted)?;
        for f in staged {
            let _ = std::fs::remove_file(f);
        }
        Ok(batch)
    })
}

/// NARs from one origin that may fail (after their retries) before the run
/// stops: one missing NAR is worth finishing the rest for, an origin that
/// stalls or fails on every NAR is not worth working through them all.
const ORIGIN_FAILURES: usize = 3;

fn failing_origin(unavailable: &[NarError]) -> Option<RunError> {
    let origin = |e: &NarError| match e {
        NarError::Fetch { url, .. } => reqwest::Url::parse(url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| url.clone()),
        _ => String::new(),
    };
    let last = origin(unavailable.last()?);
    let same: Vec<&NarError> = unavailable.iter().filter(|e| origin(e) == last).collect();
    (same.len() >= ORIGIN_FAILURES).then(|| {
        RunError::Fetch(anyhow!(
            "{} NARs from {last} failed, stopping early; the first: {}",
            same.len(),
            same[0]
        ))
    })
}

fn import(
    store: &dyn Store,
    staging: &Staging,
    batch: &[StorePath],
    trusted: &[PublicKey],
) -> anyhow::Result<()> {
    // Batches are in dependency order; chunks keep each command line short.
    // Nothing refers to these paths until the profile does, so each chunk is
    // rooted as it is imported: a garbage collection while later NARs
    // download would delete them otherwise.
    for chunk in batch.chunks(store::CHUNK) {
        store.import(staging, chunk, trusted)?;
    }
    Ok(())
}

fn nar_error(e: NarError) -> RunError {
    match e {
        NarError::Verify { .. } => RunError::Refused(e.into()),
        NarError::Fetch { .. } => RunError::Fetch(e.into()),
        NarError::Local { .. } => RunError::Other(e.into()),
    }
}

/// A manifest may name upstream caches for some paths (publish --upstream);
/// a bundle carries every NAR itself.
fn upstream_sources(cfg: &Config, entries: &[&Entry]) -> Result<HashMap<String, Source>, RunError> {
    let mut out = HashMap::new();
    if cfg.ports.source.is_bundle() {
        return Ok(out);
    }
    for url in entries.iter().filter_map(|e| e.cache.as_deref()) {
        if !out.contains_key(url) {
            let src =
                Source::new(url, &cfg.ports.http, &cfg.ports.secrets).map_err(RunError::Refused)?;
            out.insert(url.to_owned(), src);
        }
    }
    Ok(out)
}

/// From this many paths to fetch, the hubs among them go first.
const HUBS_FROM: usize = 64;
/// At most this many hubs.
const HUBS: usize = 4;

/// The paths that at least half of `entries` reference (a closure's libc;
/// the stand-in's base-lib), the most referenced first, when there are
/// enough entries for it to matter. Nix can import next to nothing before
/// them, so their bytes go first (`fetch::Slots::first`): on a link shared
/// by every request, the stand-in's base-lib came last, and Nix imported
/// all 303 paths after the last byte instead of while the rest arrived.
fn hubs<'a>(entries: &[&'a Entry]) -> Vec<&'a Entry> {
    if entries.len() < HUBS_FROM {
        return Vec::new();
    }
    let mut referrers: HashMap<&StorePath, usize> = HashMap::new();
    for e in entries {
        for r in e.references.iter().filter(|r| **r != e.store_path) {
            *referrers.entry(r).or_default() += 1;
        }
    }
    let mut hubs: Vec<(&Entry, usize)> = entries
        .iter()
        .filter_map(|e| referrers.get(&e.store_path).map(|n| (*e, *n)))
        .filter(|(_, n)| 2 * n >= entries.len())
        .collect();
    hubs.sort_by(|(a, n), (b, m)| m.cmp(n).then_with(|| a.store_path.cmp(&b.store_path)));
    hubs.truncate(HUBS);
    hubs.into_iter().map(|(e, _)| e).collect()
}

/// Which verified paths may be imported next.
struct Plan<'a> {
    /// Position in the manifest's dependency order.
    rank: HashMap<&'a StorePath, usize>,
    /// Paths the store lacked and that are not imported yet.
    missing: HashSet<&'a StorePath>,
    /// Verified and staged, not imported yet, by rank.
    waiting: BTreeMap<usize, &'a Entry>,
}

impl<'a> Plan<'a> {
    fn new(manifest: &'a Manifest, entries: &[&'a Entry]) -> Self {
        let rank = manifest
            .topological()
            .into_iter()
            .enumerate()
            .map(|(i, e)| (&e.store_path, i))
            .collect();
        Plan {
            rank,
            missing: entries.iter().map(|e| &e.store_path).collect(),
            waiting: BTreeMap::new(),
        }
    }

    /// The `hubs` first (see [`hubs`]); then the large NARs, largest first,
    /// so that decoding them overlaps the rest; then dependency order, so
    /// that imports can start early.
    fn download_order(&self, entries: &[&'a Entry], hubs: &[&Entry]) -> Vec<&'a Entry> {
        let mut order = entries.to_vec();
        order.sort_by_key(|e| {
            if hubs.iter().any(|h| h.store_path == e.store_path) {
                (0, 0)
            } else if e.file_size >= LARGE {
                (1, u64::MAX - e.file_size)
            } else {
                (2, self.rank[&e.store_path] as u64)
            }
        });
        order
    }

    fn staged(&mut self, e: &'a Entry) {
        self.waiting.insert(self.rank[&e.store_path], e);
    }

    /// Staged paths whose missing references are imported or come earlier in
    /// the same batch, in dependency order.
    /// None unless `worth` says they are worth a batch.
    fn ready(&mut self, worth: impl Fn(&[&'a Entry]) -> bool) -> Vec<&'a Entry> {
        let mut batch: HashSet<&StorePath> = HashSet::new();
        let mut out = Vec::new();
        for (&rank, e) in &self.waiting {
            let ok = e
                .references
                .iter()
                .all(|r| r == &e.store_path || !self.missing.contains(r) || batch.contains(r));
            if ok {
                batch.insert(&e.store_path);
                out.push((rank, *e));
            }
        }
        let entries: Vec<&'a Entry> = out.iter().map(|(_, e)| *e).collect();
        if !worth(&entries) {
            return Vec::new();
        }
        for (rank, _) in out {
            self.waiting.remove(&rank);
        }
        entries
    }

    fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    fn imported(&mut self, batch: Vec<StorePath>) {
        for p in batch {
            self.missing.remove(&p);
        }
    }
}

/// This process's peak resident set (Linux's VmHWM), for the benchmark.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's CPU time so far, user and system, all threads, without
/// its children (`/proc/self/stat`'s utime and stime, in USER_HZ = 100 ticks).
fn own_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: count fields after its closing ')'.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let (user, sys): (u64, u64) = (rest.next()?.parse().ok()?, rest.next()?.parse().ok()?);
    Some((user + sys) * 10)
}

/// A byte progress bar on a terminal, nothing otherwise.
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "fetching [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("a valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixcast_common::manifest::{nar_url, Compression};
    use nixcast_common::{nixbase32, Sha256Hash};

    fn sp(name: &str, n: u8) -> StorePath {
        let h = nixbase32::encode(&[n; 20]);
        StorePath::from_basename(&format!("{h}-{name}")).unwrap()
    }

    fn entry(p: &StorePath, refs: &[&StorePath], file_size: u64) -> Entry {
        let fh = Sha256Hash::digest(p.to_string().as_bytes());
        Entry {
            store_path: p.clone(),
            nar_hash: Sha256Hash::digest(b"x"),
            nar_size: 120,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            sigs: vec![],
            url: nar_url(&fh, Compression::Xz),
            compression: Compression::Xz,
            file_hash: fh,
            file_size,
            cache: None,
            sealed_to: None,
        }
    }

    fn ready(plan: &mut Plan<'_>) -> Vec<StorePath> {
        plan.ready(|_| true)
            .iter()
            .map(|e| e.store_path.clone())
            .collect()
    }

    /// top → {lib, big}, lib → libc, big → libc; libc is already valid.
    #[test]
    fn imports_follow_references() {
        let (libc, lib, big, top) = (sp("libc", 1), sp("lib", 2), sp("big", 3), sp("top", 4));
        let m = Manifest::new(
            top.clone(),
            vec![
                entry(&top, &[&lib, &big, &top], 10),
                entry(&big, &[&libc], LARGE),
                entry(&lib, &[&libc], 10),
                entry(&libc, &[], 10),
            ],
        )
        .unwrap();
        let entries: Vec<&Entry> = m.paths.iter().filter(|e| e.store_path != libc).collect();
        let mut plan = Plan::new(&m, &entries);
        let order: Vec<_> = plan
            .download_order(&entries, &[])
            .iter()
            .map(|e| e.store_path.name().to_owned())
            .collect();
        assert_eq!(order, ["big", "lib", "top"]);

        let get = |p: &StorePath| m.get(p).unwrap();
        // top arrives first: it waits for lib and big.
        plan.staged(get(&top));
        assert!(ready(&mut plan).is_empty());
        // lib needs only libc, which the store has.
        plan.staged(get(&lib));
        assert_eq!(ready(&mut plan), std::slice::from_ref(&lib));
        // While lib is imported, big arrives: top must still wait for lib.
        plan.staged(get(&big));
        assert_eq!(ready(&mut plan), std::slice::from_ref(&big));
        assert!(ready(&mut plan).is_empty());
        plan.imported(vec![lib]);
        assert!(ready(&mut plan).is_empty(), "big is not imported yet");
        plan.imported(vec![big]);
        assert_eq!(ready(&mut plan), [top]);
        assert!(plan.waiting.is_empty());
    }

    #[test]
    fn the_paths_most_others_need_go_first() {
        let (lib, rare) = (sp("lib", 200), sp("rare", 201));
        let mut paths = vec![entry(&lib, &[], 10), entry(&rare, &[], 10)];
        for n in 0..70u8 {
            let p = sp("p", n);
            let refs: Vec<&StorePath> = if n < 5 { vec![&lib, &rare] } else { vec![&lib] };
            paths.push(entry(&p, &refs, 10));
        }
        let top = sp("top", 202);
        paths.push(entry(&top, &[&lib], 10));
        let m = Manifest::new(top.clone(), paths).unwrap();
        let entries: Vec<&Entry> = m.paths.iter().collect();
        let first: Vec<&StorePath> = hubs(&entries).iter().map(|e| &e.store_path).collect();
        assert_eq!(first, [&lib]);
        let plan = Plan::new(&m, &entries);
        assert_eq!(
            plan.download_order(&entries, &hubs(&entries))[0].store_path,
            lib
        );
        // An update of a few paths waits for nothing.
        assert!(hubs(&entries[..10]).is_empty());
    }

    #[test]
    fn a_batch_may_hold_a_path_and_its_references() {
        let (a, b, top) = (sp("a", 1), sp("b", 2), sp("top", 3));
        let m = Manifest::new(
            top.clone(),
            vec![
                entry(&top, &[&b], 1),
                entry(&b, &[&a], 1),
                entry(&a, &[], 1),
            ],
        )
        .unwrap();
        let entries: Vec<&Entry> = m.paths.iter().collect();
        let mut plan = Plan::new(&m, &entries);
        for e in m.paths.iter() {
            plan.staged(e);
        }
        assert_eq!(ready(&mut plan), [a, b, top]);
    }

    #[test]
    fn a_batch_waits_until_it_is_worth_a_nix_process() {
        let (a, b) = (sp("a", 1), sp("b", 2));
        let (ea, eb) = (entry(&a, &[], 1), entry(&b, &[&a], 1));
        let two = [&ea, &eb];
        // Two small paths while NARs still arrive: not yet.
        assert!(!worth_a_batch(&two, true, false));
        // The downloads ended, or went quiet: now.
        assert!(worth_a_batch(&two, false, false));
        assert!(worth_a_batch(&two, true, true));
        // Enough paths, or enough bytes.
        let many: Vec<Entry> = (0..BATCH_PATHS as u8)
            .map(|n| entry(&sp("p", n), &[], 1))
            .collect();
        assert!(worth_a_batch(&many.iter().collect::<Vec<_>>(), true, false));
        let big = Entry {
            nar_size: BATCH_BYTES,
            ..entry(&a, &[], 1)
        };
        assert!(worth_a_batch(&[&big], true, false));
    }
}
