//! A run killed at any point, a staging directory damaged by hand, a state
//! file from a newer agent: the next run recovers without help.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use nixcast_common::manifest::Manifest;
use nixcast_common::pointer;
use nixcast_common::PublicKey;
use nixcast_integration::{Hostile, Rule};

use crate::harness::*;

/// A published system, served by a test server, pulled into fresh VMs.
struct Cold {
    _work: tempfile::TempDir,
    cache: PathBuf,
    keys: Keys,
    server: Hostile,
    top: String,
}

impl Cold {
    fn new(fixture: Fixture) -> Self {
        let (work, cache, keys) = scene();
        let top = fixture.build();
        publish(&cache, "foobar", &top, &keys, &["--compression", "zstd"]);
        let server = Hostile::start(cache.clone());
        Cold {
            _work: work,
            cache,
            keys,
            server,
            top,
        }
    }

    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "run",
            "--cache",
            &self.server.url,
            "--host",
            "foobar",
            "--trusted-key",
            &self.keys.public_text,
            "--state-dir",
            "/nix/var/nixcast",
            "--allow-insecure-http",
        ];
        args.extend_from_slice(extra);
        args
    }

    /// The agent started in `vm`, its output dropped (it is to be killed).
    fn spawn(&self, vm: &Vm, extra: &[&str]) -> Child {
        vm.agent(&self.args(extra))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn manifest(&self) -> Manifest {
        let bytes = std::fs::read(self.cache.join("hosts/foobar.json")).unwrap();
        let pk = PublicKey::parse(&self.keys.public_text).unwrap();
        let p = pointer::verify(&bytes, &[pk]).unwrap().into_inner();
        Manifest::parse(&std::fs::read(self.cache.join(&p.manifest.path)).unwrap()).unwrap()
    }

    /// What every run that ends well leaves: exit 0, the profile on the
    /// published system, a store whose contents verify, the switch run once
    /// or twice (once more after a kill) and never two at a time.
    fn assert_converged(&self, vm: &Vm, out: &std::process::Output, when: &str) {
        assert!(
            out.status.success(),
            "after a kill {when}: the rerun failed with {}:\n{}",
            out.status,
            stderr(out)
        );
        let link = vm.profile_link("system").expect("a system profile");
        let target = std::fs::read_link(vm.nix().join("var/nix/profiles").join(&link)).unwrap();
        assert_eq!(target.to_str(), Some(self.top.as_str()), "{when}");
        let verify = ok(&mut vm.cmd(&["nix-store", "--verify", "--check-contents"]));
        let said = stderr(&verify);
        assert!(
            !said.contains("error") && !said.contains("modified") && !said.contains("invalid"),
            "{when}: nix-store --verify --check-contents:\n{said}"
        );
        let log = vm.switch_log();
        let done: Vec<&String> = log.iter().filter(|l| !l.starts_with("begin")).collect();
        assert!(
            (1..=2).contains(&done.len()),
            "{when}: switched {} times: {log:?}",
            done.len()
        );
        for l in &done {
            assert_eq!(**l, format!("switch {}", self.top), "{when}");
        }
        let mut running = false;
        for l in &log {
            let begins = l.starts_with("begin");
            assert!(
                !(running && begins),
                "{when}: two switches at once: {log:?}"
            );
            running = begins;
        }
        assert_eq!(vm.status()["appliedGeneration"], 1, "{when}");
    }
}

fn staged_nars(vm: &Vm) -> usize {
    std::fs::read_dir(vm.nix().join("var/nixcast/staging/nar"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".nar"))
                .count()
        })
        .unwrap_or(0)
}

/// How many of `names` (store path base names) are in the VM's store directory.
fn in_store(vm: &Vm, names: &HashSet<String>) -> usize {
    std::fs::read_dir(vm.nix().join("store"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| names.contains(e.file_name().to_string_lossy().as_ref()))
                .count()
        })
        .unwrap_or(0)
}

