//! One agent run, in order: lock; fetch the pointer (conditionally) and verify
//! it; fetch the manifest it pins (opening it if sealed); ask Nix what is
//! missing; fetch, verify and import that; set the profile; switch; check
//! health, and roll back on failure; record the status.
//!
//! `run` holds the lock and records the status; `apply` calls the steps in
//! order, one function each (`read_pointer`, `fetch_manifest`,
//! `what_is_missing`, `fetch_and_import`, `check_imported`, `switch`). A step
//! after verification takes the `Verified<Pointer>` or the `Pinned` manifest,
//! never the plain value; the store and the switch come from `Config`
//! (`host::Store`, `host::Activator`), so the unit tests in `run/tests.rs`
//! drive these same steps without root or Nix.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{anyhow, Context};
use nixcast_common::manifest::{self, Delta, Manifest};
use nixcast_common::pinned::{self, PinError, Pinned};
use nixcast_common::pointer::{self, ManifestRef, PlainRef, Pointer, Timestamp, Verified};
use nixcast_common::seal::{self, Identity};
use nixcast_common::{layout, Sha256Hash, StorePath};

use crate::activate::{self, Action};
pub use crate::config::{Config, RunError, DEFAULT_IDENTITY};
use crate::host::{Activator, Store};
use crate::pipeline;
use crate::source::{FetchError, Fetched, Validators};
use crate::state::{Outcome, StateDir, Status};

/// A manifest this large would describe some hundred thousand paths.
const MAX_MANIFEST: u64 = 256 << 20;
/// How far a pointer's `issuedAt` may be ahead of this host's clock. Hosts
/// kept by NTP differ by well under a second, and a pointer is read seconds
/// after it is signed; five minutes (Kerberos's default skew) allows a host
/// whose clock drifts between syncs, while a publisher whose clock is wrong
/// by hours cannot pin the freeze floor far in the future.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// More bytes than a signed or fixed size allows is an attack, not an outage.
fn fetch_error(e: FetchError) -> RunError {
    match e {
        FetchError::TooLarge { .. } => RunError::Refused(e.into()),
        e => RunError::Fetch(e.into()),
    }
}

fn other(e: impl Into<anyhow::Error>) -> RunError {
    RunError::Other(e.into())
}

pub async fn run(cfg: &Config) -> Result<Outcome, RunError> {
    if cfg.apply.dry_run {
        // A dry run writes nothing, so it takes no lock and keeps no state.
        let mut status = cfg.ports.state.load().map_err(other)?;
        return bounded(cfg, apply(cfg, &mut status)).await;
    }
    cfg.ports.state.create().map_err(other)?;
    let _lock = cfg
        .ports
        .state
        .lock(cfg.apply.wait)
        .map_err(other)?
        .ok_or_else(|| RunError::Locked(cfg.ports.state.path().display().to_string()))?;
    let mut status = cfg.ports.state.load().map_err(other)?;
    let started = std::time::Instant::now();
    status.last_run_fetched_bytes = 0;
    let result = bounded(cfg, apply(cfg, &mut status)).await;
    if result.is_err() {
        // Verified NARs stay for the next run; the narinfos naming every
        // missing path (many, for a large manifest) are written again then.
        cfg.ports.state.staging().clear_narinfos();
    }
    status.last_check = Some(Timestamp::now());
    status.last_run_seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(outcome) => {
            status.last_result = Some(*outcome);
            status.last_error = None;
            status.last_success = status.last_check;
        }
        Err(e) => {
            status.last_result = Some(e.outcome());
            status.last_error = Some(crate::text::clean(&e.to_string()));
            *status
                .failures
                .entry(e.outcome().as_str().to_owned())
                .or_default() += 1;
        }
    }
    cfg.ports.state.save(&status).map_err(other)?;
    // The run's outcome is saved; what follows never fails it.
    let reboot_now = crate::reboot::due(cfg, &mut status);
    crate::report::after_run(cfg, &mut status, &result).await;
    cfg.ports.state.save(&status).map_err(other)?;
    if let Some(path) = &cfg.after.metrics_file {
        // Read by node_exporter, which runs as another user.
        nixcast_cli::fs::write(path, crate::state::metrics(&status).as_bytes(), 0o644)
            .map_err(other)?;
    }
    if reboot_now {
        if let Err(e) = crate::reboot::reboot(cfg, &mut status) {
            tracing::warn!("{e:#}; the reboot stays pending");
            cfg.ports.state.save(&status).map_err(other)?;
        }
    }
    result
}

