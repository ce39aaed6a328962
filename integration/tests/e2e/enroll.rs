//! Enrollment: a fresh machine with nothing but Nix joins the fleet with
//! the one command `nixcast invite` prints, and a token that does not hold
//! is refused everywhere it is checked, with nothing written.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nixcast_common::enroll::{Request, Token};
use nixcast_common::pointer::Timestamp;
use nixcast_common::report::HostKey;
use nixcast_common::SecretKey;

use crate::fleet::put;
use crate::harness::*;

/// The agent's package as `--agent-path` takes it: the cargo-built
/// `nixcast-pull` in a store path of its own (`nix-store --add`). It links
/// the machine's /lib, which a VM here sees: only /nix is its own.
pub(crate) fn agent_package() -> String {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("nixcast-agent");
    std::fs::create_dir_all(pkg.join("bin")).unwrap();
    std::fs::copy(nixcast_pull_path(), pkg.join("bin/nixcast-pull")).unwrap();
    let out = ok(Command::new("nix-store").arg("--add").arg(&pkg));
    stdout(&out).trim().to_owned()
}

struct Scene {
    work: tempfile::TempDir,
    cache: PathBuf,
    keys: Keys,
    fleet_pub: PathBuf,
    recipients: PathBuf,
}

fn scene_with_recipients() -> Scene {
    let (work, cache, keys) = scene();
    std::fs::create_dir_all(&cache).unwrap();
    let recipients = work.path().join("fleet.known_hosts");
    std::fs::write(&recipients, "# the fleet's hosts\n").unwrap();
    let fleet_pub = work.path().join("fleet-1.pub");
    Scene {
        work,
        cache,
        keys,
        fleet_pub,
        recipients,
    }
}

impl Scene {
    fn secret(&self) -> SecretKey {
        SecretKey::parse(std::fs::read_to_string(&self.keys.secret).unwrap().trim()).unwrap()
    }

    fn serve(&self) -> Server {
        Server::start_with(
            &self.cache,
            &[
                "--accept-reports".as_ref(),
                "--recipients-file".as_ref(),
                self.recipients.as_os_str(),
                "--trusted-key-file".as_ref(),
                self.fleet_pub.as_os_str(),
            ],
        )
    }

    fn nixcast(&self, args: &[&str]) -> std::process::Output {
        nixcast()
            .args(args)
            .arg("--cache")
            .arg(&self.cache)
            .output()
            .unwrap()
    }

    fn accept(&self, host: &str) -> std::process::Output {
        self.nixcast(&[
            "enroll",
            "accept",
            "--host",
            host,
            "--recipients-file",
            self.recipients.to_str().unwrap(),
            "--trusted-key-file",
            self.fleet_pub.to_str().unwrap(),
        ])
    }

    fn enrollments(&self) -> String {
        stdout(&ok_output(self.nixcast(&[
            "hosts",
            "--enrollments",
            "--trusted-key-file",
            self.fleet_pub.to_str().unwrap(),
        ])))
    }

    /// Every file under the cache's enrollment directories, with its bytes.
    fn enrollment_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for dir in ["enroll", "enrolled"] {
            for name in files(&self.cache, dir) {
                let p = self.cache.join(dir).join(&name);
                out.push((format!("{dir}/{name}"), std::fs::read(p).unwrap()));
            }
        }
        out
    }
}

/// The host key of a machine, as `ssh-keygen` makes it, and what signs with it.
fn host_key(dir: &Path, name: &str) -> (PathBuf, String, HostKey) {
    let (file, public) = ssh_key(dir, name);
    let key = HostKey::from_openssh(&std::fs::read(&file).unwrap(), name).unwrap();
    (file, public, key)
}

/// What `ssh-keygen -l` prints as the key's fingerprint.
fn ssh_fingerprint(private: &Path) -> String {
    let out = ok(Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(private.with_extension("pub")));
    stdout(&out).split_whitespace().nth(1).unwrap().to_owned()
}

fn token_in(command: &str) -> String {
    let rest = command
        .split("--token ")
        .nth(1)
        .expect("the command has a token");
    rest.split_whitespace().next().unwrap().to_owned()
}

