//! NAR deltas: a host that holds generation 1 rebuilds generation 2's new
//! paths from its own and small patches, and falls back to full NARs
//! whenever a patch cannot be trusted or used.

use std::path::{Path, PathBuf};

use nixcast_common::nardelta::{self, Index};
use nixcast_common::pointer;
use nixcast_common::{SecretKey, Sha256Hash};

use crate::harness::*;

/// A cache with generations 1 and 2 of foobar (version 1 → 2: the top and
/// etc paths change a little), a server, and a VM that applied generation 1.
struct Update {
    _work: tempfile::TempDir,
    cache: PathBuf,
    keys: Keys,
    gen1: String,
    gen2: String,
    server: Server,
    vm: Vm,
}

impl Update {
    fn new() -> Self {
        let (work, cache, keys) = scene();
        let (gen1, gen2) = two_generations();
        publish(&cache, "foobar", &gen1, &keys, &[]);
        let server = Server::start(&cache);
        let vm = Vm::new();
        let out = vm.pull(&server.url, &keys, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let summary = stdout(&publish(&cache, "foobar", &gen2, &keys, &[]));
        assert!(summary.contains("2 NAR deltas"), "{summary}");
        server.take_requests();
        Update {
            _work: work,
            cache,
            keys,
            gen1,
            gen2,
            server,
            vm,
        }
    }

    /// The paths generation 2 adds.
    fn changed(&self) -> Vec<String> {
        let old = closure(&self.gen1);
        closure(&self.gen2)
            .into_iter()
            .filter(|p| !old.contains(p))
            .collect()
    }

    /// The index generation 2 has for hosts holding generation 1.
    fn index_file(&self) -> PathBuf {
        let names: Vec<String> = files(&self.cache, "manifests")
            .into_iter()
            .filter(|n| n.contains(".nars-from-"))
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        self.cache.join("manifests").join(&names[0])
    }

    fn index(&self) -> Index {
        nardelta::decode_unverified(&std::fs::read(self.index_file()).unwrap()).unwrap()
    }

    /// Signs `index` with the fleet key in place of the publisher's.
    fn resign(&self, index: &Index) {
        let text = std::fs::read_to_string(&self.keys.secret).unwrap();
        let key = SecretKey::parse(text.trim()).unwrap();
        std::fs::write(self.index_file(), index.sign(&key)).unwrap();
    }

    fn pull(&self) -> std::process::Output {
        let out = self.vm.pull(&self.server.url, &self.keys, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(self.vm.valid(&closure(&self.gen2)));
        assert_eq!(
            self.vm.switch_log().last().unwrap(),
            &format!("switch {}", self.gen2)
        );
        out
    }

    /// The store directory of the VM's copy of a path of generation 1 named `name`.
    fn old_path(&self, name: &str) -> PathBuf {
        let p = closure(&self.gen1)
            .into_iter()
            .find(|p| p.ends_with(name) || p.contains(&format!("-{name}")))
            .unwrap_or_else(|| panic!("no {name} in generation 1"));
        self.vm.nix().join(p.trim_start_matches("/nix/"))
    }
}

fn nar_requests(reqs: &[String]) -> Vec<&String> {
    reqs.iter().filter(|r| r.starts_with("/nar/")).collect()
}

fn delta_requests(reqs: &[String]) -> Vec<&String> {
    reqs.iter().filter(|r| r.starts_with("/deltas/")).collect()
}

/// Makes a store directory of the VM writable, as a damaged disk or a hand
/// edit would leave it.
fn writable(dir: &Path) {
    ok(std::process::Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(dir));
}

#[test]
fn a_host_on_generation_1_applies_generation_2_through_deltas() {
    let u = Update::new();
    let changed = u.changed();
    assert_eq!(changed.len(), 2, "{changed:?}");
    let index = u.index();
    assert_eq!(index.deltas.len(), 2);
    for d in &index.deltas {
        assert!(changed.contains(&d.store_path.to_string()), "{d:?}");
        assert!(closure(&u.gen1).contains(&d.base.to_string()), "{d:?}");
    }
    u.pull();
    let reqs = u.server.take_requests();
    assert!(
        nar_requests(&reqs).is_empty(),
        "no full NAR for a path that had a delta: {reqs:?}"
    );
    assert_eq!(delta_requests(&reqs).len(), 2, "{reqs:?}");
    assert!(
        reqs.iter().any(|r| r.contains(".nars-from-")),
        "the index was asked for once: {reqs:?}"
    );
    let status = u.vm.status();
    assert_eq!(status["lastRunDeltaPaths"], 2, "{status}");
    assert_eq!(status["lastRunDeltaFallbacks"], 0, "{status}");
    let fetched = status["lastRunFetchedBytes"].as_u64().unwrap();
    let full: u64 = index.deltas.iter().map(|d| d.file_size).sum();
    assert_eq!(fetched, full, "only the deltas' bytes: {status}");
    // What Nix imported is what a full NAR would have given.
    ok(&mut u.vm.cmd(&["nix-store", "--verify", "--check-contents"]));

    // Nix itself still reads the cache: it knows nothing of deltas.
    let vm = Vm::new();
    let url = format!("file://{}", u.cache.display());
    let out = vm.nix_copy_from(&url, &u.keys.public_text, &u.gen2);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm.valid(&closure(&u.gen2)));
}

#[test]
fn a_damaged_or_deleted_base_falls_back_to_the_full_nar() {
    let u = Update::new();
    // etc's base has a changed file (`nix-store --verify --check-contents`
    // would fail); the old system's directory is gone from the disk.
    let etc = u.old_path("etc-foobar");
    writable(&etc);
    std::fs::write(etc.join("etc/config"), "tampered\n").unwrap();
    let out =
        u.vm.cmd(&["nix-store", "--verify", "--check-contents"])
            .output()
            .unwrap();
    assert!(!out.status.success(), "the base is damaged");
    let top = u.old_path("nixos-system-foobar-1");
    writable(&top);
    std::fs::remove_dir_all(&top).unwrap();

    let out = u.pull();
    let err = stderr(&out);
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains("delta bases not valid in the store"), "{err}");
    let reqs = u.server.take_requests();
    assert_eq!(nar_requests(&reqs).len(), 2, "{reqs:?}");
    assert!(
        delta_requests(&reqs).is_empty(),
        "no delta downloaded for a bad base: {reqs:?}"
    );
    let status = u.vm.status();
    assert_eq!(status["lastRunDeltaPaths"], 0, "{status}");
    assert_eq!(status["lastRunDeltaFallbacks"], 2, "{status}");
}