/// A run stops at `--run-timeout`. The switch cannot be cut: once the
/// import is done, `apply` has nothing left to wait for, so the deadline can
/// only strike before the profile is touched.
async fn bounded(
    cfg: &Config,
    run: impl std::future::Future<Output = Result<Outcome, RunError>>,
) -> Result<Outcome, RunError> {
    match tokio::time::timeout(cfg.apply.run_timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(RunError::Fetch(anyhow!(
            "the run did not finish within --run-timeout {}; what was verified is kept for \
             the next run",
            humantime::format_duration(cfg.apply.run_timeout)
        ))),
    }
}

/// The steps of a run after the lock, each a function below. Every `return`
/// here is an outcome; a step that fails ends the run with its error.
async fn apply(cfg: &Config, status: &mut Status) -> Result<Outcome, RunError> {
    let t0 = SystemTime::now();
    let Some((verified, validators)) = read_pointer(cfg, status, t0).await? else {
        return Ok(Outcome::Unchanged);
    };
    let p = verified.get();
    if status.bad_generations.contains(&p.generation) {
        tracing::warn!(
            generation = p.generation,
            "this generation failed before; waiting for a newer one"
        );
        return Ok(Outcome::Unchanged);
    }
    if !cfg.apply.dry_run {
        raise_floor(status, &verified);
    }
    let ids = identities_for(cfg, &verified)?;
    // A sealed pointer names no store path: its manifest does.
    let mut manifest = None;
    let top = match &p.store_path {
        Some(t) => t.clone(),
        None => manifest
            .insert(fetch_manifest(cfg, &verified, &ids).await?)
            .top()
            .clone(),
    };
    if already_running(cfg, status, &top) {
        tracing::info!(store_path = %top, "already running this system");
        if !cfg.apply.dry_run {
            accept(status, &verified, validators);
        }
        return Ok(Outcome::Unchanged);
    }
    let manifest = match manifest {
        Some(m) => m,
        None => fetch_manifest(cfg, &verified, &ids).await?,
    };
    tracing::info!(generation = p.generation, store_path = %top, "manifest verified");
    let todo = what_is_missing(cfg, &manifest)?;
    if cfg.apply.dry_run {
        print_plan(cfg, &manifest, &todo);
        return Ok(Outcome::Unchanged);
    }
    check_source_holds(cfg, &todo)?;
    status.last_run_fetched_bytes = fetch_and_import(cfg, &manifest, &todo, &ids).await?;
    check_imported(cfg, &manifest, &todo)?;
    let action = switch(cfg, status, &verified, &top)?;
    tracing::info!(generation = p.generation, store_path = %top, action = action.as_str(), "applied");
    crate::reboot::applied(cfg, status, &top, action);
    keep_generations(cfg);
    accept(status, &verified, validators);
    status.applied_store_path = Some(top);
    status.applied_at = Some(Timestamp::now());
    Ok(Outcome::Applied)
}

