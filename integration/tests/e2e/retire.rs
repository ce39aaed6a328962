//! `nixcast retire`: a tombstone in place of a host's pointer. Its agent
//! applies nothing and exits 7; `gc` frees what only it used; the next
//! publish of the others seals nothing to its key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::harness::*;

/// The retired host's exit code (README, `puller/src/main.rs`).
const RETIRED: i32 = 7;

/// Two sealed hosts, published by one command so that the paths they
/// share are sealed to both, each pulled by its own VM over HTTP.
struct Pair {
    work: tempfile::TempDir,
    cache: PathBuf,
    keys: Keys,
    recipients: PathBuf,
    web1_key: PathBuf,
    web3_key: PathBuf,
    web1: String,
    web3: String,
}

fn pair() -> Pair {
    let (work, cache, keys) = scene();
    let (web1_key, web1_pub) = ssh_key(work.path(), "web1");
    let (web3_key, web3_pub) = ssh_key(work.path(), "web3");
    let recipients = work.path().join("fleet.recipients");
    std::fs::write(
        &recipients,
        format!("# the fleet\nweb1 {web1_pub}\nweb3 {web3_pub} web3's key\n"),
    )
    .unwrap();
    let (web1, web3) = web1_and_web3("retire");
    let p = Pair {
        work,
        cache,
        keys,
        recipients,
        web1_key,
        web3_key,
        web1,
        web3,
    };
    p.publish(&[("web1", &p.web1), ("web3", &p.web3)]);
    p
}

impl Pair {
    fn publish(&self, hosts: &[(&str, &str)]) -> Output {
        let mut c = nixcast();
        c.args(["publish", "--cache"]).arg(&self.cache);
        for (host, path) in hosts {
            c.args(["--host", host, "--path", path]);
        }
        ok(c.arg("--secret-key-file")
            .arg(&self.keys.secret)
            .arg("--recipients-file")
            .arg(&self.recipients))
    }

    fn nixcast(&self, args: &[&str]) -> Output {
        nixcast()
            .args(args)
            .arg("--cache")
            .arg(&self.cache)
            .output()
            .unwrap()
    }

    fn pull(&self, vm: &Vm, url: &str, host: &str, identity: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "run",
            "--cache",
            url,
            "--host",
            host,
            "--trusted-key",
            &self.keys.public_text,
            "--state-dir",
            "/nix/var/nixcast",
            "--allow-insecure-http",
            "--identity",
            identity.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        vm.agent(&args).output().unwrap()
    }

