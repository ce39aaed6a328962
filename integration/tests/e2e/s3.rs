//! An S3-compatible bucket as the target (moto's server on loopback): the
//! same layout, pulled by the agent and by `nix copy` over its HTTP endpoint.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::harness::*;

pub(crate) struct Moto {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Moto {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// moto_server with these environment variables (e.g. moto's
    /// `INITIAL_NO_AUTH_ACTION_COUNT`, after which it checks every signature).
    pub(crate) fn start_with(env: &[(&str, &str)]) -> Self {
        let found = Command::new("sh")
            .args(["-c", "command -v moto_server"])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "moto_server is missing: install it with `python3 -m pip install 'moto[server]'`"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        let mut waited = 0;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(waited < 300, "moto_server did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
            waited += 1;
        }
        Moto { child, port, log }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes a bucket anyone may read, as one served to hosts would be.
    /// (Real S3 authorises HEAD as s3:GetObject; moto wants s3:HeadObject too,
    /// and Nix asks for narinfos with HEAD first.)
    pub(crate) fn public_bucket(&self, name: &str) {
        let script = format!(
            r#"
import boto3, json
s3 = boto3.client("s3", endpoint_url="{ep}", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket="{name}")
s3.put_bucket_policy(Bucket="{name}", Policy=json.dumps({{"Version": "2012-10-17", "Statement": [
  {{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:HeadObject"], "Resource": "arn:aws:s3:::{name}/*"}}]}}))
"#,
            ep = self.endpoint()
        );
        ok(Command::new("python3").args(["-c", &script]));
    }

    /// PUT requests since the last call, as paths.
    fn take_puts(&self) -> Vec<String> {
        std::thread::sleep(std::time::Duration::from_millis(200));
        std::mem::take(&mut *self.log.lock().unwrap())
            .into_iter()
            .filter_map(|l| {
                l.split_once("\"PUT ")
                    .map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_owned())
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn s3_cmd(args: &[&str]) -> Command {
    let mut c = nixcast();
    c.args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE");
    c
}

#[test]
fn publish_to_s3_pull_from_its_http_endpoint_republish_and_gc() {
    let moto = Moto::start();
    moto.public_bucket("fleet-cache");
    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path(), "fleet-1");
    let target = format!(
        "s3://fleet-cache/prod?endpoint={}&region=us-east-1",
        moto.endpoint()
    );
    let gen1 = Fixture {
        version: "s3-1",
        ..Default::default()
    }
    .build();
    let gen2 = Fixture {
        version: "s3-2",
        ..Default::default()
    }
    .build();
    let secret = keys.secret.to_str().unwrap().to_owned();
    let publish_s3 = |top: &str| {
        ok(&mut s3_cmd(&[
            "publish",
            "--host",
            "foobar",
            "--path",
            top,
            "--cache",
            &target,
            "--secret-key-file",
            &secret,
        ]))
    };
    publish_s3(&gen1);
    let puts = moto.take_puts();
    assert_eq!(
        puts.iter().filter(|p| p.contains("/nar/")).count(),
        closure(&gen1).len(),
        "{puts:?}"
    );

    // The agent and Nix itself read the bucket over plain HTTP.
    let url = format!("{}/fleet-cache/prod", moto.endpoint());
    let vm = Vm::new();
    let out = vm.pull(&url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm.valid(&closure(&gen1)));
    let vm2 = Vm::new();
    let out = vm2.nix_copy_from(&url, &keys.public_text, &gen1);
    assert!(out.status.success(), "{}", stderr(&out));

    // A republish after one change uploads only the changed objects.
    publish_s3(&gen1);
    assert!(moto.take_puts().is_empty());
    publish_s3(&gen2);
    let changed = closure(&gen2)
        .iter()
        .filter(|p| !closure(&gen1).contains(p))
        .count();
    let puts = moto.take_puts();
    assert_eq!(
        puts.iter().filter(|p| p.contains("/nar/")).count(),
        changed,
        "{puts:?}"
    );
    assert_eq!(
        puts.iter().filter(|p| p.ends_with(".narinfo")).count(),
        changed,
        "{puts:?}"
    );
    assert_eq!(
        puts.iter().filter(|p| p.contains("/deltas/")).count(),
        changed,
        "{puts:?}"
    );
    assert_eq!(
        puts.len(),
        3 * changed + 5,
        "NARs, narinfos, NAR deltas, manifest, its delta, the NAR-delta index, history, \
         pointer: {puts:?}"
    );
    let out = vm.pull(&url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(vm.switch_log().last().unwrap(), &format!("switch {gen2}"));

    // hosts and gc work on the bucket too.
    let out = ok(&mut s3_cmd(&["hosts", "--json", "--cache", &target]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["generation"], 2);
    let out = ok(&mut s3_cmd(&[
        "gc", "--cache", &target, "--keep", "1", "--grace", "0s",
    ]));
    assert!(
        stdout(&out).contains(&format!("freed {} files", 2 * changed + 2)),
        "{}",
        stdout(&out)
    );
    let fresh = Vm::new();
    let out = fresh.pull(&url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fresh.valid(&closure(&gen2)));
}

#[test]
fn a_large_nar_goes_up_in_parts_and_pulls_back_intact() {
    let moto = Moto::start();
    moto.public_bucket("big-cache");
    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path(), "fleet-1");
    let target = format!(
        "s3://big-cache?endpoint={}&region=us-east-1",
        moto.endpoint()
    );
    // A 20 MiB library stored uncompressed: more than two 8 MiB parts.
    let top = Fixture {
        n: 1,
        version: "s3-big",
        big: 20 << 20,
        ..Default::default()
    }
    .build();
    let secret = keys.secret.to_str().unwrap().to_owned();
    ok(&mut s3_cmd(&[
        "publish",
        "--host",
        "foobar",
        "--path",
        &top,
        "--cache",
        &target,
        "--secret-key-file",
        &secret,
        "--compression",
        "none",
    ]));
    let puts = moto.take_puts();
    assert!(
        puts.iter().any(|p| p.contains("partNumber=3")),
        "no multipart upload: {puts:?}"
    );
    let vm = Vm::new();
    let out = vm.pull(&format!("{}/big-cache", moto.endpoint()), &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm.valid(&closure(&top)));
}