/// Step 1: the pointer, fetched (conditionally) and verified, and held to
/// this host's policy. `None`: the server says it has not changed.
async fn read_pointer(
    cfg: &Config,
    status: &Status,
    t0: SystemTime,
) -> Result<Option<(Verified<Pointer>, Validators)>, RunError> {
    let key = layout::pointer(&cfg.policy.host);
    let validators = if cfg.apply.dry_run {
        Default::default()
    } else {
        status.validators.clone()
    };
    let (bytes, new_validators) = match cfg
        .ports
        .source
        .get_pointer(&key, pointer::MAX_ENVELOPE_SIZE as u64, &validators)
        .await
        .map_err(fetch_error)?
    {
        Fetched::NotModified => {
            not_modified(status, t0).map_err(RunError::Refused)?;
            tracing::info!(url = %cfg.ports.source.url_of(&key), "pointer not modified");
            return Ok(None);
        }
        Fetched::Body(b, v) => (b, v),
    };
    let verified = pointer::verify(&bytes, &cfg.policy.trusted)
        .with_context(|| format!("pointer {}", cfg.ports.source.url_of(&key)))
        .map_err(RunError::Refused)?;
    check_policy(cfg, status, &verified, t0).map_err(RunError::Refused)?;
    let p = verified.get();
    tracing::info!(
        generation = p.generation,
        sealed = p.manifest.sealed.is_some(),
        key = verified.key_name(),
        "pointer verified"
    );
    Ok(Some((verified, new_validators)))
}

/// Raises the rollback floor to this pointer before anything is downloaded,
/// as TUF does.
fn raise_floor(status: &mut Status, v: &Verified<Pointer>) {
    let p = v.get();
    status.highest_generation = p.generation;
    status.highest_digest = Some(v.digest());
    status.last_issued_at = Some(p.issued_at);
    status.pointer_sealed = Some(p.manifest.sealed.is_some());
}

/// Records the pointer as handled to the end: its validators (for the next
/// conditional request) and its expiry.
fn accept(status: &mut Status, v: &Verified<Pointer>, validators: Validators) {
    let p = v.get();
    status.applied_generation = Some(p.generation);
    status.validators = validators;
    status.pointer_expires_at = p.expires_at;
}

/// Only objects sealed to this host's identities are opened, and only after
/// the pointer that pins them verified.
fn identities_for(cfg: &Config, v: &Verified<Pointer>) -> Result<Arc<[Identity]>, RunError> {
    Ok(match &v.get().manifest.sealed {
        Some(_) => load_identities(cfg)?.into(),
        None => Arc::new([]),
    })
}

/// Whether this host runs `top` already (and its profile holds it, for an
/// action that sets the profile).
fn already_running(cfg: &Config, status: &Status, top: &StorePath) -> bool {
    status.applied_store_path.as_ref() == Some(top)
        && (!cfg.apply.action.sets_profile()
            || cfg.ports.store.profile_target(&cfg.ports.profile).as_ref() == Some(top))
}

/// The manifest's paths the store lacks, and what they weigh.
struct Missing<'a> {
    entries: Vec<&'a manifest::Entry>,
    /// Compressed bytes to download.
    download: u64,
    unpacked: u64,
}

/// Step 3: what the store lacks of the closure, each path signed by a
/// trusted key.
fn what_is_missing<'a>(cfg: &Config, manifest: &'a Pinned) -> Result<Missing<'a>, RunError> {
    let paths: Vec<&StorePath> = manifest.paths.iter().map(|e| &e.store_path).collect();
    let missing = cfg.ports.store.missing(&paths).map_err(other)?;
    let entries: Vec<_> = missing
        .iter()
        .map(|m| manifest.get(m).expect("asked about manifest paths"))
        .collect();
    check_signatures(cfg, &entries)?;
    // Checked manifests cannot overflow these sums.
    let download: u64 = entries.iter().map(|e| e.file_size).sum();
    let unpacked: u64 = entries.iter().map(|e| e.nar_size).sum();
    tracing::info!(
        paths = manifest.paths.len(),
        missing = entries.len(),
        download,
        unpacked,
        "closure checked"
    );
    Ok(Missing {
        entries,
        download,
        unpacked,
    })
}

