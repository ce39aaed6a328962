//! `nixcast bundle`: a host's pointer, manifest and the NARs a base lacks,
//! as one file to carry across an air gap.
//!
//! The file is a plain tar archive laid out like the cache itself
//! (`hosts/HOST.json`, `manifests/<sha256>.json`, `nar/…`), so the agent
//! reads it as one more cache source (`nixcast-pull run --bundle FILE`) with
//! every check of a network pull. NARs are stored as published (compressed);
//! the archive adds no compression of its own. A sealed host's bundle holds
//! its sealed manifest and NARs: it stays sealed.
//!
//! With `--base`, a path the publisher wrote a NAR delta for against the
//! base generation (the generation before the current one: `delta.rs`)
//! travels as that delta, with the signed index, instead of its NAR; the
//! agent checks and rebuilds it as from a cache. A host whose base turns
//! out damaged then lacks the NAR: it refuses the bundle before it changes
//! anything, and a full bundle brings it up.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nixcast_cli::fmt::human_bytes;
use nixcast_common::keylist;
use nixcast_common::layout::{self, Key};
use nixcast_common::manifest::Entry;
use nixcast_common::nardelta::Index;
use nixcast_common::pointer::{self, Pointer};
use nixcast_common::seal::Identity;
use nixcast_common::StorePath;

use crate::cache::{decode_pointer, read_manifest, read_nar_deltas};
use crate::target::Target;

pub enum Base {
    None,
    Generation(u64),
    Path(StorePath),
}

/// The store paths a host at `base` already has, and the pointer of that
/// generation.
fn base_paths(
    target: &Target,
    host: &str,
    base: &Base,
    ids: &[Identity],
) -> Result<(BTreeSet<StorePath>, Option<Pointer>)> {
    let generation = match base {
        Base::None => return Ok((BTreeSet::new(), None)),
        Base::Generation(g) => Some(*g),
        Base::Path(_) => None,
    };
    for key in target.list(&layout::history_dir(host))? {
        let p = decode_pointer(target, &key)?;
        let m = match (generation, base) {
            (Some(g), _) if p.generation == g => read_manifest(target, &p, ids)?.1,
            (None, Base::Path(sp)) if p.store_path.as_ref() == Some(sp) => {
                read_manifest(target, &p, ids)?.1
            }
            // A sealed pointer names no store path: its manifest does.
            (None, Base::Path(sp)) if p.store_path.is_none() => {
                let (_, m) = read_manifest(target, &p, ids)?;
                if m.store_path != *sp {
                    continue;
                }
                m
            }
            _ => continue,
        };
        return Ok((m.paths.into_iter().map(|e| e.store_path).collect(), Some(p)));
    }
    match base {
        Base::Generation(g) => bail!("{} has no generation {g} of {host}", target.describe()),
        Base::Path(p) => bail!("no generation of {host} in {} runs {p}", target.describe()),
        Base::None => unreachable!(),
    }
}