/// SIGKILL at many points of a cold pull of a few hundred paths, each
/// followed at once by a rerun that must converge. The points are found by
/// watching what the run leaves (staged NARs, store paths, the switch's log),
/// so each trial kills where it says.
#[test]
fn a_run_killed_at_any_point_is_followed_by_one_that_converges() {
    let cold = Cold::new(Fixture {
        version: "killed",
        n: 300,
        big: 8_000_000,
        switch_sleep: 3,
        ..Default::default()
    });
    let closure: Vec<String> = closure(&cold.top);
    let names: HashSet<String> = closure
        .iter()
        .map(|p| p.trim_start_matches("/nix/store/").to_owned())
        .collect();
    let top_name: HashSet<String> =
        std::iter::once(cold.top.trim_start_matches("/nix/store/").to_owned()).collect();
    type Point<'a> = (&'a str, Box<dyn Fn(&Vm) -> bool + 'a>);
    let points: Vec<Point> = vec![
        (
            "after the first staged NAR",
            Box::new(|vm| staged_nars(vm) >= 1),
        ),
        (
            // Staged or imported already: each imported batch's NARs leave staging.
            "half-way through the downloads",
            Box::new(|vm| staged_nars(vm) + in_store(vm, &names) >= 150),
        ),
        (
            "during the import",
            Box::new(|vm| in_store(vm, &names) >= 60),
        ),
        (
            "between the import and the profile",
            Box::new(|vm| in_store(vm, &top_name) == 1),
        ),
        (
            "during the switch",
            Box::new(|vm| vm.switch_log().iter().any(|l| l.starts_with("begin"))),
        ),
    ];
    let mut killed = 0;
    for (when, reached) in &points {
        let vm = Vm::new();
        let mut agent = cold.spawn(&vm, &[]);
        // Bounded: a run that never reaches the point fails the test below.
        let mut hit = false;
        for _ in 0..12_000 {
            if reached(&vm) {
                hit = true;
                break;
            }
            if agent.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = agent.kill();
        let ended = agent.wait().unwrap();
        if hit && ended.code().is_none() {
            killed += 1;
        } else {
            eprintln!("the run ended ({ended}) before the point {when}");
        }
        // At once: whatever the killed run started may still be running.
        let out = cold.assert_rerun(&vm);
        cold.assert_converged(&vm, &out, when);
    }
    // The last two windows are narrow; the others cannot be missed.
    assert!(killed >= 3, "only {killed} runs were killed");
}

impl Cold {
    fn assert_rerun(&self, vm: &Vm) -> std::process::Output {
        vm.agent(&self.args(&["--wait"])).output().unwrap()
    }
}

/// Verified NARs left staged by a failed run (which found a file where its
/// staging directory belongs), then damaged by hand: a truncated NAR, a NAR renamed to another's name, a narinfo without its
/// NAR, a stray narinfo and a half-written temporary file. The next run
/// fetches again exactly the NARs that no longer verify.
#[test]
fn a_damaged_staging_directory_is_recovered() {
    let cold = Cold::new(Fixture {
        version: "damaged",
        n: 8,
        ..Default::default()
    });
    let m = cold.manifest();
    let entry = |name: &str| {
        m.paths
            .iter()
            .find(|e| e.store_path.name() == name)
            .unwrap_or_else(|| panic!("{name} in the manifest"))
    };
    // Everything depends on the base library: without it nothing is
    // imported and every other NAR stays staged.
    let base = entry("base-lib");
    cold.server
        .set(&format!("/{}", base.url), Rule::Status(404));
    let vm = Vm::new();
    // A file where the staging directory belongs does not stop a run either.
    std::fs::create_dir_all(vm.nix().join("var/nixcast")).unwrap();
    std::fs::write(vm.nix().join("var/nixcast/staging"), "junk").unwrap();
    let out = vm.agent(&cold.args(&[])).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(staged_nars(&vm), m.paths.len() - 1);

    let staging = vm.nix().join("var/nixcast/staging");
    let nar = |name: &str| {
        staging
            .join("nar")
            .join(format!("{}.nar", entry(name).nar_hash.to_nixbase32()))
    };
    let truncated = std::fs::read(nar("pkg-0")).unwrap();
    std::fs::write(nar("pkg-0"), &truncated[..truncated.len() / 2]).unwrap();
    std::fs::rename(nar("pkg-1"), nar("pkg-2")).unwrap();
    std::fs::remove_file(nar("pkg-3")).unwrap();
    std::fs::write(
        staging.join("0000000000000000000000000000000z.narinfo"),
        "junk",
    )
    .unwrap();
    std::fs::write(staging.join("nar/.tmp-half"), &truncated[..10]).unwrap();
    std::fs::write(staging.join("nix-cache-info"), "StoreDir: /elsewhere\n").unwrap();

    cold.server.clear();
    cold.server.take_requests();
    let out = cold.assert_rerun(&vm);
    cold.assert_converged(&vm, &out, "with a damaged staging directory");
    let fetched: HashSet<String> = cold
        .server
        .take_requests()
        .into_iter()
        .filter(|r| r.starts_with("/nar/"))
        .collect();
    let want: HashSet<String> = ["base-lib", "pkg-0", "pkg-1", "pkg-2", "pkg-3"]
        .iter()
        .map(|n| format!("/{}", entry(n).url))
        .collect();
    assert_eq!(
        fetched, want,
        "fetched again exactly what no longer verified"
    );
    assert_eq!(staged_nars(&vm), 0);
}

/// A staged NAR damaged after it was verified and before Nix imports it:
/// Nix's import fails, and the run goes once more from an empty staging
/// directory instead of giving up.
#[test]
fn a_failed_import_is_retried_once_from_a_clean_staging_directory() {
    let cold = Cold::new(Fixture {
        version: "retry",
        n: 2,
        ..Default::default()
    });
    let m = cold.manifest();
    let etc = m
        .paths
        .iter()
        .find(|e| e.store_path.name() == "etc-foobar")
        .unwrap();
    let top = m.get(&m.store_path).unwrap();
    // The top waits, staged, for etc, whose download stalls.
    cold.server.set(&format!("/{}", etc.url), Rule::Stall(0));
    let vm = Vm::new();
    let agent = vm
        .agent(&cold.args(&["--jobs", "2", "--stall-timeout", "2s"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staged = vm
        .nix()
        .join("var/nixcast/staging/nar")
        .join(format!("{}.nar", top.nar_hash.to_nixbase32()));
    let mut waited = 0;
    while !staged.exists() {
        assert!(waited < 3000, "the top's NAR was never staged");
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    let bytes = std::fs::read(&staged).unwrap();
    std::fs::write(&staged, &bytes[..bytes.len() / 2]).unwrap();
    cold.server.clear();
    let out = agent.wait_with_output().unwrap();
    assert!(
        stderr(&out).contains("once more from an empty staging directory"),
        "{}",
        stderr(&out)
    );
    cold.assert_converged(&vm, &out, "after a failed import");
}

/// A state file a newer agent wrote (a newer version, a field and a result
/// this agent does not know) is read, its floor kept, its fields written back.
#[test]
fn a_newer_agents_state_file_is_read_and_kept() {
    let cold = Cold::new(Fixture {
        version: "state1",
        n: 2,
        ..Default::default()
    });
    let vm = Vm::new();
    let out = vm.agent(&cold.args(&[])).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let path = vm.nix().join("var/nixcast/status.json");
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut st);
        std::fs::write(&path, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    };
    edit(&|st| {
        st["version"] = 9.into();
        st["rollout"] = serde_json::json!({"wave": 3});
        st["lastResult"] = "sealed-refused".into();
    });
    let gen2 = Fixture {
        version: "state2",
        n: 2,
        ..Default::default()
    }
    .build();
    publish(
        &cold.cache,
        "foobar",
        &gen2,
        &cold.keys,
        &["--compression", "zstd"],
    );
    let out = vm.agent(&cold.args(&[])).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let st = vm.status();
    assert_eq!(st["appliedGeneration"], 2);
    assert_eq!(st["highestGeneration"], 2);
    assert_eq!(st["version"], 9);
    assert_eq!(st["rollout"]["wave"], 3);
    assert_eq!(st["lastResult"], "applied");

    // The floor in such a file still holds.
    edit(&|st| {
        st["highestGeneration"] = 5.into();
        // So that the pointer is fetched again rather than found unchanged.
        st.as_object_mut().unwrap().remove("validators");
    });
    let out = vm.agent(&cold.args(&[])).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("lower than the highest accepted"));
    assert_eq!(vm.status()["rollout"]["wave"], 3);
}