#[test]
fn a_tampered_delta_is_refused_before_it_is_decoded_and_the_full_nar_used() {
    let u = Update::new();
    let index = u.index();
    let d = &index.deltas[0];
    let file = u.cache.join(&d.url);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();

    let out = u.pull();
    let err = stderr(&out);
    assert!(
        err.contains("refusing its NAR delta before decoding it")
            && err.contains("FileSize/FileHash mismatch"),
        "{err}"
    );
    let reqs = u.server.take_requests();
    let nars = nar_requests(&reqs);
    assert_eq!(nars.len(), 1, "{reqs:?}");
    let status = u.vm.status();
    assert_eq!(status["lastRunDeltaPaths"], 1, "{status}");
    assert_eq!(status["lastRunDeltaFallbacks"], 1, "{status}");
}

/// A publisher that signs an entry whose delta is well formed and matches
/// its FileHash, but makes another path's NAR: refused on the pinned
/// NarHash, and the full NAR used.
#[test]
fn a_delta_that_decodes_to_the_wrong_nar_is_refused() {
    let u = Update::new();
    let mut index = u.index();
    assert_eq!(index.deltas.len(), 2);
    // Each entry takes the other's base and delta: both decode cleanly,
    // to the other path's NAR.
    let (a, b) = (index.deltas[0].clone(), index.deltas[1].clone());
    for (d, other) in index.deltas.iter_mut().zip([b, a]) {
        d.base = other.base;
        d.base_nar_hash = other.base_nar_hash;
        d.base_nar_size = other.base_nar_size;
        d.url = other.url;
        d.file_hash = other.file_hash;
        d.file_size = other.file_size;
    }
    u.resign(&index);

    let out = u.pull();
    let err = stderr(&out);
    assert!(err.contains("NarHash/NarSize mismatch"), "{err}");
    let reqs = u.server.take_requests();
    assert_eq!(nar_requests(&reqs).len(), 2, "{reqs:?}");
    let status = u.vm.status();
    assert_eq!(status["lastRunDeltaFallbacks"], 2, "{status}");
}

