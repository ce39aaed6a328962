//! Operating a fleet: reports taken by `nixcast serve --accept-reports`,
//! read back by `nixcast hosts`, and a staged generation promoted to `web`
//! only once the canary applied its own and reported it healthy.
//!
//! The rollout's reports come from the agents themselves (`nixcast-pull run
//! --report-to`, signed with host keys made by `ssh-keygen`); forged ones
//! are made here with `nixcast_common::report`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use nixcast_common::pointer::Timestamp;
use nixcast_common::report::{HostKey, Outcome, Report};
use nixcast_common::seal::{Identity, Recipient};

use crate::harness::*;

/// An SSH host key made by `ssh-keygen`, and its public line.
pub(crate) struct SshKey {
    pub(crate) private: PathBuf,
    pub(crate) public: String,
}

pub(crate) fn ssh_keygen(dir: &Path, host: &str) -> SshKey {
    let (private, public) = ssh_key(dir, host);
    SshKey { private, public }
}

impl SshKey {
    pub(crate) fn host_key(&self) -> HostKey {
        HostKey::from_openssh(&std::fs::read(&self.private).unwrap(), "test").unwrap()
    }
}

pub(crate) fn report(host: &str, applied: u64, applied_at: Timestamp) -> Report {
    Report {
        host: host.into(),
        pointer_generation: Some(applied),
        applied_generation: Some(applied),
        applied_store_path: None,
        applied_at: Some(applied_at),
        outcome: Outcome::Ok,
        error: None,
        last_failure: None,
        at: Timestamp::now(),
        seq: None,
        interval: 3600,
        booted_system: None,
        current_system: None,
        agent_version: "test".into(),
        key_list_version: None,
        reboot_pending: None,
    }
}

