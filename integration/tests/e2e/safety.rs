//! Hostile input is refused with a clear error, and nothing is lost: a
//! hostile cache, server or network may stop updates, never make a host run
//! or store anything unverified. Each refusal shows: its exit code and an error naming what
//! failed; nothing of the bad object in the store; the profile, the running
//! system and the accepted generation unchanged; no stray temporary files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nixcast_common::manifest::{self, Compression, Manifest};
use nixcast_common::pointer::{self, ManifestRef, Pointer, Timestamp};
use nixcast_common::{SecretKey, Sha256Hash};
use nixcast_integration::{Hostile, Rule};

use crate::harness::*;

/// A VM running generation 1 of a published host, and generation 2 built
/// (not yet published) on the trusted machine.
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
    fn new(compression: &str) -> Self {
        let work = tempfile::tempdir().unwrap();
        let cache = work.path().join("cache");
        let keys = keygen(work.path(), "fleet-1");
        let gen1 = Fixture {
            n: 2,
            version: "safe1",
            ..Default::default()
        }
        .build();
        let gen2 = Fixture {
            n: 2,
            version: "safe2",
            ..Default::default()
        }
        .build();
        publish(
            &cache,
            "foobar",
            &gen1,
            &keys,
            &["--compression", compression],
        );
        let server = Hostile::start(cache.clone());
        let vm = Vm::new();
        let w = World {
            _work: work,
            cache,
            keys,
            vm,
            server,
            gen1,
            gen2,
        };
        let out = w.pull(&[]);
        assert!(out.status.success(), "{}", stderr(&out));
        w
    }

    fn pull(&self, extra: &[&str]) -> std::process::Output {
        self.vm.pull(&self.server.url, &self.keys, extra)
    }

    /// Full NARs only: the hostile server's rules aim at them (delta.rs
    /// tests what a host does with deltas that go wrong).
    fn publish2(&self, compression: &str) {
        publish(
            &self.cache,
            "foobar",
            &self.gen2,
            &self.keys,
            &["--compression", compression, "--no-deltas"],
        );
    }

    fn secret(&self) -> SecretKey {
        SecretKey::parse(&std::fs::read_to_string(&self.keys.secret).unwrap()).unwrap()
    }

    fn pointer(&self) -> Pointer {
        let bytes = std::fs::read(self.cache.join("hosts/foobar.json")).unwrap();
        let pk = nixcast_common::PublicKey::parse(&self.keys.public_text).unwrap();
        pointer::verify(&bytes, &[pk]).unwrap().into_inner()
    }

    fn manifest(&self) -> Manifest {
        let p = self.pointer();
        Manifest::parse(&std::fs::read(self.cache.join(&p.manifest.path)).unwrap()).unwrap()
    }

    /// Writes `m` (unchecked) with each entry signed again, and a pointer to
    /// it, all with the publisher's key: what a stolen key could serve.
    fn republish_manifest(&self, m: &Manifest, change: impl FnOnce(&mut Pointer)) {
        let mut m = m.clone();
        for e in &mut m.paths {
            let fp = nixcast_common::narinfo::fingerprint(
                &e.store_path,
                &e.nar_hash,
                e.nar_size,
                &e.references,
            );
            e.sigs = vec![self.secret().sign(fp.as_bytes())];
        }
        let bytes = serde_json::to_vec_pretty(&m).unwrap();
        let mref = ManifestRef::for_bytes(&bytes);
        std::fs::write(self.cache.join(&mref.path), &bytes).unwrap();
        let mut p = self.pointer();
        p.manifest = mref;
        // A new generation each time: the agent rightly refuses the same
        // generation with other content once it has seen one.
        p.generation += 1;
        p.issued_at = Timestamp::now();
        change(&mut p);
        std::fs::write(self.cache.join("hosts/foobar.json"), p.sign(&self.secret())).unwrap();
    }

    /// The NAR URL (path on the server) of a store path in the current manifest.
    fn nar_of(&self, path: &str) -> String {
        let m = self.manifest();
        let e = m
            .paths
            .iter()
            .find(|e| e.store_path.to_string() == path)
            .unwrap();
        format!("/{}", e.url)
    }

    /// What every refusal must leave as it was.
    fn assert_unchanged(&self, out: &std::process::Output, code: i32, needle: &str) {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
        assert!(
            !self.vm.valid(&[&self.gen2]),
            "the refused system entered the store"
        );
        assert_eq!(
            self.vm.profile_link("system").as_deref(),
            Some("system-1-link")
        );
        assert_eq!(self.vm.switch_log(), [format!("switch {}", self.gen1)]);
        let st = self.vm.status();
        assert_eq!(st["appliedGeneration"], 1);
        assert!(stray_files(&self.vm.nix().join("var/nixcast")).is_empty());
    }
}

