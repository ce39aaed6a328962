//! `nixcast publish`: a host's closure into a signed cache, then its pointer.
//!
//! Order of writes (each atomic): NARs, narinfos, `nix-cache-info`, the
//! manifest, `hosts/HOST/<generation>.json`, `hosts/HOST.json`. A reader that
//! follows the pointer therefore never finds a missing object.

use std::io::BufWriter;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nixcast_common::hash::HashingCounter;
use nixcast_common::manifest::{self, Compression, Delta, Entry, Manifest};
use nixcast_common::narinfo::NarInfo;
use nixcast_common::pad::pad_json;
use nixcast_common::pointer::{self, Head, ManifestRef, Pointer, Timestamp};
use nixcast_common::seal::{self, Identity, Recipient};
use nixcast_common::{layout, PublicKey, SecretKey, Sha256Hash, StorePath};

use crate::nix::{PathInfo, Store};
use crate::parallel::parallel;
use crate::target::Target;

pub const NIX_CACHE_INFO: &str = layout::NIX_CACHE_INFO_TEXT;

pub struct Options {
    pub key: SecretKey,
    pub compression: Compression,
    pub expires_in: Option<Duration>,
    pub jobs: usize,
    pub force: bool,
    pub system: Option<String>,
    pub upstreams: crate::upstream::Upstreams,
    /// Which hosts are sealed, and to whom.
    pub sealing: crate::sealing::Sealing,
    /// Write everything but the host's pointer: the history entry is the
    /// staged pointer, which `nixcast promote` makes current.
    pub stage: bool,
    /// Write NAR deltas against the host's previous generation (`delta.rs`).
    pub deltas: bool,
    /// The issue time of every pointer of this command, which makes its
    /// hosts' generations one release (`promote --after` compares it);
    /// `None`: each host's own time.
    pub release: Option<Timestamp>,
}

#[derive(Debug)]
pub enum Outcome {
    Published(Summary),
    /// The host's pointer already names this store path.
    Unchanged {
        generation: u64,
        store_path: StorePath,
    },
}

#[derive(Debug)]
pub struct Summary {
    pub host: String,
    pub generation: u64,
    pub store_path: StorePath,
    pub new_paths: usize,
    pub reused_paths: usize,
    pub upstream_paths: usize,
    pub bytes_written: u64,
    /// New paths that got a NAR delta against the previous generation.
    pub deltas: usize,
    /// Only staged: the host's pointer was not written.
    pub staged: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} generation {}: {} ({} new paths, {} reused, {} from upstream, {} written)",
            if self.staged { "staged" } else { "published" },
            self.host,
            self.generation,
            self.store_path,
            self.new_paths,
            self.reused_paths,
            self.upstream_paths,
            nixcast_cli::fmt::human_bytes(self.bytes_written)
        )?;
        if self.deltas > 0 {
            write!(f, "; {} NAR deltas", self.deltas)?;
        }
        Ok(())
    }
}

/// The steps of a publish, each a function below, in the order of writes:
/// NARs, narinfos, manifest (and delta), history, pointer. The closure and
/// the NARs' files come from `store`.
pub fn publish(
    store: &dyn Store,
    target: &Target,
    host: &str,
    top: &StorePath,
    opts: &Options,
) -> Result<Outcome> {
    crate::cache::check_host(host)?;
    let sealed = opts.sealing.is_sealed(host);
    let mut prev = Previous::read(target, host, opts)?;
    if let Some(unchanged) = prev.names_already(top, sealed, opts) {
        return Ok(unchanged);
    }
    prev.read_manifest(target, opts);
    if let Some(unchanged) = prev.holds_already(host, top, opts) {
        return Ok(unchanged);
    }
    // Before any NAR is written: a pointer that cannot be numbered or dated
    // must not leave half a publish behind.
    let (generation, issued_at, expires_at) = next_pointer_time(host, &prev, opts)?;

    let infos = store.closure(top)?;
    tracing::info!(paths = infos.len(), %top, sealed, "read closure from Nix");
    let mut plan = plan_paths(target, host, sealed, &infos, opts)?;
    let new_paths = plan.jobs.len();
    let (plain, bytes_written) = write_nars(store, target, &mut plan, opts)?;
    write_narinfos(target, plain, &mut plan.entries, opts)?;
    let (manifest_ref, manifest) =
        write_manifest(target, host, top, plan.entries, sealed, &prev, opts)?;
    let deltas = match (&prev.pointer, &prev.manifest, opts.deltas) {
        (Some(p), Some(old), true) => {
            let with = crate::delta::Settings {
                key: &opts.key,
                jobs: opts.jobs,
                sealing: &opts.sealing,
            };
            crate::delta::write_deltas(
                store,
                target,
                host,
                (p, old),
                &manifest,
                &manifest_ref,
                &with,
            )?
        }
        _ => 0,
    };

    let pointer = Pointer {
        host: host.to_owned(),
        system: match &opts.system {
            Some(s) => s.clone(),
            None => system_of(store, top),
        },
        generation,
        store_path: (!sealed).then(|| top.clone()),
        manifest: manifest_ref,
        issued_at,
        expires_at,
    };
    write_pointer(target, &pointer, opts)?;
    Ok(Outcome::Published(Summary {
        host: host.to_owned(),
        generation: pointer.generation,
        store_path: top.clone(),
        new_paths,
        reused_paths: plan.reused_paths,
        upstream_paths: plan.upstream_paths,
        bytes_written,
        deltas,
        staged: opts.stage,
    }))
}

