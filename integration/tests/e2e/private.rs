//! Private caches, the way Nix users run them: nginx with basic auth and a
//! netrc file, and a bucket whose server checks every request's signature.
//! The credentials open the cache, only the right host gets them, and they
//! appear in no output, status file or metrics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::harness::*;
use crate::s3::Moto;

/// Has `"`, `#` and a space, so the netrc needs its quoting rules.
const PASSWORD: &str = "n1x \"s3cr3t\" #pw";
const UPSTREAM_PASSWORD: &str = "upstream-0b5e7c-pw";

fn nginx_binary() -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", "command -v nginx || ls /usr/sbin/nginx"])
        .output()
        .unwrap();
    let path = stdout(&found)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    assert!(
        found.status.success() && !path.is_empty(),
        "nginx is missing: these tests need it; install it with `apt-get install -y nginx`"
    );
    PathBuf::from(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx on loopback, one process (so that killing it leaves no worker):
/// - `cache` on 127.0.0.1:`port`, behind basic auth for the user `fleet`;
///   `/moved/…` answers a redirect to the other server instead;
/// - `upstream` on `up_port`, behind basic auth for the user `up` when the
///   agent asks (the publisher, which checks upstream narinfos, has no
///   credentials and is let through by its User-Agent).
///
/// The access log has one line per request: `PORT USER STATUS URI`.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    up_port: u16,
}