/// `--dry-run`: what a run would fetch and do.
fn print_plan(cfg: &Config, manifest: &Pinned, todo: &Missing) {
    for e in &todo.entries {
        println!("would fetch {} ({} bytes)", e.store_path, e.file_size);
    }
    println!(
        "would fetch {} of {} paths, {} bytes ({} unpacked), then {} {}",
        todo.entries.len(),
        manifest.paths.len(),
        todo.download,
        todo.unpacked,
        cfg.apply.action.as_str(),
        manifest.top()
    );
}

/// A bundle must hold every NAR this host lacks; say which before touching anything.
fn check_source_holds(cfg: &Config, todo: &Missing) -> Result<(), RunError> {
    let absent: Vec<String> = todo
        .entries
        .iter()
        .filter(|e| cfg.ports.source.holds(&e.url) == Some(false))
        .map(|e| e.store_path.to_string())
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    Err(RunError::Fetch(anyhow!(
        "{} lacks the NARs of {} paths this host does not have (was it made for another base?):\n  {}",
        cfg.ports.source.url_of(""),
        absent.len(),
        absent.join("\n  ")
    )))
}

/// Step 4: the missing paths fetched, verified and imported, overlapped
/// (`pipeline.rs`). Returns the bytes downloaded.
async fn fetch_and_import(
    cfg: &Config,
    manifest: &Pinned,
    todo: &Missing<'_>,
    ids: &Arc<[Identity]>,
) -> Result<u64, RunError> {
    let staging = cfg.ports.state.staging();
    staging.create().map_err(other)?;
    staging.clear_leftovers(&todo.entries).map_err(other)?;
    crate::space::check(
        cfg.ports.state.path(),
        &todo.entries,
        |e| staging.nar(e).exists(),
        crate::pipeline::spooled_at_once(),
    )
    .map_err(other)?;
    let fetched =
        pipeline::fetch_and_import(cfg, &staging, manifest, &todo.entries, todo.download, ids)
            .await?;
    tracing::info!(
        paths = todo.entries.len(),
        bytes = fetched,
        "fetched, verified and imported"
    );
    Ok(fetched)
}

/// The system is valid in the store; what was staged for it is not needed
/// any more. A path is valid only with its whole closure, so when anything
/// was missing the system was too, and the successful import of every
/// missing path made it valid: Nix is asked only when the system was not
/// among them (a Nix process saved, ~20 ms of every update).
fn check_imported(cfg: &Config, manifest: &Pinned, todo: &Missing<'_>) -> Result<(), RunError> {
    let top = manifest.top();
    let imported = todo.entries.iter().any(|e| &e.store_path == top);
    if !imported && !cfg.ports.store.missing(&[top]).map_err(other)?.is_empty() {
        return Err(other(anyhow!("{} is not valid after the import", top)));
    }
    cfg.ports.state.staging().clear_staged();
    Ok(())
}

/// Step 5: the profile set and the system switched, then the health checks;
/// on a failure the generation is marked bad and the host rolled back.
fn switch(
    cfg: &Config,
    status: &mut Status,
    v: &Verified<Pointer>,
    top: &StorePath,
) -> Result<Action, RunError> {
    if !cfg.ports.activator.is_system(top) {
        return Err(RunError::Refused(anyhow!(
            "{} is not a NixOS system: it has no bin/switch-to-configuration",
            top
        )));
    }
    let previous = cfg.ports.store.profile_generation(&cfg.ports.profile);
    if cfg.apply.action.sets_profile() {
        cfg.ports
            .store
            .set_profile(&cfg.ports.profile, top)
            .map_err(other)?;
    }
    let action = crate::reboot::action_for(cfg, top);
    let st = cfg.ports.activator.activate(top, action);
    // The profile holds the system now (or, for test and dry-activate, the
    // running system does); a failed switch leaves nothing worth keeping.
    cfg.ports.state.staging().clear_roots();
    let st = st.map_err(other)?;
    let failure = if !st.success() {
        Some(format!(
            "{} {} exited with {st}",
            activate::switch_script(top),
            action.as_str()
        ))
    } else {
        // In order; the first that fails is the switch's failure.
        cfg.apply.health_checks.iter().find_map(|c| {
            cfg.ports
                .activator
                .health_check(c, cfg.apply.health_timeout)
                .err()
        })
    };
    if let Some(why) = failure {
        status.bad_generations.push(v.get().generation);
        let rolled = rollback(cfg, previous);
        return Err(RunError::Activation(anyhow!("{why}; {rolled}")));
    }
    Ok(action)
}