/// A plain closure that is no host's system (the agent `nixcast invite`
/// hands an invited host): NARs, narinfos and its manifest, in that order,
/// sealed to no one. Returns what a pointer to it pins, and the paths and
/// bytes written.
pub fn publish_closure(
    store: &dyn Store,
    target: &Target,
    top: &StorePath,
    opts: &Options,
) -> Result<(ManifestRef, usize, u64)> {
    let infos = store.closure(top)?;
    let mut plan = plan_paths(target, "", false, &infos, opts)?;
    let new_paths = plan.jobs.len();
    let (plain, bytes_written) = write_nars(store, target, &mut plan, opts)?;
    write_narinfos(target, plain, &mut plan.entries, opts)?;
    let manifest_bytes = Manifest::new(top.clone(), plan.entries)?.to_json();
    let r = ManifestRef::for_bytes(&manifest_bytes);
    if !target.exists(&r.path)? {
        target.put(&r.path, &manifest_bytes)?;
    }
    target.sync()?;
    Ok((r, new_paths, bytes_written))
}

/// What the target holds of a host already.
struct Previous {
    /// The current pointer, verified with our key or, in a cache with a key
    /// list, with another signing key it lists for the host (`ours` says which).
    pointer: Option<Pointer>,
    ours: bool,
    /// The highest generation published, in the pointer or the history.
    last_generation: u64,
    last_issued: Option<Timestamp>,
    /// The current pointer's manifest: for a sealed pointer's store path,
    /// for a delta, and to tell whether the sealing changed.
    manifest: Option<Manifest>,
}

impl Previous {
    /// The current pointer and the last generation; the manifest is read
    /// by `read_manifest` when it is needed.
    fn read(target: &Target, host: &str, opts: &Options) -> Result<Self> {
        previous_pointer(target, host, opts)
    }

    /// Counts a generation issued at `issued` as published.
    fn after(&mut self, generation: u64, issued: Timestamp) {
        self.last_generation = self.last_generation.max(generation);
        self.last_issued = self.last_issued.max(Some(issued));
    }

    fn read_manifest(&mut self, target: &Target, opts: &Options) {
        let me = [Identity::of_publisher(&opts.key)];
        self.manifest =
            self.pointer
                .as_ref()
                .and_then(|p| match crate::cache::read_manifest(target, p, &me) {
                    Ok((_, m)) => Some(m),
                    Err(e) => {
                        tracing::warn!("cannot read generation {}'s manifest: {e:#}", p.generation);
                        None
                    }
                });
    }

    /// The current pointer, if it needs no renewal (nor `--force`): one
    /// another listed key signed is signed again with ours.
    fn fresh(&self, opts: &Options) -> Option<&Pointer> {
        self.pointer
            .as_ref()
            .filter(|p| self.ours && !opts.force && !needs_renewal(p, opts.expires_in))
    }

    /// `Unchanged` when the current plain pointer names `top` already.
    fn names_already(&self, top: &StorePath, sealed: bool, opts: &Options) -> Option<Outcome> {
        let prev = self.fresh(opts)?;
        (!sealed && prev.store_path.as_ref() == Some(top)).then(|| Outcome::Unchanged {
            generation: prev.generation,
            store_path: top.clone(),
        })
    }

