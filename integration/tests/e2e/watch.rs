//! `nixcast-pull run --watch` against `nixcast serve`: a long poll of the
//! host's pointer, a run as soon as it changes, no timer. The agent here
//! runs in the background of its VM, with a poll interval of an hour, so
//! that every run it makes was started by a change the server reported.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Calls `done` until it holds, at most `limit`; panics with `what` then.
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Watching {
    child: Child,
    log: std::path::PathBuf,
}

impl Watching {
    fn start(vm: &Vm, url: &str, keys: &Keys, log: &Path) -> Self {
        let child = vm
            .agent(&[
                "run",
                "--cache",
                url,
                "--host",
                "foobar",
                "--trusted-key",
                keys.public_text.trim(),
                "--state-dir",
                "/nix/var/nixcast",
                "--allow-insecure-http",
                "--watch",
                "--min-interval",
                "3s",
                "--poll-interval",
                "1h",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Watching {
            child,
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs started so far (each ends with one of these lines).
    fn runs(&self) -> usize {
        let log = self.log();
        log.matches("run done").count() + log.matches("exit_code=").count()
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn applied(vm: &Vm) -> u64 {
    std::fs::read_to_string(vm.nix().join("var/nixcast/status.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["appliedGeneration"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_watching_agent_applies_each_release_at_once_and_no_more_often_than_its_min_interval() {
    let (work, cache, keys) = scene();
    let build = |version: &'static str| {
        Fixture {
            version,
            ..Default::default()
        }
        .build()
    };
    let gens: Vec<String> = ["w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8"]
        .into_iter()
        .map(build)
        .collect();
    publish(&cache, "foobar", &gens[0], &keys, &[]);
    let server = Server::start(&cache);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let vm = Vm::new();
    let agent = Watching::start(&vm, &server.url, &keys, &work.path().join("agent.log"));
    let limit = Duration::from_secs(60);
    wait_until("generation 1", limit, || applied(&vm) == 1);

    // A release: applied without a timer (the poll interval is an hour).
    publish(&cache, "foobar", &gens[1], &keys, &[]);
    wait_until("generation 2", limit, || applied(&vm) == 2);
    assert!(agent.log().contains("applied"), "{}", agent.log());

    // A pointer that does not verify wakes the agent, which refuses it
    // and goes on watching.
    let attacker = keygen(work.path(), "attacker");
    publish(&cache, "foobar", &gens[2], &attacker, &["--force"]);
    wait_until("the refusal", limit, || {
        agent.log().contains("not signed by any trusted key")
    });
    assert_eq!(applied(&vm), 2);
    publish(&cache, "foobar", &gens[3], &keys, &["--force"]);
    wait_until("the release after it", limit, || applied(&vm) > 2);
    assert!(vm.valid(&[&gens[3]]) && !vm.valid(&[&gens[2]]));
    let after_refusal = applied(&vm);

    // The server restarts: the agent's wait fails, is retried, and the
    // next release reaches it.
    drop(server);
    std::thread::sleep(Duration::from_secs(2));
    let _server = Server::start_listening(&cache, &addr, &[]);
    publish(&cache, "foobar", &gens[4], &keys, &[]);
    wait_until("a release after the restart", limit, || {
        applied(&vm) > after_refusal
    });

    // A burst of releases: at most one run per --min-interval (3 s).
    let before = agent.runs();
    let last = applied(&vm) + 3;
    let start = Instant::now();
    for g in &gens[5..] {
        publish(&cache, "foobar", g, &keys, &[]);
    }
    wait_until("the last release of the burst", limit, || {
        applied(&vm) == last
    });
    let runs = agent.runs() - before;
    let allowed = (start.elapsed().as_secs_f64() / 3.0).ceil() as usize + 1;
    assert!(runs <= allowed, "{runs} runs in {:?}", start.elapsed());
    assert!(vm.valid(&[gens.last().unwrap()]));
}