/// `--keep-generations`: old profile generations and what only they held,
/// deleted after a switch. A failure here is logged, never the run's.
fn keep_generations(cfg: &Config) {
    if let (Some(keep), true) = (cfg.after.keep_generations, cfg.apply.action.sets_profile()) {
        let booted = std::fs::canonicalize(&cfg.ports.booted_system).ok();
        let pruned = crate::generations::prune(
            &*cfg.ports.store,
            &cfg.ports.profile,
            booted.as_deref(),
            keep,
        );
        if let Err(e) = pruned {
            tracing::warn!("cannot delete old generations (--keep-generations {keep}): {e:#}");
        }
    }
}

/// A `304 Not Modified` stands for the pointer whose validators were sent, so
/// that pointer's time limits still apply: a path or a CDN that answers 304
/// for ever must not keep a host on an expired pointer while it looks healthy.
fn not_modified(status: &Status, t0: SystemTime) -> anyhow::Result<()> {
    if let Some(exp) = status.pointer_expires_at {
        anyhow::ensure!(
            exp.system_time() > t0,
            "the server answers 304 Not Modified, but the pointer it stands for (generation {}) \
             expired at {exp}",
            status.highest_generation
        );
    }
    Ok(())
}

/// The checks of a verified pointer against this host and what it has seen.
fn check_policy(
    cfg: &Config,
    status: &Status,
    v: &Verified<Pointer>,
    t0: SystemTime,
) -> anyhow::Result<()> {
    let p = v.get();
    anyhow::ensure!(
        p.host == cfg.policy.host,
        "the pointer is for host {:?}, not {:?}",
        p.host,
        cfg.policy.host
    );
    anyhow::ensure!(
        p.system == cfg.policy.system,
        "the pointer is for system {:?}, not {:?}",
        p.system,
        cfg.policy.system
    );
    if let Some(exp) = p.expires_at {
        anyhow::ensure!(
            exp.system_time() > t0,
            "the pointer (generation {}) expired at {exp}",
            p.generation
        );
    }
    anyhow::ensure!(
        p.issued_at.system_time() <= t0 + MAX_CLOCK_SKEW,
        "the pointer (generation {}) was issued at {}, in the future (this host's clock says {}): \
         a publisher with a wrong clock? It would keep this host from accepting any pointer \
         issued before then",
        p.generation,
        p.issued_at,
        Timestamp::from_system_time(t0)
    );
    anyhow::ensure!(
        p.generation >= status.highest_generation,
        "the pointer has generation {}, lower than the highest accepted ({}): a rollback attack, or a restored cache",
        p.generation,
        status.highest_generation
    );
    // Checked above: not below the floor. A host that accepted nothing yet
    // has no floor to measure a jump from.
    let jump = p.generation.saturating_sub(status.highest_generation);
    anyhow::ensure!(
        p.generation < u64::MAX,
        "the pointer has generation {}, which leaves no room for a next one",
        p.generation
    );
    if status.highest_digest.is_some() && jump > cfg.policy.max_generation_jump {
        anyhow::bail!(
            "the pointer jumps from generation {} to {} (more than --max-generation-jump {}): \
             a history file planted in the bucket, or a publish gone wrong? Once accepted, no \
             lower generation is ever applied again. If the jump is intended, run once with \
             --max-generation-jump {jump}",
            status.highest_generation,
            p.generation,
            cfg.policy.max_generation_jump
        );
    }
    if p.generation == status.highest_generation {
        anyhow::ensure!(
            status.highest_digest.is_none() || status.highest_digest == Some(v.digest()),
            "the pointer has generation {} with other content than the one accepted before",
            p.generation
        );
    }
    if let Some(last) = status.last_issued_at {
        anyhow::ensure!(
            p.issued_at >= last,
            "the pointer was issued at {}, before the last accepted one ({last})",
            p.issued_at
        );
    }
    Ok(())
}