fn stray_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(stray_files(&p));
        } else if e.file_name().to_string_lossy().starts_with('.') {
            out.push(p);
        }
    }
    out
}

fn envelope(p: &Pointer, key: &SecretKey) -> Vec<u8> {
    p.sign(key)
}

#[test]
fn hostile_pointers_are_refused() {
    let w = World::new("xz");
    w.publish2("xz");
    let good = w.pointer();
    let key = w.secret();
    let other = SecretKey::generate("fleet-1").unwrap();
    let env: pointer::Envelope =
        serde_json::from_slice(&std::fs::read(w.cache.join("hosts/foobar.json")).unwrap()).unwrap();
    let with = |f: &dyn Fn(&mut Pointer)| {
        let mut p = good.clone();
        f(&mut p);
        envelope(&p, &key)
    };
    let mut unsigned = env.clone();
    unsigned.signatures.clear();
    let mut swapped = env.clone();
    let mut evil = good.clone();
    evil.store_path = Some(w.gen1.parse().unwrap());
    swapped.payload = data_encoding_b64(&serde_json::to_vec(&evil).unwrap());
    let past =
        Timestamp::from_system_time(std::time::SystemTime::now() - Duration::from_secs(2 * 86400));
    let bad_path = String::from_utf8(serde_json::to_vec(&good).unwrap())
        .unwrap()
        .replace("/nix/store/", "/nix/store/e");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unsigned",
            serde_json::to_vec(&unsigned).unwrap(),
            "no signatures",
        ),
        (
            "untrusted key",
            envelope(&good, &other),
            "not signed by any trusted key",
        ),
        (
            "payload changed after signing",
            serde_json::to_vec(&swapped).unwrap(),
            "not signed by any trusted key",
        ),
        (
            "another host",
            with(&|p| p.host = "laptop".into()),
            "for host \"laptop\"",
        ),
        (
            "another system",
            with(&|p| p.system = "aarch64-linux".into()),
            "for system \"aarch64-linux\"",
        ),
        (
            "expired",
            with(&|p| {
                p.issued_at = past;
                p.expires_at = Some(past.plus(Duration::from_secs(3600)));
            }),
            "expired",
        ),
        (
            "issued before the last accepted",
            with(&|p| {
                p.issued_at = past;
                p.expires_at = None;
            }),
            "before the last accepted",
        ),
        ("rollback", with(&|p| p.generation = 0), "generation"),
        ("too large", vec![b' '; 100 << 10], "more than"),
        (
            "malformed",
            b"{\"payloadType\": ".to_vec(),
            "malformed pointer envelope",
        ),
        (
            "duplicate keys",
            {
                let s = String::from_utf8(serde_json::to_vec(&env).unwrap()).unwrap();
                s.replacen("{", "{\"payload\":\"\",", 1).into_bytes()
            },
            "malformed pointer envelope",
        ),
        (
            "invalid store path",
            sign_raw(&key, bad_path.as_bytes()),
            "malformed pointer payload",
        ),
    ];
    for (what, bytes, needle) in cases {
        w.server.set("/hosts/foobar.json", Rule::Bytes(bytes));
        let out = w.pull(&[]);
        eprintln!("case {what}");
        w.assert_unchanged(&out, 3, needle);
        assert_eq!(w.vm.status()["lastResult"], "refused", "{what}");
    }
}