    /// `Unchanged` when the current manifest is for `top`, sealed as this
    /// host would be sealed now.
    fn holds_already(&self, host: &str, top: &StorePath, opts: &Options) -> Option<Outcome> {
        let prev = self.fresh(opts)?;
        let m = self.manifest.as_ref()?;
        let was_sealed = prev.manifest.sealed.is_some();
        (m.store_path == *top && opts.sealing.unchanged(host, &opts.key, m, was_sealed)).then(
            || Outcome::Unchanged {
                generation: prev.generation,
                store_path: top.clone(),
            },
        )
    }
}

/// The next generation, its issue time and expiry. Refused when the
/// generations are used up, or (without `--force`) when this machine's
/// clock is behind the last pointer's issue time.
fn next_pointer_time(
    host: &str,
    prev: &Previous,
    opts: &Options,
) -> Result<(u64, Timestamp, Option<Timestamp>)> {
    let last_generation = prev.last_generation;
    let generation = last_generation.checked_add(1).with_context(|| {
        format!("{host} is at generation {last_generation}, the last there can be")
    })?;
    let issued_at = opts.release.unwrap_or_else(Timestamp::now);
    if let Some(last) = prev.last_issued.filter(|t| *t > issued_at) {
        ensure!(
            opts.force,
            "this machine's clock ({issued_at}) is behind the time the last pointer of {host} \
             was issued ({last}); fix the clock, or use --force if that pointer's time is wrong"
        );
        tracing::warn!(
            "the clock ({issued_at}) is behind the last pointer's issue time ({last}); publishing anyway (--force)"
        );
    }
    let expires_at = match opts.expires_in {
        Some(d) => Some(expiry(issued_at, d)?),
        None => None,
    };
    Ok((generation, issued_at, expires_at))
}

/// Where each path of the closure comes from: the target already (reused),
/// an upstream cache, or a NAR still to write (`jobs`, sealed or not).
struct PathPlan<'a> {
    entries: Vec<Entry>,
    jobs: Vec<(&'a PathInfo, Option<SealTo>)>,
    reused_paths: usize,
    upstream_paths: usize,
}

fn plan_paths<'a>(
    target: &Target,
    host: &str,
    sealed: bool,
    infos: &'a [PathInfo],
    opts: &Options,
) -> Result<PathPlan<'a>> {
    // A sealed host reuses no plain narinfo: its paths are sealed (or upstream).
    let (reused, mut todo) = if sealed {
        (Vec::new(), infos.iter().collect())
    } else {
        split_existing(target, infos, &opts.key)?
    };
    let mut entries: Vec<Entry> = reused.iter().map(entry_of).collect::<Result<_>>()?;
    if !opts.upstreams.is_empty() {
        let found = opts.upstreams.lookup(&todo)?;
        let mut rest = Vec::new();
        for (info, hit) in todo.into_iter().zip(found) {
            match hit {
                Some((url, mut ni)) => {
                    // Our signature vouches for the content our store holds
                    // (checked equal above); the agent needs no upstream key.
                    ni.sign(&opts.key);
                    let mut e = entry_of(&ni)?;
                    e.cache = Some(url);
                    entries.push(e);
                }
                None => rest.push(info),
            }
        }
        tracing::info!(
            upstream = entries.len() - reused.len(),
            "paths served by upstream caches"
        );
        todo = rest;
    }
    let upstream_paths = entries.len() - reused.len();
    let mut reused_paths = reused.len();
    // Sealed paths the target holds already, sealed to the same set.
    let mut jobs: Vec<(&PathInfo, Option<SealTo>)> = Vec::new();
    for info in todo {
        if !sealed {
            jobs.push((info, None));
            continue;
        }
        let to = opts.sealing.recipients_of(host, &info.path);
        let set = seal::fingerprint(&opts.key, &to);
        match opts.sealing.reusable(target, &opts.key, info, &set)? {
            Some(e) => {
                entries.push(e);
                reused_paths += 1;
            }
            None => jobs.push((info, Some((to, set)))),
        }
    }
    // Largest first: with paths compressed in parallel, a big path started
    // last would leave the other cores idle at the end.
    jobs.sort_by_key(|(i, _)| std::cmp::Reverse(i.nar_size));
    Ok(PathPlan {
        entries,
        jobs,
        reused_paths,
        upstream_paths,
    })
}

