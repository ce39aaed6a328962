//! `nixcast gc`: delete what no kept generation needs.
//!
//! For each host, the last `--keep` generations of its history and its
//! current pointer are kept. A manifest, narinfo or NAR that none of their
//! manifests reaches, and the history pointers of the other generations, are
//! deleted once older than the grace period, so that an agent in the middle
//! of pulling a generation published moments ago never loses a file.
//! Deletion runs in the reverse of the publish order (pointers, manifests,
//! narinfos, NARs): no reader ever sees an object that names a missing one.
//! Sealed manifests are opened with `--identity`; without one, nothing under
//! `sealed/` is deleted. A NAR-delta index lives as long as the manifest it
//! is for, and the delta files a kept generation's index names stay with it;
//! other files under `deltas/` go.
//!
//! A retired host (a tombstone in place of its pointer, `nixcast retire`)
//! keeps no generation: its history and whatever only it reached go. Its
//! tombstone stays, so that its agent keeps learning that it is retired;
//! `--forget-retired` deletes tombstones (and those hosts' reports) too,
//! once past the grace period.
//!
//! Which generations are kept is read from pointers anyone who can write
//! the cache could plant. With `--trusted-key-file`, a host's current
//! pointer must verify (else gc stops and deletes nothing: a pointer
//! signed by a key not given may be a host's real one) and a history entry
//! that does not verify is neither kept nor deleted, so it cannot take a
//! kept generation's place. Without keys the pointers are only decoded, as
//! for a look at one's own directory, and gc says so: a planted entry under
//! a high number would then count as a kept generation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use nixcast_cli::fmt::human_bytes;
use nixcast_common::layout::{self, Key, Lifetime};
use nixcast_common::seal::Identity;

use nixcast_common::pointer::{Head, Pointer};

use crate::cache::{read_head, read_manifest, read_nar_deltas, read_pointer};
use crate::target::Target;
use nixcast_common::{PublicKey, Sha256Hash};

pub fn gc(
    target: &Target,
    keep: usize,
    grace: Duration,
    ids: &[Identity],
    keys: &[PublicKey],
    dry_run: bool,
    forget_retired: bool,
) -> Result<()> {
    anyhow::ensure!(keep >= 1, "--keep must be at least 1");
    if keys.is_empty() {
        tracing::warn!(
            "no --trusted-key-file: pointers are only decoded, so a history entry planted in \
             the cache could take the place of a kept generation"
        );
    }
    let live = live_objects(target, keep, ids, keys)?;
    let now = SystemTime::now();
    let old = |t: SystemTime| now.duration_since(t).unwrap_or_default() >= grace;
    let mut doomed = match forget_retired {
        true => forgotten(target, &live.retired, &old)?,
        false => Vec::new(),
    };
    doomed.extend(doomed_objects(target, live, old)?);
    delete(target, &doomed, dry_run)
}

/// An object's key, size and modification time.
type Object = (String, u64, SystemTime);

/// What the kept generations of every host reach, and the history
/// pointers of the generations not kept.
struct Live {
    keys: BTreeSet<Key>,
    /// A kept sealed manifest could not be opened (no `--identity`): nothing
    /// sealed is known to be dead, so nothing sealed is deleted.
    sealed_unknown: bool,
    dropped_pointers: Vec<Object>,
    /// The tombstones of retired hosts, with the host's name.
    retired: Vec<(String, Object)>,
}

fn live_objects(
    target: &Target,
    keep: usize,
    ids: &[Identity],
    keys: &[PublicKey],
) -> Result<Live> {
    let mut live = Live {
        keys: BTreeSet::new(),
        sealed_unknown: false,
        dropped_pointers: Vec::new(),
        retired: Vec::new(),
    };
    let indexes = nar_delta_indexes(target)?;
    for (key, size, mtime) in target.entries(layout::HOSTS_DIR)? {
        let Some(Key::Pointer(host)) = Key::parse(&key) else {
            continue;
        };
        let current = match read_head(target, &key, keys)
            .with_context(|| format!("the pointer of {host} is not readable: nothing is deleted"))?
        {
            Head::Pointer(p) => Some(p),
            Head::Retired(t) => {
                anyhow::ensure!(
                    t.host == host,
                    "{key} is the tombstone of another host: nothing is deleted"
                );
                tracing::info!("{host} is retired: none of its generations is kept");
                live.retired
                    .push((host.clone(), (key.clone(), size, mtime)));
                None
            }
        };
        for p in kept_pointers(
            target,
            &host,
            current,
            keep,
            keys,
            &mut live.dropped_pointers,
        )? {
            reach(target, &p, ids, &indexes, &mut live)
                .with_context(|| format!("generation {} of {host} is kept", p.generation))?;
        }
    }
    // The agent of an open invitation (`nixcast invite`), until accepted.
    for (key, _, _) in target.entries(layout::AGENTS_DIR)? {
        if let Some(Key::Agent(host)) = Key::parse(&key) {
            let p = read_pointer(target, &key, keys).with_context(|| {
                format!("the agent invited {host} is not readable: nothing is deleted")
            })?;
            reach(target, &p, ids, &indexes, &mut live)
                .with_context(|| format!("the agent invited {host} is kept"))?;
        }
    }
    Ok(live)
}