impl Nginx {
    fn start(cache: &Path, upstream: &Path) -> Self {
        let nginx = nginx_binary();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("fleet.htpasswd"),
            format!("fleet:{{PLAIN}}{PASSWORD}\n"),
        )
        .unwrap();
        std::fs::write(
            d.join("up.htpasswd"),
            format!("up:{{PLAIN}}{UPSTREAM_PASSWORD}\n"),
        )
        .unwrap();
        let (port, up_port) = (free_port(), free_port());
        let conf = format!(
            r#"
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format t '$server_port $remote_user $status $uri';
    access_log {d}/access.log t;
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    map $http_user_agent $upstream_realm {{
        ~^nixcast-pull/ "upstream";
        default off;
    }}
    server {{
        listen 127.0.0.1:{port};
        root {cache};
        auth_basic "fleet cache";
        auth_basic_user_file {d}/fleet.htpasswd;
        location /moved/ {{
            return 302 http://127.0.0.1:{up_port}/;
        }}
    }}
    server {{
        listen 127.0.0.1:{up_port};
        root {upstream};
        auth_basic $upstream_realm;
        auth_basic_user_file {d}/up.htpasswd;
    }}
}}
"#,
            d = d.display(),
            cache = cache.display(),
            upstream = upstream.display(),
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-p")
            .arg(d)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut waited = 0;
        while [port, up_port]
            .iter()
            .any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
        {
            assert!(
                waited < 300,
                "nginx did not start: {}",
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
            waited += 1;
        }
        Nginx {
            child,
            dir,
            port,
            up_port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The access log so far, as (port, user, status, uri).
    fn log(&self) -> Vec<(u16, String, u16, String)> {
        // nginx writes a line once the response is sent, which is before the
        // agent exits; a moment more covers the last one.
        std::thread::sleep(std::time::Duration::from_millis(200));
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                (
                    w[0].parse().unwrap(),
                    w[1].to_owned(),
                    w[2].parse().unwrap(),
                    w[3].to_owned(),
                )
            })
            .collect()
    }

    fn clear_log(&self) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        std::fs::write(self.dir.path().join("access.log"), "").unwrap();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nixcast-pull run` in `vm` with these arguments and environment.
fn pull(vm: &Vm, cache: &str, keys: &Keys, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "run",
        "--cache",
        cache,
        "--host",
        "foobar",
        "--trusted-key",
        keys.public_text.as_str(),
        "--state-dir",
        "/nix/var/nixcast",
        "--metrics-file",
        "/nix/var/nixcast.prom",
        "--allow-insecure-http",
    ];
    args.extend_from_slice(extra);
    vm.agent(&args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Everything the agent showed or kept: its outputs, status.json and the
/// metrics file.
fn everything_shown(vm: &Vm, outs: &[&Output]) -> String {
    let mut all = String::new();
    for o in outs {
        all.push_str(&stdout(o));
        all.push_str(&stderr(o));
    }
    for f in ["var/nixcast/status.json", "var/nixcast.prom"] {
        all.push_str(&std::fs::read_to_string(vm.nix().join(f)).unwrap_or_default());
    }
    all
}

fn assert_never_shown(all: &str, login: &str, secret: &str) {
    let basic = data_encoding::BASE64.encode(format!("{login}:{secret}").as_bytes());
    for s in [secret, basic.as_str()] {
        assert!(!all.contains(s), "{s:?} was shown:\n{all}");
    }
}

#[test]
fn netrc_opens_a_private_cache_and_its_upstream_each_with_its_own_login() {
    let work = tempfile::tempdir().unwrap();
    let (ours, up) = (work.path().join("cache"), work.path().join("upstream"));
    let keys = keygen(work.path(), "fleet-1");
    let upkeys = keygen(work.path(), "upstream-1");
    let top = Fixture {
        version: "private",
        ..Default::default()
    }
    .build();
    let all = closure(&top);
    let shared: Vec<&String> = all.iter().filter(|p| p.contains("-pkg-")).collect();
    nix_copy_to(up.as_path(), &upkeys, &shared);
    std::fs::create_dir_all(&ours).unwrap();
    let nginx = Nginx::start(&ours, &up);
    // The upstream's host is `localhost`, the cache's `127.0.0.1`: netrc
    // entries are per host name.
    let upstream_url = format!("http://localhost:{}", nginx.up_port);
    publish(
        &ours,
        "foobar",
        &top,
        &keys,
        &[
            "--upstream",
            &upstream_url,
            "--upstream-key",
            &upkeys.public_text,
        ],
    );

    // (The publisher asked the upstream for its narinfos.)
    nginx.clear_log();

    // Without credentials: a clear fetch failure that names the 401.
    let vm = Vm::new();
    let none = pull(&vm, &nginx.url(), &keys, &[], &[]);
    assert_eq!(none.status.code(), Some(4), "{}", stderr(&none));
    assert!(
        stderr(&none).contains("401") && stderr(&none).contains("--netrc-file"),
        "{}",
        stderr(&none)
    );
    assert!(vm.status()["lastError"].as_str().unwrap().contains("401"));

    // An entry for another host name gives this one nothing.
    let netrc = work.path().join("netrc");
    std::fs::write(
        &netrc,
        format!("machine localhost login up password {UPSTREAM_PASSWORD}\n"),
    )
    .unwrap();
    let netrc_arg = netrc.to_str().unwrap();
    let wrong_host = pull(&vm, &nginx.url(), &keys, &["--netrc-file", netrc_arg], &[]);
    assert_eq!(wrong_host.status.code(), Some(4), "{}", stderr(&wrong_host));
    assert!(
        stderr(&wrong_host).contains("401"),
        "{}",
        stderr(&wrong_host)
    );
    assert!(!vm.valid(&[&top]));
    let log = nginx.log();
    assert!(
        log.iter()
            .all(|(port, user, ..)| *port == nginx.port && user == "-"),
        "{log:?}"
    );
    nginx.clear_log();

    // Nix's netrc format, with a quoted password, a comment and a default
    // entry that must not be used for either host.
    std::fs::write(
        &netrc,
        format!(
            "# the fleet cache\n\
             machine 127.0.0.1\n  login fleet\n  password \"{}\"\n\
             machine LOCALHOST login up password {UPSTREAM_PASSWORD}\n\
             default login nobody password nothing\n",
            PASSWORD.replace('"', "\\\"")
        ),
    )
    .unwrap();
    let good = pull(
        &vm,
        &nginx.url(),
        &keys,
        &["--netrc-file", netrc_arg],
        &[("NIXCAST_LOG", "trace")],
    );
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(vm.valid(&all));
    assert_eq!(vm.switch_log(), [format!("switch {top}")]);
    let log = nginx.log();
    let (cache_reqs, up_reqs): (Vec<_>, Vec<_>) =
        log.iter().partition(|(port, ..)| *port == nginx.port);
    assert!(
        cache_reqs
            .iter()
            .all(|(_, user, status, _)| user == "fleet" && *status == 200),
        "{cache_reqs:?}"
    );
    assert_eq!(
        up_reqs
            .iter()
            .filter(|(_, user, status, uri)| user == "up"
                && *status == 200
                && uri.starts_with("/nar/"))
            .count(),
        shared.len() + 1,
        "the packages and base-lib come from the upstream: {up_reqs:?}"
    );
    assert!(
        up_reqs.iter().all(|(_, user, ..)| user == "up"),
        "{up_reqs:?}"
    );

    let shown = everything_shown(&vm, &[&none, &wrong_host, &good]);
    assert!(shown.contains("nixcast_"), "the metrics file was written");
    assert_never_shown(&shown, "fleet", PASSWORD);
    assert_never_shown(&shown, "up", UPSTREAM_PASSWORD);
}

#[test]
fn credentials_never_go_in_a_cache_url_nor_across_a_redirect() {
    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path(), "fleet-1");
    let (cache, up) = (work.path().join("cache"), work.path().join("up"));
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&up).unwrap();
    let nginx = Nginx::start(&cache, &up);
    let vm = Vm::new();

    let in_url = format!("http://fleet:{PASSWORD}@127.0.0.1:{}", nginx.port);
    let refused = pull(&vm, &in_url, &keys, &[], &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--netrc-file"),
        "{}",
        stderr(&refused)
    );
    assert!(nginx.log().is_empty(), "nothing was sent");

    // The cache redirects to another origin: refused, and that origin never
    // sees the credentials (nor any request).
    let netrc = work.path().join("netrc");
    std::fs::write(
        &netrc,
        format!(
            "default login fleet password \"{}\"\n",
            PASSWORD.replace('"', "\\\"")
        ),
    )
    .unwrap();
    let moved = format!("{}/moved", nginx.url());
    let out = pull(
        &vm,
        &moved,
        &keys,
        &["--netrc-file", netrc.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("another origin"), "{}", stderr(&out));
    let log = nginx.log();
    assert!(
        log.iter().all(|(port, ..)| *port == nginx.port),
        "the other origin was asked: {log:?}"
    );
    assert!(
        log.iter().any(|(_, _, status, _)| *status == 302),
        "{log:?}"
    );
    assert_never_shown(&everything_shown(&vm, &[&refused, &out]), "fleet", PASSWORD);
}

/// A moto bucket with no public policy, whose server checks the signature of
/// every request after the few that create the IAM user (moto's
/// `INITIAL_NO_AUTH_ACTION_COUNT`).
#[test]
fn a_private_bucket_is_read_with_aws_credentials_only() {
    let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]);
    let script = format!(
        r#"
import boto3, json
ep = "{ep}"
iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="fleet")
iam.put_user_policy(UserName="fleet", PolicyName="s3", PolicyDocument=json.dumps({{
    "Version": "2012-10-17",
    "Statement": [{{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}}]}}))
key = iam.create_access_key(UserName="fleet")["AccessKey"]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
s3.create_bucket(Bucket="private-cache")
print(key["AccessKeyId"], key["SecretAccessKey"])
"#,
        ep = moto.endpoint()
    );
    let out = ok(Command::new("python3").args(["-c", &script]));
    let text = stdout(&out);
    let (key_id, secret) = text.trim().split_once(' ').unwrap();
    let creds = [
        ("AWS_ACCESS_KEY_ID", key_id),
        ("AWS_SECRET_ACCESS_KEY", secret),
    ];

    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path(), "fleet-1");
    let top = Fixture {
        version: "private-s3",
        ..Default::default()
    }
    .build();
    let target = format!(
        "s3://private-cache/prod?endpoint={}&region=us-east-1",
        moto.endpoint()
    );
    // Published to a directory and uploaded with boto3: moto's signature
    // check rejects the signed *listing* object_store sends for `publish --to
    // s3://` (a quirk of moto's canonical query string, not of S3), and the
    // publisher's bucket writes are s3.rs's business; here the reader is tested.
    let dir = work.path().join("cache");
    publish(&dir, "foobar", &top, &keys, &[]);
    let upload = format!(
        r#"
import boto3, os, sys
s3 = boto3.client("s3", endpoint_url="{ep}", region_name="us-east-1")
root = sys.argv[1]
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        s3.upload_file(p, "private-cache", "prod/" + os.path.relpath(p, root))
"#,
        ep = moto.endpoint()
    );
    ok(Command::new("python3")
        .args(["-c", &upload])
        .arg(&dir)
        .env_remove("AWS_PROFILE")
        .envs(creds));

    // Not readable anonymously over HTTP, nor with a wrong secret: moto
    // checks the signature.
    let vm = Vm::new();
    let http = format!("{}/private-cache/prod", moto.endpoint());
    let anonymous = pull(&vm, &http, &keys, &[], &[]);
    assert_eq!(anonymous.status.code(), Some(4), "{}", stderr(&anonymous));
    let wrong_secret = "wrong-secret-8d1f2a";
    let wrong = pull(
        &vm,
        &target,
        &keys,
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", key_id),
            ("AWS_SECRET_ACCESS_KEY", wrong_secret),
        ],
    );
    assert_eq!(wrong.status.code(), Some(4), "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("access denied (SignatureDoesNotMatch)"),
        "{}",
        stderr(&wrong)
    );
    assert!(!vm.valid(&[&top]));

    // The credentials as the NixOS module hands them over: a file of
    // AWS_* variables (`--environment-file`), not the process environment.
    let env_file = work.path().join("aws.env");
    std::fs::write(
        &env_file,
        format!(
            "# the fleet's reader
AWS_ACCESS_KEY_ID={key_id}
AWS_SECRET_ACCESS_KEY=\"{secret}\"
"
        ),
    )
    .unwrap();
    let good = pull(
        &vm,
        &target,
        &keys,
        &["--environment-file", env_file.to_str().unwrap()],
        &[("NIXCAST_LOG", "trace")],
    );
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(vm.valid(&closure(&top)));
    assert_eq!(vm.switch_log(), [format!("switch {top}")]);
    // The next poll asks with the pointer's ETag: one conditional GET.
    let again = pull(
        &vm,
        &target,
        &keys,
        &["--environment-file", env_file.to_str().unwrap()],
        &[],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("pointer not modified"),
        "{}",
        stderr(&again)
    );
    let shown = everything_shown(&vm, &[&anonymous, &wrong, &good, &again]);
    assert!(shown.contains("nixcast_"), "the metrics file was written");
    for s in [secret, wrong_secret] {
        assert!(!shown.contains(s), "{s:?} was shown:\n{shown}");
    }
}