/// `PUT path` with `body` to the server at `url` (http://HOST:PORT); the status.
pub(crate) fn put(url: &str, path: &str, body: &[u8]) -> u16 {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

pub(crate) fn hosts_json(cache: &Path, keys: &Keys, fleet: &Path) -> serde_json::Value {
    let out = ok(nixcast()
        .args(["hosts", "--json", "--cache"])
        .arg(cache)
        .arg("--trusted-key-file")
        .arg(keys.secret.with_extension("pub"))
        .arg("--recipients-file")
        .arg(fleet));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn row<'a>(rows: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == host)
        .unwrap_or_else(|| panic!("no row for {host} in {rows}"))
}

pub(crate) fn pointer_generation(cache: &Path, host: &str) -> u64 {
    let bytes = std::fs::read(cache.join(format!("hosts/{host}.json"))).unwrap();
    nixcast_common::pointer::decode_unverified(&bytes)
        .unwrap()
        .generation
}

pub(crate) fn promote(cache: &Path, keys: &Keys, fleet: &Path, args: &[&str]) -> Command {
    let mut c = nixcast();
    c.args(["promote", "--cache"])
        .arg(cache)
        .arg("--secret-key-file")
        .arg(&keys.secret)
        .arg("--recipients-file")
        .arg(fleet)
        .args(args);
    c
}

#[test]
fn a_staged_generation_reaches_web_only_after_the_canary_applied_it_healthy() {
    let (work, cache, keys) = scene();
    let canary_key = ssh_keygen(work.path(), "canary");
    let web_key = ssh_keygen(work.path(), "web");
    let fleet = work.path().join("fleet");
    std::fs::write(
        &fleet,
        format!("canary {}\nweb {}\n", canary_key.public, web_key.public),
    )
    .unwrap();
    let build = |host: &'static str, version: &'static str, switch_exit: u32| {
        Fixture {
            host,
            version,
            n: 2,
            switch_exit,
            ..Default::default()
        }
        .build()
    };
    let canary1 = build("canary", "f1", 0);
    let web1 = build("web", "f1", 0);
    publish(&cache, "canary", &canary1, &keys, &[]);
    publish(&cache, "web", &web1, &keys, &[]);
    let server = Server::start_with(
        &cache,
        &[
            "--accept-reports".as_ref(),
            "--recipients-file".as_ref(),
            fleet.as_os_str(),
        ],
    );
    let (canary, web) = (Vm::new(), Vm::new());
    // Each agent pulls and reports to the server, signed with its host key.
    let pull = |vm: &Vm, host: &str, key: &SshKey| {
        let identity = key.private.to_str().unwrap();
        let extra = ["--report-to", &server.url, "--identity", identity];
        vm.pull_host(&server.url, host, &keys, &extra)
    };
    for (vm, host, key) in [(&canary, "canary", &canary_key), (&web, "web", &web_key)] {
        let out = pull(vm, host, key);
        assert!(out.status.success(), "{host}: {}", stderr(&out));
        assert_eq!(vm.status()["appliedGeneration"], 1);
        assert!(cache.join(format!("reports/{host}.json")).exists());
    }
    let first_applied = Timestamp::now();
    let rows = hosts_json(&cache, &keys, &fleet);
    for host in ["canary", "web"] {
        let r = row(&rows, host);
        assert_eq!(r["report"]["appliedGeneration"], 1, "{r}");
        assert_eq!(r["report"]["outcome"], "ok", "{r}");
        assert_eq!(r["behind"], false, "{r}");
    }

    // A report for web signed with canary's key, or with none, is refused
    // and nothing is written.
    let stored = std::fs::read(cache.join("reports/web.json")).unwrap();
    let mut forged = report("web", 1, first_applied);
    forged.outcome = Outcome::Failed;
    let by_canary = forged.sign(&canary_key.host_key(), &[]).unwrap();
    assert_eq!(put(&server.url, "/reports/web.json", &by_canary), 403);
    let mut env: serde_json::Value =
        serde_json::from_slice(&forged.sign(&web_key.host_key(), &[]).unwrap()).unwrap();
    env["signatures"] = serde_json::json!([]);
    let unsigned = serde_json::to_vec(&env).unwrap();
    assert_eq!(put(&server.url, "/reports/web.json", &unsigned), 403);
    assert_eq!(put(&server.url, "/hosts/web.json", &stored), 403);
    assert_eq!(
        std::fs::read(cache.join("reports/web.json")).unwrap(),
        stored
    );
    // Planted in the cache behind the server's back, it is shown as untrusted.
    std::fs::write(cache.join("reports/web.json"), &by_canary).unwrap();
    let rows = hosts_json(&cache, &keys, &fleet);
    let r = row(&rows, "web");
    assert_eq!(r["report"], serde_json::Value::Null, "{r}");
    assert!(
        r["reportProblem"].as_str().unwrap().contains("not signed"),
        "{r}"
    );
    std::fs::write(cache.join("reports/web.json"), &stored).unwrap();

    // Generation 2 is staged for both, one release (one command): it
    // reaches neither until promoted.
    let canary2 = build("canary", "f2", 0);
    let web2 = build("web", "f2", 0);
    let out = publish(
        &cache,
        "canary",
        &canary2,
        &keys,
        &["--host", "web", "--path", &web2, "--stage"],
    );
    for host in ["canary", "web"] {
        assert!(
            stdout(&out).contains(&format!("staged {host} generation 2")),
            "{}",
            stdout(&out)
        );
        assert_eq!(pointer_generation(&cache, host), 1);
        assert!(cache.join(format!("hosts/{host}/2.json")).exists());
    }
    let out = pull(&web, "web", &web_key);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(web.status()["appliedGeneration"], 1);
    assert_eq!(web.switch_log().len(), 1);
    let rows = hosts_json(&cache, &keys, &fleet);
    assert_eq!(row(&rows, "web")["stagedGeneration"], 2);

    // `promote --host web --after canary` must be refused: what it says.
    let gated_promote_refused = |healthy_for: &str| {
        let args = [
            "--host",
            "web",
            "--after",
            "canary",
            "--healthy-for",
            healthy_for,
        ];
        let out = promote(&cache, &keys, &fleet, &args).output().unwrap();
        assert!(!out.status.success(), "{}", stdout(&out));
        stderr(&out)
    };
    // Gated on a canary that has not applied generation 2: refused, named.
    let err = gated_promote_refused("0s");
    assert!(
        err.contains("canary canary: its generation 2 is staged, not promoted"),
        "{err}"
    );
    assert_eq!(pointer_generation(&cache, "web"), 1);

    // The canary first.
    let out = ok(&mut promote(&cache, &keys, &fleet, &["--host", "canary"]));
    assert!(
        stdout(&out).contains("promoted canary to generation 2 (was 1)"),
        "{}",
        stdout(&out)
    );
    // Promoted but not yet applied: still refused.
    let err = gated_promote_refused("0s");
    assert!(
        err.contains("canary canary: it runs generation 1, not its newest generation 2"),
        "{err}"
    );
    let out = pull(&canary, "canary", &canary_key);
    assert!(out.status.success(), "{}", stderr(&out));
    // Not healthy for long enough yet.
    let err = gated_promote_refused("1h");
    assert!(
        err.contains("canary canary: generation 2 was applied at"),
        "{err}"
    );
    assert_eq!(pointer_generation(&cache, "web"), 1);
    let out = ok(&mut promote(
        &cache,
        &keys,
        &fleet,
        &["--host", "web", "--after", "canary", "--healthy-for", "0s"],
    ));
    assert!(
        stdout(&out).contains("promoted web to generation 2 (was 1)"),
        "{}",
        stdout(&out)
    );
    let out = pull(&web, "web", &web_key);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(web.status()["appliedGeneration"], 2);
    assert_eq!(web.switch_log().last().unwrap(), &format!("switch {web2}"));
    // Promoting again does nothing, and never lowers a generation.
    let out = ok(&mut promote(&cache, &keys, &fleet, &["--host", "web"]));
    assert!(
        stdout(&out).contains("web is at generation 2"),
        "{}",
        stdout(&out)
    );
    let out = promote(
        &cache,
        &keys,
        &fleet,
        &["--host", "web", "--generation", "1"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("would lower it"), "{}", stderr(&out));
    assert_eq!(pointer_generation(&cache, "web"), 2);

    // Generation 3: the canary's switch fails, so web is held at 2.
    let canary3 = build("canary", "f3", 4);
    let web3 = build("web", "f3", 0);
    publish(&cache, "canary", &canary3, &keys, &["--stage"]);
    publish(&cache, "web", &web3, &keys, &["--stage"]);
    ok(&mut promote(&cache, &keys, &fleet, &["--host", "canary"]));
    let out = pull(&canary, "canary", &canary_key);
    assert_eq!(
        out.status.code(),
        Some(5),
        "the canary's switch fails: {}",
        stderr(&out)
    );
    let status = canary.status();
    assert_eq!(status["appliedGeneration"], 2, "{status}");
    let err = gated_promote_refused("0s");
    assert!(
        err.contains(
            "refusing to promote: canary canary: its last run failed (activation-failed: "
        ),
        "{err}"
    );
    assert_eq!(pointer_generation(&cache, "web"), 2);
    let out = pull(&web, "web", &web_key);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(web.status()["appliedGeneration"], 2);

    let rows = hosts_json(&cache, &keys, &fleet);
    let c = row(&rows, "canary");
    assert_eq!(c["failed"], true, "{c}");
    assert_eq!(c["behind"], true, "{c}");
    assert_eq!(c["report"]["error"]["kind"], "activation-failed", "{c}");
    assert_eq!(c["report"]["appliedGeneration"], 2, "{c}");
    let w = row(&rows, "web");
    assert_eq!(
        (&w["failed"], &w["behind"], &w["stagedGeneration"]),
        (&false.into(), &false.into(), &3.into()),
        "{w}"
    );

    // The page, as headless Chromium renders it.
    let page = work.path().join("fleet.html");
    ok(nixcast()
        .args(["hosts", "--cache"])
        .arg(&cache)
        .arg("--recipients-file")
        .arg(&fleet)
        .arg("--html")
        .arg(&page));
    let dom = chromium_dom(&page);
    assert!(
        dom.contains(r#"<tr class="behind failed" id="host-canary">"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<tr class="" id="host-web">"#), "{dom}");
    // canary's timeline: 1, 2 applied, 3 current and failed.
    assert!(
        dom.contains(r#"<span class="gen applied" title="issued"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<span class="gen current failed" title="issued"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<span class="gen staged" title="issued"#),
        "{dom}"
    );
    assert!(!dom.contains("<script") && !dom.contains("http://") && !dom.contains("https://"));
}

/// The DOM headless Chromium builds from `page` (a file, loaded with no network).
fn chromium_dom(page: &Path) -> String {
    let found = Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "chromium is missing: install it with `apt-get install -y chromium`"
    );
    let profile = tempfile::tempdir().unwrap();
    let out = ok(Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display())));
    stdout(&out)
}

#[test]
fn promote_on_a_bucket_gates_on_a_sealed_canarys_report_opened_with_the_publishers_key() {
    let moto = crate::s3::Moto::start_with(&[]);
    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path(), "fleet-1");
    let canary_key = ssh_keygen(work.path(), "canary");
    // canary is sealed (to its SSH key); web is not.
    let fleet = work.path().join("fleet");
    std::fs::write(&fleet, format!("canary {}\n", canary_key.public)).unwrap();
    let bucket = "fleet-bucket";
    ok(Command::new("python3").args([
        "-c",
        &format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket='{bucket}')",
            moto.endpoint()
        ),
    ]));
    let target = format!(
        "s3://{bucket}/p?endpoint={}&region=us-east-1",
        moto.endpoint()
    );
    let s3 = |args: &[&str]| {
        let mut c = nixcast();
        c.args(args)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_PROFILE");
        c
    };
    let secret = keys.secret.to_str().unwrap();
    let fleet_s = fleet.to_str().unwrap();
    let tops: Vec<(&str, String, String)> = ["canary", "web"]
        .into_iter()
        .map(|h| {
            let b = |v| {
                Fixture {
                    host: if h == "canary" { "canary" } else { "web" },
                    version: v,
                    n: 1,
                    ..Default::default()
                }
                .build()
            };
            (h, b("b1"), b("b2"))
        })
        .collect();
    // Each generation of both hosts in one command: one release. canary
    // is sealed (the recipients file lists it), web is not.
    for (generation, stage) in [(1, false), (2, true)] {
        let mut args = vec![
            "publish",
            "--cache",
            &target,
            "--secret-key-file",
            secret,
            "--recipients-file",
            fleet_s,
        ];
        for (host, one, two) in &tops {
            let path = if generation == 1 { one } else { two };
            args.extend(["--host", host, "--path", path]);
        }
        if stage {
            args.push("--stage");
        }
        let out = ok(&mut s3(&args));
        assert!(stage == stdout(&out).contains("staged"), "{}", stdout(&out));
    }
    let promote = |args: &[&str]| {
        let mut all = vec![
            "promote",
            "--cache",
            &target,
            "--secret-key-file",
            secret,
            "--recipients-file",
            fleet_s,
            "--identity",
            secret,
        ];
        all.extend_from_slice(args);
        s3(&all).output().unwrap()
    };
    ok(s3(&[]).args([
        "promote",
        "--cache",
        &target,
        "--secret-key-file",
        secret,
        "--host",
        "canary",
    ]));
    // canary applied generation 2: its report, sealed to the publisher's
    // key (an operator), goes into the bucket as an agent would PUT it.
    let op: Recipient =
        Identity::from_file(&std::fs::read(secret).unwrap(), "k").unwrap()[0].recipient();
    let sealed = report("canary", 2, Timestamp::now())
        .sign(&canary_key.host_key(), &[op])
        .unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains("appliedGeneration"));
    let upload = |bytes: &[u8]| {
        let file = work.path().join("report.json");
        std::fs::write(&file, bytes).unwrap();
        ok(Command::new("python3").args([
            "-c",
            &format!(
                "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
                 aws_access_key_id='testing', aws_secret_access_key='testing')\
                 .upload_file('{}', '{bucket}', 'p/reports/canary.json')",
                moto.endpoint(),
                file.display()
            ),
        ]));
    };
    upload(&sealed);
    // Without an identity the sealed report cannot be read: refused.
    let out = s3(&[
        "promote",
        "--cache",
        &target,
        "--secret-key-file",
        secret,
        "--recipients-file",
        fleet_s,
        "--host",
        "web",
        "--after",
        "canary",
        "--healthy-for",
        "0s",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("canary canary: its report is not trusted"),
        "{err}"
    );
    let out = promote(&["--host", "web", "--after", "canary", "--healthy-for", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("promoted web to generation 2 (was 1)"),
        "{}",
        stdout(&out)
    );
    let out = ok(&mut s3(&[
        "hosts",
        "--json",
        "--cache",
        &target,
        "--recipients-file",
        fleet_s,
        "--identity",
        secret,
    ]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row(&rows, "web")["generation"], 2);
    assert_eq!(
        row(&rows, "canary")["report"]["appliedGeneration"],
        2,
        "{rows}"
    );
}