/// Step 2: the manifest the verified pointer pins, rebuilt from a delta or
/// fetched whole, opened if sealed, and held to the pin (`Pinned::check`).
async fn fetch_manifest(
    cfg: &Config,
    v: &Verified<Pointer>,
    ids: &[Identity],
) -> Result<Pinned, RunError> {
    let m = &v.get().manifest;
    if m.size > MAX_MANIFEST || m.sealed.is_some_and(|s| s.size > MAX_MANIFEST) {
        return Err(RunError::Refused(anyhow!(
            "the manifest is {} bytes, over the limit",
            m.size
        )));
    }
    let url = cfg.ports.source.url_of(&m.path);
    let refused =
        |e: PinError| RunError::Refused(anyhow::Error::new(e).context(format!("manifest {url}")));
    let plain = pinned::plain_pin(m);
    let bytes = match from_delta(cfg, m, &plain, ids).await {
        Some(bytes) => bytes,
        None => {
            let got = cfg
                .ports
                .source
                .get_small(&m.path, m.size)
                .await
                .map_err(fetch_error)?;
            if m.sealed.is_none() {
                got
            } else {
                // Nothing is decrypted before the sealed bytes are the pinned ones.
                pinned::check_bytes(&got, m.sha256, m.size).map_err(refused)?;
                open_sealed(ids, &got, plain.size)
                    .with_context(|| format!("manifest {url}"))
                    .map_err(RunError::Refused)?
            }
        }
    };
    let manifest = Pinned::check(v, &bytes).map_err(refused)?;
    if !cfg.apply.dry_run {
        if let Err(e) = nixcast_cli::fs::write(&cfg.ports.state.manifest(), &bytes, 0o644) {
            tracing::warn!("cannot keep the manifest for the next run's delta: {e:#}");
        }
    }
    Ok(manifest)
}

/// Opens a small sealed object; being sealed to none of our identities is
/// a refusal that names the identities tried.
fn open_sealed(ids: &[Identity], sealed: &[u8], limit: u64) -> anyhow::Result<Vec<u8>> {
    seal::open_bytes(ids, sealed, limit).map_err(|e| match e {
        seal::SealError::NoMatchingIdentity => anyhow!(
            "sealed to none of this host's identities (tried {})",
            ids.iter()
                .map(|i| i.source())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        e => anyhow!("cannot open it: {e}"),
    })
}

/// The identities given, or the SSH host key.
fn load_identities(cfg: &Config) -> Result<Vec<Identity>, RunError> {
    let default = [PathBuf::from(DEFAULT_IDENTITY)];
    let files = if cfg.policy.identity_files.is_empty() {
        &default[..]
    } else {
        &cfg.policy.identity_files[..]
    };
    nixcast_cli::keys::read_identities(files)
        .map_err(|e| other(e.context("the pointer is sealed (give --identity to open it)")))
}

/// The entries none of `trusted` signed (over NarHash, NarSize and references).
fn unsigned_among<'a>(
    trusted: &[nixcast_common::PublicKey],
    entries: &[&'a manifest::Entry],
) -> Vec<&'a manifest::Entry> {
    entries
        .iter()
        .filter(|e| {
            let fp = nixcast_common::narinfo::fingerprint(
                &e.store_path,
                &e.nar_hash,
                e.nar_size,
                &e.references,
            );
            e.nar_size == 0
                || !trusted
                    .iter()
                    .any(|k| e.sigs.iter().any(|s| k.verifies(fp.as_bytes(), s)))
        })
        .copied()
        .collect()
}

