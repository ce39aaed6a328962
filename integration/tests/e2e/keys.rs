//! Key lists: a host configured with root keys only follows the signing
//! keys the roots hand it (rotation), refuses what a revoked key signs
//! (a leak), and walks a root rotation it slept through; lists that no
//! threshold of roots signed, expired, rolled back or planted are refused
//! and leave the host as it was.

use std::path::Path;
use std::process::Output;

use nixcast_common::keylist::{KeyList, Roots, SigningKey};
use nixcast_common::pointer::Timestamp;
use nixcast_common::{PublicKey, SecretKey};

use crate::harness::*;

fn secret(k: &Keys) -> SecretKey {
    SecretKey::parse(&std::fs::read_to_string(&k.secret).unwrap()).unwrap()
}

fn public(k: &Keys) -> PublicKey {
    PublicKey::parse(&k.public_text).unwrap()
}

fn pub_file(k: &Keys) -> std::path::PathBuf {
    k.secret.with_extension("pub")
}

/// `nixcast keys sign` with these roots signing and these signing keys.
fn keys_sign(cache: &Path, signers: &[&Keys], signing: &[&Keys], extra: &[&str]) -> Output {
    let mut cmd = nixcast();
    cmd.args(["keys", "sign", "--cache"]).arg(cache);
    for k in signers {
        cmd.arg("--root-secret-key-file").arg(&k.secret);
    }
    for k in signing {
        cmd.arg("--signing-key-file").arg(pub_file(k));
    }
    cmd.args(extra).output().unwrap()
}

/// The agent with root keys instead of a pinned signing key.
fn pull_with_roots(vm: &Vm, url: &str, roots: &[&Keys], threshold: u32) -> Output {
    pull_host_with_roots(vm, url, "foobar", roots, threshold)
}

fn pull_host_with_roots(vm: &Vm, url: &str, host: &str, roots: &[&Keys], threshold: u32) -> Output {
    let threshold = threshold.to_string();
    let mut args = vec![
        "run",
        "--cache",
        url,
        "--host",
        host,
        "--state-dir",
        "/nix/var/nixcast",
        "--allow-insecure-http",
        "--root-threshold",
        &threshold,
    ];
    for r in roots {
        args.extend(["--root-key", r.public_text.trim()]);
    }
    vm.agent(&args).output().unwrap()
}

fn build(version: &'static str) -> String {
    Fixture {
        version,
        ..Default::default()
    }
    .build()
}

