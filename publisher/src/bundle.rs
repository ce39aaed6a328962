//! `nixcast bundle`: a host's pointer, manifest and the NARs a base lacks,
//! as one file to carry across an air gap.
//!
//! The file is a plain tar archive laid out like the cache itself
//! (`hosts/HOST.json`, `manifests/<sha256>.json`, `nar/…`), so the agent
//! reads it as one more cache source (`nixcast-pull run --bundle FILE`) with
//! every check of a network pull. NARs are stored as published (compressed);
//! the archive adds no compression of its own. A sealed host's bundle holds
//! its sealed manifest and NARs: it stays sealed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nixcast_cli::fmt::human_bytes;
use nixcast_common::keylist;
use nixcast_common::layout::{self, Key};
use nixcast_common::pointer;
use nixcast_common::seal::Identity;
use nixcast_common::StorePath;

use crate::cache::{decode_pointer, read_manifest};
use crate::target::Target;

pub enum Base {
    None,
    Generation(u64),
    Path(StorePath),
}

/// The store paths a host at `base` already has.
fn base_paths(
    target: &Target,
    host: &str,
    base: &Base,
    ids: &[Identity],
) -> Result<BTreeSet<StorePath>> {
    let generation = match base {
        Base::None => return Ok(BTreeSet::new()),
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
        return Ok(m.paths.into_iter().map(|e| e.store_path).collect());
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
    let have = base_paths(target, host, base, ids)?;
    let needed: Vec<_> = m
        .paths
        .iter()
        .filter(|e| !have.contains(&e.store_path))
        .collect();
    if let Some(e) = needed.iter().find(|e| e.cache.is_some()) {
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
    for (name, bytes) in &small {
        tar.append_data(&mut header(bytes.len() as u64), name, bytes.as_slice())
            .with_context(|| format!("cannot add {name} to the bundle"))?;
    }
    let mut nar_bytes = 0;
    for e in &needed {
        // Streamed from the target: the header is written by hand, since the
        // signed FileSize is known before the bytes are read.
        let mut h = header(e.file_size);
        h.set_path(&e.url)?;
        h.set_cksum();
        let w = tar.get_mut();
        w.write_all(h.as_bytes())?;
        let n = target.read_to(&e.url, w, e.file_size)?;
        anyhow::ensure!(
            n == e.file_size,
            "{} has {n} bytes, its manifest says {}",
            e.url,
            e.file_size
        );
        let pad = (512 - (n % 512) as usize) % 512;
        w.write_all(&vec![0u8; pad])?;
        nar_bytes += e.file_size;
    }
    let buffered = tar.into_inner().context("finishing the bundle")?;
    let tmp = buffered.into_inner().map_err(|e| e.into_error())?;
    // Readable by its owner alone, as a temporary file starts.
    nixcast_cli::fs::persist(tmp, output, 0o600, nixcast_cli::fs::Replace::Yes)?;
    nixcast_cli::fs::sync_dir(dir)?;
    println!(
        "bundled {host} generation {}: {} NARs of {} paths ({}) into {}",
        p.generation,
        needed.len(),
        m.paths.len(),
        human_bytes(nar_bytes),
        output.display()
    );
    Ok(())
}
