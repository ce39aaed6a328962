//! Operating a fleet, the host's side (`fleet.rs` has the trusted side): signed reports, reboots for a new
//! kernel, a store too small for the run, old generations deleted.

use std::process::Command;

use nixcast_common::report::{self, Outcome, Report, Signed};
use nixcast_integration::{Hostile, Rule};

use crate::harness::*;

/// The report in `bytes`, which must verify with `public` (an `ssh-ed25519 …` line).
fn verified(bytes: &[u8], public: &str) -> Report {
    let listed = nixcast_common::seal::Recipients::parse(&format!("foobar {public}\n")).unwrap();
    match report::verify(bytes, "foobar", &listed.signers_of("foobar")).unwrap() {
        Signed::Plain(r) => *r,
        Signed::Sealed(_) => panic!("a plain host's report is not sealed"),
    }
}

fn build(version: &'static str) -> String {
    Fixture {
        version,
        ..Default::default()
    }
    .build()
}

#[test]
fn reports_are_signed_sent_on_change_only_and_never_fail_the_run() {
    let (work, cache, keys) = scene();
    let (host_key, host_pub) = ssh_key(work.path(), "foobar");
    let key = host_key.to_str().unwrap();
    let vm = Vm::new();

    // To a directory: a report after the first run, none after a quiet one.
    let gen1 = build("report1");
    publish(&cache, "foobar", &gen1, &keys, &[]);
    let dir = work.path().join("reports-dir");
    let to_dir = ["--identity", key, "--report-to", dir.to_str().unwrap()];
    ok_output(vm.pull(cache.to_str().unwrap(), &keys, &to_dir));
    let file = dir.join("reports/foobar.json");
    let r = verified(&std::fs::read(&file).unwrap(), &host_pub);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.applied_generation, Some(1));
    assert_eq!(r.pointer_generation, Some(1));
    assert_eq!(r.applied_store_path.as_deref(), Some(gen1.as_str()));
    assert_eq!(r.interval, 3600);
    assert_eq!(r.agent_version, env!("CARGO_PKG_VERSION"));
    // Another key does not verify it.
    let (_, other_pub) = ssh_key(work.path(), "other");
    let listed = nixcast_common::seal::Recipients::parse(&format!("foobar {other_pub}\n")).unwrap();
    assert!(report::verify(
        &std::fs::read(&file).unwrap(),
        "foobar",
        &listed.signers_of("foobar")
    )
    .is_err());
    std::fs::remove_file(&file).unwrap();
    ok_output(vm.pull(cache.to_str().unwrap(), &keys, &to_dir));
    assert!(!file.exists(), "a quiet run sent a report");

    // By PUT to an HTTP server: a new generation is a change.
    let server = Hostile::start(work.path().join("put-root"));
    let to_http = ["--identity", key, "--report-to", server.url.as_str()];
    let gen2 = build("report2");
    publish(&cache, "foobar", &gen2, &keys, &[]);
    ok_output(vm.pull(cache.to_str().unwrap(), &keys, &to_http));
    let puts = server.take_puts();
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(puts[0].path, "/reports/foobar.json");
    assert_eq!(puts[0].content_type.as_deref(), Some("application/json"));
    let r = verified(&puts[0].body, &host_pub);
    assert_eq!(r.applied_generation, Some(2));
    assert_eq!(r.applied_store_path.as_deref(), Some(gen2.as_str()));
    ok_output(vm.pull(cache.to_str().unwrap(), &keys, &to_http));
    assert!(server.take_puts().is_empty(), "a quiet run sent a report");

    // An endpoint that fails: the run applies all the same, the failure is
    // counted, and the next run sends the report.
    server.set("/reports/foobar.json", Rule::Status(500));
    let gen3 = build("report3");
    publish(&cache, "foobar", &gen3, &keys, &[]);
    let out = ok_output(vm.pull(cache.to_str().unwrap(), &keys, &to_http));
    assert!(
        stderr(&out).contains("cannot send the report"),
        "{}",
        stderr(&out)
    );
    let st = vm.status();
    assert_eq!(st["appliedGeneration"], 3);
    assert_eq!(st["reportFailures"], 1);
    assert_eq!(st["lastReport"]["appliedGeneration"], 2);
    server.clear();
    ok_output(vm.pull(cache.to_str().unwrap(), &keys, &to_http));
    let puts = server.take_puts();
    assert_eq!(puts.len(), 1, "the report was not sent again");
    assert_eq!(
        verified(&puts[0].body, &host_pub).applied_generation,
        Some(3)
    );

    // A failed run is reported, with its kind.
    let gen4 = build("report4");
    publish(&cache, "foobar", &gen4, &keys, &[]);
    let cache_server = Hostile::start(cache.clone());
    for nar in files(&cache, "nar") {
        cache_server.set(&format!("/nar/{nar}"), Rule::Status(404));
    }
    let out = vm.pull(&cache_server.url, &keys, &to_http);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let puts = server.take_puts();
    assert_eq!(puts.len(), 1);
    let r = verified(&puts[0].body, &host_pub);
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.error.as_ref().unwrap().kind, "fetch-failed");
    assert_eq!(r.applied_generation, Some(3));
    assert_eq!(r.pointer_generation, Some(4));
    assert_eq!(r.last_failure.unwrap().generation, Some(4));
}

