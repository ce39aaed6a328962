//! The canary gate and the reports it reads, attacked (issue #29): replayed
//! reports, reports whose times lie, a canary that is not running the
//! release promoted, text planted in `reports/`, and history entries
//! planted for `gc`. Reports are made here with `nixcast_common::report`
//! and the hosts' keys (the agent's own reports are in `fleet.rs`).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use nixcast_common::pointer::{self, Timestamp};
use nixcast_common::report::{Failure, Outcome, Report};
use nixcast_common::seal::{Identity, Recipient};
use nixcast_common::SecretKey;

use crate::fleet::{hosts_json, pointer_generation, promote, put, report, row, ssh_keygen, SshKey};
use crate::harness::*;

/// A cache with `canary` and `web` at generation 1 (one release), their
/// SSH keys and the recipients file listing them.
struct Fleet {
    _work: tempfile::TempDir,
    cache: PathBuf,
    keys: Keys,
    canary: SshKey,
    web: SshKey,
    file: PathBuf,
}

fn build(host: &'static str, version: &'static str) -> String {
    Fixture {
        host,
        version,
        n: 1,
        ..Default::default()
    }
    .build()
}

impl Fleet {
    fn new(tag: &'static str) -> Self {
        let (work, cache, keys) = scene();
        let canary = ssh_keygen(work.path(), "canary");
        let web = ssh_keygen(work.path(), "web");
        let file = work.path().join("fleet");
        std::fs::write(
            &file,
            format!("canary {}\nweb {}\n", canary.public, web.public),
        )
        .unwrap();
        let f = Fleet {
            _work: work,
            cache,
            keys,
            canary,
            web,
            file,
        };
        f.release(
            &[("canary", build("canary", tag)), ("web", build("web", tag))],
            false,
        );
        f
    }

    /// Publishes `tops` in one command: one release.
    fn release(&self, tops: &[(&str, String)], stage: bool) -> Output {
        let mut c = nixcast();
        c.args(["publish", "--cache"])
            .arg(&self.cache)
            .arg("--secret-key-file")
            .arg(&self.keys.secret);
        for (host, top) in tops {
            c.args(["--host", host, "--path", top]);
        }
        if stage {
            c.arg("--stage");
        }
        ok(&mut c)
    }

    fn secret(&self) -> SecretKey {
        SecretKey::parse(&std::fs::read_to_string(&self.keys.secret).unwrap()).unwrap()
    }

    /// The publisher's key as an operator's age recipient.
    fn operator(&self) -> Recipient {
        Identity::from_file(&std::fs::read(&self.keys.secret).unwrap(), "k").unwrap()[0].recipient()
    }

    fn plant(&self, host: &str, bytes: &[u8]) {
        let dir = self.cache.join("reports");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{host}.json")), bytes).unwrap();
    }

    /// `promote --host web --after canary` with the publisher's key as identity.
    fn gated(&self, healthy_for: &str) -> Output {
        let secret = self.keys.secret.to_str().unwrap();
        let args = [
            "--host",
            "web",
            "--after",
            "canary",
            "--healthy-for",
            healthy_for,
            "--identity",
            secret,
        ];
        promote(&self.cache, &self.keys, &self.file, &args)
            .output()
            .unwrap()
    }

    fn refused(&self, healthy_for: &str, why: &str) {
        let out = self.gated(healthy_for);
        assert!(!out.status.success(), "promoted: {}", stdout(&out));
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }
}

/// canary's report of applying `generation` now, with counter `seq`.
fn canary_report(generation: u64, seq: u64) -> Report {
    let mut r = report("canary", generation, Timestamp::now());
    r.seq = Some(seq);
    r
}

fn failed(mut r: Report) -> Report {
    r.outcome = Outcome::Failed;
    r.error = Some(Failure {
        kind: "activation-failed".into(),
        message: "health check failed".into(),
    });
    r
}

#[test]
fn a_replayed_report_neither_replaces_a_later_one_nor_passes_the_gate() {
    let f = Fleet::new("replay1");
    f.release(
        &[
            ("canary", build("canary", "replay2")),
            ("web", build("web", "replay2")),
        ],
        true,
    );
    ok(&mut promote(
        &f.cache,
        &f.keys,
        &f.file,
        &["--host", "canary"],
    ));
    let server = Server::start_with(
        &f.cache,
        &[
            "--accept-reports".as_ref(),
            "--recipients-file".as_ref(),
            f.file.as_os_str(),
        ],
    );
    let stored = f.cache.join("reports/canary.json");
    let key = f.canary.host_key();
    for (sealed, seq) in [(false, 10), (true, 20)] {
        let to = if sealed { vec![f.operator()] } else { vec![] };
        // "ok", then "failed" in the same second: a later counter.
        let ok_report = canary_report(2, seq);
        let mut failed_report = failed(ok_report.clone());
        failed_report.seq = Some(seq + 1);
        let ok_bytes = ok_report.sign(&key, &to).unwrap();
        let failed_bytes = failed_report.sign(&key, &to).unwrap();
        assert_eq!(put(&server.url, "/reports/canary.json", &ok_bytes), 204);
        let out = f.gated("0s");
        assert!(out.status.success(), "sealed {sealed}: {}", stderr(&out));
        assert_eq!(put(&server.url, "/reports/canary.json", &failed_bytes), 204);
        // Anyone who read the "ok" report PUTs it back.
        assert_eq!(
            put(&server.url, "/reports/canary.json", &ok_bytes),
            409,
            "sealed {sealed}"
        );
        assert_eq!(std::fs::read(&stored).unwrap(), failed_bytes);
        f.refused(
            "0s",
            "canary canary: its last run failed (activation-failed",
        );
        // Undo web's promotion for the next round.
        let web1 = f.cache.join("hosts/web/1.json");
        std::fs::copy(web1, f.cache.join("hosts/web.json")).unwrap();
    }
}