fn data_encoding_b64(b: &[u8]) -> String {
    // The envelope's payload is standard base64 (DSSE).
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// An envelope over arbitrary payload bytes, validly signed.
fn sign_raw(key: &SecretKey, body: &[u8]) -> Vec<u8> {
    let sig = key.sign(&pointer::pae(pointer::PAYLOAD_TYPE, body));
    let env = pointer::Envelope {
        payload_type: pointer::PAYLOAD_TYPE.into(),
        payload: data_encoding_b64(body),
        signatures: vec![pointer::EnvelopeSignature {
            keyid: key.name().into(),
            sig: data_encoding_b64(sig.bytes()),
        }],
    };
    serde_json::to_vec(&env).unwrap()
}

#[test]
fn replayed_and_equivocating_pointers_are_refused_after_an_update() {
    let w = World::new("zstd");
    let old = std::fs::read(w.cache.join("hosts/foobar/1.json")).unwrap();
    w.publish2("zstd");
    let out = w.pull(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.vm.status()["appliedGeneration"], 2);

    // An old, validly signed pointer: a rollback attack.
    w.server.set("/hosts/foobar.json", Rule::Bytes(old));
    let out = w.pull(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lower than the highest accepted (2)"),
        "{}",
        stderr(&out)
    );
    // Generation 2 again, signed, but with other content.
    let mut p = w.pointer();
    p.issued_at = p.issued_at.plus(Duration::from_secs(1));
    w.server
        .set("/hosts/foobar.json", Rule::Bytes(p.sign(&w.secret())));
    let out = w.pull(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("other content"), "{}", stderr(&out));
    assert_eq!(
        w.vm.profile_link("system").as_deref(),
        Some("system-2-link")
    );
    assert_eq!(w.vm.status()["highestGeneration"], 2);
}

#[test]
fn hostile_manifests_are_refused() {
    let w = World::new("xz");
    w.publish2("xz");
    let good = w.manifest();
    let top: nixcast_common::StorePath = w.gen2.parse().unwrap();
    type Edit = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "not closed",
            Box::new(|m: &mut Manifest| {
                let i = m
                    .paths
                    .iter()
                    .position(|e| e.store_path.name() == "base-lib")
                    .unwrap();
                m.paths.remove(i);
            }),
            "not closed",
        ),
        (
            "duplicate entry",
            Box::new(|m: &mut Manifest| {
                let e = m.paths[0].clone();
                m.paths.insert(0, e);
            }),
            "not sorted and unique",
        ),
        (
            "absolute URL",
            Box::new(|m: &mut Manifest| m.paths[0].url = "http://169.254.169.254/latest".into()),
            "is not nar/",
        ),
        (
            "dot-dot URL",
            Box::new(|m: &mut Manifest| m.paths[0].url = "nar/../hosts/foobar.json".into()),
            "is not nar/",
        ),
        (
            "another top",
            Box::new(move |m: &mut Manifest| m.store_path = m.paths[0].store_path.clone()),
            "the pointer names",
        ),
    ];
    let _ = top;
    for (what, edit, needle) in cases {
        let mut m = good.clone();
        edit(&mut m);
        w.republish_manifest(&m, |_| {});
        eprintln!("case {what}");
        let out = w.pull(&[]);
        w.assert_unchanged(&out, 3, needle);
    }
    // Bytes that do not match the pinned sha256 and size.
    w.republish_manifest(&good, |_| {});
    let path = format!("/{}", w.pointer().manifest.path);
    let mut bytes = std::fs::read(w.cache.join(&path[1..])).unwrap();
    bytes[10] ^= 1;
    w.server.set(&path, Rule::Bytes(bytes));
    let out = w.pull(&[]);
    w.assert_unchanged(&out, 3, "expected");
    // Compression outside the allowlist: the JSON does not even parse.
    let json = String::from_utf8(good.to_json())
        .unwrap()
        .replacen("\"xz\"", "\"bzip2\"", 1);
    w.server.set(&path, Rule::Bytes(json.into_bytes()));
    let out = w.pull(&[]);
    w.assert_unchanged(&out, 3, "manifest");
    let _ = (
        Compression::Xz,
        manifest::MAX_PATHS,
        Sha256Hash::digest(b""),
    );
}

#[test]
fn hostile_nar_transfers_are_refused() {
    let w = World::new("xz");
    w.publish2("xz");
    let etc = closure(&w.gen2)
        .into_iter()
        .find(|p| p.contains("-etc-foobar"))
        .unwrap();
    let url = w.nar_of(&etc);
    let real = std::fs::read(w.cache.join(&url[1..])).unwrap();
    let mut flipped = real.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let other_nar = std::fs::read(w.cache.join(&w.nar_of(&w.gen2)[1..])).unwrap();
    let cases: Vec<(&str, Rule, i32, &str)> = vec![
        ("flipped byte", Rule::Bytes(flipped), 3, "refusing"),
        ("other valid file", Rule::Bytes(other_nar), 3, "refusing"),
        ("endless", Rule::Endless, 3, "more bytes than the FileSize"),
        (
            "truncated",
            Rule::Truncate(real.len() / 2),
            4,
            "fetch failed",
        ),
        ("stalled", Rule::Stall(10), 4, "fetch failed"),
        ("404", Rule::Status(404), 4, "not found"),
        (
            "redirect elsewhere",
            Rule::Redirect(format!("http://127.0.0.2:1{url}")),
            4,
            "another origin",
        ),
    ];
    for (what, rule, code, needle) in cases {
        w.server.set(&url, rule);
        eprintln!("case {what}");
        let out = w.pull(&["--stall-timeout", "1s"]);
        w.assert_unchanged(&out, code, needle);
        assert!(
            stderr(&out).contains(&etc),
            "{what}: the error names the store path: {}",
            stderr(&out)
        );
    }
    // Once the server behaves, the next run finishes.
    w.server.clear();
    let out = w.pull(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        w.vm.profile_link("system-2-link").as_deref(),
        Some(w.gen2.as_str())
    );
}