/// A sealed host's report names no store path, unless it is sealed to the
/// operators (`--report-recipient`).
#[test]
fn a_sealed_hosts_report_is_sealed_or_says_no_more_than_its_pointer() {
    let (work, cache, keys) = scene();
    let (host_key, host_pub) = ssh_key(work.path(), "foobar");
    let (operator_key, operator_pub) = ssh_key(work.path(), "operator");
    let sys = build("sealed-report");
    let recipients = work.path().join("fleet.recipients");
    std::fs::write(
        &recipients,
        format!("foobar {host_pub}\n* {operator_pub}\n"),
    )
    .unwrap();
    publish(
        &cache,
        "foobar",
        &sys,
        &keys,
        &["--recipients-file", recipients.to_str().unwrap()],
    );
    let dir = work.path().join("reports");
    let vm = Vm::new();
    let key = host_key.to_str().unwrap();
    let args = ["--identity", key, "--report-to", dir.to_str().unwrap()];
    ok_output(vm.pull(cache.to_str().unwrap(), &keys, &args));
    let bytes = std::fs::read(dir.join("reports/foobar.json")).unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let r = verified(&bytes, &host_pub);
    assert_eq!(r.applied_generation, Some(1));
    assert_eq!(r.applied_store_path, None);
    assert!(!text.contains("/nix/store"));

    // Sealed to the operator: it holds everything, for the operator alone.
    let vm = Vm::new();
    let mut sealed = args.to_vec();
    sealed.extend(["--report-recipient", operator_pub.as_str()]);
    ok_output(vm.pull(cache.to_str().unwrap(), &keys, &sealed));
    let bytes = std::fs::read(dir.join("reports/foobar.json")).unwrap();
    let listed = nixcast_common::seal::Recipients::parse(&format!("foobar {host_pub}\n")).unwrap();
    let signed = report::verify(&bytes, "foobar", &listed.signers_of("foobar")).unwrap();
    let op = std::fs::read(&operator_key).unwrap();
    let ids = nixcast_common::seal::Identity::from_file(&op, "operator").unwrap();
    let r = signed.open("foobar", &ids).unwrap();
    assert_eq!(r.applied_store_path.as_deref(), Some(sys.as_str()));
}

/// `date`'s local time shifted by `minutes`, as HH:MM.
fn local_time(minutes: i64) -> String {
    let out = ok(Command::new("date").args(["-d", &format!("{minutes} minutes"), "+%H:%M"]));
    stdout(&out).trim().to_owned()
}