/// Compresses (and seals) the NARs still to write, `opts.jobs` at a time.
/// Sealed paths join the plan's entries; plain ones return their signed
/// narinfos (not yet written), with the bytes written.
fn write_nars(
    store: &dyn Store,
    target: &Target,
    plan: &mut PathPlan,
    opts: &Options,
) -> Result<(Vec<NarInfo>, u64)> {
    let bar = progress_bar(
        plan.jobs.iter().map(|(i, _)| i.nar_size).sum(),
        "compressing",
    );
    let done = parallel(opts.jobs, &plan.jobs, |(info, seal_to)| {
        let files = store.files(&info.path);
        let r = match seal_to {
            None => write_nar(target, &files, info, opts).map(Written::Plain),
            Some((to, set)) => crate::sealing::write_sealed_nar(
                target,
                &files,
                info,
                &opts.key,
                opts.compression,
                to,
                *set,
            )
            .map(Written::Sealed),
        };
        bar.inc(info.nar_size);
        r
    })?;
    bar.finish_and_clear();
    let mut written = Vec::new();
    let mut bytes_written = 0;
    for w in done {
        match w {
            Written::Plain(ni) => {
                bytes_written += ni.file_size.unwrap_or(0);
                written.push(ni);
            }
            Written::Sealed(e) => {
                bytes_written += e.file_size;
                plan.entries.push(e);
            }
        }
    }
    Ok((written, bytes_written))
}

/// Narinfos only once every NAR is in place, durably. Each is flushed
/// before its rename, so they are written in parallel too: on a disk where
/// a flush waits for the device, one after another would be the slowest
/// part of a publish.
fn write_narinfos(
    target: &Target,
    written: Vec<NarInfo>,
    entries: &mut Vec<Entry>,
    opts: &Options,
) -> Result<()> {
    target.sync()?;
    parallel(opts.jobs, &written, |ni| {
        target.put(&narinfo_key(&ni.store_path), ni.render().as_bytes())
    })?;
    for ni in &written {
        entries.push(entry_of(ni)?);
    }
    if !target.exists(layout::NIX_CACHE_INFO)? {
        target.put(layout::NIX_CACHE_INFO, NIX_CACHE_INFO.as_bytes())?;
    }
    Ok(())
}

/// The manifest (sealed for a sealed host) and the delta from the previous
/// one; returns what the pointer pins, and the manifest.
fn write_manifest(
    target: &Target,
    host: &str,
    top: &StorePath,
    entries: Vec<Entry>,
    sealed: bool,
    prev: &Previous,
    opts: &Options,
) -> Result<(ManifestRef, Manifest)> {
    let manifest = Manifest::new(top.clone(), entries)?;
    let manifest_bytes = manifest.to_json();
    let manifest_ref = if sealed {
        let to = opts.sealing.manifest_recipients(host, &opts.key);
        let manifest_bytes = pad_json(manifest_bytes);
        let sealed_bytes = seal::seal_bytes(&to, &manifest_bytes)?;
        let r = ManifestRef::for_sealed(&sealed_bytes, &manifest_bytes);
        target.put(&r.path, &sealed_bytes)?;
        opts.sealing.remember(&manifest);
        r
    } else {
        let r = ManifestRef::for_bytes(&manifest_bytes);
        if !target.exists(&r.path)? {
            target.put(&r.path, &manifest_bytes)?;
        }
        r
    };
    if let (Some(p), Some(old)) = (&prev.pointer, &prev.manifest) {
        if p.manifest != manifest_ref {
            write_delta(target, host, p, old, &manifest, &manifest_ref, opts)?;
        }
    }
    Ok((manifest_ref, manifest))
}

/// The signed pointer: into the host's history, then as its current one.
fn write_pointer(target: &Target, pointer: &Pointer, opts: &Options) -> Result<()> {
    let envelope = pointer.sign(&opts.key);
    target.sync()?;
    target.put_new(
        &layout::history(&pointer.host, pointer.generation),
        &envelope,
    )?;
    if !opts.stage {
        target.put(&layout::pointer(&pointer.host), &envelope)?;
    }
    target.sync()
}

/// Who a path is sealed to, and the name of that set.
type SealTo = (Vec<Recipient>, Sha256Hash);

enum Written {
    Plain(NarInfo),
    Sealed(Entry),
}