/// NAR bytes built token by token (each token a length-prefixed string padded
/// to 8 bytes, as `nix-store --dump` writes them), to forge hostile archives.
#[derive(Default)]
struct NarBytes(Vec<u8>);

impl NarBytes {
    fn s(mut self, t: &[u8]) -> Self {
        self.0.extend_from_slice(&(t.len() as u64).to_le_bytes());
        self.0.extend_from_slice(t);
        self.0.resize(self.0.len().div_ceil(8) * 8, 0);
        self
    }
    fn start() -> Self {
        Self::default().s(b"nix-archive-1")
    }
    fn file(self, c: &[u8]) -> Self {
        self.s(b"(")
            .s(b"type")
            .s(b"regular")
            .s(b"contents")
            .s(c)
            .s(b")")
    }
    fn dir(self) -> Self {
        self.s(b"(").s(b"type").s(b"directory")
    }
    fn entry(self, name: &[u8]) -> Self {
        self.s(b"entry").s(b"(").s(b"name").s(name).s(b"node")
    }
    fn dir_of(names: &[&[u8]]) -> Self {
        let mut n = Self::start().dir();
        for name in names {
            n = n.entry(name).file(b"x").s(b")");
        }
        n.s(b")")
    }
}

impl World {
    /// Replaces the NAR of `path` by `file` (stored as-is, under its hash),
    /// with hashes and sizes that match it, in a newly signed generation:
    /// what a stolen key or a hostile publisher could serve.
    fn forge(&self, path: &str, file: &[u8], nar: &[u8], compression: Compression) {
        let file_hash = Sha256Hash::digest(file);
        let url = manifest::nar_url(&file_hash, compression);
        std::fs::write(self.cache.join(&url), file).unwrap();
        let mut m = self.manifest();
        let e = m
            .paths
            .iter_mut()
            .find(|e| e.store_path.to_string() == path)
            .unwrap();
        e.url = url;
        e.compression = compression;
        e.file_hash = file_hash;
        e.file_size = file.len() as u64;
        e.nar_hash = Sha256Hash::digest(nar);
        e.nar_size = nar.len() as u64;
        self.republish_manifest(&m, |_| {});
    }

    fn etc_of_gen2(&self) -> String {
        closure(&self.gen2)
            .into_iter()
            .find(|p| p.contains("-etc-foobar"))
            .unwrap()
    }
}

#[test]
fn hostile_nar_contents_are_refused_even_with_matching_signed_hashes() {
    let w = World::new("xz");
    w.publish2("xz");
    let etc = w.etc_of_gen2();
    let deep = {
        let mut n = NarBytes::start();
        for _ in 0..70 {
            n = n.dir().entry(b"d");
        }
        n = n.file(b"");
        for _ in 0..70 {
            n = n.s(b")").s(b")");
        }
        n
    };
    let link = |t: &[u8]| {
        NarBytes::start()
            .s(b"(")
            .s(b"type")
            .s(b"symlink")
            .s(b"target")
            .s(t)
            .s(b")")
    };
    let mut padded = NarBytes::start().file(b"abc").0;
    let at = padded.len() - 17;
    padded[at] = 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot name", NarBytes::dir_of(&[b".."]).0),
        ("slash in name", NarBytes::dir_of(&[b"a/b"]).0),
        ("dot name", NarBytes::dir_of(&[b"."]).0),
        ("empty name", NarBytes::dir_of(&[b""]).0),
        ("NUL in name", NarBytes::dir_of(&[b"a\0b"]).0),
        ("unsorted entries", NarBytes::dir_of(&[b"b", b"a"]).0),
        ("duplicate entries", NarBytes::dir_of(&[b"a", b"a"]).0),
        ("too deep", deep.0),
        ("oversized name", NarBytes::dir_of(&[&[b'n'; 256]]).0),
        ("oversized symlink target", link(&[b't'; 4096]).0),
        ("non-zero padding", padded),
        (
            "bad executable marker",
            NarBytes::start()
                .s(b"(")
                .s(b"type")
                .s(b"regular")
                .s(b"executable")
                .s(b"1")
                .s(b"contents")
                .s(b"")
                .s(b")")
                .0,
        ),
    ];
    for (what, nar) in cases {
        w.forge(&etc, &nar, &nar, Compression::None);
        eprintln!("case {what}");
        let out = w.pull(&[]);
        w.assert_unchanged(&out, 3, "refusing");
        assert!(stderr(&out).contains(&etc), "{what}: {}", stderr(&out));
        assert!(
            !w.vm.valid(&[&etc]),
            "{what}: the hostile path was imported"
        );
    }
}