/// Waits (bounded) until `path` exists.
fn wait_for(path: &Path, child: &mut Child, log: &Path) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "the command ended ({st}) before {} appeared:\n{}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{} did not appear:\n{}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_exit(child: &mut Child, log: &Path) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!(
                "the agent did not finish:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_fresh_machine_joins_the_fleet_with_the_one_command_invite_prints() {
    let s = scene_with_recipients();
    let server = s.serve();
    let agent = agent_package();
    let (web3_key, _, web3) = host_key(s.work.path(), "web3");
    let state = "--agent-arg=--state-dir=/nix/var/nixcast".to_owned();
    let identity = format!("--agent-arg=--identity={}", web3_key.display());
    let report_to = format!("--agent-arg=--report-to={}", server.url);
    let out = ok_output(s.nixcast(&[
        "invite",
        "--host",
        "web3",
        "--url",
        &server.url,
        "--secret-key-file",
        s.keys.secret.to_str().unwrap(),
        "--agent-path",
        &agent,
        // A debug build of the agent is large: xz would take minutes.
        "--compression",
        "zstd",
        &state,
        &identity,
        &report_to,
    ]));
    let command = stdout(&out);
    assert_eq!(command.lines().count(), 1, "{command}");
    assert!(command.starts_with("nix-store -r "), "{command}");
    assert!(
        stderr(&out).contains("(from --agent-path)"),
        "{}",
        stderr(&out)
    );
    assert!(s.cache.join("agents/web3.json").exists());

    // The VM has an empty /nix: Nix fetches the agent from the cache.
    let vm = Vm::new();
    let log = s.work.path().join("vm.log");
    let nix_cache = tempfile::tempdir().unwrap();
    let mut child = vm
        .cmd(&["sh", "-c", command.trim()])
        .env("XDG_CACHE_HOME", nix_cache.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let request = s.cache.join("enroll/web3.json");
    wait_for(&request, &mut child, &log);
    assert!(vm.valid(&[agent.as_str()]), "the agent came through Nix");
    let listed = s.enrollments();
    let fingerprint = ssh_fingerprint(&web3_key);
    assert!(
        listed.contains(&format!("web3\t{fingerprint}\t")),
        "{listed}"
    );

    // The token is bound to web3's key now: another key gets 403, and the
    // pending request stays as it was.
    let token = token_in(&command);
    let (_, _, intruder) = host_key(s.work.path(), "intruder");
    let pending = std::fs::read(&request).unwrap();
    let theirs = Request::new("web3", &intruder, &token).sign(&intruder);
    assert_eq!(put(&server.url, "/enroll/web3.json", &theirs), 403);
    assert_eq!(std::fs::read(&request).unwrap(), pending);

    let accepted = ok_output(s.accept("web3"));
    assert!(
        stdout(&accepted).contains(&fingerprint),
        "{}",
        stdout(&accepted)
    );
    let recipients = std::fs::read_to_string(&s.recipients).unwrap();
    let line = format!(
        "web3 {}",
        nixcast_common::enroll::openssh_line(&web3.public())
    );
    assert!(recipients.lines().any(|l| l == line), "{recipients}");
    assert!(files(&s.cache, "enroll").is_empty());
    assert_eq!(files(&s.cache, "enrolled").len(), 1);
    assert!(files(&s.cache, "agents").is_empty());

    // Used: even web3's own key cannot use the token again.
    let again = Request::new("web3", &web3, &token).sign(&web3);
    assert_eq!(put(&server.url, "/enroll/web3.json", &again), 403);
    assert!(files(&s.cache, "enroll").is_empty());

    // The ordinary sealed publish; the waiting agent applies it.
    let system = Fixture {
        host: "web3",
        ..Default::default()
    }
    .build();
    let rf = s.recipients.to_str().unwrap();
    publish(
        &s.cache,
        "web3",
        &system,
        &s.keys,
        &["--recipients-file", rf],
    );
    let st = wait_exit(&mut child, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "{st}\n{said}");
    assert!(said.contains("waiting for web3 to be accepted"), "{said}");
    assert!(vm.valid(&[system.as_str()]));
    assert!(
        vm.switch_log().iter().any(|l| l.ends_with(&system)),
        "{said}"
    );
    let sealed = std::fs::read_to_string(s.cache.join("hosts/web3.json")).unwrap();
    assert!(!sealed.contains("/nix/store"), "a sealed pointer");
    let hosts = stdout(&ok_output(s.nixcast(&["hosts"])));
    assert!(hosts.contains("web3"), "{hosts}");
    // Its first report, verified by serve with the key accepted while it ran.
    assert!(s.cache.join("reports/web3.json").exists(), "{said}");
}