/// The delta from the previous generation's manifest, for agents that hold
/// it (in plain text: they name it by the sha256 of that text). A sealed
/// host's delta is sealed like its manifest; a host that stops being sealed
/// gets no delta, which would list its old sealed paths in the clear.
fn write_delta(
    target: &Target,
    host: &str,
    prev: &Pointer,
    old: &Manifest,
    new: &Manifest,
    new_ref: &ManifestRef,
    opts: &Options,
) -> Result<()> {
    let old_plain = prev
        .manifest
        .sealed
        .map_or(prev.manifest.sha256, |s| s.sha256);
    let delta = Delta::between(old, new).to_json();
    match new_ref.sealed {
        Some(_) => {
            let to = opts.sealing.manifest_recipients(host, &opts.key);
            let key = layout::sealed_delta(&new_ref.sha256, &old_plain);
            target.put(&key, &seal::seal_bytes(&to, &pad_json(delta))?)
        }
        None if prev.manifest.sealed.is_some() => Ok(()),
        None => {
            let key = manifest::delta_path(&new_ref.sha256, &old_plain);
            if target.exists(&key)? {
                return Ok(());
            }
            target.put(&key, &delta)
        }
    }
}

/// The current pointer (verified with our key, or with another key the
/// cache's key list names for the host: then not `ours`), the last
/// generation published for the host and the latest time one of them was
/// issued. They come from the current pointer (or tombstone) and the history
/// pointers `hosts/HOST/N.json` that verify and name this host and
/// generation N. File names alone count for nothing: anyone who can write to
/// the bucket could otherwise plant `hosts/HOST/18446744073709551614.json`
/// and make us sign a generation no agent can ever move past.
fn previous_pointer(target: &Target, host: &str, opts: &Options) -> Result<Previous> {
    let key = layout::pointer(host);
    let ours = [opts.key.public()];
    let listed = listed_keys(target, host, opts)?;
    let history = match listed.is_empty() {
        true => last_verified_history(target, host, &ours)?,
        false => last_verified_history(target, host, &listed)?,
    };
    let mut prev = Previous {
        pointer: None,
        ours: true,
        last_generation: history.as_ref().map_or(0, |p| p.generation),
        last_issued: history.as_ref().map(|p| p.issued_at),
        manifest: None,
    };
    let Some(bytes) = target.get_at_most(&key, pointer::MAX_ENVELOPE_SIZE as u64)? else {
        return Ok(prev);
    };
    let verified = pointer::verify_head(&bytes, &ours)
        .map(|v| (v, true))
        .or_else(|e| match listed.is_empty() {
            true => Err(e),
            false => pointer::verify_head(&bytes, &listed).map(|v| (v, false)),
        });
    match verified {
        Ok((Head::Retired(t), _)) => {
            let t = t.into_inner();
            ensure!(
                opts.force,
                "{host} is retired (generation {}, since {}): adding it back is an explicit act, \
                 use --force",
                t.generation,
                t.issued_at
            );
            tracing::warn!(
                "{host} was retired at generation {}; adding it back (--force)",
                t.generation
            );
            prev.after(t.generation, t.issued_at);
        }
        Ok((Head::Pointer(v), is_ours)) => {
            if !is_ours {
                tracing::info!(
                    "{key} is signed by {}, which the key list names beside {}: taking the host over",
                    v.key_name(),
                    opts.key.name()
                );
            }
            let p = v.into_inner();
            ensure!(
                p.host == *host,
                "{key} names host {:?}, not {host:?}; refusing to overwrite it",
                p.host
            );
            prev.after(p.generation, p.issued_at);
            prev.pointer = Some(p);
            prev.ours = is_ours;
        }
        Err(e) if opts.force => {
            tracing::warn!(error = %e, "previous pointer {key} does not verify with key {}; replacing it (--force)", opts.key.name());
            prev.last_generation = claimed_generation(&bytes, host, prev.last_generation);
        }
        Err(e) => bail!(
            "the current pointer {} does not verify with key {}{}: {e}\n\
             another key published this host; use --force to take it over with this key",
            target.describe() + "/" + &key,
            opts.key.name(),
            match listed.is_empty() {
                true => String::new(),
                false => " nor with another key of the cache's key list".to_owned(),
            }
        ),
    }
    Ok(prev)
}

