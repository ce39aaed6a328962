//! A cache in a local directory (`DIR` or `file://DIR`).
//!
//! Every write appears whole: the bytes go to a temporary file beside their
//! destination (`nixcast_cli::fs`: mode 0644, flushed), which is then renamed.
//! A rename is durable only once its directory is flushed, so the directory
//! of every write is remembered, and [`Backend::sync`] flushes exactly those:
//! whatever a key's directory is (`sealed/`, `hosts/<host>/`, …), nothing
//! written is left out of the flush that must precede the pointer naming it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures_util::future::{BoxFuture, FutureExt};
use nixcast_cli::fs::Replace;
use nixcast_common::layout;
use tempfile::NamedTempFile;

use crate::{read_capped, Backend, Body, Entry, Error, Fetched, Validators};

/// World-readable: a cache is public, and the web server serving it usually
/// runs as another user.
const MODE: u32 = 0o644;

pub struct Dir {
    root: PathBuf,
    /// Directories that took a rename since the last `sync`.
    unsynced: Mutex<BTreeSet<PathBuf>>,
    /// Refuse to write through a symbolic link below the root.
    no_links: bool,
}

impl Dir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            unsynced: Mutex::new(BTreeSet::new()),
            no_links: false,
        }
    }

    /// A directory someone else may write into (the agent's `--report-to`):
    /// no write goes through a symbolic link below the root. (A publisher's
    /// cache may well have `nar/` on another disk.) The check is by path,
    /// before and after the directories are made; a link swapped in between
    /// the check and the rename is not caught (an `openat` walk would be).
    pub fn refusing_links(root: &Path) -> Self {
        Self {
            no_links: true,
            ..Self::new(root)
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, key: &str) -> PathBuf {
        debug_assert!(!key.starts_with('/') && !key.split('/').any(|c| c == ".."));
        self.root.join(key)
    }

    /// What `sync` flushes: the directory of every write since the last
    /// one, and the cache's fixed directories, so that renames an
    /// interrupted earlier run left unflushed are made durable too (a
    /// publish that finds a NAR there writes none).
    fn to_sync(&self) -> BTreeSet<PathBuf> {
        let mut dirs = std::mem::take(&mut *self.unsynced.lock().expect("not poisoned"));
        for sub in [
            "",
            layout::NAR_DIR,
            layout::DELTAS_DIR,
            layout::MANIFESTS_DIR,
            layout::SEALED_DIR,
            layout::HOSTS_DIR,
        ] {
            let d = self.root.join(sub);
            if d.is_dir() {
                dirs.insert(d);
            }
        }
        dirs
    }

    /// The directories a `sync` would flush now.
    pub fn unsynced(&self) -> Vec<PathBuf> {
        self.unsynced
            .lock()
            .expect("not poisoned")
            .iter()
            .cloned()
            .collect()
    }

    fn write(&self, key: &str, body: Body, replace: Replace) -> anyhow::Result<()> {
        let dest = self.file(key);
        let parent = parent(&dest);
        if self.no_links {
            // Before any directory is made through a planted link, and after.
            self.no_links_below_root(parent)?;
            fs::create_dir_all(parent)?;
            self.no_links_below_root(parent)?;
        } else {
            fs::create_dir_all(parent)?;
        }
        let tmp = match body {
            Body::File(tmp) => tmp,
            Body::Bytes(bytes) => {
                let mut tmp = nixcast_cli::fs::temp_in(parent)?;
                tmp.write_all(&bytes)?;
                tmp
            }
        };
        nixcast_cli::fs::persist(tmp, &dest, MODE, replace)?;
        self.unsynced
            .lock()
            .expect("not poisoned")
            .insert(parent.to_owned());
        Ok(())
    }

    /// A directory below the root that is a symbolic link would carry a
    /// write elsewhere: an agent writing its report as root into a
    /// directory someone else can write must not follow one planted there.
    fn no_links_below_root(&self, dir: &Path) -> anyhow::Result<()> {
        let mut d = dir;
        while d != self.root && d.starts_with(&self.root) {
            match fs::symlink_metadata(d) {
                Ok(md) if md.file_type().is_symlink() => {
                    anyhow::bail!(
                        "refusing to write through the symbolic link {}",
                        d.display()
                    )
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            d = parent(d);
        }
        Ok(())
    }

    fn entries(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let rd = match fs::read_dir(self.root.join(prefix)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e?;
            let md = e.metadata()?;
            if !md.is_file() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            out.push(Entry {
                key,
                size: md.len(),
                modified: md.modified()?,
            });
        }
        out.sort();
        Ok(out)
    }
}

fn parent(file: &Path) -> &Path {
    file.parent().expect("a key names a file under the root")
}

impl Backend for Dir {
    fn url_of(&self, key: &str) -> String {
        format!("file://{}", self.file(key).display())
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        cap: u64,
        _: &'a Validators,
    ) -> BoxFuture<'a, Result<Fetched, Error>> {
        async move {
            let url = self.url_of(key);
            let f = fs::File::open(self.file(key)).map_err(|e| Error::io(&url, e))?;
            let bytes = read_capped(&url, f, cap)?;
            Ok(Fetched::Body(bytes, Validators::default()))
        }
        .boxed()
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Box<dyn io::Read + Send>, Error>> {
        async move {
            let f = fs::File::open(self.file(key)).map_err(|e| Error::io(&self.url_of(key), e))?;
            Ok(Box::new(f) as Box<dyn io::Read + Send>)
        }
        .boxed()
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        async move { (self.file(key).try_exists()).map_err(|e| Error::io(&self.url_of(key), e)) }
            .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, body: Body) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            self.write(key, body, Replace::Yes)
                .map_err(|e| Error::other(&self.url_of(key), format!("{e:#}")))
        }
        .boxed()
    }

    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            // History is flushed at once, as a publish writes it last but one.
            self.write(key, Body::Bytes(body), Replace::No)
                .and_then(|()| nixcast_cli::fs::sync_dir(parent(&self.file(key))))
                .map_err(|e| Error::other(&self.url_of(key), format!("{e:#}")))
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Error>> {
        async move {
            self.entries(prefix)
                .map_err(|e| Error::io(&self.url_of(prefix), e))
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            match fs::remove_file(self.file(key)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(Error::io(&self.url_of(key), e))
                }
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            let dirs = self.to_sync();
            // Deepest first: a new directory's own entry is in its parent.
            for dir in dirs.iter().rev() {
                let mut d = dir.as_path();
                loop {
                    nixcast_cli::fs::sync_dir(d).map_err(|e| {
                        Error::other(&format!("file://{}", d.display()), format!("{e:#}"))
                    })?;
                    match d.parent() {
                        Some(p) if d != self.root && p.starts_with(&self.root) => d = p,
                        _ => break,
                    }
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn temp_file(&self) -> io::Result<NamedTempFile> {
        // Beside the NARs, so that their rename stays on one file system.
        let dir = self.root.join(layout::NAR_DIR);
        fs::create_dir_all(&dir)?;
        nixcast_cli::fs::temp_in(&dir).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use nixcast_common::layout::Key;
    use nixcast_common::Sha256Hash;
    use std::os::unix::fs::PermissionsExt;

    fn now<T>(f: BoxFuture<'_, T>) -> T {
        f.now_or_never().expect("a directory never waits")
    }

    #[test]
    fn published_files_are_world_readable() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::new(d.path());
        let mut nar = dir.temp_file().unwrap();
        nar.write_all(b"nar bytes").unwrap();
        now(dir.put("nar/abc.nar.zst", Body::File(nar))).unwrap();
        now(dir.put("abc.narinfo", Body::Bytes(b"StorePath: ...\n".to_vec()))).unwrap();
        now(dir.put_new("hosts/h/1.json", b"{}".to_vec())).unwrap();
        for key in ["nar/abc.nar.zst", "abc.narinfo", "hosts/h/1.json"] {
            let mode = fs::metadata(d.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644, "{key}: {mode:o}");
        }
        let again = now(dir.put_new("hosts/h/1.json", b"{}".to_vec()));
        assert!(again.is_err(), "history is never rewritten");
    }

    #[test]
    fn reads_stop_at_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::new(d.path());
        now(dir.put("hosts/h.json", Body::Bytes(vec![b'x'; 100]))).unwrap();
        let v = Validators::default();
        assert!(matches!(
            now(dir.get("hosts/h.json", 100, &v)),
            Ok(Fetched::Body(b, _)) if b.len() == 100
        ));
        let r = now(dir.get("hosts/h.json", 99, &v));
        assert!(matches!(r, Err(Error::TooLarge { cap: 99, .. })));
        let r = now(dir.get("hosts/none.json", 99, &v));
        assert!(matches!(r, Err(Error::NotFound(_))));
    }

    /// Every directory a write went to is flushed by `sync`, whatever kind
    /// of key it was: the fixed list this replaces left `sealed/` out, so a
    /// sealed host's objects were not durable before its pointer.
    #[test]
    fn sync_flushes_the_directory_of_every_key_written() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::new(d.path());
        let h = Sha256Hash::digest(b"x");
        let keys = [
            Key::Sealed(h),
            Key::SealedDelta {
                new: h,
                old_plain: h,
            },
            Key::Manifest(h),
            Key::Narinfo("0123456789abcdfghijklmnpqrsvwxyz".into()),
            Key::Nar {
                file_hash: h,
                compression: nixcast_common::manifest::Compression::Xz,
            },
            Key::Pointer("web".into()),
            Key::Report("web".into()),
            Key::NarDelta(h),
            Key::NarDeltas { new: h, old: h },
        ];
        for k in &keys {
            now(dir.put(&k.to_string(), Body::Bytes(b"x".to_vec()))).unwrap();
        }
        now(dir.put_new("hosts/web/1.json", b"x".to_vec())).unwrap();
        let unsynced = dir.unsynced();
        for k in &keys {
            assert!(
                unsynced.contains(&d.path().join(k.dir())),
                "{k} not flushed"
            );
        }
        assert!(unsynced.contains(&d.path().join("hosts/web")));
        now(dir.sync()).unwrap();
        assert!(dir.unsynced().is_empty());
        // A later run that writes nothing there still flushes what an
        // interrupted one may have left.
        let later = Dir::new(d.path());
        let flushed = later.to_sync();
        for sub in ["", "nar", "deltas", "manifests", "sealed", "hosts"] {
            assert!(flushed.contains(&d.path().join(sub)), "{sub:?} not flushed");
        }
    }

    #[test]
    fn no_write_follows_a_planted_link_below_the_root() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join("reports")).unwrap();
        // A publisher's cache may link a directory elsewhere.
        now(Dir::new(d.path()).put("reports/a.json", Body::Bytes(b"{}".to_vec()))).unwrap();
        std::fs::remove_file(elsewhere.path().join("a.json")).unwrap();
        let dir = Dir::refusing_links(d.path());
        let err = now(dir.put("reports/web.json", Body::Bytes(b"{}".to_vec()))).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        // The root itself may be a link: the operator chose it.
        let link = elsewhere.path().join("root");
        std::os::unix::fs::symlink(d.path().join("real"), &link).unwrap();
        fs::create_dir(d.path().join("real")).unwrap();
        now(Dir::refusing_links(&link).put("reports/web.json", Body::Bytes(b"{}".to_vec())))
            .unwrap();
    }

    #[test]
    fn a_listing_is_sorted_files_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::new(d.path());
        for key in ["hosts/b.json", "hosts/a.json", "hosts/a/1.json"] {
            now(dir.put(key, Body::Bytes(b"{}".to_vec()))).unwrap();
        }
        let keys: Vec<String> = now(dir.list("hosts"))
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["hosts/a.json", "hosts/b.json"]);
        assert!(now(dir.list("missing")).unwrap().is_empty());
        now(dir.delete("hosts/a.json")).unwrap();
        now(dir.delete("hosts/a.json")).unwrap();
        assert!(!now(dir.exists("hosts/a.json")).unwrap());
    }
}
