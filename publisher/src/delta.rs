//! NAR deltas: each new path of a generation as a zstd patch against a path
//! of the host's previous generation, and the signed index that lists them
//! (`nixcast_common::nardelta`).
//!
//! The previous generation is the one the host's current pointer names:
//! an agent asks for the index named by the manifest it applied last, which
//! on a host that keeps up is that one; a host further behind finds none
//! and fetches full NARs. For each path the previous manifest lacks, the
//! base is an old path of the same name (a path whose hash changed only
//! because a dependency did: the common case when nixpkgs moves, and the
//! contents differ in embedded references); failing that, one of the same
//! name without its version (Nix's `parseDrvName`: a package that changed
//! version); of several, the one closest in size. A path or base larger
//! than `nardelta::MAX_NAR` goes whole, and a delta is kept only when it is
//! less than half of the compressed NAR. Paths served by `--upstream`
//! caches get deltas too: both NARs are in the local store, and the delta
//! lives in this cache.
//!
//! A sealed host's deltas are sealed to whom the path's NAR is sealed, and
//! its index is signed, then sealed like its manifest. A host that stops
//! being sealed gets no index, which would name its old paths in the clear.

use std::collections::HashMap;
use std::io::{BufWriter, Write};

use anyhow::{Context, Result};
use nixcast_common::hash::HashingCounter;
use nixcast_common::layout::{self, Key};
use nixcast_common::manifest::{Compression, Entry, Manifest};
use nixcast_common::nardelta::{self, DeltaCompression, Index, NarDelta};
use nixcast_common::pad::pad_json;
use nixcast_common::pointer::{ManifestRef, Pointer};
use nixcast_common::seal::{self, Recipient};
use nixcast_common::{nar, SecretKey, Sha256Hash};

use crate::nix::Store;
use crate::pad::Padder;
use crate::parallel::parallel;
use crate::sealing::Sealing;
use crate::target::Target;

/// zstd level of a delta: most of a patch is long matches into the base,
/// which every level finds with long-distance matching; higher levels cost
/// publish time for little (measured in `integration/bench/RESULTS.md`).
pub const LEVEL: i32 = 9;

/// A delta is kept when smaller than this share of the compressed NAR.
const KEEP_BELOW_PERCENT: u64 = 50;

/// What a publish gives the deltas: its key, its parallelism, its sealing.
pub struct Settings<'a> {
    pub key: &'a SecretKey,
    pub jobs: usize,
    pub sealing: &'a Sealing,
}

/// Writes the deltas of `new` against the previous generation (its pointer
/// and manifest), then their index; returns how many paths got one. Called
/// after the manifest and before the pointer: every delta is in place
/// before the index that names it, and the index before the pointer that
/// makes agents ask for it.
pub fn write_deltas(
    store: &dyn Store,
    target: &Target,
    host: &str,
    (prev, old): (&Pointer, &Manifest),
    new: &Manifest,
    new_ref: &ManifestRef,
    opts: &Settings,
) -> Result<usize> {
    let sealed = new_ref.sealed.is_some();
    if prev.manifest == *new_ref || (prev.manifest.sealed.is_some() && !sealed) {
        return Ok(0);
    }
    let pairs = pick_bases(old, new);
    let made = parallel(opts.jobs, &pairs, |(e, base)| {
        let to = sealed.then(|| opts.sealing.recipients_of(host, &e.store_path));
        make_delta(store, target, e, base, to.as_deref())
    })?;
    let mut deltas: Vec<NarDelta> = made.into_iter().flatten().collect();
    tracing::info!(
        candidates = pairs.len(),
        deltas = deltas.len(),
        bytes = deltas.iter().map(|d| d.file_size).sum::<u64>(),
        "NAR deltas against generation {}",
        prev.generation
    );
    if deltas.is_empty() {
        return Ok(0);
    }
    deltas.sort_by(|a, b| a.store_path.cmp(&b.store_path));
    let index = Index {
        version: nardelta::VERSION,
        manifest: new_ref.sha256,
        from: plain_sha(prev),
        deltas,
    };
    let n = index.deltas.len();
    write_index(target, host, &index, sealed, opts)?;
    Ok(n)
}

/// The signed index (sealed for a sealed host), once its deltas are durable.
fn write_index(
    target: &Target,
    host: &str,
    index: &Index,
    sealed: bool,
    opts: &Settings,
) -> Result<()> {
    target.sync()?;
    let key = layout::nar_deltas(&index.manifest, &index.from, sealed);
    let signed = index.sign(opts.key);
    if sealed {
        let to = opts.sealing.manifest_recipients(host, opts.key);
        target.put(&key, &seal::seal_bytes(&to, &pad_json(signed))?)
    } else {
        target.put(&key, &signed)
    }
}