/// Taking a host over from another key (`--force`): its agents hold that
/// key's generations, so numbering goes on after the one the current
/// pointer claims. Unverified, so it is the operator's word, and said.
fn claimed_generation(bytes: &[u8], host: &str, history: u64) -> u64 {
    let claimed = match pointer::decode_head_unverified(bytes) {
        Ok(Head::Pointer(p)) if p.host == host => p.generation,
        Ok(Head::Retired(t)) if t.host == host => t.generation,
        _ => 0,
    };
    if claimed > history {
        tracing::warn!("continuing after generation {claimed}, which the replaced pointer claims");
    }
    history.max(claimed)
}

/// The signing keys the cache's key list names for `host` when it names
/// ours among them; none without a list, or when ours is not listed (a key
/// being rotated in is listed before it publishes). The list is held to the
/// roots it names (`keys::current`): the publisher is not the place where a
/// list is enforced, the hosts are; this only spares `--force` on a rotation.
fn listed_keys(target: &Target, host: &str, opts: &Options) -> Result<Vec<PublicKey>> {
    let Some(list) = crate::keys::current(target)? else {
        return Ok(vec![]);
    };
    let keys = list.signing_keys_for(host);
    match keys.contains(&opts.key.public()) {
        true => Ok(keys),
        false => {
            tracing::warn!(
                "the cache's key list (version {}) does not name {} for {host}: hosts that trust \
                 roots will refuse this publish; list it with `nixcast keys sign`",
                list.get().version,
                opts.key.name()
            );
            Ok(vec![])
        }
    }
}

/// Why `host` is not published without `--force`: a tombstone in place of
/// its pointer (only decoded here; `publish` verifies what it replaces).
pub fn retired(target: &Target, host: &str) -> Result<Option<anyhow::Error>> {
    let Some(bytes) =
        target.get_at_most(&layout::pointer(host), pointer::MAX_ENVELOPE_SIZE as u64)?
    else {
        return Ok(None);
    };
    Ok(match pointer::decode_head_unverified(&bytes) {
        Ok(Head::Retired(t)) => Some(anyhow::anyhow!(
            "{host} is retired (generation {}, since {}): adding it back is an explicit act, use \
             --force",
            t.generation,
            t.issued_at
        )),
        _ => None,
    })
}

/// The highest history pointer of `host` that one of `keys` signed (ours,
/// or those a key list names beside ours). Names are tried from the highest
/// number down, so only planted files and one real pointer are read; each
/// planted one is ignored with a warning.
pub fn last_verified_history(
    target: &Target,
    host: &str,
    keys: &[PublicKey],
) -> Result<Option<Pointer>> {
    let mut numbered: Vec<(u64, String)> = target
        .list(&layout::history_dir(host))?
        .into_iter()
        .filter_map(|k| {
            let n = k.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()?;
            Some((n, k))
        })
        .collect();
    numbered.sort_unstable_by(|a, b| b.cmp(a));
    for (n, k) in numbered {
        let bytes = match target.get_at_most(&k, pointer::MAX_ENVELOPE_SIZE as u64) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("ignoring {k:?} in the history of {host}: {e:#}");
                continue;
            }
        };
        let why = match pointer::verify(&bytes, keys) {
            Ok(v) if v.get().host == host && v.get().generation == n => {
                return Ok(Some(v.into_inner()))
            }
            Ok(_) => "it names another host or generation".to_owned(),
            Err(e) => format!("it does not verify: {e}"),
        };
        tracing::warn!(
            "ignoring {k:?} in the history of {host}: {}",
            why.escape_debug()
        );
    }
    Ok(None)
}

/// The longest lifetime `--expires-in` takes, 100 years (as humantime counts
/// them): far beyond any sensible one, and far from where the time of an
/// expiry would overflow or no longer print as a date.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(3_155_760_000);

/// `issued + lifetime`, refused when the lifetime is out of bounds (the
/// command line checks this first; this guards every other caller).
pub fn expiry(issued: Timestamp, lifetime: Duration) -> Result<Timestamp> {
    ensure!(
        lifetime.as_secs() >= 1 && lifetime <= MAX_EXPIRES_IN,
        "a pointer's lifetime must be between 1s and {}",
        humantime::format_duration(MAX_EXPIRES_IN)
    );
    let at = issued
        .system_time()
        .checked_add(lifetime)
        .context("the expiry time overflows")?;
    Ok(Timestamp::from_system_time(at))
}