#[test]
fn a_new_kernel_is_booted_and_rebooted_into_inside_the_window_only() {
    let (_work, cache, keys) = scene();
    let build = |version, kernel| {
        Fixture {
            version,
            kernel,
            ..Default::default()
        }
        .build()
    };
    let gen1 = build("kernel1", "6.1");
    let gen2 = build("kernel2", "6.1");
    let gen3 = build("kernel3", "6.2");
    let vm = Vm::new();
    let c = cache.to_str().unwrap();
    publish(&cache, "foobar", &gen1, &keys, &[]);
    ok_output(vm.pull(c, &keys, &[]));
    // The host booted generation 1.
    std::os::unix::fs::symlink(&gen1, vm.nix().join("var/booted-system")).unwrap();
    let inside = format!("{}-{}", local_time(-60), local_time(60));
    let outside = format!("{}-{}", local_time(120), local_time(180));
    let reboots = vm.nix().join("var/reboots.log");
    let args = |window: &str| {
        let window = window.to_owned();
        move || {
            vec![
                "--allow-reboot".to_owned(),
                "--booted-system".to_owned(),
                "/nix/var/booted-system".to_owned(),
                "--reboot-command".to_owned(),
                "echo reboot >> /nix/var/reboots.log".to_owned(),
                "--reboot-window".to_owned(),
                window.clone(),
            ]
        }
    };
    let pull = |window: &str| {
        let a = args(window)();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ok_output(vm.pull(c, &keys, &a))
    };
    let reboot_count = || {
        std::fs::read_to_string(&reboots)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };

    // The same kernel: a switch, never a reboot, even inside the window.
    publish(&cache, "foobar", &gen2, &keys, &[]);
    pull(&inside);
    assert_eq!(vm.switch_log().last().unwrap(), &format!("switch {gen2}"));
    assert_eq!(reboot_count(), 0);
    assert!(vm.status().get("rebootPending").is_none());

    // A new kernel outside the window: installed for the next boot, the
    // reboot deferred and remembered.
    publish(&cache, "foobar", &gen3, &keys, &[]);
    pull(&outside);
    assert_eq!(vm.switch_log().last().unwrap(), &format!("boot {gen3}"));
    assert_eq!(reboot_count(), 0);
    assert_eq!(vm.status()["rebootPending"]["system"], gen3.as_str());
    let shown = ok(&mut vm.agent(&["status", "--state-dir", "/nix/var/nixcast"]));
    assert!(
        stdout(&shown).contains("reboot pending:     into"),
        "{}",
        stdout(&shown)
    );
    pull(&outside);
    assert_eq!(reboot_count(), 0);

    // Inside the window, a quiet run reboots, once.
    pull(&inside);
    assert_eq!(reboot_count(), 1);
    assert!(vm.status()["rebootPending"]["requestedAt"].is_string());
    pull(&inside);
    assert_eq!(reboot_count(), 1, "rebooted twice for one system");

    // A newer kernel whose boot fails: the rollback makes generation 3 the
    // next boot's again, never switches the running kernel to it.
    let gen4 = Fixture {
        version: "kernel4",
        kernel: "6.3",
        switch_exit: 1,
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &gen4, &keys, &[]);
    let a = args(&outside)();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = vm.pull(c, &keys, &a);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let log = vm.switch_log();
    assert_eq!(
        log[log.len() - 2..],
        [format!("boot {gen4}"), format!("boot {gen3}")]
    );
    assert_eq!(vm.status()["rebootPending"]["system"], gen3.as_str());

    // The host came back on the new kernel: nothing pending any more.
    std::fs::remove_file(vm.nix().join("var/booted-system")).unwrap();
    std::os::unix::fs::symlink(&gen3, vm.nix().join("var/booted-system")).unwrap();
    pull(&inside);
    assert_eq!(reboot_count(), 1);
    assert!(vm.status().get("rebootPending").is_none());
    assert_eq!(vm.switch_log().len(), 5, "{:?}", vm.switch_log());
}