/// Keeps what a kept pointer reaches: its manifest, and the narinfos and
/// NARs the manifest lists.
fn reach(
    target: &Target,
    p: &Pointer,
    ids: &[Identity],
    indexes: &BTreeMap<Sha256Hash, Vec<Key>>,
    live: &mut Live,
) -> Result<()> {
    live.keys.extend(Key::parse(&p.manifest.path));
    if p.manifest.sealed.is_some() && ids.is_empty() {
        live.sealed_unknown = true;
        return Ok(());
    }
    let (_, m) = read_manifest(target, p, ids)?;
    for e in m.paths.iter().filter(|e| e.cache.is_none()) {
        live.keys
            .insert(Key::Narinfo(e.store_path.hash_part().to_owned()));
        live.keys.extend(Key::parse(&e.url));
    }
    for index in indexes.get(&p.manifest.sha256).into_iter().flatten() {
        live.keys.extend(delta_files(target, index, ids));
    }
    Ok(())
}

/// The NAR-delta indexes of the cache, by the manifest they are for (each
/// lives as long as that manifest: `Key::owner`).
fn nar_delta_indexes(target: &Target) -> Result<BTreeMap<Sha256Hash, Vec<Key>>> {
    let mut out: BTreeMap<Sha256Hash, Vec<Key>> = BTreeMap::new();
    for dir in [layout::MANIFESTS_DIR, layout::SEALED_DIR] {
        for (key, _, _) in target.entries(dir)? {
            match Key::parse(&key) {
                Some(k @ Key::NarDeltas { new, .. })
                | Some(k @ Key::SealedNarDeltas { new, .. }) => out.entry(new).or_default().push(k),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The delta files a kept generation's index names. One that cannot be
/// read keeps none: agents then fetch full NARs.
fn delta_files(target: &Target, index: &Key, ids: &[Identity]) -> Vec<Key> {
    match read_nar_deltas(target, index, ids) {
        Ok(Some((_, i))) => i.deltas.iter().filter_map(|d| Key::parse(&d.url)).collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!("the deltas {index} names are not kept: {e:#}");
            Vec::new()
        }
    }
}

/// The current pointer of `host` and its last `keep` history pointers
/// (verified with `keys`, or only decoded without); the history pointers
/// of other generations go to `dropped`. A retired host (no `current`)
/// keeps none.
fn kept_pointers(
    target: &Target,
    host: &str,
    current: Option<Pointer>,
    keep: usize,
    keys: &[PublicKey],
    dropped: &mut Vec<Object>,
) -> Result<Vec<Pointer>> {
    let mut history: BTreeMap<u64, Object> = BTreeMap::new();
    for (k, size, mtime) in target.entries(&layout::history_dir(host))? {
        let g = match Key::parse(&k) {
            Some(Key::History {
                host: h,
                generation,
            }) if h == host => generation,
            _ => continue,
        };
        // A name is anyone's word: a file planted under a high number
        // must not take the place of a kept generation. What is not this
        // host's pointer of that generation is neither kept nor deleted.
        match read_pointer(target, &k, keys) {
            Ok(p) if p.host == host && p.generation == g => {
                history.insert(g, (k, size, mtime));
            }
            Ok(_) => tracing::warn!("leaving {k:?} alone: it is not generation {g} of {host}"),
            Err(e) => tracing::warn!("leaving {k:?} alone: {e:#}"),
        }
    }
    let kept: BTreeSet<u64> = match &current {
        Some(current) => history
            .keys()
            .rev()
            .take(keep)
            .copied()
            .chain([current.generation])
            .collect(),
        None => BTreeSet::new(),
    };
    let mut pointers: Vec<Pointer> = current.into_iter().collect();
    for (g, entry) in history {
        if kept.contains(&g) {
            pointers.push(read_pointer(target, &entry.0, keys)?);
        } else {
            dropped.push(entry);
        }
    }
    Ok(pointers)
}

/// `--forget-retired`: the tombstones past the grace period, and their
/// hosts' reports.
fn forgotten(
    target: &Target,
    retired: &[(String, Object)],
    old: &impl Fn(SystemTime) -> bool,
) -> Result<Vec<(String, u64)>> {
    let reports = target.entries(layout::REPORTS_DIR)?;
    let mut doomed = Vec::new();
    for (host, (key, size, _)) in retired.iter().filter(|(_, o)| old(o.2)) {
        doomed.push((key.clone(), *size));
        let report = Key::Report(host.clone()).to_string();
        doomed.extend(
            reports
                .iter()
                .filter(|(k, _, _)| *k == report)
                .map(|(k, s, _)| (k.clone(), *s)),
        );
    }
    Ok(doomed)
}

/// What no kept generation reaches and `old` says is past the grace
/// period, in the order of deletion: the reverse of the publish order.
fn doomed_objects(
    target: &Target,
    live: Live,
    old: impl Fn(SystemTime) -> bool,
) -> Result<Vec<(String, u64)>> {
    let mut doomed: Vec<(String, u64)> = live
        .dropped_pointers
        .into_iter()
        .filter(|(_, _, mtime)| old(*mtime))
        .map(|(k, size, _)| (k, size))
        .collect();
    if live.sealed_unknown {
        tracing::warn!(
            "sealed manifests cannot be opened without --identity: nothing under {}/ is deleted",
            layout::SEALED_DIR
        );
    }
    // Reverse publish order: manifests, then narinfos, then NARs. Sealed
    // objects of every kind share one directory; a sealed manifest is never
    // deleted while a kept pointer names it, so it goes with its NARs.
    let sealed_dirs: &[&str] = if live.sealed_unknown {
        &[]
    } else {
        &[layout::SEALED_DIR]
    };
    for dir in [layout::MANIFESTS_DIR, ""]
        .into_iter()
        .chain(sealed_dirs.iter().copied())
        .chain([layout::DELTAS_DIR, layout::NAR_DIR])
    {
        for (key, size, mtime) in target.entries(dir)? {
            let unreferenced = match Key::parse(&key) {
                // Only what publish writes here is ours to delete.
                Some(k)
                    if k.dir() == dir && k.lifetime() == Lifetime::Immutable
                        || matches!(k, Key::Narinfo(_)) =>
                {
                    !live.keys.contains(&k.owner())
                }
                Some(_) => false,
                // A dot-file is a temporary file left by an interrupted publish.
                None => key.rsplit('/').next().is_some_and(|n| n.starts_with('.')),
            };
            if unreferenced && old(mtime) {
                doomed.push((key, size));
            }
        }
    }
    // Writes elsewhere leave their temporary files beside their
    // destination too: only those dot-files go from these directories.
    let mut others = vec![
        layout::HOSTS_DIR.to_owned(),
        layout::KEY_LISTS_DIR.to_owned(),
        layout::REPORTS_DIR.to_owned(),
    ];
    for (key, _, _) in target.entries(layout::HOSTS_DIR)? {
        if let Some(Key::Pointer(host)) = Key::parse(&key) {
            others.push(layout::history_dir(&host));
        }
    }
    for dir in others {
        for (key, size, mtime) in target.entries(&dir)? {
            let temporary = key.rsplit('/').next().is_some_and(|n| n.starts_with('.'));
            if temporary && old(mtime) {
                doomed.push((key, size));
            }
        }
    }
    Ok(doomed)
}

fn delete(target: &Target, doomed: &[(String, u64)], dry_run: bool) -> Result<()> {
    let freed: u64 = doomed.iter().map(|(_, s)| s).sum();
    for (key, size) in doomed {
        if dry_run {
            println!("would delete {key} ({})", human_bytes(*size));
        } else {
            target.delete(key)?;
            println!("deleted {key} ({})", human_bytes(*size));
        }
    }
    println!(
        "{} {} files, {}",
        if dry_run { "would free" } else { "freed" },
        doomed.len(),
        human_bytes(freed)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Cache, FakeStore, HOST};

    /// Three generations sharing a base: the first current then replaced,
    /// the second current, the third staged. Kept with `--keep 1`: the
    /// current one and the last in the history (the staged one).
    #[test]
    fn nothing_a_kept_generation_needs_is_deleted() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let base = store.add("base", "base", &[]);
        let old = store.add("old-lib", "old", &[&base]);
        let gen1 = store.add("system-1", "1", &[&old, &base]);
        let new = store.add("new-lib", "new", &[&base]);
        let gen2 = store.add("system-2", "2", &[&new, &base]);
        let gen3 = store.add("system-3", "3", &[&new, &base]);
        assert_eq!(cache.publish(&store, &gen1, false), 1);
        let first = cache.pointer(&layout::history(HOST, 1));
        assert_eq!(cache.publish(&store, &gen2, false), 2);
        assert_eq!(cache.publish(&store, &gen3, true), 3);
        let kept = [
            cache.pointer(&layout::pointer(HOST)),
            cache.pointer(&layout::history(HOST, 3)),
        ];
        assert_eq!((kept[0].generation, kept[1].generation), (2, 3));
        let needed: BTreeSet<String> = kept.iter().flat_map(|p| cache.needed_by(p)).collect();
        let only_first: Vec<String> = cache
            .needed_by(&first)
            .into_iter()
            .filter(|k| !needed.contains(k))
            .collect();
        // The manifest, old-lib and system-1 (narinfo and NAR each).
        assert_eq!(only_first.len(), 5, "{only_first:?}");

        gc(
            &cache.target,
            1,
            Duration::ZERO,
            &[],
            &[cache.key.public()],
            false,
            false,
        )
        .unwrap();
        for key in &needed {
            assert!(
                cache.exists(key),
                "{key} was deleted, a kept generation needs it"
            );
        }
        assert!(cache.exists(&layout::history(HOST, 3)));
        assert!(cache.exists(&layout::pointer(HOST)));
        // What only the dropped generation needed is gone, and its history.
        for key in &only_first {
            assert!(!cache.exists(key), "{key} was kept");
        }
        assert!(!cache.exists(&layout::history(HOST, 1)));
    }

    /// The agent `nixcast invite` published for a host is kept while the
    /// invitation is open (`agents/HOST.json`), and freed once it is gone.
    #[test]
    fn an_invited_hosts_agent_is_kept_until_the_invitation_is_closed() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let system = store.add("system-1", "1", &[]);
        let lib = store.add("agent-lib", "lib", &[]);
        let agent = store.add("agent", "agent", &[&lib]);
        cache.publish(&store, &system, false);
        let opts = cache.options(false);
        let (manifest, written, _) =
            crate::publish::publish_closure(&store, &cache.target, &agent, &opts).unwrap();
        assert_eq!(written, 2);
        let p = Pointer {
            host: "web3".into(),
            system: "x86_64-linux".into(),
            generation: 1,
            store_path: Some(agent),
            manifest,
            issued_at: nixcast_common::pointer::Timestamp::now(),
            expires_at: None,
        };
        let invitation = Key::Agent("web3".into()).to_string();
        cache.target.put(&invitation, &p.sign(&cache.key)).unwrap();
        let needed = cache.needed_by(&p);
        assert_eq!(needed.len(), 5, "{needed:?}");
        let keys = [cache.key.public()];
        gc(&cache.target, 1, Duration::ZERO, &[], &keys, false, false).unwrap();
        for key in &needed {
            assert!(
                cache.exists(key),
                "{key} was deleted, the invited host needs it"
            );
        }
        cache.target.delete(&invitation).unwrap();
        gc(&cache.target, 1, Duration::ZERO, &[], &keys, false, false).unwrap();
        for key in &needed {
            assert!(!cache.exists(key), "{key} was kept");
        }
    }

    /// Temporary files a cut-short write left beside pointers, history, key
    /// lists and reports go; the files themselves stay.
    #[test]
    fn temporary_files_go_from_every_directory_writes_leave_them_in() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let top = store.add("system-1", "1", &[]);
        cache.publish(&store, &top, false);
        let leftovers = [
            ".tmp-a".to_owned(),
            format!("{}/.tmp-b", layout::HOSTS_DIR),
            format!("{}/.tmp-c", layout::history_dir(HOST)),
            format!("{}/.tmp-d", layout::KEY_LISTS_DIR),
            format!("{}/.tmp-e", layout::REPORTS_DIR),
        ];
        for key in &leftovers {
            cache.target.put(key, b"half").unwrap();
        }
        cache.target.put("reports/web.json", b"{}").unwrap();
        let keys = [cache.key.public()];
        gc(&cache.target, 1, Duration::ZERO, &[], &keys, false, false).unwrap();
        for key in &leftovers {
            assert!(!cache.exists(key), "{key} was left");
        }
        assert!(cache.exists("reports/web.json"));
        assert!(cache.exists(&layout::pointer(HOST)));
        assert!(cache.exists(&layout::history(HOST, 1)));
    }

    /// A history entry signed by another key, under a high number: with the
    /// trusted key it takes no kept generation's place.
    #[test]
    fn an_unverified_history_entry_displaces_no_kept_generation() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let base = store.add("base", "base", &[]);
        for n in 1..=3 {
            let top = store.add(&format!("system-{n}"), &n.to_string(), &[&base]);
            cache.publish(&store, &top, n == 3);
        }
        let mut planted = cache.pointer(&layout::history(HOST, 1));
        planted.generation = 99;
        let other = nixcast_common::SecretKey::generate("other-1").unwrap();
        let planted_key = layout::history(HOST, 99);
        cache
            .target
            .put(&planted_key, &planted.sign(&other))
            .unwrap();
        let keys = [cache.key.public()];
        gc(&cache.target, 1, Duration::ZERO, &[], &keys, false, false).unwrap();
        // Kept: the current pointer (2) and the last history entry (3).
        for g in [2, 3] {
            let p = cache.pointer(&layout::history(HOST, g));
            for key in cache.needed_by(&p) {
                assert!(cache.exists(&key), "{key} of generation {g} was deleted");
            }
        }
        assert!(!cache.exists(&layout::history(HOST, 1)));
        assert!(
            cache.exists(&planted_key),
            "an unverified entry is left alone"
        );
    }

    /// A retired host keeps nothing: its history and what only it reached
    /// go, what another host shares stays, and its tombstone stays unless
    /// `--forget-retired`.
    #[test]
    fn a_retired_host_keeps_no_generation_and_its_tombstone() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let base = store.add("base", "base", &[]);
        let mine = store.add("system-web1", "1", &[&base]);
        let theirs = store.add("system-web3", "3", &[&base]);
        cache.publish(&store, &mine, false);
        let opts = cache.options(false);
        crate::publish::publish(&store, &cache.target, "web3", &theirs, &opts).unwrap();
        let web3 = cache.pointer(&layout::pointer("web3"));
        crate::retire::retire(&cache.target, "web3", &cache.key, None).unwrap();
        let keys = [cache.key.public()];
        gc(&cache.target, 1, Duration::ZERO, &[], &keys, false, false).unwrap();
        let web1 = cache.pointer(&layout::pointer(HOST));
        for key in cache.needed_by(&web1) {
            assert!(cache.exists(&key), "{key}, which web1 needs, was deleted");
        }
        let only_web3 = [
            web3.manifest.path.clone(),
            layout::narinfo(&theirs),
            layout::history("web3", 1),
        ];
        for key in &only_web3 {
            assert!(!cache.exists(key), "{key} was kept");
        }
        assert!(cache.exists(&layout::narinfo(&base)));
        assert!(
            cache.exists(&layout::pointer("web3")),
            "the tombstone stays"
        );
        cache.target.put(&layout::report("web3"), b"{}").unwrap();
        gc(&cache.target, 1, Duration::ZERO, &[], &keys, false, true).unwrap();
        assert!(!cache.exists(&layout::pointer("web3")));
        assert!(!cache.exists(&layout::report("web3")));
        assert!(cache.exists(&layout::pointer(HOST)));
    }

    /// Each generation's NAR-delta index lives as long as its manifest, and
    /// the deltas it names with it; the rest goes.
    #[test]
    fn the_deltas_of_kept_generations_stay_and_the_others_go() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let text = |v: u32| -> String {
            (0..500)
                .map(|i| format!("line {i} of {}\n", if i == 7 { v } else { 0 }))
                .collect()
        };
        for n in 1..=3 {
            let lib = store.add(&format!("lib-{n}"), &text(n), &[]);
            let top = store.add(&format!("system-{n}"), &n.to_string(), &[&lib]);
            cache.publish(&store, &top, false);
        }
        let indexes: Vec<(u64, Key, Vec<String>)> = (2..=3)
            .map(|g| {
                let p = cache.pointer(&layout::history(HOST, g));
                let prev = cache.pointer(&layout::history(HOST, g - 1));
                let key = Key::NarDeltas {
                    new: p.manifest.sha256,
                    old: prev.manifest.sha256,
                };
                let (_, i) = read_nar_deltas(&cache.target, &key, &[]).unwrap().unwrap();
                assert!(!i.deltas.is_empty());
                (g, key, i.deltas.iter().map(|d| d.url.clone()).collect())
            })
            .collect();
        let keys = [cache.key.public()];
        gc(&cache.target, 1, Duration::ZERO, &[], &keys, false, false).unwrap();
        for (g, key, urls) in &indexes {
            let kept = *g == 3;
            assert_eq!(cache.exists(&key.to_string()), kept, "{key}");
            for url in urls {
                assert_eq!(cache.exists(url), kept, "{url} of generation {g}");
            }
        }
    }
}