/// A pointer for the same path is re-issued once less than half of its
/// lifetime is left, so that a publisher run on a schedule keeps it fresh.
fn needs_renewal(prev: &Pointer, expires_in: Option<Duration>) -> bool {
    let (Some(expires), Some(lifetime)) = (prev.expires_at, expires_in) else {
        return false;
    };
    let left = expires
        .system_time()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    left < lifetime / 2
}

/// A NixOS toplevel records its platform in `system`; the stand-ins have none.
fn system_of(store: &dyn Store, top: &StorePath) -> String {
    std::fs::read_to_string(store.files(top).join("system"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("{}-linux", std::env::consts::ARCH))
}

fn narinfo_key(p: &StorePath) -> String {
    layout::narinfo(p)
}

/// Splits the closure into paths the target already serves (their narinfos,
/// signed by us) and paths still to publish.
fn split_existing<'a>(
    target: &Target,
    infos: &'a [PathInfo],
    key: &SecretKey,
) -> Result<(Vec<NarInfo>, Vec<&'a PathInfo>)> {
    let public = key.public();
    let mut reused = Vec::new();
    let mut todo = Vec::new();
    // One listing tells which narinfos exist, instead of a request per path;
    // where listing is not allowed, each is asked for.
    let listed: Option<std::collections::HashSet<String>> = target
        .entries("")
        .ok()
        .map(|v| v.into_iter().map(|(k, _, _)| k).collect());
    for info in infos {
        let k = narinfo_key(&info.path);
        let bytes = match &listed {
            Some(set) if !set.contains(&k) => None,
            _ => target.get_at_most(&k, crate::upstream::MAX_NARINFO as u64)?,
        };
        let Some(bytes) = bytes else {
            todo.push(info);
            continue;
        };
        let text = String::from_utf8(bytes).with_context(|| format!("{k} is not UTF-8"))?;
        let mut ni =
            NarInfo::parse(&text).with_context(|| format!("cannot parse {k} in the target"))?;
        ensure!(
            info.described_by(&ni),
            "{k} in the target describes other content for {} than the local store has \
             (a different build); remove it or publish to another target",
            info.path
        );
        let compression = ni.compression_or_default();
        ensure!(
            Compression::from_narinfo(compression).is_some(),
            "{k} uses compression {compression:?}, which nixcast agents refuse (xz, zstd or none)"
        );
        if !ni.verify(std::slice::from_ref(&public)) {
            // Its content is what our own store holds (checked above), so our
            // signature vouches only for bytes we know.
            ni.sign(key);
            target.put(&k, ni.render().as_bytes())?;
        }
        reused.push(ni);
    }
    Ok((reused, todo))
}

fn entry_of(ni: &NarInfo) -> Result<Entry> {
    let compression = Compression::from_narinfo(ni.compression_or_default())
        .with_context(|| format!("{}: unsupported compression", ni.store_path))?;
    let (Some(file_hash), Some(file_size)) = (ni.file_hash, ni.file_size) else {
        bail!(
            "the narinfo of {} has no FileHash or FileSize",
            ni.store_path
        );
    };
    Ok(Entry {
        store_path: ni.store_path.clone(),
        nar_hash: ni.nar_hash,
        nar_size: ni.nar_size,
        references: ni.references.clone(),
        deriver: ni.deriver.clone(),
        sigs: ni.sigs.clone(),
        url: ni.url.clone(),
        compression,
        file_hash,
        file_size,
        cache: None,
        sealed_to: None,
    })
}

/// Dumps, checks, compresses and stores the NAR of one path; returns its
/// signed narinfo (not yet written).
fn write_nar(target: &Target, files: &Path, info: &PathInfo, opts: &Options) -> Result<NarInfo> {
    let compression = opts.compression;
    let file = HashingCounter::new(BufWriter::with_capacity(256 * 1024, target.temp_file()?));
    let (buffered, file_hash, file_size) =
        crate::compress::dump_compressed(files, info, compression, file)?.finish();
    let tmp = buffered.into_inner().map_err(|e| e.into_error())?;
    let url = manifest::nar_url(&file_hash, compression);
    target.put_file(&url, tmp)?;
    Ok(crate::compress::signed_narinfo(
        info,
        url,
        compression,
        file_hash,
        file_size,
        &opts.key,
    ))
}

