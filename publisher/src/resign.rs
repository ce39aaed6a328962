//! `nixcast keys resign`: what hosts read now, signed again with a key of
//! the current key list, so that a host trusting only that list (and Nix
//! given only its keys) goes on reading it once the key that signed it
//! before is dropped from the list.
//!
//! For each host whose current pointer a key being retired signed (one of
//! `retired`, or another key the list names), and not ours:
//! - the narinfos of its plain paths: signatures of the retired keys the
//!   list no longer names are dropped, ours added;
//! - its manifest: the same for every entry (a sealed one is opened with an
//!   identity and sealed again to the host's recipients);
//! - a new generation for the same system, pinning that manifest. Not the
//!   same generation again: agents refuse a second content under a
//!   generation they accepted (what a leaked key would do), and the
//!   manifest's bytes change. A host that runs the system already only
//!   records the generation: it neither fetches nor switches.
//!
//! Nothing is re-signed that no trusted key signed: a pointer or an entry
//! without such a signature stops the host's resign with an error (its
//! content would be vouched for unseen). After a leak, content the leaked
//! key signed is not to be vouched for at all: publish the hosts again
//! from the trusted store instead (see the README).

use anyhow::{bail, ensure, Context, Result};
use nixcast_common::keylist::Accepted;
use nixcast_common::manifest::{Entry, Manifest};
use nixcast_common::narinfo::{self, NarInfo};
use nixcast_common::pointer::{self, Head, ManifestRef, Pointer, Timestamp};
use nixcast_common::seal::{self, Identity};
use nixcast_common::{layout, PublicKey, SecretKey};

use crate::sealing::Sealing;
use crate::target::Target;

pub struct Options {
    /// Ours: listed in the current key list.
    pub key: SecretKey,
    /// The keys being retired, whose signatures are trusted here and dropped.
    pub retired: Vec<PublicKey>,
    /// Open sealed manifests (the publisher's old secret key file, or an operator's).
    pub identities: Vec<Identity>,
    /// Who each sealed host's manifest is sealed to again.
    pub sealing: Sealing,
}

/// What happened to one host.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    Resigned {
        host: String,
        generation: u64,
    },
    /// Its pointer is signed by us already.
    Ours {
        host: String,
    },
    /// Its tombstone, signed again.
    Retired {
        host: String,
    },
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::Resigned { host, generation } => {
                write!(f, "re-signed {host} as generation {generation}")
            }
            Done::Ours { host } => write!(f, "{host}: signed by this key already"),
            Done::Retired { host } => write!(f, "re-signed {host}'s tombstone (retired)"),
        }
    }
}

/// Re-signs every host of the cache; the first host that cannot be
/// re-signed stops the command (the hosts before it are done).
pub fn resign(target: &Target, opts: &Options) -> Result<Vec<Done>> {
    let Some(list) = crate::keys::current(target)? else {
        bail!(
            "{} has no key list: `keys resign` signs with a key of the list; sign one with \
             `nixcast keys sign`",
            target.describe()
        );
    };
    let mut done = Vec::new();
    for key in target.list(layout::HOSTS_DIR)? {
        let Some(layout::Key::Pointer(host)) = layout::Key::parse(&key) else {
            continue;
        };
        let d = resign_host(target, &list, &host, opts)
            .with_context(|| format!("cannot re-sign {host}"))?;
        tracing::info!("{d}");
        done.push(d);
    }
    Ok(done)
}

