//! `nixcast retire`: a host leaves the fleet.
//!
//! A signed tombstone (`nixcast_common::pointer::Tombstone`) replaces the
//! host's pointer `hosts/HOST.json`, at a generation above every one
//! published for it; its agent, reading it, applies nothing any more,
//! reports `retired` and exits with its own code. Then the host's line
//! goes from the recipients file (`--recipients-file`), so that the next
//! `publish` of the other hosts seals nothing to its key. The tombstone is
//! written first: a retire cut short between the two is run again, and a
//! tombstone already there is kept as it is.
//!
//! Nothing is deleted here: the history `hosts/HOST/N.json` and what only
//! the host used go with the next `nixcast gc` (after its grace period, so
//! that nothing an agent reads at this moment disappears), which keeps the
//! tombstone. `publish` refuses a retired host unless `--force`.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use nixcast_common::layout;
use nixcast_common::pointer::{self, Head, Timestamp, Tombstone};
use nixcast_common::{seal, SecretKey};

use crate::target::Target;

/// A recipients file is a few lines a host: this is far beyond any fleet.
const MAX_RECIPIENTS_FILE: u64 = 16 << 20;

pub fn retire(
    target: &Target,
    host: &str,
    key: &SecretKey,
    recipients_file: Option<&Path>,
) -> Result<()> {
    crate::cache::check_host(host)?;
    match write_tombstone(target, host, key)? {
        Some(t) => println!(
            "retired {host} at generation {}: its agent applies nothing from now on; \
             `nixcast gc` deletes its history and what only it used",
            t.generation
        ),
        None => println!("{host} is retired already"),
    }
    if let Some(file) = recipients_file {
        remove_from_recipients(file, host)?;
    }
    Ok(())
}

/// Writes the host's tombstone, above its last generation; `None` when it
/// is retired already (that tombstone stays).
fn write_tombstone(target: &Target, host: &str, key: &SecretKey) -> Result<Option<Tombstone>> {
    let pointer_key = layout::pointer(host);
    let public = key.public();
    let history =
        crate::publish::last_verified_history(target, host, std::slice::from_ref(&public))?;
    let current = match target.get_at_most(&pointer_key, pointer::MAX_ENVELOPE_SIZE as u64)? {
        Some(bytes) => Some(
            pointer::verify_head(&bytes, std::slice::from_ref(&public)).with_context(|| {
                format!(
                    "{}/{pointer_key} does not verify with key {}: retire a host with the key \
                     that publishes it",
                    target.describe(),
                    key.name()
                )
            })?,
        ),
        None => None,
    };
    let (last, last_issued) = match (&current, &history) {
        (Some(Head::Retired(t)), _) => {
            ensure!(t.get().host == host, "{pointer_key} names another host");
            return Ok(None);
        }
        (Some(Head::Pointer(p)), h) => {
            let p = p.get();
            ensure!(p.host == host, "{pointer_key} names host {:?}", p.host);
            let h = h.as_ref();
            (
                p.generation.max(h.map_or(0, |h| h.generation)),
                p.issued_at.max(h.map_or(p.issued_at, |h| h.issued_at)),
            )
        }
        (None, Some(h)) => (h.generation, h.issued_at),
        (None, None) => bail!("{} holds no host {host}", target.describe()),
    };
    let generation = last
        .checked_add(1)
        .with_context(|| format!("{host} is at generation {last}, the last there can be"))?;
    let issued_at = Timestamp::now();
    // An agent refuses what was issued before what it accepted last.
    ensure!(
        issued_at >= last_issued,
        "this machine's clock ({issued_at}) is behind the time the last pointer of {host} was \
         issued ({last_issued}): its agent would refuse the tombstone; fix the clock"
    );
    let t = Tombstone {
        host: host.to_owned(),
        generation,
        issued_at,
    };
    target.sync()?;
    target.put(&pointer_key, &t.sign(key))?;
    target.sync()?;
    Ok(Some(t))
}

/// Rewrites the recipients file without `host`'s lines (atomically, with
/// its mode kept); every other byte stays.
fn remove_from_recipients(file: &Path, host: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let text = nixcast_cli::fs::read_small_text(file, MAX_RECIPIENTS_FILE)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let (kept, removed) = seal::without_host(&text, host);
    if removed == 0 {
        println!("{} lists no key for {host}", file.display());
        return Ok(());
    }
    // What is written must still be a recipients file.
    seal::Recipients::parse(&kept)
        .with_context(|| format!("recipients file {}", file.display()))?;
    let mode = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .permissions()
        .mode()
        & 0o7777;
    nixcast_cli::fs::write(file, kept.as_bytes(), mode)?;
    println!(
        "removed {host} from {} ({removed} line{}): the next publish seals nothing to it",
        file.display(),
        if removed == 1 { "" } else { "s" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Cache, FakeStore, HOST};

    fn head(cache: &Cache) -> Head<pointer::Pointer, Tombstone> {
        let bytes = std::fs::read(cache.root().join(layout::pointer(HOST))).unwrap();
        match pointer::verify_head(&bytes, &[cache.key.public()]).unwrap() {
            Head::Pointer(p) => Head::Pointer(p.into_inner()),
            Head::Retired(t) => Head::Retired(t.into_inner()),
        }
    }

    /// The tombstone goes above the staged generation too, and a second
    /// retire keeps the first tombstone.
    #[test]
    fn the_tombstone_is_above_every_generation_and_written_once() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let one = store.add("system-1", "1", &[]);
        let two = store.add("system-2", "2", &[]);
        cache.publish(&store, &one, false);
        cache.publish(&store, &two, true);
        let t = write_tombstone(&cache.target, HOST, &cache.key)
            .unwrap()
            .unwrap();
        assert_eq!(t.generation, 3);
        assert!(matches!(head(&cache), Head::Retired(r) if r == t));
        assert!(write_tombstone(&cache.target, HOST, &cache.key)
            .unwrap()
            .is_none());
        // Another key does not retire a host it did not publish.
        let other = SecretKey::generate("other-1").unwrap();
        let err = write_tombstone(&cache.target, HOST, &other).unwrap_err();
        assert!(format!("{err:#}").contains("does not verify"), "{err:#}");
        let err = write_tombstone(&cache.target, "nobody", &cache.key).unwrap_err();
        assert!(err.to_string().contains("holds no host nobody"), "{err}");
    }

    /// `publish` refuses a retired host without `--force`, and with it goes
    /// on above the tombstone's generation.
    #[test]
    fn publish_adds_a_retired_host_back_only_with_force() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let one = store.add("system-1", "1", &[]);
        cache.publish(&store, &one, false);
        write_tombstone(&cache.target, HOST, &cache.key).unwrap();
        let opts = cache.options(false);
        let err = crate::publish::publish(&store, &cache.target, HOST, &one, &opts).unwrap_err();
        assert!(format!("{err:#}").contains("is retired"), "{err:#}");
        let forced = crate::publish::Options {
            force: true,
            ..cache.options(false)
        };
        crate::publish::publish(&store, &cache.target, HOST, &one, &forced).unwrap();
        assert!(matches!(head(&cache), Head::Pointer(p) if p.generation == 3));
    }

    #[test]
    fn the_recipients_file_loses_the_host_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("fleet.recipients");
        let k =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHQnRhma/ADSfRWJi7kxxTOPrdjl6OhPJ6yH9zCOQo6N test";
        std::fs::write(&f, format!("# fleet\nweb1 {k}\nweb3 {k}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        remove_from_recipients(&f, "web3").unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            format!("# fleet\nweb1 {k}\n")
        );
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
