//! `nixcast keys sign` and `keys show`: the key list at the cache root
//! (`common::keylist`), signed with root keys kept offline.
//!
//! `sign` writes the next version: `keys/<version>.json` first (never
//! rewritten), then `keys.json`. Before anything is written, the new list
//! must be one a host holding the current list would accept: signed by a
//! threshold of the current roots (and of the new roots, when it changes
//! them), newer, well formed. So a mistake (too few root keys, a root key
//! where a signing key belongs) is refused here, not by every host.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use nixcast_common::keylist::{self, Accepted, KeyList, Roots, SigningKey, Trust};
use nixcast_common::layout::{self, Key};
use nixcast_common::pointer::Timestamp;
use nixcast_common::SecretKey;

use crate::target::Target;

/// A list expiring sooner than this is shown with a warning.
pub const WARN_BEFORE: Duration = Duration::from_secs(30 * 86_400);

pub struct SignOptions {
    /// The root keys that sign (offline keys, brought out for this).
    pub root_secrets: Vec<SecretKey>,
    /// The keys that may sign pointers and narinfos.
    pub signing: Vec<SigningKey>,
    /// New roots; `None` keeps the current ones (for a first list: the
    /// public halves of `root_secrets`).
    pub roots: Option<Vec<nixcast_common::PublicKey>>,
    /// `None` keeps the current threshold (1 for a first list).
    pub threshold: Option<u32>,
    pub expires_in: Duration,
}

/// The current list, held to the roots it names itself (an expired one
/// too: renewing it is what `sign` is for), or `None` in a cache that has
/// none yet. Only the hosts hold it to their own roots: this says the file
/// is whole and consistent, not that the fleet's roots signed it.
pub fn current(target: &Target) -> Result<Option<Accepted>> {
    let Some(bytes) = target.get_at_most(layout::KEY_LIST, keylist::MAX_ENVELOPE_SIZE as u64)?
    else {
        return Ok(None);
    };
    keylist::reload_own(&bytes).map(Some).with_context(|| {
        format!(
            "{}/{} is not signed by its own roots",
            target.describe(),
            layout::KEY_LIST
        )
    })
}

/// A `keys sign` that stopped between `keys/<v>.json` and `keys.json`
/// left the next version written: it is finished here (made current) if
/// the current roots signed it, so that the version it took is not lost.
fn finish_interrupted(target: &Target, held: Option<Accepted>) -> Result<Option<Accepted>> {
    let Some(h) = held else {
        return Ok(None);
    };
    let next = Key::KeyListHistory(h.get().version + 1).to_string();
    let Some(bytes) = target.get_at_most(&next, keylist::MAX_ENVELOPE_SIZE as u64)? else {
        return Ok(Some(h));
    };
    let done = keylist::accept(&bytes, &h.trust(), Some(&h), Some(h.get().version + 1))
        .with_context(|| {
            format!(
                "{}/{next} exists but is not the next list the current roots signed; \
                 remove it if an earlier `keys sign` did not finish",
                target.describe()
            )
        })?;
    tracing::warn!("{next} was written by a `keys sign` that did not finish: making it current");
    target.put(layout::KEY_LIST, &bytes)?;
    target.sync()?;
    Ok(Some(done))
}

/// Signs and writes the next key list; returns it.
pub fn sign(target: &Target, o: SignOptions, now: Timestamp) -> Result<Accepted> {
    if o.root_secrets.is_empty() {
        bail!("give the root keys that sign the list (--root-secret-key-file)");
    }
    let held = finish_interrupted(target, current(target)?)?;
    let held_roots = held.as_ref().map(|h| h.get().roots.clone());
    let trust = match &held_roots {
        Some(r) => Trust::from(r),
        None => Trust {
            threshold: o.threshold.unwrap_or(1),
            keys: o
                .roots
                .clone()
                .unwrap_or_else(|| o.root_secrets.iter().map(|k| k.public()).collect()),
        },
    };
    let roots = Roots {
        threshold: o
            .threshold
            .or(held_roots.as_ref().map(|r| r.threshold))
            .unwrap_or(1),
        keys: o.roots.clone().unwrap_or_else(|| trust.keys.clone()),
    };
    let version = held.as_ref().map_or(1, |h| h.get().version + 1);
    let list = KeyList {
        version,
        issued_at: now,
        expires_at: now.plus(o.expires_in),
        roots,
        signing: o.signing,
    };
    list.check()?;
    let signers: Vec<&SecretKey> = o.root_secrets.iter().collect();
    let bytes = list.sign(&signers);
    let accepted = keylist::accept(&bytes, &trust, held.as_ref(), Some(version))
        .and_then(|a| a.fresh(now))
        .context("the new key list would be refused by the hosts")?;
    target.put_new(&Key::KeyListHistory(version).to_string(), &bytes)?;
    target.sync()?;
    target.put(layout::KEY_LIST, &bytes)?;
    target.sync()?;
    Ok(accepted)
}

