//! What a hostile bucket, a slow network and a bad clock can no longer do to
//! an agent: freeze it with a planted generation, a pointer from the future
//! or a 304 for ever; hold it with a server that trickles or stalls; page
//! someone for an attack when its own disk is full; reach a terminal with
//! raw escape sequences; use a proxy or a state directory nobody chose.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nixcast_common::manifest::{Compression, Manifest};
use nixcast_common::pointer::{self, ManifestRef, Pointer, Timestamp};
use nixcast_common::{SecretKey, Sha256Hash};
use nixcast_integration::{Hostile, Rule};

use crate::harness::*;

/// A VM running generation 1 of host foobar from a hostile server, and
/// generation 2 built and published (not yet pulled).
struct World {
    _work: tempfile::TempDir,
    cache: PathBuf,
    keys: Keys,
    vm: Vm,
    server: Hostile,
    gen1: String,
    gen2: String,
}

impl World {
    fn new() -> Self {
        Self::with_library(65537)
    }

    /// Generation 2's base library has `size` random bytes.
    fn with_library(size: u64) -> Self {
        let work = tempfile::tempdir().unwrap();
        let cache = work.path().join("cache");
        let keys = keygen(work.path(), "fleet-1");
        let build = |version, big| {
            Fixture {
                n: 4,
                version,
                big,
                ..Default::default()
            }
            .build()
        };
        // Another size of the base library: every path of generation 2 is new.
        let (gen1, gen2) = (build("hard1", 0), build("hard2", size));
        publish(&cache, "foobar", &gen1, &keys, &["--compression", "zstd"]);
        let server = Hostile::start(cache.clone());
        let w = World {
            _work: work,
            cache,
            keys,
            vm: Vm::new(),
            server,
            gen1,
            gen2,
        };
        let out = w.pull(&[]);
        assert!(out.status.success(), "{}", stderr(&out));
        // Full NARs only: the hostile server's rules aim at them (delta.rs
        // tests what a host does with deltas that go wrong).
        publish(
            &w.cache,
            "foobar",
            &w.gen2,
            &w.keys,
            &["--compression", "zstd", "--no-deltas"],
        );
        w
    }

    fn pull(&self, extra: &[&str]) -> std::process::Output {
        self.vm.pull(&self.server.url, &self.keys, extra)
    }

    /// A pull run after `setup` (a shell command) in the VM's namespace.
    fn pull_after(&self, setup: &str) -> std::process::Output {
        self.vm.pull_after(setup, &self.server.url, &self.keys, &[])
    }

    fn secret(&self) -> SecretKey {
        SecretKey::parse(&std::fs::read_to_string(&self.keys.secret).unwrap()).unwrap()
    }

    fn pointer(&self) -> Pointer {
        let bytes = std::fs::read(self.cache.join("hosts/foobar.json")).unwrap();
        let pk = nixcast_common::PublicKey::parse(&self.keys.public_text).unwrap();
        pointer::verify(&bytes, &[pk]).unwrap().into_inner()
    }

    /// Serves `p`, signed by the publisher's key, as the host's pointer.
    fn serve_pointer(&self, p: &Pointer) {
        self.server
            .set("/hosts/foobar.json", Rule::Bytes(p.sign(&self.secret())));
    }

    fn manifest(&self) -> Manifest {
        let p = self.pointer();
        Manifest::parse(&std::fs::read(self.cache.join(&p.manifest.path)).unwrap()).unwrap()
    }

    /// The NAR URLs (paths on the server) of the paths generation 2 adds.
    fn new_nars(&self) -> Vec<String> {
        let old = closure(&self.gen1);
        self.manifest()
            .paths
            .iter()
            .filter(|e| !old.contains(&e.store_path.to_string()))
            .map(|e| format!("/{}", e.url))
            .collect()
    }

    /// A refusal or failure left the host as it was: generation 1 running,
    /// nothing of generation 2's top in the store, no stray temporary file.
    fn assert_unchanged(&self, out: &std::process::Output, code: i32, needle: &str) {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
        assert!(!self.vm.valid(&[&self.gen2]), "generation 2 was imported");
        assert_eq!(
            self.vm.profile_link("system").as_deref(),
            Some("system-1-link")
        );
        assert_eq!(self.vm.switch_log(), [format!("switch {}", self.gen1)]);
        assert_eq!(self.vm.status()["appliedGeneration"], 1);
        let staging = self.vm.nix().join("var/nixcast/staging");
        assert!(
            files_named(&staging, |n| n.starts_with('.') || n.ends_with(".narinfo")).is_empty(),
            "temporary files or narinfos left in staging"
        );
    }