/// The key list and every version before it, when the cache has one: a
/// host that trusts roots walks them from the bundle as from the cache.
fn key_lists(target: &Target) -> Result<Vec<(String, Vec<u8>)>> {
    let cap = keylist::MAX_ENVELOPE_SIZE as u64;
    let Some(current) = target.get_at_most(layout::KEY_LIST, cap)? else {
        return Ok(Vec::new());
    };
    let mut out = vec![(layout::KEY_LIST.to_owned(), current)];
    for k in target.list(layout::KEY_LISTS_DIR)? {
        if matches!(Key::parse(&k), Some(Key::KeyListHistory(_))) {
            if let Some(bytes) = target.get_at_most(&k, cap)? {
                out.push((k, bytes));
            }
        }
    }
    Ok(out)
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

pub fn bundle(
    target: &Target,
    host: &str,
    base: &Base,
    ids: &[Identity],
    output: &Path,
) -> Result<()> {
    let key = layout::pointer(host);
    let pointer_bytes = target
        .get_at_most(&key, pointer::MAX_ENVELOPE_SIZE as u64)?
        .with_context(|| format!("{}/{key} does not exist", target.describe()))?;
    let p = match pointer::decode_head_unverified(&pointer_bytes)
        .with_context(|| format!("reading {key}"))?
    {
        pointer::Head::Pointer(p) => p,
        pointer::Head::Retired(t) => return Err(crate::cache::retired(&t)),
    };
    let (manifest_bytes, m) = read_manifest(target, &p, ids)?;
    let (have, base_pointer) = base_paths(target, host, base, ids)?;
    let deltas = match &base_pointer {
        Some(b) => deltas_from(target, &p, b, &have, ids)?,
        None => None,
    };
    let needed: Vec<_> = m
        .paths
        .iter()
        .filter(|e| !have.contains(&e.store_path))
        .collect();
    // Each path as its delta when there is one, else as its NAR.
    let objects: Vec<(&str, u64)> = needed
        .iter()
        .map(
            |e| match deltas.as_ref().and_then(|(_, _, i)| i.get(&e.store_path)) {
                Some(d) => (d.url.as_str(), d.file_size),
                None => (e.url.as_str(), e.file_size),
            },
        )
        .collect();
    let as_delta = |e: &Entry| {
        deltas
            .as_ref()
            .is_some_and(|(_, _, i)| i.get(&e.store_path).is_some())
    };
    if let Some(e) = needed.iter().find(|e| e.cache.is_some() && !as_delta(e)) {
        bail!(
            "{} is served by the upstream {}; bundles carry only this cache's NARs (publish without --upstream for air-gapped hosts)",
            e.store_path,
            e.cache.as_deref().unwrap_or_default()
        );
    }

    let dir = nixcast_cli::fs::dir_of(output);
    let tmp = nixcast_cli::fs::temp_in(dir)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(tmp));
    let mut small = vec![
        (key, pointer_bytes),
        (p.manifest.path.clone(), manifest_bytes),
    ];
    small.extend(key_lists(target)?);
    if let Some((key, stored, _)) = &deltas {
        small.push((key.clone(), stored.clone()));
    }
    for (name, bytes) in &small {
        tar.append_data(&mut header(bytes.len() as u64), name, bytes.as_slice())
            .with_context(|| format!("cannot add {name} to the bundle"))?;
    }
    let mut nar_bytes = 0;
    for (url, size) in &objects {
        // Streamed from the target: the header is written by hand, since the
        // signed FileSize is known before the bytes are read.
        let mut h = header(*size);
        h.set_path(url)?;
        h.set_cksum();
        let w = tar.get_mut();
        w.write_all(h.as_bytes())?;
        let n = target.read_to(url, w, *size)?;
        anyhow::ensure!(
            n == *size,
            "{url} has {n} bytes, its manifest or delta index says {size}"
        );
        let pad = (512 - (n % 512) as usize) % 512;
        w.write_all(&vec![0u8; pad])?;
        nar_bytes += size;
    }
    let buffered = tar.into_inner().context("finishing the bundle")?;
    let tmp = buffered.into_inner().map_err(|e| e.into_error())?;
    // Readable by its owner alone, as a temporary file starts.
    nixcast_cli::fs::persist(tmp, output, 0o600, nixcast_cli::fs::Replace::Yes)?;
    nixcast_cli::fs::sync_dir(dir)?;
    let patched = needed.iter().filter(|e| as_delta(e)).count();
    println!(
        "bundled {host} generation {}: {} NARs of {} paths ({} of them as deltas) ({}) into {}",
        p.generation,
        needed.len(),
        m.paths.len(),
        patched,
        human_bytes(nar_bytes),
        output.display()
    );
    Ok(())
}

/// The NAR-delta index of `p`'s manifest for hosts at generation `base`,
/// as stored, keeping the entries whose base such a host holds; `None`
/// when the publisher wrote none for that pair.
fn deltas_from(
    target: &Target,
    p: &Pointer,
    base: &Pointer,
    have: &BTreeSet<StorePath>,
    ids: &[Identity],
) -> Result<Option<(String, Vec<u8>, Index)>> {
    let old = base
        .manifest
        .sealed
        .map_or(base.manifest.sha256, |s| s.sha256);
    let sealed = p.manifest.sealed.is_some();
    let name = layout::nar_deltas(&p.manifest.sha256, &old, sealed);
    let key = Key::parse(&name).expect("a key we wrote");
    let Some((stored, mut index)) = read_nar_deltas(target, &key, ids)? else {
        return Ok(None);
    };
    index.deltas.retain(|d| have.contains(&d.base));
    Ok(Some((name, stored, index)))
}