#[test]
fn a_host_that_trusts_only_roots_follows_a_rotation_and_refuses_a_revoked_key() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let root = keygen(work.path(), "root-1");
    let fleet1 = keygen(work.path(), "fleet-1");
    let fleet2 = keygen(work.path(), "fleet-2");
    let vm = Vm::new();

    // Generation 1, signed by fleet-1, the only key of list 1.
    let gen1 = build("keys1");
    publish(&cache, "foobar", &gen1, &fleet1, &[]);
    let out = keys_sign(&cache, &[&root], &[&fleet1], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let server = Server::start(&cache);
    let out = pull_with_roots(&vm, &server.url, &[&root], 1);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.status()["appliedGeneration"], 1);

    // List 2 adds fleet-2, which signs generation 2.
    let out = keys_sign(&cache, &[&root], &[&fleet1, &fleet2], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gen2 = build("keys2");
    // The list names both keys: fleet-2 takes the host over without --force.
    publish(&cache, "foobar", &gen2, &fleet2, &[]);
    let out = pull_with_roots(&vm, &server.url, &[&root], 1);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.status()["appliedGeneration"], 2);
    // A key the list does not name still needs --force.
    let stranger = keygen(work.path(), "stranger");
    let out = nixcast()
        .args(["publish", "--host", "foobar", "--path", &gen2, "--cache"])
        .arg(&cache)
        .arg("--secret-key-file")
        .arg(&stranger.secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("use --force"), "{}", stderr(&out));
    // Another host, published by fleet-1 while the list still names it.
    let web = Fixture {
        host: "web",
        version: "keys-web",
        ..Default::default()
    }
    .build();
    publish(&cache, "web", &web, &fleet1, &[]);
    let web_before = Vm::new();
    let out = pull_host_with_roots(&web_before, &server.url, "web", &[&root], 1);
    assert!(out.status.success(), "{}", stderr(&out));

    // List 3 drops fleet-1. A new host for web, which has seen only list 3,
    // refuses web's pointer (fleet-1 signed it) until `keys resign`.
    let out = keys_sign(&cache, &[&root], &[&fleet2], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let web_vm = Vm::new();
    let out = pull_host_with_roots(&web_vm, &server.url, "web", &[&root], 1);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("fleet-1"), "{}", stderr(&out));
    let out = nixcast()
        .args(["keys", "resign", "--cache"])
        .arg(&cache)
        .arg("--secret-key-file")
        .arg(&fleet2.secret)
        .arg("--trusted-key-file")
        .arg(pub_file(&fleet1))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("re-signed web as generation 2"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("foobar: signed by this key already"));
    let out = pull_host_with_roots(&web_vm, &server.url, "web", &[&root], 1);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(web_vm.status()["appliedGeneration"], 2);
    assert!(web_vm.valid(&closure(&web)));
    // A host that ran web's system already takes the new generation
    // without a download or a switch.
    let switches = web_before.switch_log().len();
    server.take_requests();
    let out = pull_host_with_roots(&web_before, &server.url, "web", &[&root], 1);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(web_before.status()["appliedGeneration"], 2);
    assert_eq!(web_before.switch_log().len(), switches);
    let fetched: Vec<String> = server
        .take_requests()
        .into_iter()
        .filter(|r| r.contains("/nar/") || r.contains("/manifests/"))
        .collect();
    assert!(fetched.is_empty(), "{fetched:?}");
    // Nix given only fleet-2 reads web's closure from the cache, and no
    // narinfo of what the hosts run carries fleet-1's signature any more
    // (generation 1's own paths are nobody's now: gc's business).
    let nix = Vm::new();
    ok_output(nix.nix_copy_from(&server.url, fleet2.public_text.trim(), &web));
    for p in closure(&web).iter().chain(&closure(&gen2)) {
        let hash = &p["/nix/store/".len()..][..32];
        let text = std::fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
        assert!(!text.contains("fleet-1:"), "{text}");
        assert!(text.contains("fleet-2:"), "{text}");
    }
    // A second resign finds nothing to do.
    let out = nixcast()
        .args(["keys", "resign", "--cache"])
        .arg(&cache)
        .arg("--secret-key-file")
        .arg(&fleet2.secret)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("web: signed by this key already"));

    // Generation 3 by fleet-2 applies.
    let gen3 = build("keys3");
    publish(&cache, "foobar", &gen3, &fleet2, &[]);
    let out = pull_with_roots(&vm, &server.url, &[&root], 1);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.status()["appliedGeneration"], 3);
    // Publishing under fleet-2 signed every narinfo of the closure again,
    // those generation 1 shared too: a new host that has seen only list 3
    // imports the whole closure (Nix checks the narinfos' signatures too).
    let fresh = Vm::new();
    let out = pull_with_roots(&fresh, &server.url, &[&root], 1);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fresh.status()["appliedGeneration"], 3);
    assert!(fresh.valid(&closure(&gen3)));
    // A bundle carries the key lists: an air-gapped host walks them too.
    let file = work.path().join("gen3.tar");
    ok(nixcast()
        .args(["bundle", "--host", "foobar", "--cache"])
        .arg(&cache)
        .arg("--output")
        .arg(&file));
    let gapped = Vm::new();
    let out = gapped
        .agent(&[
            "run",
            "--bundle",
            file.to_str().unwrap(),
            "--host",
            "foobar",
            "--root-key",
            root.public_text.trim(),
            "--state-dir",
            "/nix/var/nixcast",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(gapped.status()["appliedGeneration"], 3);

    // The leak: whoever holds fleet-1 publishes generation 4.
    let gen4 = build("keys4-attacker");
    publish(&cache, "foobar", &gen4, &fleet1, &["--force"]);
    let out = pull_with_roots(&vm, &server.url, &[&root], 1);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not signed by any trusted key (signed by: fleet-1)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(vm.status()["appliedGeneration"], 3);
    assert_eq!(vm.switch_log().last().unwrap(), &format!("switch {gen3}"));
    assert!(!vm.valid(&[&gen4]));
}

/// Roots 1-3 with a threshold of 2 rotate to roots 2-4; a host that slept
/// through the rotation walks it. Lists signed by one root, by a key that
/// is no root, expired, or older than the one held are refused, and the
/// host's system and state stay as they were.
#[test]
fn a_root_rotation_is_walked_and_bad_lists_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let r: Vec<Keys> = (1..=4)
        .map(|i| keygen(work.path(), &format!("root-{i}")))
        .collect();
    let fleet1 = keygen(work.path(), "fleet-1");
    let fleet2 = keygen(work.path(), "fleet-2");
    let vm = Vm::new();
    let roots_args = |keys: &[&Keys]| -> Vec<String> {
        keys.iter()
            .flat_map(|k| {
                [
                    "--root-key-file".to_owned(),
                    pub_file(k).display().to_string(),
                ]
            })
            .collect()
    };

    let gen1 = build("rot1");
    publish(&cache, "foobar", &gen1, &fleet1, &[]);
    let mut extra = roots_args(&[&r[0], &r[1], &r[2]]);
    extra.extend(["--threshold".to_owned(), "2".to_owned()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let out = keys_sign(&cache, &[&r[0], &r[1]], &[&fleet1], &extra);
    assert!(out.status.success(), "{}", stderr(&out));
    let server = Server::start(&cache);
    let out = pull_with_roots(&vm, &server.url, &[&r[0], &r[1], &r[2]], 2);
    assert!(out.status.success(), "{}", stderr(&out));

    // Version 2 hands the roots to 2, 3 and 4: two old roots and two new sign.
    let extra = roots_args(&[&r[1], &r[2], &r[3]]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let out = keys_sign(&cache, &[&r[0], &r[1], &r[3]], &[&fleet1], &extra);
    assert!(out.status.success(), "{}", stderr(&out));
    // Version 3, by the new roots 3 and 4 only, adds fleet-2.
    let out = keys_sign(&cache, &[&r[2], &r[3]], &[&fleet1, &fleet2], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gen2 = build("rot2");
    publish(&cache, "foobar", &gen2, &fleet2, &["--force"]);
    let out = pull_with_roots(&vm, &server.url, &[&r[0], &r[1], &r[2]], 2);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.status()["appliedGeneration"], 2);
    let held = std::fs::read(vm.nix().join("var/nixcast/keys.json")).unwrap();

    // Version 4 candidates, planted as keys.json, each to be refused.
    let now = Timestamp::now();
    let list = |version: u64, expires: Timestamp| KeyList {
        version,
        issued_at: now,
        expires_at: expires,
        roots: Roots {
            threshold: 2,
            keys: vec![public(&r[1]), public(&r[2]), public(&r[3])],
        },
        signing: vec![SigningKey {
            key: public(&fleet1),
            hosts: vec![],
        }],
    };
    let year = now.plus(std::time::Duration::from_secs(365 * 86_400));
    let (s2, s3, s4, f1) = (secret(&r[1]), secret(&r[2]), secret(&r[3]), secret(&fleet1));
    let expired =
        Timestamp::from_system_time(now.system_time() + std::time::Duration::from_secs(1));
    let planted: Vec<(&str, Vec<u8>)> = vec![
        ("signed by 1 of the roots", list(4, year).sign(&[&s3])),
        ("signed by 0 of the roots", list(4, year).sign(&[&f1])),
        (
            "older than version 3",
            std::fs::read(cache.join("keys/2.json")).unwrap(),
        ),
        ("expired", list(4, expired).sign(&[&s2, &s4])),
        // A version far ahead costs no walk: refused before any request.
        (
            "more than 1000 versions past",
            list(100_000, year).sign(&[&f1]),
        ),
    ];
    let gen3 = build("rot3");
    publish(&cache, "foobar", &gen3, &fleet2, &[]);
    let good = std::fs::read(cache.join("keys.json")).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    for (why, bytes) in planted {
        std::fs::write(cache.join("keys.json"), &bytes).unwrap();
        let before = std::fs::read(vm.nix().join("var/nixcast/status.json")).unwrap();
        let out = pull_with_roots(&vm, &server.url, &[&r[0], &r[1], &r[2]], 2);
        assert_eq!(out.status.code(), Some(3), "{why}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
        assert_eq!(vm.status()["appliedGeneration"], 2, "{why}");
        assert_eq!(
            std::fs::read(vm.nix().join("var/nixcast/keys.json")).unwrap(),
            held,
            "{why}: the held key list changed"
        );
        let after = std::fs::read(vm.nix().join("var/nixcast/status.json")).unwrap();
        let floor = |b: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            (
                v["highestGeneration"].clone(),
                v["appliedGeneration"].clone(),
            )
        };
        assert_eq!(floor(&before), floor(&after), "{why}");
    }
    // The real list back: generation 3 applies.
    std::fs::write(cache.join("keys.json"), &good).unwrap();
    let out = pull_with_roots(&vm, &server.url, &[&r[0], &r[1], &r[2]], 2);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.status()["appliedGeneration"], 3);
}

/// Roots with the rest of the product: a sealed host, published to an
/// S3 bucket (moto), staged and then promoted, followed by a host that
/// trusts only the root and opens its objects with its SSH key.
#[test]
fn roots_work_with_a_sealed_host_in_a_bucket_through_a_staged_rollout() {
    use crate::s3::{s3_cmd, Moto};
    let moto = Moto::start();
    moto.public_bucket("fleet-keys");
    let work = tempfile::tempdir().unwrap();
    let root = keygen(work.path(), "root-1");
    let fleet1 = keygen(work.path(), "fleet-1");
    let (host_key, host_pub) = ssh_key(work.path(), "foobar");
    let recipients = work.path().join("fleet.recipients");
    std::fs::write(&recipients, format!("foobar {host_pub}\n")).unwrap();
    let bucket = format!(
        "s3://fleet-keys/prod?endpoint={}&region=us-east-1",
        moto.endpoint()
    );
    let url = format!("{}/fleet-keys/prod", moto.endpoint());
    let reports = work.path().join("reports");
    let report_to = reports.to_str().unwrap().to_owned();
    let (rf, secret) = (
        recipients.to_str().unwrap(),
        fleet1.secret.to_str().unwrap(),
    );
    let publish_s3 = |top: &str, extra: &[&str]| {
        let mut args = vec![
            "publish",
            "--host",
            "foobar",
            "--path",
            top,
            "--cache",
            &bucket,
            "--secret-key-file",
            secret,
            "--recipients-file",
            rf,
        ];
        args.extend_from_slice(extra);
        ok(&mut s3_cmd(&args))
    };
    let pull = |vm: &Vm| {
        vm.agent(&[
            "run",
            "--cache",
            &url,
            "--host",
            "foobar",
            "--root-key",
            root.public_text.trim(),
            "--identity",
            host_key.to_str().unwrap(),
            "--state-dir",
            "/nix/var/nixcast",
            "--allow-insecure-http",
            "--report-to",
            &report_to,
        ])
        .output()
        .unwrap()
    };

    let gen1 = build("keys-s3-1");
    publish_s3(&gen1, &[]);
    let root_secret = root.secret.to_str().unwrap();
    let fleet_pub = pub_file(&fleet1);
    ok(&mut s3_cmd(&[
        "keys",
        "sign",
        "--cache",
        &bucket,
        "--root-secret-key-file",
        root_secret,
        "--signing-key-file",
        fleet_pub.to_str().unwrap(),
    ]));
    let vm = Vm::new();
    let out = pull(&vm);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.status()["appliedGeneration"], 1);
    assert_eq!(vm.status()["pointerSealed"], true);

    // Staged, then promoted: the promoted pointer is signed by a listed key.
    let gen2 = build("keys-s3-2");
    publish_s3(&gen2, &["--stage"]);
    let out = pull(&vm);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.status()["appliedGeneration"], 1, "staged is not current");
    ok(&mut s3_cmd(&[
        "promote",
        "--cache",
        &bucket,
        "--secret-key-file",
        secret,
        "--host",
        "foobar",
    ]));
    let out = pull(&vm);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.status()["appliedGeneration"], 2, "{}", stderr(&out));
    assert!(vm.valid(&[&gen2]));
    // The host's report says which key list it holds.
    let env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reports.join("reports/foobar.json")).unwrap())
            .unwrap();
    let payload = data_encoding::BASE64
        .decode(env["payload"].as_str().unwrap().as_bytes())
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(report["keyListVersion"], 1, "{report}");

    // fleet-1 leaves the list for fleet-2, and `keys resign` signs the
    // sealed host again in the bucket: its manifest opened with fleet-1's
    // secret key file, sealed again to its recipients.
    let fleet2 = keygen(work.path(), "fleet-2");
    let fleet2_pub = pub_file(&fleet2);
    ok(&mut s3_cmd(&[
        "keys",
        "sign",
        "--cache",
        &bucket,
        "--root-secret-key-file",
        root_secret,
        "--signing-key-file",
        fleet2_pub.to_str().unwrap(),
    ]));
    let out = s3_cmd(&[
        "keys",
        "resign",
        "--cache",
        &bucket,
        "--secret-key-file",
        fleet2.secret.to_str().unwrap(),
        "--trusted-key-file",
        fleet_pub.to_str().unwrap(),
        "--identity",
        secret,
        "--recipients-file",
        rf,
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("re-signed foobar as generation 3"),
        "{}",
        stdout(&out)
    );
    let switches = vm.switch_log().len();
    let out = pull(&vm);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.status()["appliedGeneration"], 3);
    assert_eq!(
        vm.switch_log().len(),
        switches,
        "the same system: no switch"
    );
    let fresh = Vm::new();
    let out = pull(&fresh);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fresh.valid(&closure(&gen2)));
}