/// Each path of `new` that `old` lacks, with the old path it is most
/// likely a small change of (see the module's text), within the size cap.
pub fn pick_bases<'a>(old: &'a Manifest, new: &'a Manifest) -> Vec<(&'a Entry, &'a Entry)> {
    let mut by_name: HashMap<&str, Vec<&Entry>> = HashMap::new();
    let mut by_pname: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for e in old.paths.iter().filter(|e| e.nar_size <= nardelta::MAX_NAR) {
        let name = e.store_path.name();
        by_name.entry(name).or_default().push(e);
        by_pname.entry(pname(name)).or_default().push(e);
    }
    let closest = |e: &Entry, v: &[&'a Entry]| {
        v.iter()
            .min_by_key(|b| b.nar_size.abs_diff(e.nar_size))
            .copied()
    };
    new.paths
        .iter()
        .filter(|e| e.nar_size <= nardelta::MAX_NAR && old.get(&e.store_path).is_none())
        .filter_map(|e| {
            let name = e.store_path.name();
            let base = by_name
                .get(name)
                .and_then(|v| closest(e, v))
                .or_else(|| by_pname.get(pname(name)).and_then(|v| closest(e, v)))?;
            Some((e, base))
        })
        .collect()
}

/// A package name without its version, as Nix's `parseDrvName` splits it:
/// at the first `-` not followed by a letter.
fn pname(name: &str) -> &str {
    let b = name.as_bytes();
    (0..b.len())
        .find(|&i| b[i] == b'-' && b.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()))
        .map_or(name, |i| &name[..i])
}

/// The delta of `e` against `base`, stored if worth keeping (sealed to
/// `seal_to` when given). A base the local store no longer holds as the
/// old manifest describes it gives none.
fn make_delta(
    store: &dyn Store,
    target: &Target,
    e: &Entry,
    base: &Entry,
    seal_to: Option<&[Recipient]>,
) -> Result<Option<NarDelta>> {
    let Some(base_nar) = dump_base(store, base) else {
        return Ok(None);
    };
    let file = HashingCounter::new(BufWriter::with_capacity(256 * 1024, target.temp_file()?));
    let (file, file_hash, file_size) = match seal_to {
        None => encode_new(store, e, &base_nar, file)?,
        // Padded inside the frame, as every sealed object is (`pad.rs`).
        Some(to) => {
            let sealed = Padder::new(Compression::Zstd, seal::seal(to, file)?);
            encode_new(store, e, &base_nar, sealed)?
                .finish()?
                .finish()?
        }
    }
    .finish();
    if file_size * 100 >= e.file_size * KEEP_BELOW_PERCENT {
        tracing::debug!(path = %e.store_path, file_size, nar = e.file_size, "delta not worth it");
        return Ok(None);
    }
    let tmp = file.into_inner().map_err(|e| e.into_error())?;
    let url = match seal_to {
        None => Key::NarDelta(file_hash),
        Some(_) => Key::Sealed(file_hash),
    }
    .to_string();
    target.put_file(&url, tmp)?;
    Ok(Some(NarDelta {
        store_path: e.store_path.clone(),
        base: base.store_path.clone(),
        base_nar_hash: base.nar_hash,
        base_nar_size: base.nar_size,
        url,
        compression: DeltaCompression::ZstdPatch,
        file_hash,
        file_size,
    }))
}

/// The base's NAR, in memory (at most `nardelta::MAX_NAR`), if the local
/// store still holds it as the old manifest says.
fn dump_base(store: &dyn Store, base: &Entry) -> Option<Vec<u8>> {
    let out = Vec::with_capacity(base.nar_size as usize);
    match nar::dump_path(&store.files(&base.store_path), HashingCounter::new(out)) {
        Ok(w) => {
            let (bytes, hash, size) = w.finish();
            let same = hash == base.nar_hash && size == base.nar_size;
            if !same {
                tracing::warn!(base = %base.store_path, "the local copy of a delta base differs from its manifest entry; no delta against it");
            }
            same.then_some(bytes)
        }
        Err(err) => {
            tracing::debug!(base = %base.store_path, "no delta against it: {err}");
            None
        }
    }
}

/// Streams the NAR of `e` through the delta encoder into `out`, checked
/// against the manifest entry (as every NAR publish writes is).
fn encode_new<W: Write>(store: &dyn Store, e: &Entry, base: &[u8], out: W) -> Result<W> {
    let path = e.store_path.to_string();
    let encoder = encoder(base, e.nar_size, out)?;
    let nar = nar::dump_path(&store.files(&e.store_path), HashingCounter::new(encoder))
        .with_context(|| format!("cannot dump {path}"))?;
    let (encoder, nar_hash, nar_size) = nar.finish();
    anyhow::ensure!(
        nar_hash == e.nar_hash && nar_size == e.nar_size,
        "the NAR of {path} changed while it was published: run `nix-store --verify-path {path}`"
    );
    Ok(encoder.finish()?)
}

/// A zstd encoder of a `new_size`-byte NAR with `base` as its reference
/// prefix (`zstd --patch-from`): its window reaches from the end of the new
/// NAR back to the start of the base, long-distance matching finds the long
/// runs the two share, and the frame records its content size so that the
/// decoder's buffer is no larger than the new NAR.
pub fn encoder<W: Write>(
    base: &[u8],
    new_size: u64,
    out: W,
) -> std::io::Result<zstd::Encoder<'_, W>> {
    let mut enc = zstd::Encoder::with_ref_prefix(out, LEVEL, base)?;
    enc.include_contentsize(true)?;
    enc.set_pledged_src_size(Some(new_size))?;
    enc.window_log(window_log(base.len() as u64 + new_size))?;
    enc.long_distance_matching(true)?;
    Ok(enc)
}

