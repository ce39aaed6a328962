//! The agent against real Nix in fresh stores.

use crate::harness::*;

fn nars(requests: &[String]) -> Vec<&String> {
    requests.iter().filter(|r| r.starts_with("/nar/")).collect()
}

#[test]
fn pull_switches_then_polls_with_one_request_then_updates_incrementally() {
    let (_work, cache, keys) = scene();
    let gen1 = Fixture::default().build();
    publish(&cache, "foobar", &gen1, &keys, &[]);
    let server = Server::start(&cache);
    let vm = Vm::new();

    let out = vm.pull(&server.url, &keys, &[]);
    assert!(out.status.success(), "first pull failed: {}", stderr(&out));
    assert!(vm.valid(&closure(&gen1)), "closure not valid in the VM");
    assert_eq!(
        vm.profile_link("system-1-link").as_deref(),
        Some(gen1.as_str())
    );
    assert_eq!(vm.profile_link("system").as_deref(), Some("system-1-link"));
    assert_eq!(vm.switch_log(), [format!("switch {gen1}")]);
    let first = server.take_requests();
    assert_eq!(nars(&first).len(), closure(&gen1).len(), "{first:?}");
    assert_eq!(vm.status()["appliedGeneration"], 1);

    // Nothing changed: one conditional request, no activation.
    let out = vm.pull(&server.url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.take_requests(), ["/hosts/foobar.json"]);
    assert_eq!(vm.switch_log().len(), 1);

    // Generation 2 changes the top and etc paths only.
    let gen2 = Fixture {
        version: "2",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &gen2, &keys, &[]);
    let changed: Vec<String> = closure(&gen2)
        .into_iter()
        .filter(|p| !closure(&gen1).contains(p))
        .collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    let out = vm.pull(&server.url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reqs = server.take_requests();
    // The changed paths come as NAR deltas (delta.rs tests them).
    let patches = reqs.iter().filter(|r| r.starts_with("/deltas/")).count();
    assert_eq!(
        nars(&reqs).len() + patches,
        changed.len(),
        "only the changed NARs: {reqs:?}"
    );
    assert_eq!(
        reqs.len(),
        3 + changed.len(),
        "pointer + manifest delta + NAR-delta index + NARs: {reqs:?}"
    );
    // The manifest was rebuilt from generation 1's and a delta, not fetched whole.
    let deltas: Vec<&String> = reqs
        .iter()
        .filter(|r| r.contains(".from-") && !r.contains(".nars-from-"))
        .collect();
    assert_eq!(deltas.len(), 1, "{reqs:?}");
    let delta_bytes = std::fs::metadata(cache.join(&deltas[0][1..]))
        .unwrap()
        .len();
    assert!(delta_bytes < 4096, "a 2-path change: {delta_bytes} bytes");
    assert_eq!(
        vm.profile_link("system-2-link").as_deref(),
        Some(gen2.as_str())
    );
    assert_eq!(vm.switch_log().last().unwrap(), &format!("switch {gen2}"));
    assert_eq!(vm.status()["appliedGeneration"], 2);
    // Nix keeps the publisher's signature for what the agent imported.
    let out = ok(&mut vm.cmd(&[
        "nix",
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--sigs",
        &gen2,
    ]));
    assert!(stdout(&out).contains("fleet-1:"), "{}", stdout(&out));

    // A delta that does not make the pinned manifest is not used: the agent
    // fetches the manifest whole and goes on.
    let gen3 = Fixture {
        version: "3",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &gen3, &keys, &[]);
    let delta = std::fs::read_dir(cache.join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.to_string_lossy();
            name.contains(".from-") && !name.contains(".nars-from-")
        })
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let mut d: nixcast_common::manifest::Delta =
        serde_json::from_slice(&std::fs::read(&delta).unwrap()).unwrap();
    d.added.retain(|e| e.store_path.to_string() != gen3);
    std::fs::write(&delta, serde_json::to_vec(&d).unwrap()).unwrap();
    let out = vm.pull(&server.url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("fetching the manifest whole"),
        "{}",
        stderr(&out)
    );
    let reqs = server.take_requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("/manifests/") && !r.contains(".from-")),
        "{reqs:?}"
    );
    assert_eq!(vm.switch_log().last().unwrap(), &format!("switch {gen3}"));
}