/// Each path to fetch must carry a trusted signature over its NarHash,
/// NarSize and references: Nix would refuse to import it otherwise, after
/// the download. A manifest that contradicts its own signatures is refused
/// before anything is fetched, and a NAR staged for such an entry is dropped.
fn check_signatures(cfg: &Config, entries: &[&manifest::Entry]) -> Result<(), RunError> {
    // ~50 µs a signature: a cold pull of 1000 paths checks them on every
    // core, as the first download waits for the last check. A chunk that
    // gets no thread (a tasks limit) is checked here.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = entries.len().div_ceil(cpus).max(128);
    let unsigned: Vec<&manifest::Entry> = std::thread::scope(|s| {
        let mut chunks = entries.chunks(chunk);
        let here = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|c| {
                let check = move || unsigned_among(&cfg.policy.trusted, c);
                std::thread::Builder::new()
                    .spawn_scoped(s, check)
                    .map_err(|_| c)
            })
            .collect();
        let mut out = unsigned_among(&cfg.policy.trusted, here);
        for c in others {
            out.extend(match c {
                Ok(thread) => thread.join().expect("a signature check does not panic"),
                Err(c) => unsigned_among(&cfg.policy.trusted, c),
            });
        }
        out
    });
    let Some(first) = unsigned.first() else {
        return Ok(());
    };
    if !cfg.apply.dry_run {
        let staging = cfg.ports.state.staging();
        for e in &unsigned {
            let _ = std::fs::remove_file(staging.nar(e));
        }
    }
    Err(RunError::Refused(anyhow!(
        "the manifest's entry for {} (and {} more) has no trusted signature over its NarHash, \
         NarSize and references: the manifest contradicts its own signatures",
        first.store_path,
        unsigned.len() - 1
    )))
}

/// The pinned manifest, rebuilt from the last one this agent verified and
/// the publisher's delta, if that gives exactly the pinned bytes; `None`
/// sends the caller to fetch it whole (no base, no delta, or a wrong one).
async fn from_delta(
    cfg: &Config,
    m: &ManifestRef,
    plain: &PlainRef,
    ids: &[Identity],
) -> Option<Vec<u8>> {
    let base = std::fs::read(cfg.ports.state.manifest()).ok()?;
    let base_sha = Sha256Hash::digest(&base);
    if base_sha == plain.sha256 {
        return Some(base);
    }
    let key = match m.sealed {
        None => manifest::delta_path(&m.sha256, &base_sha),
        Some(_) => layout::sealed_delta(&m.sha256, &base_sha),
    };
    // A delta larger than the manifest would be no saving.
    let delta = match cfg.ports.source.get_small(&key, m.size).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::debug!("no manifest delta: {e}");
            return None;
        }
    };
    let delta = match m.sealed {
        None => delta,
        Some(_) => match open_sealed(ids, &delta, plain.size) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(delta = %cfg.ports.source.url_of(&key), "unusable delta ({e:#}); fetching the manifest whole");
                return None;
            }
        },
    };
    let rebuilt = Manifest::parse(&base)
        .and_then(|old| Delta::parse(&delta)?.apply(&old))
        .map(|new| new.to_json());
    match rebuilt {
        Ok(bytes)
            if bytes.len() as u64 == plain.size && Sha256Hash::digest(&bytes) == plain.sha256 =>
        {
            tracing::info!(delta = %cfg.ports.source.url_of(&key), bytes = delta.len(), "manifest rebuilt from a delta");
            Some(bytes)
        }
        Ok(_) => {
            tracing::warn!(delta = %cfg.ports.source.url_of(&key), "the delta does not make the pinned manifest; fetching it whole");
            None
        }
        Err(e) => {
            tracing::warn!(delta = %cfg.ports.source.url_of(&key), "unusable delta ({e}); fetching the manifest whole");
            None
        }
    }
}