#[test]
fn bombs_and_trailing_data_are_refused() {
    let w = World::new("xz");
    w.publish2("xz");
    let etc = w.etc_of_gen2();
    let nar = ok(std::process::Command::new("nix-store").args(["--dump", &etc])).stdout;
    let xz = |args: &[&str], input: &[u8]| {
        let mut c = std::process::Command::new("xz")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(input).unwrap();
        c.wait_with_output().unwrap().stdout
    };

    // A decompression bomb: the signed NarSize is smaller than what the file unpacks to.
    let mut m = w.manifest();
    m.paths
        .iter_mut()
        .find(|e| e.store_path.to_string() == etc)
        .unwrap()
        .nar_size -= 8;
    w.republish_manifest(&m, |_| {});
    let out = w.pull(&[]);
    w.assert_unchanged(&out, 3, "more than the NarSize");

    // An xz memory bomb: a 1 GiB dictionary, beyond the decoder's memory limit.
    let bomb = xz(&["-c", "--lzma2=preset=0,dict=1GiB"], &nar);
    w.forge(&etc, &bomb, &nar, Compression::Xz);
    let out = w.pull(&[]);
    w.assert_unchanged(&out, 3, "refusing");

    // Trailing data after the xz stream, even when FileSize and FileHash count it.
    let mut trailing = xz(&["-c"], &nar);
    trailing.extend_from_slice(b"trailing garbage");
    w.forge(&etc, &trailing, &nar, Compression::Xz);
    let out = w.pull(&[]);
    w.assert_unchanged(&out, 3, "trailing data");

    // The same NAR, well formed, goes through.
    w.forge(&etc, &xz(&["-c"], &nar), &nar, Compression::Xz);
    let out = w.pull(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_path_that_is_not_a_system_is_refused_before_the_profile() {
    let w = World::new("zstd");
    let lib = closure(&w.gen1)
        .into_iter()
        .find(|p| p.contains("-base-lib"))
        .unwrap();
    publish(&w.cache, "foobar", &lib, &w.keys, &[]);
    let out = w.pull(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a NixOS system"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        w.vm.profile_link("system").as_deref(),
        Some("system-1-link")
    );
    assert!(w.vm.profile_link("system-2-link").is_none());
    assert_eq!(w.vm.switch_log().len(), 1);
}

#[test]
fn a_second_run_is_locked_out_and_a_killed_run_resumes_without_refetching() {
    let w = World::new("xz");
    w.publish2("xz");
    let etc = w.etc_of_gen2();
    let etc_url = w.nar_of(&etc);
    let top_url = w.nar_of(&w.gen2);
    w.server.set(&etc_url, Rule::Stall(0));
    w.server.take_requests();
    let url = w.server.url.clone();
    let mut first =
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
            "--jobs",
            "2",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until the top's NAR is verified and staged while etc's stalls.
    let staged = w.vm.nix().join("var/nixcast/staging/nar");
    let mut waited = 0;
    while staged_nars(&staged) < 1 {
        assert!(waited < 300, "the first run staged nothing");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }

    let out = w.pull(&[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("lock"), "{}", stderr(&out));

    // kill -9 in the middle of the download.
    first.kill().unwrap();
    first.wait().unwrap();
    w.server.clear();
    w.server.take_requests();
    let out = w.pull(&["--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reqs = w.server.take_requests();
    assert!(reqs.contains(&etc_url), "{reqs:?}");
    assert!(
        !reqs.contains(&top_url),
        "a verified NAR was fetched again: {reqs:?}"
    );
    assert_eq!(
        w.vm.profile_link("system-2-link").as_deref(),
        Some(w.gen2.as_str())
    );
    assert!(stray_files(&w.vm.nix().join("var/nixcast")).is_empty());
}

fn staged_nars(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".nar"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_damaged_state_file_stops_the_agent_and_is_kept() {
    let w = World::new("zstd");
    w.publish2("zstd");
    let state = w.vm.nix().join("var/nixcast/status.json");
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let out = w.pull(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("delete it"),
        "says how to recover: {}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&state).unwrap(), &bytes[..bytes.len() / 2]);
    assert!(!w.vm.valid(&[&w.gen2]));
}

#[test]
fn the_agents_credentials_reach_none_of_its_children() {
    let w = World::new("xz");
    w.publish2("xz");
    let seen = w._work.path().join("env");
    let check = format!("env > {}", seen.display());
    let out = w.vm.pull_after(
        "export AWS_SECRET_ACCESS_KEY=hunter2 AWS_ACCESS_KEY_ID=AKIAEXAMPLE \
         CREDENTIALS_DIRECTORY=/run/credentials/nixcast-pull.service KEEP_ME=1",
        &w.server.url,
        &w.keys,
        &["--health-check", &check],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(env.contains("KEEP_ME=1"), "{env}");
    for secret in ["hunter2", "AKIAEXAMPLE", "CREDENTIALS_DIRECTORY"] {
        assert!(!env.contains(secret), "{secret} reached a health check");
    }
}

#[test]
fn a_failing_health_check_rolls_back_and_rollback_by_hand_works() {
    let w = World::new("xz");
    w.publish2("xz");
    let out = w.pull(&["--health-check", "true", "--health-check", "exit 3"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("health check \"exit 3\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        w.vm.profile_link("system").as_deref(),
        Some("system-1-link")
    );
    assert_eq!(w.vm.status()["badGenerations"], serde_json::json!([2]));

    // A third generation passes its check; then the operator rolls back by hand.
    let gen3 = Fixture {
        n: 2,
        version: "safe3",
        ..Default::default()
    }
    .build();
    publish(&w.cache, "foobar", &gen3, &w.keys, &[]);
    let out = w.pull(&["--health-check", "test -e /nix/store"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.vm.status()["appliedGeneration"], 3);
    w.vm.agent(&["rollback", "--state-dir", "/nix/var/nixcast"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        w.vm.switch_log().last().unwrap(),
        &format!("switch {}", w.gen1)
    );
    let st = w.vm.status();
    assert_eq!(st["lastResult"], "rolled-back");
    assert_eq!(st["badGenerations"], serde_json::json!([2, 3]));
    // The rolled-back generation is not applied again by the next run.
    let out = w.pull(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        w.vm.switch_log().last().unwrap(),
        &format!("switch {}", w.gen1)
    );
}

/// Imports overlap the downloads: when one NAR cannot be had, every path
/// that was verified and whose references are in the store is imported (with
/// the publisher's signature), nothing else is, and the next run fetches only
/// what is still missing.
#[test]
fn a_failed_pull_keeps_verified_paths_and_the_next_run_fetches_only_the_rest() {
    let w = World::new("zstd");
    w.publish2("zstd");
    let top_url = w.nar_of(&w.gen2);
    w.server.set(&top_url, Rule::Status(404));
    let vm = Vm::new();
    w.server.take_requests();
    let out = vm.pull(&w.server.url, &w.keys, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains(&w.gen2), "{}", stderr(&out));
    let below: Vec<String> = closure(&w.gen2)
        .into_iter()
        .filter(|p| *p != w.gen2)
        .collect();
    assert!(below.len() > 3, "{below:?}");
    assert!(vm.valid(&below), "paths below the top were not imported");
    assert!(!vm.valid(&[&w.gen2]));
    let info = stdout(&ok(&mut vm.cmd(&[
        "nix",
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--sigs",
        &below[0],
    ])));
    assert!(info.contains("fleet-1:"), "no publisher signature: {info}");
    assert!(vm.profile_link("system").is_none());
    assert!(vm.switch_log().is_empty());

    w.server.clear();
    w.server.take_requests();
    let out = vm.pull(&w.server.url, &w.keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reqs: Vec<String> = w
        .server
        .take_requests()
        .into_iter()
        .filter(|r| r.starts_with("/nar/"))
        .collect();
    assert_eq!(reqs, [top_url]);
    assert_eq!(vm.switch_log(), [format!("switch {}", w.gen2)]);
}