fn resign_host(target: &Target, list: &Accepted, host: &str, opts: &Options) -> Result<Done> {
    let listed = list.signing_keys_for(host);
    ensure!(
        listed.contains(&opts.key.public()),
        "key list version {} does not name {} for {host}; list it with `nixcast keys sign` first",
        list.get().version,
        opts.key.name()
    );
    let key = layout::pointer(host);
    let bytes = target
        .get_at_most(&key, pointer::MAX_ENVELOPE_SIZE as u64)?
        .with_context(|| format!("{key} vanished"))?;
    let keep = |s: &nixcast_common::Signature| {
        !opts.retired.iter().any(|k| k.name() == s.key_name())
            || listed.iter().any(|k| k.name() == s.key_name())
    };
    let mut ids = opts.identities.clone();
    ids.push(Identity::of_publisher(&opts.key));
    let done = |d: fn(String) -> Done| Ok(d(host.to_owned()));
    if let Ok(head) = pointer::verify_head(&bytes, &[opts.key.public()]) {
        // Our manifest carries our signatures; its narinfos may still
        // carry a retired key's beside ours (publish adds, never drops).
        if let Head::Pointer(v) = head {
            let (_, manifest) = crate::cache::read_manifest(target, v.get(), &ids)?;
            for e in manifest.paths.iter().filter(|e| is_ours_plain(e)) {
                resign_narinfo(target, e, &opts.key, keep)?;
            }
        }
        return done(|host| Done::Ours { host });
    }
    let trusted: Vec<PublicKey> = listed.iter().chain(&opts.retired).cloned().collect();
    let old = match pointer::verify_head(&bytes, &trusted).with_context(|| {
        format!("{key} is signed by no key of the list nor by a --trusted-key-file")
    })? {
        Head::Pointer(v) => v.into_inner(),
        // A retired host's tombstone: the same statement under our key
        // (the same payload, so agents that read it see no change).
        Head::Retired(t) => {
            target.put(&key, &t.get().sign(&opts.key))?;
            target.sync()?;
            return done(|host| Done::Retired { host });
        }
    };
    ensure!(old.host == host, "{key} names host {:?}", old.host);
    let (_, manifest) = crate::cache::read_manifest(target, &old, &ids)
        .context("reading its manifest (a sealed one needs --identity)")?;
    let mut entries = manifest.paths.clone();
    for e in &mut entries {
        resign_entry(e, &trusted, &opts.key, keep)?;
        if is_ours_plain(e) {
            resign_narinfo(target, e, &opts.key, keep)?;
        }
    }
    let manifest = Manifest::new(manifest.store_path.clone(), entries)?;
    let sealed = old.manifest.sealed.is_some();
    let manifest_ref = write_manifest(target, host, &manifest, sealed, opts)?;
    let generation = next_generation(target, host, &old, &trusted)?;
    write_pointer(target, old, generation, manifest_ref, &opts.key)?;
    Ok(Done::Resigned {
        host: host.to_owned(),
        generation,
    })
}

/// `old` as generation `generation`, pinning `manifest`, issued now with
/// the lifetime `old` had: into the history, then current.
fn write_pointer(
    target: &Target,
    old: Pointer,
    generation: u64,
    manifest: ManifestRef,
    key: &SecretKey,
) -> Result<()> {
    let issued_at = Timestamp::now();
    let lifetime = |e: Timestamp| {
        e.system_time()
            .duration_since(old.issued_at.system_time())
            .unwrap_or_default()
    };
    let pointer = Pointer {
        generation,
        manifest,
        issued_at,
        expires_at: old.expires_at.map(|e| issued_at.plus(lifetime(e))),
        ..old
    };
    let envelope = pointer.sign(key);
    target.sync()?;
    target.put_new(&layout::history(&pointer.host, generation), &envelope)?;
    target.put(&layout::pointer(&pointer.host), &envelope)?;
    target.sync()
}

/// One entry's signatures: it must carry one of `trusted` (over its
/// NarHash, NarSize and references), then those `keep` refuses go and ours
/// is added.
fn resign_entry(
    e: &mut Entry,
    trusted: &[PublicKey],
    key: &SecretKey,
    keep: impl Fn(&nixcast_common::Signature) -> bool,
) -> Result<()> {
    let fp = narinfo::fingerprint(&e.store_path, &e.nar_hash, e.nar_size, &e.references);
    ensure!(
        trusted
            .iter()
            .any(|k| e.sigs.iter().any(|s| k.verifies(fp.as_bytes(), s))),
        "{} carries no signature of a trusted key",
        e.store_path
    );
    e.sigs.retain(|s| keep(s) && s.key_name() != key.name());
    e.sigs.push(key.sign(fp.as_bytes()));
    e.sigs.sort_by_key(|s| s.to_string());
    Ok(())
}

/// A path this cache serves in the clear: it has a narinfo here.
fn is_ours_plain(e: &Entry) -> bool {
    e.cache.is_none() && !e.is_sealed()
}

/// The narinfo of a plain path of this cache: the signatures `keep`
/// refuses go and ours is added, written when that changed it (it must
/// describe the entry's content).
fn resign_narinfo(
    target: &Target,
    e: &Entry,
    key: &SecretKey,
    keep: impl Fn(&nixcast_common::Signature) -> bool,
) -> Result<()> {
    let k = layout::narinfo(&e.store_path);
    let Some(bytes) = target.get_at_most(&k, crate::upstream::MAX_NARINFO as u64)? else {
        bail!("{k}, which its manifest names, is missing");
    };
    let text = String::from_utf8(bytes).with_context(|| format!("{k} is not UTF-8"))?;
    let mut ni = NarInfo::parse(&text).with_context(|| format!("cannot parse {k}"))?;
    ensure!(
        ni.nar_hash == e.nar_hash && ni.nar_size == e.nar_size,
        "{k} describes other content than the manifest"
    );
    let before = ni.render();
    ni.sigs.retain(|s| keep(s));
    ni.sign(key);
    let after = ni.render();
    if after != before {
        target.put(&k, after.as_bytes())?;
    }
    Ok(())
}