/// A progress bar on a terminal, nothing otherwise.
fn progress_bar(total: u64, what: &'static str) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("a valid template"),
    );
    bar.set_message(what);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Cache, FakeStore, HOST};

    /// A system referring to a library, which refers to a base.
    fn closure(store: &mut FakeStore, version: &str) -> StorePath {
        let base = store.add("base", "base", &[]);
        let lib = store.add("lib", "lib", &[&base]);
        store.add(&format!("system-{version}"), version, &[&lib, &base])
    }

    fn narinfos(cache: &Cache) -> Vec<String> {
        let mut v = cache.files("");
        v.retain(|k| k.ends_with(".narinfo"));
        v
    }

    /// While NARs are written, nothing that names one exists yet.
    #[test]
    fn nars_are_written_before_anything_that_names_them() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let top = closure(&mut store, "1");
        let root = cache.root().to_owned();
        store.before_dump = Some(Box::new(move |p| {
            let t = Target::open_existing(root.to_str().unwrap()).unwrap();
            let named: Vec<String> = t
                .list("")
                .unwrap()
                .into_iter()
                .filter(|k| k.ends_with(".narinfo"))
                .chain(t.list("manifests").unwrap())
                .chain(t.list(layout::HOSTS_DIR).unwrap())
                .chain(t.list(&layout::history_dir(HOST)).unwrap())
                .collect();
            assert!(named.is_empty(), "dumping {p}, {named:?} exist already");
        }));
        assert_eq!(cache.publish(&store, &top, false), 1);
        assert_eq!(store.dumped.lock().unwrap().len(), 3);
        assert_eq!(narinfos(&cache).len(), 3);
        assert!(cache.exists(&layout::history(HOST, 1)));
        assert!(cache.exists(&layout::pointer(HOST)));
    }

    /// A manifest that cannot be written leaves the narinfos (written
    /// before it) and neither history nor pointer (written after it).
    #[test]
    fn narinfos_come_before_the_manifest_and_the_manifest_before_the_pointers() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let top = closure(&mut store, "1");
        let manifests = cache.root().join("manifests");
        std::fs::remove_dir(&manifests).unwrap();
        std::fs::write(&manifests, "in the way").unwrap();
        let err = publish(&store, &cache.target, HOST, &top, &cache.options(false)).unwrap_err();
        assert_eq!(cache.files("nar").len(), 3, "{err:#}");
        assert_eq!(narinfos(&cache).len(), 3, "{err:#}");
        assert!(!cache.exists(&layout::history_dir(HOST)), "{err:#}");
        assert!(!cache.exists(&layout::pointer(HOST)), "{err:#}");
    }

    /// A history entry that cannot be written (one is in the way) leaves
    /// the manifest (written before it) and no pointer (written after it).
    #[test]
    fn history_comes_before_the_pointer() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let top = closure(&mut store, "1");
        std::fs::create_dir_all(cache.root().join(layout::history_dir(HOST))).unwrap();
        // Not ours: ignored when numbering, but `put_new` never replaces it.
        std::fs::write(cache.root().join(layout::history(HOST, 1)), "{}").unwrap();
        let err = publish(&store, &cache.target, HOST, &top, &cache.options(false)).unwrap_err();
        assert_eq!(cache.files("manifests").len(), 1, "{err:#}");
        assert!(!cache.exists(&layout::pointer(HOST)), "{err:#}");
    }

    #[test]
    fn staging_writes_the_history_entry_and_not_the_pointer() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let top = closure(&mut store, "1");
        match publish(&store, &cache.target, HOST, &top, &cache.options(true)).unwrap() {
            Outcome::Published(s) => assert!(s.staged && s.generation == 1),
            o => panic!("{o:?}"),
        }
        let staged = cache.pointer(&layout::history(HOST, 1));
        assert_eq!(staged.store_path.as_ref(), Some(&top));
        assert!(!cache.exists(&layout::pointer(HOST)));
        // Everything the staged generation needs is in place for promote.
        for key in cache.needed_by(&staged) {
            assert!(cache.exists(&key), "{key}");
        }
        // The next one, not staged, is current; the staged one stays history.
        let next = closure(&mut store, "2");
        assert_eq!(cache.publish(&store, &next, false), 2);
        assert_eq!(cache.pointer(&layout::pointer(HOST)).generation, 2);
        assert!(cache.exists(&layout::history(HOST, 1)));
    }
}