#[test]
fn pull_from_file_url_and_dry_run_changes_nothing() {
    let (_work, cache, keys) = scene();
    let top = Fixture {
        n: 2,
        version: "file",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &top, &keys, &["--compression", "zstd"]);
    let url = format!("file://{}", cache.display());
    let vm = Vm::new();

    let out = vm.pull(&url, &keys, &["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("would fetch {top}")),
        "{}",
        stdout(&out)
    );
    assert!(
        !vm.nix().join("var/nixcast").exists(),
        "dry run made the state dir"
    );
    assert!(!vm.nix().join("var/nix/profiles/system").exists());
    assert!(vm.switch_log().is_empty());

    let out = vm.pull(&url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm.valid(&closure(&top)));
    assert_eq!(vm.switch_log(), [format!("switch {top}")]);
}

#[test]
fn pull_from_a_cache_written_by_nix() {
    let (_work, cache, keys) = scene();
    let top = Fixture {
        n: 2,
        version: "nixwritten",
        ..Default::default()
    }
    .build();
    nix_copy_to(cache.as_path(), &keys, &[&top]);
    let nars_before = files(&cache, "nar");
    let out = publish(&cache, "foobar", &top, &keys, &[]);
    assert_eq!(
        files(&cache, "nar"),
        nars_before,
        "publish rewrote NARs Nix wrote"
    );
    assert!(stdout(&out).contains("0 new paths"), "{}", stdout(&out));

    let server = Server::start(&cache);
    let vm = Vm::new();
    let out = vm.pull(&server.url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm.valid(&closure(&top)));
    assert_eq!(vm.switch_log(), [format!("switch {top}")]);
}

#[test]
fn a_failed_switch_rolls_back_and_is_not_retried() {
    let (_work, cache, keys) = scene();
    let good = Fixture {
        n: 2,
        version: "rb1",
        ..Default::default()
    }
    .build();
    let bad = Fixture {
        n: 2,
        version: "rb2",
        switch_exit: 4,
        ..Default::default()
    }
    .build();
    let url = format!("file://{}", cache.display());
    let vm = Vm::new();
    publish(&cache, "foobar", &good, &keys, &[]);
    let out = vm.pull(&url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    publish(&cache, "foobar", &bad, &keys, &[]);
    let out = vm.pull(&url, &keys, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rolled back to profile generation 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(vm.profile_link("system").as_deref(), Some("system-1-link"));
    assert!(
        vm.profile_link("system-2-link").is_none(),
        "the failed generation stays in the profile"
    );
    assert_eq!(
        vm.switch_log(),
        [
            format!("switch {good}"),
            format!("switch {bad}"),
            format!("switch {good}")
        ]
    );
    let status = vm.status();
    assert_eq!(status["badGenerations"], serde_json::json!([2]));
    assert_eq!(status["appliedGeneration"], 1);
    assert_eq!(status["lastResult"], "activation-failed");

    // The bad generation is not tried again.
    let out = vm.pull(&url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.switch_log().len(), 3);
}

/// The agent and the Nix processes it starts stay small even for a 300 MiB
/// path: nothing holds a whole NAR in memory (`nix-store --import` would
/// take 548 MB here). GNU time reports the largest resident set among the
/// process and the descendants it waited for.
#[test]
fn pulling_a_300_mib_path_stays_under_256_mib() {
    let (_work, cache, keys) = scene();
    let top = Fixture {
        n: 1,
        version: "big",
        big: 300 << 20,
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &top, &keys, &["--compression", "zstd"]);
    let vm = Vm::new();
    let url = format!("file://{}", cache.display());
    let mut cmd = std::process::Command::new("/usr/bin/time");
    cmd.args(["-f", "maxrss_kib=%M"]);
    let inner = vm.agent(&[
        "run",
        "--cache",
        &url,
        "--host",
        "foobar",
        "--trusted-key",
        &keys.public_text,
        "--state-dir",
        "/nix/var/nixcast",
    ]);
    cmd.arg(inner.get_program())
        .args(inner.get_args())
        .env("NIX_REMOTE", "local");
    let out = cmd
        .output()
        .expect("/usr/bin/time (apt-get install -y time)");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm.valid(&[top]));
    let err = stderr(&out);
    let kib: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .unwrap_or_else(|| panic!("no maxrss in {err}"))
        .trim()
        .parse()
        .unwrap();
    assert!(kib < 256 * 1024, "peak RSS {kib} KiB");
}

/// `--schedule` keeps pulling; SIGTERM ends it cleanly; metrics are written.
#[test]
fn scheduled_agent_pulls_writes_metrics_and_stops_on_sigterm() {
    let (_work, cache, keys) = scene();
    let top = Fixture {
        n: 2,
        version: "sched",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &top, &keys, &[]);
    let vm = Vm::new();
    let url = format!("file://{}", cache.display());
    let mut agent = vm
        .agent(&[
            "run",
            "--cache",
            &url,
            "--host",
            "foobar",
            "--trusted-key",
            &keys.public_text,
            "--state-dir",
            "/nix/var/nixcast",
            "--schedule",
            "* * * * * *",
            "--jitter",
            "0s",
            "--metrics-file",
            "/nix/var/nixcast.prom",
        ])
        .spawn()
        .unwrap();
    let metrics = vm.nix().join("var/nixcast.prom");
    let mut waited = 0;
    while !std::fs::read_to_string(&metrics)
        .unwrap_or_default()
        .contains("nixcast_applied_generation 1")
    {
        assert!(waited < 600, "the scheduled agent applied nothing");
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("nixcast_failures_total{kind=\"refused\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE nixcast_last_success_timestamp_seconds gauge"),
        "{text}"
    );
    // It keeps checking: more runs follow, each finding nothing to do.
    let first_check = vm.status()["lastCheck"].clone();
    waited = 0;
    while vm.status()["lastCheck"] == first_check {
        assert!(waited < 600, "no second run");
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    assert_eq!(vm.switch_log().len(), 1);
    ok(std::process::Command::new("kill").args(["-TERM", &agent.id().to_string()]));
    let status = agent.wait().unwrap();
    assert!(status.success(), "{status}");
}