/// An index signed by another key, or replayed for another pair of
/// manifests, is refused as a whole: every path is fetched whole.
#[test]
fn an_index_that_does_not_verify_is_refused_and_full_nars_used() {
    let u = Update::new();
    let index = u.index();
    let stranger = SecretKey::generate("fleet-1").unwrap();
    std::fs::write(u.index_file(), index.sign(&stranger)).unwrap();
    let out = u.pull();
    let err = stderr(&out);
    assert!(
        err.contains("refusing the NAR-delta index")
            && err.contains("not signed by any trusted key"),
        "{err}"
    );
    let reqs = u.server.take_requests();
    assert_eq!(nar_requests(&reqs).len(), 2, "{reqs:?}");
    assert!(delta_requests(&reqs).is_empty(), "{reqs:?}");

    // Signed with the right key, but for another manifest: refused too.
    let u = Update::new();
    let mut index = u.index();
    index.manifest = Sha256Hash::digest(b"another manifest");
    u.resign(&index);
    let out = u.pull();
    let err = stderr(&out);
    assert!(err.contains("not the one asked for"), "{err}");
    let reqs = u.server.take_requests();
    assert_eq!(nar_requests(&reqs).len(), 2, "{reqs:?}");
    // The envelope is the pointer's DSSE form, under its own payload type.
    let env: pointer::Envelope =
        serde_json::from_slice(&std::fs::read(u.index_file()).unwrap()).unwrap();
    assert_eq!(env.payload_type, nardelta::PAYLOAD_TYPE);
}