fn write_manifest(
    target: &Target,
    host: &str,
    m: &Manifest,
    sealed: bool,
    opts: &Options,
) -> Result<ManifestRef> {
    let bytes = m.to_json();
    if !sealed {
        let r = ManifestRef::for_bytes(&bytes);
        target.put(&r.path, &bytes)?;
        return Ok(r);
    }
    ensure!(
        opts.sealing.is_sealed(host),
        "{host} is sealed: give its recipients (--recipients-file) to seal its manifest again"
    );
    let to = opts.sealing.manifest_recipients(host, &opts.key);
    let bytes = nixcast_common::pad::pad_json(bytes);
    let sealed_bytes = seal::seal_bytes(&to, &bytes)?;
    let r = ManifestRef::for_sealed(&sealed_bytes, &bytes);
    target.put(&r.path, &sealed_bytes)?;
    Ok(r)
}

/// After the current pointer and every history pointer a trusted key
/// signed (a staged one included, which is then below the host's pointer:
/// said, to be staged again).
fn next_generation(
    target: &Target,
    host: &str,
    current: &Pointer,
    trusted: &[PublicKey],
) -> Result<u64> {
    let staged =
        crate::publish::last_verified_history(target, host, trusted)?.map_or(0, |p| p.generation);
    if staged > current.generation {
        tracing::warn!(
            "{host} has staged generation {staged}, which the re-signed pointer passes: stage it \
             again with `nixcast publish --stage`"
        );
    }
    staged
        .max(current.generation)
        .checked_add(1)
        .with_context(|| format!("{host} has no generation left"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nixcast_common::keylist::SigningKey;
    use nixcast_common::pointer::{Tombstone, VerifiedHead};

    use super::*;
    use crate::keys::SignOptions;

    /// A retired host's tombstone is signed again, and the same statement;
    /// a pointer no trusted key signed stops the command.
    #[test]
    fn a_tombstone_is_signed_again_and_an_unknown_signer_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let target = Target::open(d.path().to_str().unwrap()).unwrap();
        let key = |n: &str| SecretKey::generate(n).unwrap();
        let (root, f1, f2, stranger) = (key("root-1"), key("fleet-1"), key("fleet-2"), key("x"));
        let listing = |k: &SecretKey| SigningKey {
            key: k.public(),
            hosts: vec![],
        };
        let list = SignOptions {
            root_secrets: vec![root.clone()],
            signing: vec![listing(&f2)],
            roots: None,
            threshold: None,
            expires_in: Duration::from_secs(86_400),
        };
        crate::keys::sign(&target, list, Timestamp::now()).unwrap();
        let tomb = Tombstone {
            host: "web3".into(),
            generation: 4,
            issued_at: Timestamp::now(),
        };
        target.put("hosts/web3.json", &tomb.sign(&f1)).unwrap();
        let opts = Options {
            key: f2.clone(),
            retired: vec![f1.public()],
            identities: vec![],
            sealing: Sealing::default(),
        };
        let done = resign(&target, &opts).unwrap();
        assert_eq!(
            done,
            [Done::Retired {
                host: "web3".into()
            }]
        );
        let bytes = target
            .get_at_most("hosts/web3.json", 65536)
            .unwrap()
            .unwrap();
        match pointer::verify_head(&bytes, &[f2.public()]).unwrap() {
            VerifiedHead::Retired(t) => assert_eq!(*t.get(), tomb),
            VerifiedHead::Pointer(_) => panic!("a pointer"),
        }
        // Again: ours already.
        assert_eq!(
            resign(&target, &opts).unwrap(),
            [Done::Ours {
                host: "web3".into()
            }]
        );
        // A tombstone by a key neither listed nor retired is not vouched for.
        target
            .put("hosts/web3.json", &tomb.sign(&stranger))
            .unwrap();
        let err = resign(&target, &opts).unwrap_err();
        assert!(format!("{err:#}").contains("signed by no key"), "{err:#}");
    }
}