/// The version of the key list a host holds.
fn held_version(vm: &Vm) -> u64 {
    let bytes = std::fs::read(vm.nix().join("var/nixcast/keys.json")).unwrap();
    nixcast_common::keylist::decode_unverified(&bytes)
        .unwrap()
        .version
}

/// A poll whose pointer did not change reads no key list, until the held
/// one was last checked more than a day ago.
#[test]
fn an_unchanged_pointer_costs_no_key_list_request_until_a_day_has_passed() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let root = keygen(work.path(), "root-1");
    let fleet1 = keygen(work.path(), "fleet-1");
    let fleet2 = keygen(work.path(), "fleet-2");
    let vm = Vm::new();
    publish(&cache, "foobar", &build("recheck1"), &fleet1, &[]);
    ok_output(keys_sign(&cache, &[&root], &[&fleet1], &[]));
    let server = Server::start(&cache);
    ok_output(pull_with_roots(&vm, &server.url, &[&root], 1));
    assert_eq!(held_version(&vm), 1);

    ok_output(keys_sign(&cache, &[&root], &[&fleet1, &fleet2], &[]));
    server.take_requests();
    ok_output(pull_with_roots(&vm, &server.url, &[&root], 1));
    assert_eq!(server.take_requests(), ["/hosts/foobar.json"]);
    assert_eq!(held_version(&vm), 1);

    // Checked two days ago: this run reads the list, and holds version 2.
    let held = vm.nix().join("var/nixcast/keys.json");
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&held)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    ok_output(pull_with_roots(&vm, &server.url, &[&root], 1));
    let requests = server.take_requests();
    assert!(requests.contains(&"/keys.json".to_owned()), "{requests:?}");
    assert_eq!(held_version(&vm), 2);
    // Checked now: the next poll is one request again.
    ok_output(pull_with_roots(&vm, &server.url, &[&root], 1));
    assert_eq!(server.take_requests(), ["/hosts/foobar.json"]);
}