/// A request for `host` carrying `key`, with `token`, as an agent sends it.
fn request(host: &str, key: &HostKey, token: &str) -> Vec<u8> {
    Request::new(host, key, token).sign(key)
}

/// Tokens that must not hold, and requests that must not verify, each
/// with what the refusal says.
fn bad_requests(s: &Scene, web3: &HostKey, other: &HostKey) -> Vec<(&'static str, Vec<u8>)> {
    let fleet = s.secret();
    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    let mut expired = Token::new("web3", "http://c", day);
    expired.issued_at = Timestamp::from_system_time(now - 2 * day);
    expired.expires_at = Timestamp::from_system_time(now - day);
    let web4 = Token::new("web4", "http://c", day).sign(&fleet);
    let stranger = SecretKey::generate("fleet-1").unwrap();
    let unsigned = Token::new("web3", "http://c", day).sign(&stranger);
    let good = Token::new("web3", "http://c", day).sign(&fleet);
    vec![
        (
            "the token expired",
            request("web3", web3, &expired.sign(&fleet)),
        ),
        ("is for host \"web4\"", request("web3", web3, &web4)),
        (
            "not signed by a trusted fleet key",
            request("web3", web3, &unsigned),
        ),
        (
            "not signed by the SSH key it carries",
            Request::new("web3", web3, &good).sign(other),
        ),
    ]
}

#[test]
fn tokens_that_do_not_hold_are_refused_at_serve_and_at_accept_and_nothing_is_written() {
    let s = scene_with_recipients();
    let (_, _, web3) = host_key(s.work.path(), "web3");
    let (_, _, other) = host_key(s.work.path(), "other");
    let recipients_before = std::fs::read(&s.recipients).unwrap();
    let server = s.serve();
    for (why, body) in bad_requests(&s, &web3, &other) {
        assert_eq!(put(&server.url, "/enroll/web3.json", &body), 403, "{why}");
        assert!(s.enrollment_files().is_empty(), "{why}");
    }
    // A server that was given no fleet key takes no request at all.
    let fleet = s.secret();
    let good = Token::new("web3", "http://c", Duration::from_secs(3600)).sign(&fleet);
    let keyless = Server::start_with(
        &s.cache,
        &[
            "--accept-reports".as_ref(),
            "--recipients-file".as_ref(),
            s.recipients.as_os_str(),
        ],
    );
    assert_eq!(
        put(
            &keyless.url,
            "/enroll/web3.json",
            &request("web3", &web3, &good)
        ),
        403
    );
    assert!(s.enrollment_files().is_empty());

    // A cache nobody checked (a directory, a bucket): `enroll accept` does.
    let held = s.cache.join("enroll/web3.json");
    std::fs::create_dir_all(held.parent().unwrap()).unwrap();
    for (why, body) in bad_requests(&s, &web3, &other) {
        std::fs::write(&held, &body).unwrap();
        let out = s.accept("web3");
        assert!(!out.status.success(), "{why}");
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
        assert_eq!(
            std::fs::read(&s.recipients).unwrap(),
            recipients_before,
            "{why}"
        );
        assert!(files(&s.cache, "enrolled").is_empty(), "{why}");
    }
    // Used twice: the second accept of the same token is refused.
    let once = request("web3", &web3, &good);
    std::fs::write(&held, &once).unwrap();
    ok_output(s.accept("web3"));
    let recipients_after = std::fs::read(&s.recipients).unwrap();
    std::fs::write(&held, &once).unwrap();
    let out = s.accept("web3");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("used already"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&s.recipients).unwrap(), recipients_after);
    assert_eq!(files(&s.cache, "enrolled").len(), 1);

    // At serve: the first request binds its token to its key; another
    // key's is refused, and once accepted, the same key's too.
    let token = Token::new("web5", "http://c", Duration::from_secs(3600)).sign(&fleet);
    let first = request("web5", &web3, &token);
    assert_eq!(put(&server.url, "/enroll/web5.json", &first), 204);
    // The same host sending again (a restart) is taken.
    assert_eq!(put(&server.url, "/enroll/web5.json", &first), 204);
    let theirs = request("web5", &other, &token);
    assert_eq!(put(&server.url, "/enroll/web5.json", &theirs), 403);
    let pending = s.cache.join("enroll/web5.json");
    assert_eq!(std::fs::read(&pending).unwrap(), first);
    // --all takes every pending request that verifies: web5's, not web3's
    // (its token was used).
    let all = ok_output(s.nixcast(&[
        "enroll",
        "accept",
        "--all",
        "--recipients-file",
        s.recipients.to_str().unwrap(),
        "--trusted-key-file",
        s.fleet_pub.to_str().unwrap(),
    ]));
    assert_eq!(stdout(&all).lines().count(), 1, "{}", stdout(&all));
    assert!(
        stdout(&all).starts_with("accepted web5 "),
        "{}",
        stdout(&all)
    );
    assert_eq!(put(&server.url, "/enroll/web5.json", &first), 403);
    assert!(!pending.exists());
}