/// A sealed host's deltas are sealed to whom its NARs are, its index is
/// signed and then sealed, and nothing of either generation is readable in
/// the cache; its agent rebuilds its paths from them all the same.
#[test]
fn a_sealed_hosts_deltas_are_sealed() {
    let (work, cache, keys) = scene();
    let (identity, public) = ssh_key(work.path(), "web1");
    let recipients = work.path().join("fleet.recipients");
    std::fs::write(&recipients, format!("web1 {public}\n")).unwrap();
    // Sixty packages make etc large enough that a sealed delta (with its
    // age header) is worth it.
    let build = |version| {
        Fixture {
            host: "web1",
            version,
            n: 60,
            ..Default::default()
        }
        .build()
    };
    let (gen1, gen2) = (build("sealed-secret-1"), build("sealed-secret-2"));
    let rf = ["--recipients-file", recipients.to_str().unwrap()];
    publish(&cache, "web1", &gen1, &keys, &rf);
    let server = Server::start(&cache);
    let vm = Vm::new();
    let pull = || {
        let out = vm
            .agent(&[
                "run",
                "--cache",
                &server.url,
                "--host",
                "web1",
                "--trusted-key",
                &keys.public_text,
                "--state-dir",
                "/nix/var/nixcast",
                "--allow-insecure-http",
                "--identity",
                identity.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    pull();
    let summary = stdout(&publish(&cache, "web1", &gen2, &keys, &rf));
    assert!(summary.contains("NAR deltas"), "{summary}");
    server.take_requests();
    let out = pull();
    assert!(vm.valid(&closure(&gen2)));
    let status = vm.status();
    assert!(
        status["lastRunDeltaPaths"].as_u64().unwrap() >= 1,
        "{status}\n{}",
        stderr(&out)
    );
    let reqs = server.take_requests();
    assert!(nar_requests(&reqs).is_empty(), "{reqs:?}");
    assert!(delta_requests(&reqs).is_empty(), "{reqs:?}");
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("/sealed/") && r.contains(".nars-from-")),
        "{reqs:?}"
    );
    assert!(files(&cache, "deltas").is_empty(), "no plain delta");
    assert!(
        !files(&cache, "manifests")
            .iter()
            .any(|n| n.contains(".nars-from-")),
        "no plain index"
    );
    let mut needles = vec!["sealed-secret".to_owned()];
    for top in [&gen1, &gen2] {
        for p in closure(top) {
            needles.push(p.trim_start_matches("/nix/store/")[..32].to_owned());
        }
    }
    for (file, bytes) in &crate::sealed::readable_contents(&cache) {
        for n in &needles {
            assert!(
                !crate::sealed::contains(bytes, n),
                "{} reveals {n:?}",
                file.display()
            );
        }
    }
}

fn bundle(cache: &Path, out: &Path, base: &[&str]) -> String {
    stdout(&ok(nixcast()
        .args(["bundle", "--host", "foobar", "--cache"])
        .arg(cache)
        .arg("--output")
        .arg(out)
        .args(base)))
}

fn pull_bundle(vm: &Vm, file: &Path, keys: &Keys) -> std::process::Output {
    let out = vm
        .agent(&[
            "run",
            "--bundle",
            file.to_str().unwrap(),
            "--host",
            "foobar",
            "--trusted-key",
            &keys.public_text,
            "--state-dir",
            "/nix/var/nixcast",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// `bundle --base 1` carries generation 2's new paths as deltas with their
/// index, and a host at generation 1 applies it offline.
#[test]
fn a_delta_bundle_applies_offline() {
    let (work, cache, keys) = scene();
    let (gen1, gen2) = two_generations();
    publish(&cache, "foobar", &gen1, &keys, &[]);
    let (full1, full2, update) = (
        work.path().join("full1.nixcast"),
        work.path().join("full2.nixcast"),
        work.path().join("update.nixcast"),
    );
    bundle(&cache, &full1, &[]);
    publish(&cache, "foobar", &gen2, &keys, &[]);
    bundle(&cache, &full2, &[]);
    let text = bundle(&cache, &update, &["--base", "1"]);
    assert!(
        text.contains("2 NARs of") && text.contains("(2 of them as deltas)"),
        "{text}"
    );
    let listing = stdout(&ok(std::process::Command::new("tar")
        .arg("tf")
        .arg(&update)));
    assert!(!listing.contains("nar/"), "{listing}");
    assert_eq!(listing.matches("deltas/").count(), 2, "{listing}");
    assert!(listing.contains(".nars-from-"), "{listing}");

    let vm = Vm::new();
    pull_bundle(&vm, &full1, &keys);
    pull_bundle(&vm, &update, &keys);
    assert!(vm.valid(&closure(&gen2)));
    assert_eq!(vm.switch_log().last().unwrap(), &format!("switch {gen2}"));
    assert_eq!(vm.status()["lastRunDeltaPaths"], 2);
    let size = |f: &Path| std::fs::metadata(f).unwrap().len();
    assert!(
        size(&update) < size(&full2),
        "{} vs {}",
        size(&update),
        size(&full2)
    );
}

/// gc keeps the index of a kept generation and the deltas it names, and
/// deletes those of a generation no longer kept.
#[test]
fn gc_keeps_the_deltas_of_kept_generations_only() {
    let (_work, cache, keys) = scene();
    for v in ["1", "2", "3"] {
        let top = Fixture {
            version: v,
            ..Default::default()
        }
        .build();
        publish(&cache, "foobar", &top, &keys, &[]);
    }
    let indexes: Vec<(String, Index)> = files(&cache, "manifests")
        .into_iter()
        .filter(|n| n.contains(".nars-from-"))
        .map(|n| {
            let path = cache.join("manifests").join(&n);
            (
                n,
                nardelta::decode_unverified(&std::fs::read(path).unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(indexes.len(), 2);
    let public = cache.parent().unwrap().join("fleet-1.pub");
    ok(nixcast()
        .args(["gc", "--keep", "1", "--grace", "0s", "--cache"])
        .arg(&cache)
        .arg("--trusted-key-file")
        .arg(&public));
    let current =
        pointer::decode_unverified(&std::fs::read(cache.join("hosts/foobar.json")).unwrap())
            .unwrap();
    let kept_manifest = current.manifest.sha256.to_hex();
    for (name, index) in &indexes {
        let kept = name.starts_with(&kept_manifest);
        assert_eq!(cache.join("manifests").join(name).exists(), kept, "{name}");
        for d in &index.deltas {
            assert_eq!(cache.join(&d.url).exists(), kept, "{} of {name}", d.url);
        }
    }
    assert_eq!(files(&cache, "deltas").len(), 2);
}

/// The stand-in system, and the same at version 2 (its top and `etc` change).
fn two_generations() -> (String, String) {
    let gen1 = Fixture::default().build();
    let gen2 = Fixture {
        version: "2",
        ..Default::default()
    }
    .build();
    (gen1, gen2)
}