    fn gc(&self) -> String {
        let out = self.nixcast(&[
            "gc",
            "--keep",
            "1",
            "--grace",
            "0s",
            "--trusted-key-file",
            self.public_file().to_str().unwrap(),
            "--identity",
            self.keys.secret.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    }

    fn public_file(&self) -> PathBuf {
        self.work.path().join("fleet-1.pub")
    }
}

/// The objects under `sealed/` that `identity` (an SSH private key) opens.
fn opened_by(cache: &Path, identity: &Path) -> BTreeSet<String> {
    use nixcast_common::seal;
    let ids = seal::Identity::from_file(&std::fs::read(identity).unwrap(), "key").unwrap();
    files(cache, "sealed")
        .into_iter()
        .filter(|name| {
            let bytes = std::fs::read(cache.join("sealed").join(name)).unwrap();
            seal::open_bytes(&ids, &bytes, 1 << 30).is_ok()
        })
        .collect()
}

fn exit_code(out: &Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn a_retired_host_applies_nothing_and_gc_frees_only_what_it_used() {
    let p = pair();
    let server = Server::start(&p.cache);
    let report_to = p.cache.to_str().unwrap();
    let (vm1, vm3) = (Vm::new(), Vm::new());
    let out = p.pull(&vm1, &server.url, "web1", &p.web1_key, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.pull(
        &vm3,
        &server.url,
        "web3",
        &p.web3_key,
        &["--report-to", report_to],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shared = opened_by(&p.cache, &p.web1_key)
        .intersection(&opened_by(&p.cache, &p.web3_key))
        .count();
    assert!(shared > 0, "one publish seals shared paths to both");
    let history3: Vec<String> = files(&p.cache, "hosts/web3");
    let manifest3 = nixcast_common::pointer::decode_unverified(
        &std::fs::read(p.cache.join("hosts/web3.json")).unwrap(),
    )
    .unwrap()
    .manifest
    .path;
    let reported = p.work.path().join("reported.recipients");
    std::fs::copy(&p.recipients, &reported).unwrap();

    let out = p.nixcast(&[
        "retire",
        "--host",
        "web3",
        "--secret-key-file",
        p.keys.secret.to_str().unwrap(),
        "--recipients-file",
        p.recipients.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let web1_line = std::fs::read_to_string(&reported).unwrap();
    let web1_line = web1_line.lines().nth(1).unwrap();
    assert_eq!(
        std::fs::read_to_string(&p.recipients).unwrap(),
        format!("# the fleet\n{web1_line}\n"),
        "only web3's line goes"
    );

    // The agent applies nothing, changes nothing, and says so (exit 7).
    let status_before = vm3.status();
    let out = p.pull(
        &vm3,
        &server.url,
        "web3",
        &p.web3_key,
        &["--report-to", report_to],
    );
    assert_eq!(exit_code(&out), Some(RETIRED), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("this host is retired"),
        "{}",
        stderr(&out)
    );
    assert_eq!(vm3.switch_log(), [format!("switch {}", p.web3)]);
    assert_eq!(vm3.profile_link("system").as_deref(), Some("system-1-link"));
    let status = vm3.status();
    assert_eq!(status["lastResult"], "retired");
    assert_eq!(
        status["appliedGeneration"],
        status_before["appliedGeneration"]
    );
    assert_eq!(
        status["appliedStorePath"],
        status_before["appliedStorePath"]
    );
    assert_eq!(
        status["highestGeneration"], 2,
        "the floor rose to the tombstone"
    );

    // A tombstone whose payload was changed after signing is refused like
    // a bad pointer (exit 3), and changes nothing either.
    let tombstone = std::fs::read(p.cache.join("hosts/web3.json")).unwrap();
    let text = String::from_utf8(tombstone.clone()).unwrap();
    let env: serde_json::Value = serde_json::from_str(&text).unwrap();
    let payload = env["payload"].as_str().unwrap();
    let mut body = data_encoding::BASE64.decode(payload.as_bytes()).unwrap();
    let at = body.windows(3).position(|w| w == b"\":2").unwrap();
    body[at + 2] = b'9';
    let forged = text.replace(payload, &data_encoding::BASE64.encode(&body));
    std::fs::write(p.cache.join("hosts/web3.json"), forged).unwrap();
    let out = p.pull(&vm3, &server.url, "web3", &p.web3_key, &[]);
    assert_eq!(exit_code(&out), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not signed by any trusted key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(vm3.switch_log().len(), 1);
    std::fs::write(p.cache.join("hosts/web3.json"), &tombstone).unwrap();

    // hosts lists it apart, with the report its agent made on reading the
    // tombstone (verified with the key it had); web1 never reported.
    let out = p.nixcast(&["hosts", "--recipients-file", reported.to_str().unwrap()]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("web1\tgeneration 1\t"), "{text}");
    assert!(lines[0].ends_with("\tnever reported"), "{text}");
    assert!(
        lines[1].starts_with("web3\tRETIRED at generation 2\tsince ")
            && lines[1].contains("\treport: retired at "),
        "{text}"
    );
    // On a terminal (a pty here): aligned tables with headers, the retired
    // host in its own.
    let bin = nixcast_pull_path().parent().unwrap().join("nixcast");
    let shown = ok(std::process::Command::new("script").args([
        "-qec",
        &format!("{} hosts --cache {}", bin.display(), p.cache.display()),
        "/dev/null",
    ]));
    let shown = stdout(&shown).replace('\r', "");
    let lines: Vec<&str> = shown.lines().collect();
    assert!(lines[0].starts_with("HOST   GEN   SYSTEM"), "{shown}");
    assert!(lines[1].starts_with("web1   1     sealed"), "{shown}");
    assert!(
        lines[3].starts_with("RETIRED HOST   GEN   SINCE"),
        "{shown}"
    );
    assert!(lines[4].starts_with("web3           2     "), "{shown}");
    let out = p.nixcast(&["hosts", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[1]["host"], "web3");
    assert_eq!(rows[1]["retired"], true);
    // promote and publish refuse it; publish --force is the way back.
    let out = p.nixcast(&[
        "promote",
        "--host",
        "web3",
        "--secret-key-file",
        p.keys.secret.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("web3 is retired"), "{}", stderr(&out));

    // gc: web3's history, manifest and what only it used go; web1 keeps all.
    server.take_requests();
    let before: BTreeSet<String> = files(&p.cache, "sealed").into_iter().collect();
    let only3: BTreeSet<String> = opened_by(&p.cache, &p.web3_key)
        .difference(&opened_by(&p.cache, &p.web1_key))
        .cloned()
        .collect();
    assert!(!only3.is_empty());
    p.gc();
    assert!(
        files(&p.cache, "hosts/web3").is_empty(),
        "{history3:?} stay"
    );
    assert!(!p.cache.join(&manifest3).exists());
    assert!(
        p.cache.join("hosts/web3.json").exists(),
        "the tombstone stays"
    );
    let after: BTreeSet<String> = files(&p.cache, "sealed").into_iter().collect();
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(gone, only3, "exactly what only web3 could open goes");
    let out = p.pull(&vm1, &server.url, "web1", &p.web1_key, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = Vm::new();
    let out = p.pull(&fresh, &server.url, "web1", &p.web1_key, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fresh.valid(&closure(&p.web1)));
    let out = p.pull(&vm3, &server.url, "web3", &p.web3_key, &[]);
    assert_eq!(
        exit_code(&out),
        Some(RETIRED),
        "after gc still: {}",
        stderr(&out)
    );

    // web1's next publish seals nothing to web3; after gc, nothing web3
    // could read is left at all.
    let out = stdout(&p.publish(&[("web1", &p.web1)]));
    assert!(out.contains("published web1 generation 2"), "{out}");
    let new_objects: BTreeSet<String> = files(&p.cache, "sealed")
        .into_iter()
        .filter(|n| !after.contains(n))
        .collect();
    assert!(!new_objects.is_empty());
    assert!(opened_by(&p.cache, &p.web3_key).is_disjoint(&new_objects));
    p.gc();
    assert_eq!(opened_by(&p.cache, &p.web3_key), BTreeSet::new());
    let out = p.pull(&vm1, &server.url, "web1", &p.web1_key, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = Vm::new();
    let out = p.pull(&fresh, &server.url, "web1", &p.web1_key, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A command that still names web3, with a file that still lists it:
    // web3 is refused before its closure counts for the sealing, so web1's
    // shared paths are sealed to nobody else.
    let out = nixcast()
        .args(["publish", "--cache"])
        .arg(&p.cache)
        .args([
            "--host", "web1", "--path", &p.web1, "--host", "web3", "--path", &p.web3,
        ])
        .arg("--secret-key-file")
        .arg(&p.keys.secret)
        .arg("--recipients-file")
        .arg(&reported)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("web3 is retired"), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("web1 is already at generation 2"),
        "{}",
        stdout(&out)
    );
    assert_eq!(opened_by(&p.cache, &p.web3_key), BTreeSet::new());
}

/// The same on a bucket: retire, the agent reading the bucket over HTTP
/// stops, and gc frees web3's own paths while web1 pulls on.
#[test]
fn retire_on_s3_stops_the_agent_and_gc_frees_its_paths() {
    use crate::s3::{s3_cmd, Moto};
    let moto = Moto::start();
    moto.public_bucket("retire-cache");
    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path(), "fleet-1");
    let target = format!(
        "s3://retire-cache/fleet?endpoint={}&region=us-east-1",
        moto.endpoint()
    );
    let url = format!("{}/retire-cache/fleet", moto.endpoint());
    let (web1, web3) = web1_and_web3("retire-s3");
    let secret = keys.secret.to_str().unwrap().to_owned();
    let run = |args: &[&str]| ok(&mut s3_cmd(args));
    for (host, top) in [("web1", &web1), ("web3", &web3)] {
        run(&[
            "publish",
            "--host",
            host,
            "--path",
            top,
            "--cache",
            &target,
            "--secret-key-file",
            &secret,
        ]);
    }
    let (vm1, vm3) = (Vm::new(), Vm::new());
    for (vm, host) in [(&vm1, "web1"), (&vm3, "web3")] {
        let out = vm.pull_host(&url, host, &keys, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    run(&[
        "retire",
        "--host",
        "web3",
        "--cache",
        &target,
        "--secret-key-file",
        &secret,
    ]);
    let out = vm3.pull_host(&url, "web3", &keys, &[]);
    assert_eq!(exit_code(&out), Some(RETIRED), "{}", stderr(&out));
    assert_eq!(vm3.switch_log().len(), 1);
    let out = run(&["gc", "--cache", &target, "--keep", "1", "--grace", "0s"]);
    // web3's own paths (top and etc: narinfo and NAR each), its manifest
    // and its history entry.
    let only3 = closure(&web3)
        .into_iter()
        .filter(|p| !closure(&web1).contains(p))
        .count();
    assert_eq!(only3, 2);
    assert!(
        stdout(&out).contains(&format!("freed {} files", 2 * only3 + 2)),
        "{}",
        stdout(&out)
    );
    let out = run(&["hosts", "--cache", &target]);
    assert!(
        stdout(&out).contains("web3\tRETIRED at generation 2"),
        "{}",
        stdout(&out)
    );
    let fresh = Vm::new();
    let out = fresh.pull_host(&url, "web1", &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fresh.valid(&closure(&web1)));
    let out = vm3.pull_host(&url, "web3", &keys, &[]);
    assert_eq!(exit_code(&out), Some(RETIRED), "{}", stderr(&out));
}

/// The small systems of hosts web1 and web3, built for `version`.
fn web1_and_web3(version: &'static str) -> (String, String) {
    let build = |host| {
        Fixture {
            host,
            version,
            n: 2,
            ..Default::default()
        }
        .build()
    };
    (build("web1"), build("web3"))
}