/// After a failed switch or health check: the profile goes back to the
/// generation it had, and that system is activated again. Returns what happened.
fn rollback(cfg: &Config, previous: Option<u64>) -> String {
    if !cfg.apply.action.sets_profile() {
        return "the profile was not changed".to_owned();
    }
    let Some(generation) = previous else {
        return "no earlier generation to roll back to".to_owned();
    };
    let failed = cfg.ports.store.profile_generation(&cfg.ports.profile);
    if let Err(e) = cfg
        .ports
        .store
        .switch_generation(&cfg.ports.profile, generation)
    {
        return format!("rolling back failed: {e:#}");
    }
    // The failed generation is dropped from the profile, so that neither a
    // later rollback nor the boot menu offers it.
    if let Some(f) = failed.filter(|f| *f != generation) {
        if let Err(e) = cfg.ports.store.delete_generation(&cfg.ports.profile, f) {
            tracing::warn!("cannot delete the failed profile generation {f}: {e:#}");
        }
    }
    let Some(top) = cfg.ports.store.profile_target(&cfg.ports.profile) else {
        return format!(
            "rolled the profile back to generation {generation}, which points to no store path"
        );
    };
    // With --allow-reboot, a generation whose kernel is not the running one
    // goes back to being the next boot's, never switched to.
    match cfg.ports.activator.activate(&top, crate::reboot::action_for(cfg, &top)) {
        Ok(st) if st.success() => format!("rolled back to profile generation {generation} ({top})"),
        Ok(st) => format!("rolled the profile back to generation {generation}, but its activation exited with {st}"),
        Err(e) => format!("rolled the profile back to generation {generation}, but cannot activate it: {e:#}"),
    }
}

/// `nixcast-pull rollback`: the profile's previous generation, activated, and
/// the pointer generation that was applied marked bad.
pub fn rollback_by_hand(
    store: &dyn Store,
    activator: &dyn Activator,
    profile: &std::path::Path,
    state: &StateDir,
    action: Action,
) -> Result<String, RunError> {
    state.create().map_err(other)?;
    let _lock = state
        .lock(false)
        .map_err(other)?
        .ok_or_else(|| RunError::Locked(state.path().display().to_string()))?;
    let mut status = state.load().map_err(other)?;
    let current = store.profile_generation(profile).ok_or_else(|| {
        other(anyhow!(
            "{} is not a profile generation link",
            profile.display()
        ))
    })?;
    let previous = store
        .list_generations(profile)
        .map_err(other)?
        .into_iter()
        .filter(|g| *g < current)
        .max()
        .ok_or_else(|| {
            other(anyhow!(
                "no generation of {} older than {current}",
                profile.display()
            ))
        })?;
    store.switch_generation(profile, previous).map_err(other)?;
    let top = store
        .profile_target(profile)
        .ok_or_else(|| other(anyhow!("{} points to no store path", profile.display())))?;
    let st = activator.activate(&top, action).map_err(other)?;
    if let Some(g) = status.applied_generation.take() {
        if !status.bad_generations.contains(&g) {
            status.bad_generations.push(g);
        }
    }
    status.applied_store_path = Some(top.clone());
    status.last_check = Some(Timestamp::now());
    let result = if st.success() {
        status.last_result = Some(Outcome::RolledBack);
        status.last_error = None;
        Ok(format!(
            "rolled back to profile generation {previous} ({top})"
        ))
    } else {
        let e = RunError::Activation(anyhow!(
            "rolled back to generation {previous}, but its activation exited with {st}"
        ));
        status.last_result = Some(Outcome::ActivationFailed);
        status.last_error = Some(e.to_string());
        Err(e)
    };
    state.save(&status).map_err(other)?;
    result
}

#[cfg(test)]
mod tests;
