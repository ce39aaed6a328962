//! Fixtures for the publisher's unit tests (compiled for tests only): a
//! store without Nix (`nix::Store`) whose paths are one-file trees in a
//! temporary directory, their NARs made by `nixcast_common::nar`, and a
//! cache directory (a real `Target`) to publish into, so that publish, gc
//! and promote are tested on the same code path as with Nix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use nixcast_common::hash::HashingCounter;
use nixcast_common::manifest::{Compression, Manifest};
use nixcast_common::pointer::{self, Pointer};
use nixcast_common::{layout, nar, nixbase32, SecretKey, Sha256Hash, StorePath};

use crate::nix::{PathInfo, Store};
use crate::publish::{self, Options, Outcome};
use crate::target::Target;

pub const HOST: &str = "web1";

/// A look at the target before a path's NAR is dumped.
pub type BeforeDump = Box<dyn Fn(&StorePath) + Sync>;

/// Store paths as one-file trees; `files` calls are recorded, and each is
/// first shown to `before_dump`, which may look at the target meanwhile.
pub struct FakeStore {
    dir: tempfile::TempDir,
    paths: BTreeMap<StorePath, PathInfo>,
    pub before_dump: Option<BeforeDump>,
    pub dumped: Mutex<Vec<StorePath>>,
}

impl FakeStore {
    pub fn new() -> Self {
        FakeStore {
            dir: tempfile::tempdir().unwrap(),
            paths: BTreeMap::new(),
            before_dump: None,
            dumped: Mutex::new(Vec::new()),
        }
    }

    /// Adds a path `name` holding one file with `content`, referring to `refs`.
    pub fn add(&mut self, name: &str, content: &str, refs: &[&StorePath]) -> StorePath {
        let hash = Sha256Hash::digest(name.as_bytes());
        let path =
            StorePath::from_basename(&format!("{}-{name}", nixbase32::encode(&hash.0[..20])))
                .unwrap();
        let file = self
            .dir
            .path()
            .join(path.to_string().rsplit('/').next().unwrap());
        std::fs::write(&file, content).unwrap();
        let (_, nar_hash, nar_size) = nar::dump_path(&file, HashingCounter::new(std::io::sink()))
            .unwrap()
            .finish();
        let info = PathInfo {
            path: path.clone(),
            nar_hash,
            nar_size,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
        };
        self.paths.insert(path.clone(), info);
        path
    }
}

impl Store for FakeStore {
    fn closure(&self, top: &StorePath) -> Result<Vec<PathInfo>> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![top.clone()];
        let mut out = Vec::new();
        while let Some(p) = todo.pop() {
            if !seen.insert(p.clone()) {
                continue;
            }
            let info = self
                .paths
                .get(&p)
                .with_context(|| format!("{p} is not valid"))?;
            todo.extend(info.references.iter().cloned());
            out.push(info.clone());
        }
        Ok(out)
    }

    fn files(&self, path: &StorePath) -> PathBuf {
        if let Some(f) = &self.before_dump {
            f(path);
        }
        self.dumped.lock().unwrap().push(path.clone());
        self.dir
            .path()
            .join(path.to_string().rsplit('/').next().unwrap())
    }
}

/// A cache directory to publish into, and the key that signs it.
pub struct Cache {
    pub dir: tempfile::TempDir,
    pub target: Target,
    pub key: SecretKey,
}

impl Cache {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().to_str().unwrap()).unwrap();
        Cache {
            dir,
            target,
            key: SecretKey::generate("test-1").unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// What `nixcast publish` would be given: no compression (fast), one
    /// job (so `before_dump` sees one NAR after another).
    pub fn options(&self, stage: bool) -> Options {
        Options {
            key: self.key.clone(),
            compression: Compression::None,
            expires_in: Some(Duration::from_secs(86_400)),
            jobs: 1,
            force: false,
            system: Some("x86_64-linux".into()),
            upstreams: crate::upstream::Upstreams::new(Vec::new(), Vec::new()).unwrap(),
            sealing: Default::default(),
            stage,
            deltas: true,
            release: None,
        }
    }

    /// Publishes `top` for `HOST`; returns the generation written.
    pub fn publish(&self, store: &FakeStore, top: &StorePath, stage: bool) -> u64 {
        match publish::publish(store, &self.target, HOST, top, &self.options(stage)).unwrap() {
            Outcome::Published(s) => s.generation,
            Outcome::Unchanged { .. } => panic!("{top} was published already"),
        }
    }

    pub fn exists(&self, key: &str) -> bool {
        self.root().join(key).exists()
    }

    /// A pointer as stored (the current one or a history entry), verified.
    pub fn pointer(&self, key: &str) -> Pointer {
        let bytes = std::fs::read(self.root().join(key)).unwrap();
        pointer::verify(&bytes, &[self.key.public()])
            .unwrap()
            .into_inner()
    }

    /// The manifest a pointer pins (plain).
    pub fn manifest(&self, p: &Pointer) -> Manifest {
        Manifest::parse(&std::fs::read(self.root().join(&p.manifest.path)).unwrap()).unwrap()
    }

    /// Every object a pointer needs, its manifest first: what an agent
    /// following it reads.
    pub fn needed_by(&self, p: &Pointer) -> Vec<String> {
        let mut keys = vec![p.manifest.path.clone()];
        for e in self.manifest(p).paths {
            keys.push(layout::narinfo(&e.store_path));
            keys.push(e.url);
        }
        keys
    }

    /// The keys of the files under `prefix` (`""` for the top level).
    pub fn files(&self, prefix: &str) -> Vec<String> {
        self.target.list(prefix).unwrap()
    }
}