#[test]
fn report_times_are_bounded_and_what_is_refused_is_shown_escaped() {
    let f = Fleet::new("times1");
    let key = f.canary.host_key();
    let problem = |host: &str| -> String {
        let rows = hosts_json(&f.cache, &f.keys, &f.file);
        let r = row(&rows, host);
        assert_eq!(r["report"], serde_json::Value::Null, "{r}");
        assert_eq!((&r["failed"], &r["stale"]), (&false.into(), &false.into()));
        r["reportProblem"].as_str().unwrap().to_owned()
    };
    // Made a day ahead (a VM booted with a wrong clock): not believed.
    let mut future = canary_report(1, 1);
    future.at = Timestamp::now().plus(Duration::from_secs(86_400));
    f.plant("canary", &future.sign(&key, &[]).unwrap());
    assert!(
        problem("canary").contains("ahead of this machine's clock"),
        "{}",
        problem("canary")
    );
    f.refused("0s", "its times are not believed: it was made at");
    // Applied an hour before its pointer was issued.
    let issued =
        pointer::decode_unverified(&std::fs::read(f.cache.join("hosts/canary.json")).unwrap())
            .unwrap()
            .issued_at;
    let mut early = canary_report(1, 2);
    early.applied_at = Some(Timestamp::from_system_time(
        issued.system_time() - Duration::from_secs(3600),
    ));
    f.plant("canary", &early.sign(&key, &[]).unwrap());
    assert!(problem("canary").contains("before its pointer was issued"));
    // An interval that would keep it from ever looking stale.
    let mut endless = canary_report(1, 3);
    endless.interval = u64::MAX;
    f.plant("canary", &endless.sign(&key, &[]).unwrap());
    assert!(problem("canary").contains("interval"));
    // The same, sealed: believed only once opened and checked.
    f.plant("canary", &future.sign(&key, &[f.operator()]).unwrap());
    let rows: serde_json::Value = serde_json::from_slice(
        &ok(nixcast()
            .args(["hosts", "--json", "--cache"])
            .arg(&f.cache)
            .arg("--recipients-file")
            .arg(&f.file)
            .arg("--identity")
            .arg(&f.keys.secret))
        .stdout,
    )
    .unwrap();
    let problem = row(&rows, "canary")["reportProblem"].to_string();
    assert!(
        problem.contains("ahead of this machine's clock"),
        "{problem}"
    );

    // An unsigned file planted in reports/, whose key is a terminal escape
    // and a direction override (serde quotes the key in its error).
    f.plant("canary", br#"{"\u001b]0;owned\u0007\u202e": 1}"#);
    let out = ok(nixcast()
        .args(["hosts", "--cache"])
        .arg(&f.cache)
        .arg("--recipients-file")
        .arg(&f.file));
    let text = stdout(&out);
    assert!(text.contains("report NOT TRUSTED"), "{text}");
    assert!(text.contains("\\u{1b}]0;owned"), "{text}");
    let out = f.gated("0s");
    for shown in [stdout(&out), stderr(&out), text] {
        assert!(!shown.contains(['\x1b', '\x07', '\u{202e}']), "{shown:?}");
    }
    // A verified report's lastFailure, in --json: escaped and cut.
    let mut web = report("web", 1, Timestamp::now());
    web.seq = Some(1);
    web.last_failure = Some(nixcast_common::report::LastFailure {
        at: Timestamp::now(),
        generation: Some(1),
        kind: "switch\u{202e}-failed".into(),
        message: format!("\x1b[2J{}", "x".repeat(4000)),
    });
    f.plant("web", &web.sign(&f.web.host_key(), &[]).unwrap());
    let rows = hosts_json(&f.cache, &f.keys, &f.file);
    let last = &row(&rows, "web")["report"]["lastFailure"];
    let message = last["message"].as_str().unwrap();
    assert!(message.starts_with("\\u{1b}[2J"), "{message}");
    assert!(message.len() < 300, "{} characters", message.len());
    assert!(
        !last["kind"].as_str().unwrap().contains('\u{202e}'),
        "{last}"
    );

    // A planted pointer: `hosts` stops on it, and says why escaped.
    std::fs::write(
        f.cache.join("hosts/evil.json"),
        br#"{"\u001b[2J\u202e": 1}"#,
    )
    .unwrap();
    let out = nixcast()
        .args(["hosts", "--cache"])
        .arg(&f.cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\\u{1b}[2J"), "{err}");
    assert!(!err.contains(['\x1b', '\u{202e}']), "{err:?}");
}

#[test]
fn the_gate_wants_the_canary_running_the_very_release_promoted() {
    let f = Fleet::new("release1");
    let key = f.canary.host_key();
    // canary's build failed in the release: web alone has generation 2.
    // (A release is one command, its time in whole seconds: the next
    // command must come a second later.)
    std::thread::sleep(Duration::from_millis(1100));
    f.release(&[("web", build("web", "release2"))], true);
    f.plant("canary", &canary_report(1, 1).sign(&key, &[]).unwrap());
    f.refused(
        "0s",
        "canary canary: it runs generation 1 of the release published at",
    );
    assert_eq!(pointer_generation(&f.cache, "web"), 1);

    // The next release has both; the canary installed its generation for
    // the next boot (a new kernel) and waits for its reboot window.
    f.release(
        &[
            ("canary", build("canary", "release3")),
            ("web", build("web", "release3")),
        ],
        true,
    );
    ok(&mut promote(
        &f.cache,
        &f.keys,
        &f.file,
        &["--host", "canary"],
    ));
    let mut pending = canary_report(2, 2);
    pending.reboot_pending = Some("a new kernel (in the window 02:00-05:00)".into());
    f.plant("canary", &pending.sign(&key, &[]).unwrap());
    f.refused("0s", "waits to reboot");
    assert_eq!(pointer_generation(&f.cache, "web"), 1);
    // Rebooted into it and healthy: web gets the same release's generation.
    f.plant("canary", &canary_report(2, 3).sign(&key, &[]).unwrap());
    let out = f.gated("0s");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("promoted web to generation 3 (was 1)"),
        "{}",
        stdout(&out)
    );

    // A clock behind the staged entry's issue time (set by a publisher
    // whose clock was ahead, or this machine's set back): refused, as
    // publish refuses, and nothing is signed.
    f.release(&[("web", build("web", "release4"))], true);
    let entry = f.cache.join("hosts/web/4.json");
    let mut p = pointer::decode_unverified(&std::fs::read(&entry).unwrap()).unwrap();
    p.issued_at = Timestamp::now().plus(Duration::from_secs(86_400));
    p.expires_at = None;
    std::fs::write(&entry, p.sign(&f.secret())).unwrap();
    let out = promote(&f.cache, &f.keys, &f.file, &["--host", "web"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("clock") && stderr(&out).contains("generation 4 of web"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pointer_generation(&f.cache, "web"), 3);
}

#[test]
fn gc_with_the_trusted_key_leaves_a_planted_history_entry_alone() {
    let (_work, cache, keys) = scene();
    let gens: Vec<String> = ["gct1", "gct2", "gct3"]
        .iter()
        .map(|v| {
            Fixture {
                version: v,
                ..Default::default()
            }
            .build()
        })
        .collect();
    for g in &gens {
        publish(&cache, "foobar", g, &keys, &[]);
    }
    // Generation 1's entry again, renumbered 999 and signed by no one we
    // trust: decoded only, it would be the newest kept generation and push
    // generation 2 out.
    let history = cache.join("hosts/foobar");
    let mut planted =
        pointer::decode_unverified(&std::fs::read(history.join("1.json")).unwrap()).unwrap();
    planted.generation = 999;
    let stranger = SecretKey::generate("stranger-1").unwrap();
    std::fs::write(history.join("999.json"), planted.sign(&stranger)).unwrap();
    let out = ok(nixcast()
        .args(["gc", "--keep", "2", "--grace", "0s", "--cache"])
        .arg(&cache)
        .arg("--trusted-key-file")
        .arg(keys.secret.with_extension("pub")));
    assert!(stderr(&out).contains("999.json"), "{}", stderr(&out));
    assert_eq!(
        files(&cache, "hosts/foobar"),
        ["2.json", "3.json", "999.json"]
    );
    // Generation 2 still pulls whole.
    let vm = Vm::new();
    let out = vm.nix_copy_from(
        &format!("file://{}", cache.display()),
        &keys.public_text,
        &gens[1],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Without keys, gc says what it cannot tell (here it keeps the planted
    // entry, whose manifest is gone, and stops).
    let out = nixcast()
        .args(["gc", "--keep", "2", "--dry-run", "--cache"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("no --trusted-key-file"),
        "{}",
        stderr(&out)
    );
}
