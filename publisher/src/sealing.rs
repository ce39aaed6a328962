//! Publishing sealed hosts: who each sealed object is for, which sealed
//! objects the target already holds, and writing a sealed NAR.
//!
//! A path of a sealed host is sealed to every sealed host of this command
//! whose closure holds it, plus the operators (`*`); hosts with the same
//! recipient set share one object, and a changed set gets a new one. Each
//! object is named by the sha256 of its sealed bytes, so no name is ever
//! written twice with other content. To find objects it can reuse, the
//! publisher opens the current sealed manifests with its own derived
//! identity, to which every sealed manifest is also sealed.

use std::collections::{HashMap, HashSet};
use std::io::BufWriter;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Result;
use nixcast_common::hash::{HashingCounter, Sha256Hash};
use nixcast_common::manifest::{Compression, Entry, Manifest};
use nixcast_common::pointer;
use nixcast_common::seal::{self, Identity, Recipient, Recipients};
use nixcast_common::{layout, SecretKey, StorePath};

use crate::nix::PathInfo;
use crate::pad::Padder;
use crate::target::Target;

/// Sealed objects known to be in the target: (path, NarHash, recipient set) → entry.
type Index = HashMap<(StorePath, Sha256Hash, Sha256Hash), Entry>;

#[derive(Default)]
pub struct Sealing {
    recipients: Recipients,
    /// For each path of a sealed host's closure: the sealed hosts holding it.
    hosts_of: HashMap<StorePath, Vec<String>>,
    index: Mutex<Option<Index>>,
}

impl Sealing {
    pub fn new(recipients: Recipients) -> Self {
        Self {
            recipients,
            ..Default::default()
        }
    }

    pub fn is_sealed(&self, host: &str) -> bool {
        !self.recipients.of_host(host).is_empty()
    }

    /// Records that `host`'s closure holds `paths` (call for every sealed
    /// host of the command before publishing any).
    pub fn add_closure<'a>(&mut self, host: &str, paths: impl IntoIterator<Item = &'a StorePath>) {
        for p in paths {
            let hosts = self.hosts_of.entry(p.clone()).or_default();
            if !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_owned());
            }
        }
    }

    /// Who a path of `host` is sealed to.
    pub fn recipients_of(&self, host: &str, path: &StorePath) -> Vec<Recipient> {
        let mut hosts = self.hosts_of.get(path).cloned().unwrap_or_default();
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_owned());
        }
        let mut out: Vec<Recipient> = hosts
            .iter()
            .flat_map(|h| self.recipients.of_host(h))
            .chain(self.recipients.operators())
            .collect();
        out.sort_by_key(|r| r.to_string());
        out.dedup();
        out
    }

    /// Who a sealed host's manifest and deltas are sealed to: the host, the
    /// operators and the publisher itself.
    pub fn manifest_recipients(&self, host: &str, key: &SecretKey) -> Vec<Recipient> {
        let mut out = self.recipients.of_host(host);
        out.extend(self.recipients.operators());
        out.push(Identity::of_publisher(key).recipient());
        out
    }

    /// Whether every sealed entry of `m` (a previous manifest of `host`) is
    /// sealed to the set this command would use, and whether `m` is sealed
    /// at all exactly when the host is.
    pub fn unchanged(&self, host: &str, key: &SecretKey, m: &Manifest, was_sealed: bool) -> bool {
        if was_sealed != self.is_sealed(host) {
            return false;
        }
        m.paths.iter().filter(|e| e.is_sealed()).all(|e| {
            e.sealed_to
                == Some(seal::fingerprint(
                    key,
                    &self.recipients_of(host, &e.store_path),
                ))
        })
    }

    /// A sealed object the target already holds for this content and set.
    pub fn reusable(
        &self,
        target: &Target,
        key: &SecretKey,
        info: &PathInfo,
        set: &Sha256Hash,
    ) -> Result<Option<Entry>> {
        let mut index = self.index.lock().expect("no panics while held");
        if index.is_none() {
            *index = Some(load_index(target, key)?);
        }
        let index = index.as_ref().expect("just loaded");
        let mut refs = info.references.clone();
        refs.sort();
        refs.dedup();
        Ok(index
            .get(&(info.path.clone(), info.nar_hash, *set))
            .filter(|e| e.nar_size == info.nar_size && e.references == refs)
            .cloned())
    }

    /// Entries of a manifest just published, for the hosts after it.
    pub fn remember(&self, m: &Manifest) {
        if let Some(index) = self.index.lock().expect("no panics while held").as_mut() {
            add_to_index(index, m, None);
        }
    }
}

fn add_to_index(index: &mut Index, m: &Manifest, present: Option<&HashSet<String>>) {
    for e in m.paths.iter().filter(|e| e.is_sealed()) {
        if present.is_some_and(|p| !p.contains(&e.url)) {
            continue;
        }
        let set = e.sealed_to.expect("sealed");
        index.insert((e.store_path.clone(), e.nar_hash, set), e.clone());
    }
}

/// Every sealed entry of the hosts' current manifests that the publisher can
/// open and whose object is still in the target.
fn load_index(target: &Target, key: &SecretKey) -> Result<Index> {
    let me = [Identity::of_publisher(key)];
    let present: HashSet<String> = target
        .entries(layout::SEALED_DIR)?
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    let mut index = Index::new();
    for k in target.list(layout::HOSTS_DIR)? {
        if !k.ends_with(".json") {
            continue;
        }
        let Some(bytes) = target.get_at_most(&k, pointer::MAX_ENVELOPE_SIZE as u64)? else {
            continue;
        };
        // Only pointers we signed: a planted pointer could name a manifest
        // whose entries point at objects someone else wrote.
        let Ok(p) = pointer::verify(&bytes, &[key.public()]) else {
            continue;
        };
        let p = p.into_inner();
        if p.manifest.sealed.is_none() {
            continue;
        }
        match crate::cache::read_manifest(target, &p, &me) {
            Ok((_, m)) => add_to_index(&mut index, &m, Some(&present)),
            Err(e) => tracing::warn!("cannot reuse the sealed objects of {k}: {e:#}"),
        }
    }
    Ok(index)
}

/// Dumps, checks, compresses and seals the NAR of one path, stores it under
/// its sealed sha256, and returns its manifest entry (signed as a narinfo
/// would be, so that Nix checks the publisher's signature at import).
pub fn write_sealed_nar(
    target: &Target,
    files: &Path,
    info: &PathInfo,
    key: &SecretKey,
    compression: Compression,
    recipients: &[Recipient],
    set: Sha256Hash,
) -> Result<Entry> {
    let file = HashingCounter::new(BufWriter::with_capacity(256 * 1024, target.temp_file()?));
    // Padded inside the compressed stream (`pad.rs`): the sealed length
    // says little about the content.
    let padder = Padder::new(compression, seal::seal(recipients, file)?);
    let sealed = crate::compress::dump_compressed(files, info, compression, padder)?.finish()?;
    let (buffered, file_hash, file_size) = sealed.finish()?.finish();
    let tmp = buffered.into_inner().map_err(|e| e.into_error())?;
    let url = layout::sealed(&file_hash);
    target.put_file(&url, tmp)?;
    let ni = crate::compress::signed_narinfo(info, url, compression, file_hash, file_size, key);
    Ok(Entry {
        store_path: ni.store_path,
        nar_hash: ni.nar_hash,
        nar_size: ni.nar_size,
        references: ni.references,
        deriver: ni.deriver,
        sigs: ni.sigs,
        url: ni.url,
        compression,
        file_hash,
        file_size,
        cache: None,
        sealed_to: Some(set),
    })
}