    fn assert_applies_gen2(&self, extra: &[&str]) {
        self.server.clear();
        let out = self.pull(extra);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            self.vm.profile_link("system-2-link").as_deref(),
            Some(self.gen2.as_str())
        );
    }
}

fn files_named(dir: &Path, pick: impl Fn(&str) -> bool + Copy) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_named(&p, pick));
        } else if pick(&e.file_name().to_string_lossy()) {
            out.push(p);
        }
    }
    out
}

#[test]
fn implausible_generations_and_pointers_from_the_future_are_refused() {
    let w = World::new();
    let good = w.pointer();
    assert_eq!(good.generation, 2);

    // One publish from a machine whose clock runs a day ahead.
    let mut future = good.clone();
    future.issued_at = Timestamp::now().plus(Duration::from_secs(86400));
    future.expires_at = None;
    w.serve_pointer(&future);
    w.assert_unchanged(&w.pull(&[]), 3, "in the future");
    assert_eq!(w.vm.status()["highestGeneration"], 1);

    // A planted history file made the publisher jump far ahead.
    for generation in [5000, u64::MAX - 1] {
        let mut jump = good.clone();
        jump.generation = generation;
        w.serve_pointer(&jump);
        let out = w.pull(&[]);
        w.assert_unchanged(&out, 3, "--max-generation-jump");
        assert_eq!(w.vm.status()["highestGeneration"], 1);
    }
    // Saying how to accept it: raise the bound for one run.
    let mut jump = good.clone();
    jump.generation = 5000;
    w.serve_pointer(&jump);
    let hint = stderr(&w.pull(&[]));
    assert!(
        hint.contains("run once with --max-generation-jump 4999"),
        "{hint}"
    );
    let out = w.pull(&["--max-generation-jump", "4999"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.vm.status()["highestGeneration"], 5000);
    assert_eq!(w.vm.status()["appliedGeneration"], 5000);

    // No generation leaves no room for a next one, whatever the bound.
    let mut last = good;
    last.generation = u64::MAX;
    w.serve_pointer(&last);
    let out = w.pull(&["--max-generation-jump", &u64::MAX.to_string()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no room"), "{}", stderr(&out));
}

#[test]
fn a_304_is_no_excuse_to_skip_the_pointer_checks() {
    let w = World::new();
    // A server (or anything on the path) that answers 304 to everything.
    w.server.set("/hosts/foobar.json", Rule::Status(304));
    // The first run kept no validators (this server sends none): a 304 is no answer.
    w.assert_unchanged(
        &w.pull(&[]),
        4,
        "304 Not Modified to a request without validators",
    );
    assert_eq!(w.vm.status()["lastResult"], "fetch-failed");

    // With validators kept from a pointer that has expired since, a 304
    // stands for that expired pointer.
    let state = w.vm.nix().join("var/nixcast/status.json");
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    st["pointerValidators"] = serde_json::json!({"etag": "\"v1\""});
    st["pointerExpiresAt"] = "2020-01-01T00:00:00Z".into();
    std::fs::write(&state, serde_json::to_vec(&st).unwrap()).unwrap();
    w.assert_unchanged(&w.pull(&[]), 3, "expired");
    assert_eq!(w.vm.status()["lastResult"], "refused");
    // Validators an older agent kept without an expiry are not sent.
    let mut st = w.vm.status();
    st["validators"] = st["pointerValidators"].take();
    st.as_object_mut().unwrap().remove("pointerValidators");
    st.as_object_mut().unwrap().remove("pointerExpiresAt");
    std::fs::write(&state, serde_json::to_vec(&st).unwrap()).unwrap();
    w.assert_unchanged(&w.pull(&[]), 4, "without validators");
    w.assert_applies_gen2(&[]);
}

#[test]
fn slow_and_stalling_servers_end_the_run_in_bounded_time() {
    let w = World::new();
    let nars = w.new_nars();
    assert!(nars.len() >= 4, "{nars:?}");

    // Every NAR stalls half-way: the run stops after a few, not after all.
    for n in &nars {
        w.server.set(n, Rule::Stall(10));
    }
    w.server.take_requests();
    let out = w.pull(&["--stall-timeout", "1s", "--jobs", "1"]);
    w.assert_unchanged(&out, 4, "failed, stopping early");
    let tried = w.server.take_requests();
    assert!(
        nars.iter().any(|n| !tried.contains(n)),
        "every NAR was tried: {tried:?}"
    );

    // One byte every 100 ms never trips a stall timeout; the minimum rate does.
    w.server.clear();
    w.server.set(&nars[0], Rule::Trickle);
    let out = w.pull(&["--stall-timeout", "1s", "--min-rate", "1000"]);
    w.assert_unchanged(&out, 4, "slower than the minimum of 1000 bytes/s");

    // A stall shorter than the stall timeout, for ever: the whole run's deadline.
    w.server.clear();
    w.server.set(&nars[0], Rule::Stall(10));
    let out = w.pull(&["--stall-timeout", "1h", "--run-timeout", "3s"]);
    w.assert_unchanged(&out, 4, "--run-timeout 3s");
    assert_eq!(w.vm.status()["lastResult"], "fetch-failed");

    w.assert_applies_gen2(&[]);
}

/// A NAR of 1 MiB or more is spooled to staging and decoded only once its
/// FileSize and FileHash hold: hostile transfers of one end as they do for
/// a small NAR, the decoder never sees a tampered byte, and nothing stays
/// spooled.
#[test]
fn hostile_transfers_of_a_large_nar_end_alike_and_leave_nothing_spooled() {
    // 1.5 MiB of random bytes: its NAR stays above 1 MiB compressed.
    let w = World::with_library(3 << 19);
    let large: Vec<_> = w
        .manifest()
        .paths
        .into_iter()
        .filter(|e| e.file_size >= 1 << 20)
        .collect();
    assert_eq!(large.len(), 1, "one large NAR");
    let url = format!("/{}", large[0].url);
    let real = std::fs::read(w.cache.join(&large[0].url)).unwrap();
    let mut flipped = real.clone();
    flipped[real.len() / 2] ^= 0x40;
    let cases: Vec<(&str, Rule, i32, &str)> = vec![
        // Refused on its FileHash: a decoder would have failed otherwise.
        (
            "flipped byte",
            Rule::Bytes(flipped),
            3,
            "FileSize/FileHash mismatch",
        ),
        ("endless", Rule::Endless, 3, "more bytes than the FileSize"),
        (
            "truncated",
            Rule::Truncate(real.len() / 2),
            4,
            "fetch failed",
        ),
        ("stalled", Rule::Stall(real.len() / 2), 4, "fetch failed"),
        ("trickling", Rule::Trickle, 4, "slower than the minimum"),
    ];
    for (what, rule, code, needle) in cases {
        eprintln!("case {what}");
        w.server.set(&url, rule);
        let out = w.pull(&["--stall-timeout", "1s", "--min-rate", "1000"]);
        w.assert_unchanged(&out, code, needle);
    }
    w.assert_applies_gen2(&[]);
}

#[test]
fn a_full_disk_is_a_local_error_not_a_refusal() {
    let w = World::new();
    // The staging area on a 16 KiB file system: the 64 KiB library does not fit.
    let out = w.pull_after(
        "mkdir -p /nix/var/nixcast/staging/nar && \
         mount -t tmpfs -o size=16k tmpfs /nix/var/nixcast/staging/nar",
    );
    w.assert_unchanged(&out, 1, "No space left on device");
    let st = w.vm.status();
    assert_eq!(st["lastResult"], "local-error");
    assert_eq!(st["failures"]["local-error"], 1);
    assert!(st["failures"].get("refused").is_none(), "{st}");
    w.assert_applies_gen2(&[]);
}

/// What a killed run left in staging (here a 70 MiB spooled NAR) is
/// removed before the free-space check, not counted as used for good.
#[test]
fn a_killed_runs_spooled_nar_does_not_fill_the_free_space_check() {
    let w = World::new();
    // The state directory on an 80 MiB file system (its own, so the check
    // wants the 64 MiB margin there): 10 MiB free with the leftover.
    let out = w.pull_after(
        "mount -t tmpfs -o size=80m,mode=700 tmpfs /nix/var/nixcast && \
         mkdir -p /nix/var/nixcast/staging/nar && \
         head -c 70m /dev/zero > /nix/var/nixcast/staging/nar/.tmp-killed",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        w.vm.profile_link("system-2-link").as_deref(),
        Some(w.gen2.as_str())
    );
}

#[test]
fn a_manifest_that_contradicts_its_signatures_is_refused_and_its_nar_dropped() {
    let w = World::new();
    // Another valid NAR under etc's name, with hashes that match it but
    // signatures over etc's real content (as a hostile bucket can write).
    let etc = closure(&w.gen2)
        .into_iter()
        .find(|p| p.contains("-etc-foobar"))
        .unwrap();
    let other = closure(&w.gen1)
        .into_iter()
        .find(|p| p.contains("-etc-foobar"))
        .unwrap();
    let nar = ok(std::process::Command::new("nix-store").args(["--dump", &other])).stdout;
    let file_hash = Sha256Hash::digest(&nar);
    let url = nixcast_common::manifest::nar_url(&file_hash, Compression::None);
    std::fs::write(w.cache.join(&url), &nar).unwrap();
    let mut m = w.manifest();
    let e = m
        .paths
        .iter_mut()
        .find(|e| e.store_path.to_string() == etc)
        .unwrap();
    (e.url, e.compression, e.file_hash) = (url, Compression::None, file_hash);
    (e.file_size, e.nar_size) = (nar.len() as u64, nar.len() as u64);
    e.nar_hash = Sha256Hash::digest(&nar);
    let staged =
        w.vm.nix()
            .join("var/nixcast/staging/nar")
            .join(format!("{}.nar", e.nar_hash.to_nixbase32()));
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    let mref = ManifestRef::for_bytes(&bytes);
    std::fs::write(w.cache.join(&mref.path), &bytes).unwrap();
    let mut p = w.pointer();
    (p.manifest, p.generation) = (mref, 3);
    w.serve_pointer(&p);
    // A copy staged by an earlier run leaves staging too.
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, &nar).unwrap();

    let out = w.pull(&[]);
    w.assert_unchanged(&out, 3, "contradicts its own signatures");
    assert!(stderr(&out).contains(&etc), "{}", stderr(&out));
    assert!(
        !staged.exists(),
        "the NAR of the refused entry stayed in staging"
    );
}

#[test]
fn untrusted_text_reaches_the_terminal_escaped_bounded_and_once() {
    let w = World::new();
    // An envelope signed by an unknown key whose keyid is an escape sequence.
    let mut env: pointer::Envelope =
        serde_json::from_slice(&std::fs::read(w.cache.join("hosts/foobar.json")).unwrap()).unwrap();
    let evil = format!(
        "\x1b]0;owned\x07\x1b[2J\nerror: fake line{}",
        "x".repeat(20000)
    );
    env.signatures[0].keyid = evil;
    env.signatures[0].sig = format!("{}==", "A".repeat(86));
    let bytes = serde_json::to_vec(&env).unwrap();
    assert!(bytes.len() < pointer::MAX_ENVELOPE_SIZE);
    w.server.set("/hosts/foobar.json", Rule::Bytes(bytes));
    let out = w.pull(&[]);
    let err = stderr(&out);
    w.assert_unchanged(&out, 3, "not signed by any trusted key");
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(!err.contains("\nerror: fake"), "{err}");
    assert_eq!(
        err.matches("not signed by any trusted key").count(),
        1,
        "{err}"
    );
    assert!(err.len() < 3000, "{} bytes of stderr", err.len());
    let last_error = w.vm.status()["lastError"].as_str().unwrap().to_owned();
    assert!(!last_error.contains('\x1b') && last_error.len() < 3000);
    let status =
        w.vm.agent(&["status", "--state-dir", "/nix/var/nixcast"])
            .output()
            .unwrap();
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(!stdout(&status).contains('\x1b'), "{}", stdout(&status));
    w.assert_applies_gen2(&[]);
}

#[test]
fn keys_proxies_and_the_state_directory_are_the_operators_choice() {
    let w = World::new();
    let run = |extra: &[&str], key: &str| {
        let mut args = vec![
            "run",
            "--cache",
            &w.server.url,
            "--host",
            "foobar",
            "--trusted-key",
            key,
            "--state-dir",
            "/nix/var/nixcast",
            "--allow-insecure-http",
        ];
        args.extend_from_slice(extra);
        w.vm.agent(&args)
    };
    // A secret key where the public key belongs: refused, and not echoed.
    let secret = std::fs::read_to_string(&w.keys.secret).unwrap();
    let out = run(&["--dry-run"], secret.trim()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("secret key"), "{}", stderr(&out));
    let b64 = secret.trim().split_once(':').unwrap().1;
    assert!(!stderr(&out).contains(&b64[..20]), "{}", stderr(&out));

    // A state directory others can write to is refused, and left as it is.
    let state = w.vm.nix().join("var/nixcast");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = w.pull(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writable by group or others"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o777
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();

    // http_proxy & co in the environment are not used...
    let proxy = Hostile::start(w.cache.clone());
    let mut cmd = run(&[], &w.keys.public_text);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env(var, &proxy.url);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(proxy.take_requests().is_empty());
    assert!(!stderr(&out).contains("proxy"), "{}", stderr(&out));
    // ...and --proxy is, and says so.
    let gen3 = Fixture {
        n: 4,
        version: "hard3",
        ..Default::default()
    }
    .build();
    publish(&w.cache, "foobar", &gen3, &w.keys, &[]);
    let out = run(&["--proxy", &proxy.url], &w.keys.public_text)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(proxy
        .take_requests()
        .contains(&"/hosts/foobar.json".to_owned()));
    assert!(stderr(&out).contains("using a proxy"), "{}", stderr(&out));
}

#[test]
fn paths_imported_by_a_run_survive_a_garbage_collection_and_status_shows_the_run() {
    let w = World::new();
    let top = format!(
        "/{}",
        w.manifest().get(&w.gen2.parse().unwrap()).unwrap().url
    );
    w.server.set(&top, Rule::Stall(10));
    let url = w.server.url.clone();
    let mut run =
        w.vm.agent(&[
            "run",
            "--cache",
            &url,
            "--host",
            "foobar",
            "--trusted-key",
            &w.keys.public_text,
            "--state-dir",
            "/nix/var/nixcast",
            "--allow-insecure-http",
            "--stall-timeout",
            "1h",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    // Wait (bounded) until everything below the stalled top is imported.
    let below: Vec<String> = closure(&w.gen2)
        .into_iter()
        .filter(|p| *p != w.gen2)
        .collect();
    let mut waited = 0;
    while !w.vm.valid(&below) {
        assert!(waited < 600, "the run imported nothing");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let status = |w: &World| {
        let out =
            w.vm.agent(&["status", "--state-dir", "/nix/var/nixcast"])
                .output()
                .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let shown = status(&w);
    assert!(shown.contains("running:            since "), "{shown}");

    // The run roots each batch right after Nix imported it; wait (bounded)
    // until no imported path is dead, then collect.
    let dead = |w: &World| {
        let out = ok(&mut w.vm.cmd(&["nix-store", "--gc", "--print-dead"]));
        let dead = stdout(&out);
        below.iter().any(|p| dead.lines().any(|l| l == p))
    };
    let mut waited = 0;
    while dead(&w) {
        assert!(waited < 300, "the run never rooted the paths it imported");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    ok(&mut w.vm.cmd(&["nix-collect-garbage"]));
    assert!(
        w.vm.valid(&below),
        "the garbage collector deleted imported paths"
    );

    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let shown = status(&w);
    assert!(shown.contains("killed?"), "{shown}");
    w.server.take_requests();
    w.assert_applies_gen2(&[]);
    let nars: Vec<String> = w
        .server
        .take_requests()
        .into_iter()
        .filter(|r| r.starts_with("/nar/"))
        .collect();
    assert_eq!(nars, [top]);
    assert!(status(&w).contains("running:            no"));
    assert!(!w.vm.nix().join("var/nixcast/gcroots").exists());
}

/// A stalled agent must not outlive a failed assertion: the server would
/// wait for its connection for ever.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
