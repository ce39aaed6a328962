//! Fixtures for the agent's unit tests (compiled for tests only): a signed
//! cache in a directory, made with the same `common` code the publisher
//! uses, and a Nix store and a switch in memory (`host::Store` and
//! `host::Activator`), so that a run's steps are tested without root or Nix.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nixcast_common::manifest::{nar_url, Compression, Entry, Manifest};
use nixcast_common::narinfo::NarInfo;
use nixcast_common::pointer::{ManifestRef, Pointer, Timestamp};
use nixcast_common::{layout, nar, nixbase32, PublicKey, SecretKey, Sha256Hash, StorePath};

use crate::activate::Action;
use crate::config::{After, Apply, Config, Policy, Ports};
use crate::host::{Activator, Store};
use crate::source::{HttpOptions, Source};
use crate::staging::Staging;
use crate::state::StateDir;
use crate::store::Collected;

pub const HOST: &str = "web1";
pub const SYSTEM: &str = "x86_64-linux";

/// A store path named `name`, its hash made from `n`.
pub fn store_path(name: &str, n: u8) -> StorePath {
    StorePath::from_basename(&format!("{}-{name}", nixbase32::encode(&[n; 20]))).unwrap()
}

/// The NAR of a one-file tree holding `content`.
pub fn nar_of(content: &str) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("file");
    std::fs::write(&f, content).unwrap();
    nar::dump_path(&f, Vec::new()).unwrap()
}

/// One path of a closure: its name, the hash byte of its store path, its
/// file's content, and the indices of the paths it refers to.
pub struct PathSpec {
    pub name: &'static str,
    pub n: u8,
    pub content: &'static str,
    pub refs: Vec<usize>,
}

/// A cache directory and the key that signs it.
pub struct Cache {
    pub dir: tempfile::TempDir,
    pub key: SecretKey,
}