/// The smallest window covering `span` bytes, within zstd's bounds and the
/// agent's decoding limit.
fn window_log(span: u64) -> u32 {
    let log = 64 - span.max(1).saturating_sub(1).leading_zeros();
    log.clamp(10, nardelta::WINDOW_LOG_MAX)
}

/// The sha256 of the plain manifest agents holding `p`'s generation name
/// their index by.
fn plain_sha(p: &Pointer) -> Sha256Hash {
    p.manifest.sealed.map_or(p.manifest.sha256, |s| s.sha256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixcast_common::manifest::Compression;
    use std::io::Read;

    #[test]
    fn names_without_versions() {
        assert_eq!(pname("nixos-system-foobar-1"), "nixos-system-foobar");
        assert_eq!(pname("hello-2.12.1"), "hello");
        assert_eq!(pname("etc-foobar"), "etc-foobar");
        assert_eq!(pname("source"), "source");
        assert_eq!(pname("x-"), "x-");
        assert_eq!(window_log(1), 10);
        assert_eq!(window_log(1 << 20), 20);
        assert_eq!(window_log((1 << 20) + 1), 21);
        assert_eq!(window_log(nardelta::MAX_NAR * 2), nardelta::WINDOW_LOG_MAX);
    }

    fn entry(name: &str, n: u8, nar_size: u64) -> Entry {
        let h = nixcast_common::nixbase32::encode(&[n; 20]);
        let store_path = format!("/nix/store/{h}-{name}").parse().unwrap();
        let file_hash = Sha256Hash::digest(&[n]);
        Entry {
            store_path,
            nar_hash: Sha256Hash::digest(name.as_bytes()),
            nar_size,
            references: vec![],
            deriver: None,
            sigs: vec![],
            url: nixcast_common::manifest::nar_url(&file_hash, Compression::Xz),
            compression: Compression::Xz,
            file_hash,
            file_size: nar_size / 2,
            cache: None,
            sealed_to: None,
        }
    }

    fn manifest(entries: Vec<Entry>) -> Manifest {
        let top = entries[0].store_path.clone();
        Manifest::new(top, entries).unwrap()
    }

    /// The same name first, then the same name without its version, the
    /// closest in size; nothing for a path the old generation holds, nor
    /// beyond the size cap.
    #[test]
    fn bases_are_old_paths_of_the_same_name() {
        let shared = entry("shared", 9, 100);
        let old = manifest(vec![
            entry("system-1", 1, 100),
            entry("etc", 2, 1000),
            entry("etc", 3, 5000),
            entry("hello-2.12", 4, 800),
            entry("huge", 5, nardelta::MAX_NAR + 1),
            shared.clone(),
        ]);
        let new = manifest(vec![
            entry("system-2", 11, 100),
            entry("etc", 12, 4000),
            entry("hello-2.13", 13, 900),
            entry("huge", 14, 10),
            entry("other", 15, 10),
            shared,
        ]);
        let mut picked: Vec<(String, String)> = pick_bases(&old, &new)
            .iter()
            .map(|(e, b)| {
                (
                    e.store_path.name().to_owned(),
                    b.store_path.hash_part().to_owned(),
                )
            })
            .collect();
        let hash_of = |n: u8| nixcast_common::nixbase32::encode(&[n; 20]);
        let mut want = vec![
            ("etc".to_owned(), hash_of(3)),
            ("hello-2.13".to_owned(), hash_of(4)),
            ("system-2".to_owned(), hash_of(1)),
        ];
        want.sort();
        picked.sort();
        assert_eq!(picked, want);
    }

    /// What the encoder writes decodes, with the same base as prefix, to the
    /// new bytes; with another base it does not.
    #[test]
    fn a_patch_round_trips_and_is_small() {
        let base: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i * 7919).to_le_bytes())
            .collect();
        let mut new = base.clone();
        new[1000..1032].copy_from_slice(b"/nix/store/another-hash-in-here!");
        new.extend_from_slice(b"and a new tail");
        let mut enc = encoder(&base, new.len() as u64, Vec::new()).unwrap();
        enc.write_all(&new).unwrap();
        let patch = enc.finish().unwrap();
        assert!(patch.len() < 200, "{} bytes", patch.len());
        let mut d = zstd::stream::read::Decoder::with_ref_prefix(&patch[..], &base[..]).unwrap();
        d.window_log_max(nardelta::WINDOW_LOG_MAX).unwrap();
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        assert_eq!(out, new);
        let other = vec![0u8; base.len()];
        let mut d = zstd::stream::read::Decoder::with_ref_prefix(&patch[..], &other[..]).unwrap();
        let mut out = Vec::new();
        assert!(d.read_to_end(&mut out).is_err() || out != new);
    }
}