/// The list as text, and a warning when it expires within `WARN_BEFORE`.
pub fn show(a: &Accepted, now: Timestamp) -> (String, Option<String>) {
    let l = a.get();
    let left = l
        .expires_at
        .system_time()
        .duration_since(now.system_time())
        .ok();
    let days = |d: Duration| d.as_secs() / 86_400;
    let mut out = format!(
        "key list version {} (signed by the roots it names; hosts hold it to theirs)\nissued   {}\nexpires  {}{}\nroots    {} of {}:\n",
        l.version,
        l.issued_at,
        l.expires_at,
        match left {
            Some(d) => format!(" (in {} days)", days(d)),
            None => " (expired)".to_owned(),
        },
        l.roots.threshold,
        l.roots.keys.len()
    );
    for k in &l.roots.keys {
        out.push_str(&format!("  {k}\n"));
    }
    out.push_str("signing keys:\n");
    for s in &l.signing {
        let hosts = match s.hosts.is_empty() {
            true => "every host".to_owned(),
            false => s.hosts.join(", "),
        };
        out.push_str(&format!("  {} ({hosts})\n", s.key));
    }
    let warning = match left {
        None => Some(format!(
            "the key list expired at {}: no host accepts it; renew it with `nixcast keys sign`",
            l.expires_at
        )),
        Some(d) if d < WARN_BEFORE => Some(format!(
            "the key list expires in {} days: renew it with `nixcast keys sign`",
            days(d)
        )),
        Some(_) => None,
    };
    (out, warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SecretKey {
        SecretKey::generate(name).unwrap()
    }

    fn signing(k: &SecretKey) -> SigningKey {
        SigningKey {
            key: k.public(),
            hosts: vec![],
        }
    }

    fn opts(roots: &[&SecretKey], signing_keys: &[&SecretKey]) -> SignOptions {
        SignOptions {
            root_secrets: roots.iter().map(|k| (*k).clone()).collect(),
            signing: signing_keys.iter().map(|k| signing(k)).collect(),
            roots: None,
            threshold: None,
            expires_in: Duration::from_secs(365 * 86_400),
        }
    }

    #[test]
    fn versions_grow_history_stays_and_too_few_roots_write_nothing() {
        let d = tempfile::tempdir().unwrap();
        let target = Target::open(d.path().to_str().unwrap()).unwrap();
        let (r1, r2, r3) = (key("root-1"), key("root-2"), key("root-3"));
        let (f1, f2) = (key("fleet-1"), key("fleet-2"));
        let now = Timestamp::now();
        // The first list: three roots, two of which must sign from now on.
        let mut first = opts(&[&r1, &r2], &[&f1]);
        first.roots = Some(vec![r1.public(), r2.public(), r3.public()]);
        first.threshold = Some(2);
        let v1 = sign(&target, first, now).unwrap();
        assert_eq!(v1.get().version, 1);
        let v2 = sign(&target, opts(&[&r2, &r3], &[&f1, &f2]), now).unwrap();
        assert_eq!(v2.get().version, 2);
        assert_eq!(v2.get().roots.threshold, 2);
        // One root is not enough, and nothing is written then.
        let err = sign(&target, opts(&[&r1], &[&f2]), now).unwrap_err();
        assert!(
            format!("{err:#}").contains("signed by 1 of the roots"),
            "{err:#}"
        );
        assert_eq!(current(&target).unwrap().unwrap().get().version, 2);
        assert!(!d.path().join("keys/3.json").exists());
        for v in [1, 2] {
            assert!(d.path().join(format!("keys/{v}.json")).exists());
        }
        // A sign that stopped after keys/3.json: the next one finishes it.
        let v3 = KeyList {
            version: 3,
            ..v2.get().clone()
        };
        std::fs::write(d.path().join("keys/3.json"), v3.sign(&[&r2, &r3])).unwrap();
        let v4 = sign(&target, opts(&[&r2, &r3], &[&f2]), now).unwrap();
        assert_eq!(v4.get().version, 4);
        std::fs::write(d.path().join("keys/5.json"), b"{}").unwrap();
        let err = sign(&target, opts(&[&r2, &r3], &[&f2]), now).unwrap_err();
        assert!(format!("{err:#}").contains("remove it"), "{err:#}");
        let (text, warning) = show(&current(&target).unwrap().unwrap(), now);
        assert!(
            text.contains("version 4") && text.contains("2 of 3"),
            "{text}"
        );
        assert!(warning.is_none());
    }

    #[test]
    fn a_list_close_to_its_expiry_warns() {
        let d = tempfile::tempdir().unwrap();
        let target = Target::open(d.path().to_str().unwrap()).unwrap();
        let r1 = key("root-1");
        let mut o = opts(&[&r1], &[&key("fleet-1")]);
        o.expires_in = Duration::from_secs(10 * 86_400);
        let now = Timestamp::now();
        let a = sign(&target, o, now).unwrap();
        let (_, warning) = show(&a, now);
        assert!(warning.unwrap().contains("expires in 10 days"));
        let later = now.plus(Duration::from_secs(11 * 86_400));
        let (text, warning) = show(&a, later);
        assert!(text.contains("(expired)"), "{text}");
        assert!(warning.unwrap().contains("nixcast keys sign"));
        // An expired list is renewed by the next one.
        let renewed = sign(&target, opts(&[&r1], &[&key("fleet-2")]), later).unwrap();
        assert_eq!(renewed.get().version, 2);
    }
}