impl Cache {
    pub fn new() -> Self {
        Cache {
            dir: tempfile::tempdir().unwrap(),
            key: SecretKey::generate("test-1").unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A manifest entry for `content`, its uncompressed NAR written under
    /// `nar/` and signed as the publisher signs it.
    pub fn entry(&self, p: &StorePath, content: &str, refs: Vec<StorePath>) -> Entry {
        let bytes = nar_of(content);
        let hash = Sha256Hash::digest(&bytes);
        let url = nar_url(&hash, Compression::None);
        std::fs::create_dir_all(self.path().join("nar")).unwrap();
        std::fs::write(self.path().join(&url), &bytes).unwrap();
        let mut ni = NarInfo {
            store_path: p.clone(),
            url: url.clone(),
            compression: Some("none".into()),
            file_hash: Some(hash),
            file_size: Some(bytes.len() as u64),
            nar_hash: hash,
            nar_size: bytes.len() as u64,
            references: refs.clone(),
            deriver: None,
            sigs: vec![],
            ca: None,
            system: None,
            quirks: Default::default(),
        };
        ni.sign(&self.key);
        Entry {
            store_path: p.clone(),
            nar_hash: hash,
            nar_size: bytes.len() as u64,
            references: refs,
            deriver: None,
            sigs: ni.sigs,
            url,
            compression: Compression::None,
            file_hash: hash,
            file_size: bytes.len() as u64,
            cache: None,
            sealed_to: None,
        }
    }

    /// Publishes `paths` (the first is the system) as `generation` of
    /// `HOST`; returns the system's store path and the manifest.
    pub fn publish(&self, generation: u64, paths: &[PathSpec]) -> (StorePath, Manifest) {
        let sps: Vec<StorePath> = paths.iter().map(|p| store_path(p.name, p.n)).collect();
        let entries = paths
            .iter()
            .zip(&sps)
            .map(|(p, sp)| {
                self.entry(
                    sp,
                    p.content,
                    p.refs.iter().map(|&i| sps[i].clone()).collect(),
                )
            })
            .collect();
        let m = Manifest::new(sps[0].clone(), entries).unwrap();
        self.publish_manifest(generation, &m, |_| {});
        (sps[0].clone(), m)
    }

    /// Writes `m` and a pointer to it (edited by `edit` before signing).
    pub fn publish_manifest(&self, generation: u64, m: &Manifest, edit: impl FnOnce(&mut Pointer)) {
        let bytes = m.to_json();
        let r = ManifestRef::for_bytes(&bytes);
        std::fs::create_dir_all(self.path().join("manifests")).unwrap();
        std::fs::write(self.path().join(&r.path), &bytes).unwrap();
        let mut p = Pointer {
            host: HOST.into(),
            system: SYSTEM.into(),
            generation,
            store_path: Some(m.store_path.clone()),
            manifest: r,
            issued_at: Timestamp::now(),
            expires_at: None,
        };
        edit(&mut p);
        std::fs::create_dir_all(self.path().join(layout::HOSTS_DIR)).unwrap();
        std::fs::write(self.path().join(layout::pointer(HOST)), p.sign(&self.key)).unwrap();
    }

    pub fn public(&self) -> PublicKey {
        self.key.public()
    }
}

/// The system closure of the tests: `top` → `lib` → `libc`.
pub fn closure(version: &'static str, n: u8) -> Vec<PathSpec> {
    vec![
        PathSpec {
            name: "top",
            n,
            content: version,
            refs: vec![1],
        },
        PathSpec {
            name: "lib",
            n: n + 1,
            content: "lib",
            refs: vec![2],
        },
        PathSpec {
            name: "libc",
            n: 200,
            content: "libc",
            refs: vec![],
        },
    ]
}

/// A Nix store and a profile in memory. `import` reads what the run staged
/// as Nix would: the narinfo it names, its signature by a trusted key, the
/// NAR file with the NarHash the narinfo gives.
#[derive(Default)]
pub struct FakeStore {
    pub state: Mutex<StoreState>,
}

#[derive(Default)]
pub struct StoreState {
    pub valid: HashSet<StorePath>,
    /// Every path imported, in order.
    pub imported: Vec<StorePath>,
    /// The profile's generations and the one it points to.
    pub generations: Vec<(u64, StorePath)>,
    pub current: Option<u64>,
    /// How many times validity was asked.
    pub queries: usize,
    /// Imports that fail before one succeeds (as Nix does on a damaged
    /// staging cache).
    pub failing_imports: usize,
    /// What each garbage collection was asked to collect the dead paths of.
    pub collected: Vec<Vec<StorePath>>,
}

impl FakeStore {
    pub fn with_valid(paths: &[&StorePath]) -> Arc<Self> {
        let s = Self::default();
        s.state.lock().unwrap().valid = paths.iter().map(|p| (*p).clone()).collect();
        Arc::new(s)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, StoreState> {
        self.state.lock().unwrap()
    }

    pub fn profile(&self) -> Option<StorePath> {
        let s = self.lock();
        let cur = s.current?;
        s.generations
            .iter()
            .find(|(g, _)| *g == cur)
            .map(|(_, p)| p.clone())
    }
}

impl Store for FakeStore {
    fn missing(&self, paths: &[&StorePath]) -> Result<Vec<StorePath>> {
        let mut s = self.lock();
        s.queries += 1;
        Ok(paths
            .iter()
            .filter(|p| !s.valid.contains(*p))
            .map(|p| (*p).clone())
            .collect())
    }

    fn import(&self, staging: &Staging, paths: &[StorePath], trusted: &[PublicKey]) -> Result<()> {
        {
            let mut s = self.lock();
            if s.failing_imports > 0 {
                s.failing_imports -= 1;
                anyhow::bail!("nix copy failed (a test's failure)");
            }
        }
        for p in paths {
            let text = std::fs::read_to_string(staging.narinfo(p))
                .with_context(|| format!("no narinfo staged for {p}"))?;
            let ni = NarInfo::parse(&text)?;
            ensure!(ni.verify(trusted), "{p}: no trusted signature");
            let nar = std::fs::read(staging.path().join(&ni.url))?;
            ensure!(
                Sha256Hash::digest(&nar) == ni.nar_hash,
                "{p}: NarHash mismatch"
            );
            let mut s = self.lock();
            for r in ni.references.iter().filter(|r| *r != p) {
                ensure!(s.valid.contains(r), "{p}: reference {r} is not valid");
            }
            s.valid.insert(p.clone());
            s.imported.push(p.clone());
        }
        Ok(())
    }

    fn set_profile(&self, _profile: &Path, path: &StorePath) -> Result<()> {
        let mut s = self.lock();
        ensure!(s.valid.contains(path), "{path} is not valid");
        let n = s.generations.iter().map(|(g, _)| *g).max().unwrap_or(0) + 1;
        s.generations.push((n, path.clone()));
        s.current = Some(n);
        Ok(())
    }

    fn profile_target(&self, _profile: &Path) -> Option<StorePath> {
        self.profile()
    }

    fn profile_generation(&self, _profile: &Path) -> Option<u64> {
        self.lock().current
    }

    fn list_generations(&self, _profile: &Path) -> Result<Vec<u64>> {
        Ok(self.lock().generations.iter().map(|(g, _)| *g).collect())
    }

    fn switch_generation(&self, _profile: &Path, generation: u64) -> Result<()> {
        let mut s = self.lock();
        ensure!(
            s.generations.iter().any(|(g, _)| *g == generation),
            "no generation {generation}"
        );
        s.current = Some(generation);
        Ok(())
    }

    fn delete_generation(&self, _profile: &Path, generation: u64) -> Result<()> {
        let mut s = self.lock();
        ensure!(
            s.current != Some(generation),
            "cannot delete the current generation"
        );
        s.generations.retain(|(g, _)| *g != generation);
        Ok(())
    }

    fn generation_target(&self, _profile: &Path, generation: u64) -> Option<PathBuf> {
        let s = self.lock();
        let (_, p) = s.generations.iter().find(|(g, _)| *g == generation)?;
        Some(PathBuf::from(p.to_string()))
    }

    fn collect_garbage(&self, systems: &[StorePath]) -> Result<Collected> {
        self.lock().collected.push(systems.to_vec());
        Ok(Collected::default())
    }
}

/// A switch that records what it activated, and fails for `failing`; health
/// checks that fail if named in `failing_checks`; a reboot command that
/// records what it ran and fails with `failing_reboot`.
#[derive(Default)]
pub struct FakeSwitch {
    pub activated: Mutex<Vec<(StorePath, Action)>>,
    pub failing: Mutex<Option<StorePath>>,
    pub checks: Mutex<Vec<String>>,
    pub failing_checks: Mutex<Vec<String>>,
    pub reboots: Mutex<Vec<String>>,
    pub failing_reboot: Mutex<bool>,
}

impl FakeSwitch {
    pub fn activated(&self) -> Vec<StorePath> {
        self.activated
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

impl Activator for FakeSwitch {
    fn is_system(&self, _top: &StorePath) -> bool {
        true
    }

    fn activate(&self, top: &StorePath, action: Action) -> Result<ExitStatus> {
        self.activated.lock().unwrap().push((top.clone(), action));
        let fails = self.failing.lock().unwrap().as_ref() == Some(top);
        Ok(exit(fails))
    }

    fn health_check(&self, check: &str, _timeout: Duration) -> Result<(), String> {
        self.checks.lock().unwrap().push(check.to_owned());
        if self
            .failing_checks
            .lock()
            .unwrap()
            .iter()
            .any(|c| c == check)
        {
            return Err(format!("health check {check:?} exited with {}", exit(true)));
        }
        Ok(())
    }

    fn reboot(&self, command: &str) -> Result<ExitStatus> {
        self.reboots.lock().unwrap().push(command.to_owned());
        Ok(exit(*self.failing_reboot.lock().unwrap()))
    }
}

/// A wait status: exit code 1, or 0.
fn exit(fails: bool) -> ExitStatus {
    ExitStatus::from_raw(if fails { 1 << 8 } else { 0 })
}

/// A run's settings: this cache as a directory, this state directory, the
/// fakes; everything else as the defaults of the command line.
pub fn config(
    cache: &Cache,
    state: &Path,
    store: Arc<FakeStore>,
    switch: Arc<FakeSwitch>,
) -> Config {
    Config {
        policy: Policy {
            host: HOST.into(),
            system: SYSTEM.into(),
            trusted: crate::config::Trusted::Pinned(vec![cache.public()]),
            identity_files: vec![],
            max_generation_jump: 1000,
        },
        ports: Ports {
            source: Source::dir(cache.path()),
            http: HttpOptions {
                allow_insecure_http: true,
                stall_timeout: Duration::from_secs(30),
                min_rate: 0,
                proxy: None,
                user_agent: concat!("nixcast-pull/", env!("CARGO_PKG_VERSION")),
            },
            secrets: Arc::new(nixcast_cache::Secrets::default()),
            store,
            activator: switch,
            state: StateDir::new(state),
            profile: PathBuf::from("/nix/var/nix/profiles/system"),
            booted_system: PathBuf::from("/run/booted-system"),
        },
        apply: Apply {
            action: Action::Switch,
            jobs: 4,
            dry_run: false,
            wait: false,
            run_timeout: Duration::from_secs(600),
            health_checks: vec![],
            health_timeout: Duration::from_secs(60),
        },
        after: After {
            report: None,
            reboot: None,
            keep_generations: None,
            metrics_file: None,
        },
    }
}