#[test]
fn a_host_enrolls_through_a_bucket() {
    let moto = crate::s3::Moto::start();
    moto.public_bucket("fleet-cache");
    let s = scene_with_recipients();
    let target = format!(
        "s3://fleet-cache/prod?endpoint={}&region=us-east-1",
        moto.endpoint()
    );
    let url = format!("{}/fleet-cache/prod", moto.endpoint());
    let s3 = |args: &[&str]| crate::s3::s3_cmd(args).output().unwrap();
    let secret = s.keys.secret.to_str().unwrap();
    let agent = agent_package();
    let out = ok_output(s3(&[
        "invite",
        "--cache",
        &target,
        "--url",
        &url,
        "--host",
        "web3",
        "--secret-key-file",
        secret,
        "--agent-path",
        &agent,
        // A debug build of the agent is large: xz would take minutes.
        "--compression",
        "zstd",
    ]));
    let token = token_in(&stdout(&out));

    // The agent sends its request into the bucket (it may write there) and waits.
    let (web3_key, _, _) = host_key(s.work.path(), "web3");
    let vm = Vm::new();
    let log = s.work.path().join("vm.log");
    let mut child = vm
        .agent(&[
            "enroll",
            "--cache",
            &url,
            "--host",
            "web3",
            "--trusted-key",
            s.keys.public_text.trim(),
            "--token",
            &token,
            "--allow-insecure-http",
            "--state-dir",
            "/nix/var/nixcast",
            "--identity",
            web3_key.to_str().unwrap(),
            "--report-to",
            &target,
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let fleet_pub = s.fleet_pub.to_str().unwrap();
    let start = Instant::now();
    let fingerprint = ssh_fingerprint(&web3_key);
    loop {
        let listed = stdout(&ok_output(s3(&[
            "hosts",
            "--enrollments",
            "--cache",
            &target,
            "--trusted-key-file",
            fleet_pub,
        ])));
        if listed.contains(&format!("web3\t{fingerprint}\t")) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no request: {listed}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let rf = s.recipients.to_str().unwrap();
    ok_output(s3(&[
        "enroll",
        "accept",
        "--cache",
        &target,
        "--host",
        "web3",
        "--recipients-file",
        rf,
        "--trusted-key-file",
        fleet_pub,
    ]));
    assert!(std::fs::read_to_string(&s.recipients)
        .unwrap()
        .contains("web3 ssh-ed25519 "));
    let listed = stdout(&ok_output(s3(&[
        "hosts",
        "--enrollments",
        "--cache",
        &target,
        "--trusted-key-file",
        fleet_pub,
    ])));
    assert!(listed.is_empty(), "{listed}");

    let system = Fixture {
        host: "web3",
        ..Default::default()
    }
    .build();
    ok_output(s3(&[
        "publish",
        "--host",
        "web3",
        "--path",
        &system,
        "--cache",
        &target,
        "--secret-key-file",
        secret,
        "--recipients-file",
        rf,
    ]));
    let st = wait_exit(&mut child, &log);
    assert!(
        st.success(),
        "{st}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(vm.valid(&[system.as_str()]));
}

#[test]
fn the_agent_stops_with_a_clear_error_and_its_own_exit_code() {
    let s = scene_with_recipients();
    let server = s.serve();
    let (web3_key, _, _) = host_key(s.work.path(), "web3");
    let fleet = s.secret();
    let token = |host: &str| Token::new(host, &server.url, Duration::from_secs(3600)).sign(&fleet);
    let vm = Vm::new();
    let enroll = |token: &str, identity: &str, extra: &[&str]| {
        let mut args = vec![
            "enroll",
            "--cache",
            &server.url,
            "--host",
            "web3",
            "--trusted-key",
            s.keys.public_text.trim(),
            "--token",
            token,
            "--allow-insecure-http",
            "--state-dir",
            "/nix/var/nixcast",
            "--identity",
            identity,
        ];
        args.extend_from_slice(extra);
        vm.agent(&args).output().unwrap()
    };
    let key = web3_key.to_str().unwrap();

    // A token for another host: refused here, before anything is sent.
    let out = enroll(&token("web4"), key, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("for host \"web4\""),
        "{}",
        stderr(&out)
    );
    assert!(s.enrollment_files().is_empty());

    // No host key: enroll never makes one.
    let missing = s.work.path().join("no-such-key");
    let out = enroll(&token("web3"), missing.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("never makes one"), "{}", stderr(&out));
    assert!(s.enrollment_files().is_empty());

    // Sent, never accepted: exit 8 once --enroll-timeout passed.
    let t = token("web3");
    let started = Instant::now();
    let out = enroll(&t, key, &["--enroll-timeout", "3s"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        stderr(&out).contains("waiting for web3"),
        "{}",
        stderr(&out)
    );
    assert!(s.cache.join("enroll/web3.json").exists());

    // The server refuses (the token is bound to another key now): exit 3, with its reason.
    let (other_key, _, _) = host_key(s.work.path(), "other");
    let out = enroll(&t, other_key.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bound to another key"),
        "{}",
        stderr(&out)
    );
}

/// The plain-host variant, on a fleet whose hosts trust root keys: the
/// command carries the roots, and no accept is needed before a plain publish.
#[test]
fn a_plain_host_that_trusts_roots_joins_without_an_accept() {
    let s = scene_with_recipients();
    let root = keygen(s.work.path(), "root-1");
    ok(nixcast()
        .args(["keys", "sign", "--cache"])
        .arg(&s.cache)
        .arg("--root-secret-key-file")
        .arg(&root.secret)
        .arg("--signing-key-file")
        .arg(&s.fleet_pub));
    let server = s.serve();
    let agent = agent_package();
    let (web4_key, _, _) = host_key(s.work.path(), "web4");
    let root_pub = s.work.path().join("root-1.pub");
    let identity = format!("--agent-arg=--identity={}", web4_key.display());
    let out = ok_output(s.nixcast(&[
        "invite",
        "--host",
        "web4",
        "--url",
        &server.url,
        "--secret-key-file",
        s.keys.secret.to_str().unwrap(),
        "--agent-path",
        &agent,
        "--compression",
        "zstd",
        "--root-key-file",
        root_pub.to_str().unwrap(),
        "--agent-arg=--state-dir=/nix/var/nixcast",
        &identity,
    ]));
    let command = stdout(&out);
    let enroll = command.split(" && ").nth(1).unwrap();
    assert!(
        enroll.contains(&format!("--root-key {}", root.public_text.trim())),
        "{command}"
    );
    assert!(!enroll.contains("--trusted-key"), "{command}");

    let vm = Vm::new();
    let log = s.work.path().join("vm.log");
    let nix_cache = tempfile::tempdir().unwrap();
    let mut child = vm
        .cmd(&["sh", "-c", command.trim()])
        .env("XDG_CACHE_HOME", nix_cache.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(&s.cache.join("enroll/web4.json"), &mut child, &log);
    let system = Fixture {
        host: "web4",
        ..Default::default()
    }
    .build();
    publish(&s.cache, "web4", &system, &s.keys, &[]);
    let st = wait_exit(&mut child, &log);
    assert!(
        st.success(),
        "{st}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(vm.switch_log().iter().any(|l| l.ends_with(&system)));
    assert_eq!(vm.status()["appliedGeneration"], 1);
}