#[test]
fn a_store_too_small_is_refused_before_any_nar_request() {
    let (_work, cache, keys) = scene();
    let sys = Fixture {
        version: "small-store",
        big: 8 << 20,
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &sys, &keys, &["--compression", "none"]);
    let server = Hostile::start(cache.clone());
    // A fresh store on a 4 MiB tmpfs.
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=4m tmpfs /nix && exec \"$@\"")
        .arg("sh")
        .arg(nixcast_pull_path())
        .args(["run", "--cache", &server.url, "--host", "foobar"])
        .args(["--trusted-key", &keys.public_text])
        .args(["--state-dir", "/nix/var/nixcast", "--allow-insecure-http"])
        .env("NIX_REMOTE", "local")
        .env_remove("NIX_PATH")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not enough space"), "{err}");
    // Both figures: what the run needs (more than the 8 MiB library) and what is free.
    let figure = |after: &str| -> u64 {
        let rest = &err[err
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} in {err}"))
            + after.len()..];
        let bytes = rest.split(" bytes)").next().unwrap();
        bytes.rsplit('(').next().unwrap().parse().unwrap()
    };
    let need = figure("this run needs ");
    let free = figure("which has ");
    assert!(need > 8 << 20 && free <= 4 << 20 && free < need, "{err}");
    let requests = server.take_requests();
    assert!(
        requests.iter().any(|r| r.starts_with("/hosts/")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.starts_with("/nar/")),
        "{requests:?}"
    );
}

#[test]
fn keep_generations_leaves_two_and_removes_the_dead_paths() {
    let (_work, cache, keys) = scene();
    let vm = Vm::new();
    let c = cache.to_str().unwrap();
    let systems: Vec<String> = ["keep1", "keep2", "keep3", "keep4"]
        .into_iter()
        .map(build)
        .collect();
    let mut last = None;
    for sys in &systems {
        publish(&cache, "foobar", sys, &keys, &[]);
        last = Some(ok_output(vm.pull(c, &keys, &["--keep-generations", "2"])));
    }
    let links: Vec<String> = files(&vm.nix(), "var/nix/profiles")
        .into_iter()
        .filter(|f| f.starts_with("system-"))
        .collect();
    assert_eq!(links, ["system-3-link", "system-4-link"]);
    let etc_of = |sys: &str| {
        closure(sys)
            .into_iter()
            .find(|p| p.contains("-etc-foobar"))
            .unwrap()
    };
    for old in &systems[..2] {
        assert!(!vm.valid(&[old]), "{old} is still in the store");
        assert!(
            !vm.valid(&[etc_of(old)]),
            "the etc of {old} is still in the store"
        );
    }
    for kept in &systems[2..] {
        assert!(vm.valid(&closure(kept)), "{kept} lost a path");
    }
    let err = stderr(&last.unwrap());
    assert!(err.contains("bytes_freed="), "{err}");
    assert!(!err.contains("bytes_freed=0 "), "{err}");
}

#[test]
fn a_report_goes_into_a_bucket_with_the_hosts_credentials() {
    let moto = crate::s3::Moto::start_with(&[]);
    let (work, cache, keys) = scene();
    let (host_key, host_pub) = ssh_key(work.path(), "foobar");
    let sys = build("report-s3");
    publish(&cache, "foobar", &sys, &keys, &[]);
    let boto = |code: &str| {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n{code}",
            moto.endpoint()
        );
        ok(Command::new("python3").args(["-c", &script]))
    };
    boto("s3.create_bucket(Bucket='fleet-reports')");
    let to = format!(
        "s3://fleet-reports/agents?endpoint={}&region=us-east-1",
        moto.endpoint()
    );
    let vm = Vm::new();
    let bin = nixcast_pull_path();
    let out = vm
        .cmd(&[
            bin.to_str().unwrap(),
            "run",
            "--cache",
            cache.to_str().unwrap(),
            "--host",
            "foobar",
            "--trusted-key",
            &keys.public_text,
            "--state-dir",
            "/nix/var/nixcast",
            "--allow-insecure-http",
            "--identity",
            host_key.to_str().unwrap(),
            "--report-to",
            &to,
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("report sent"), "{err}");
    assert!(!err.contains("testing"), "a credential in the log: {err}");
    let got = work.path().join("got.json");
    boto(&format!(
        "s3.download_file('fleet-reports', 'agents/reports/foobar.json', '{}')",
        got.display()
    ));
    let r = verified(&std::fs::read(&got).unwrap(), &host_pub);
    assert_eq!(r.applied_store_path.as_deref(), Some(sys.as_str()));
}
