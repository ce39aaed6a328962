//! The NixOS module (`module.nix`) and the flake (`flake.nix`), checked
//! without nixpkgs and without network:
//!
//! - both parse;
//! - `flake.nix`'s outputs, evaluated with a stub nixpkgs, pass the expected
//!   arguments to `buildRustPackage` and wire the module to the package;
//! - `module.nix`, evaluated under the real module system (nixpkgs' `lib`
//!   as `<nixpkgs/lib>` from `NIX_PATH`, with the NixOS options it sets
//!   declared in `fixtures/eval-module.nix`), gives the expected service and
//!   timer, exact values included; its assertions and option types refuse
//!   bad settings, and a host's overrides merge as on NixOS;
//! - the units rendered from that evaluation pass `systemd-analyze verify`
//!   (unknown directives, bad quoting) and the calendar expression parses;
//! - the agent still imports, sets the profile and switches inside the
//!   sandbox the unit describes: `/nix` read-only except the unit's
//!   `ReadWritePaths`, an inaccessible `/root`, and the import going through a
//!   nix-daemon, emulated with mount namespaces.
//!
//! NixOS's own rendering of the units and the sandbox a real systemd applies
//! are checked by `integration/interop.sh` (a booted Debian trixie root).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::harness::*;

const EVAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/eval-module.nix");
const PACKAGE: &str = "/nix/store/11111111111111111111111111111111-nixcast-0.1.0";
const KEY: &str = "fleet-1:WyM4+q4C6kFe/P1tQe2513YA16YFI+HkW+5UGka8FsY=";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A Nix command, or a panic that says how to install Nix.
fn nix_cmd(program: &str) -> Command {
    let found = Command::new(program).arg("--version").output().is_ok();
    assert!(
        found,
        "{program} is missing: these tests need it; install it with `apt-get install -y nix-bin`"
    );
    let mut c = Command::new(program);
    c.env("NIX_REMOTE", "local");
    c
}

fn systemd_analyze() -> Command {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        found,
        "systemd-analyze is missing: these tests need it; install it with `apt-get install -y systemd`"
    );
    Command::new("systemd-analyze")
}

/// Evaluates module.nix with `settings` as `services.nixcast-pull`.
fn eval_cmd(settings: &Value, extra: &[&str]) -> Command {
    let mut c = nix_cmd("nix-instantiate");
    c.args(["--eval", "--strict", "--json", EVAL])
        .args(["--argstr", "settingsJson", &settings.to_string()])
        .args(extra);
    c
}

fn eval(settings: &Value, extra: &[&str]) -> Value {
    let out = ok(&mut eval_cmd(settings, extra));
    serde_json::from_slice(&out.stdout).expect("nix-instantiate prints JSON")
}

/// The evaluation's error message; panics if it succeeds.
fn eval_error(settings: &Value) -> String {
    let out = eval_cmd(settings, &[]).output().unwrap();
    assert!(
        !out.status.success(),
        "evaluation should fail for {settings}, gave {}",
        stdout(&out)
    );
    stderr(&out)
}

/// The smallest enabled configuration, plus `more`.
fn settings(more: Value) -> Value {
    let mut s = json!({
        "enable": true,
        "package": PACKAGE,
        "cache": "https://cache.example.org",
        "trustedKeys": [KEY],
    });
    for (k, v) in more.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn service(v: &Value) -> &Value {
    &v["config"]["systemd"]["services"]["nixcast-pull"]
}

fn timer(v: &Value) -> &Value {
    &v["config"]["systemd"]["timers"]["nixcast-pull"]
}

/// Splits an `ExecStart=` value the way systemd reads what the module writes:
/// the program, then words that are double-quoted strings with C escapes
/// (JSON's are a subset), one space apart, in which `%%` and `$$` stand for
/// `%` and `$`. A lone `%` or `$` (a specifier or a variable systemd would
/// expand) is an error.
fn exec_argv(exec_start: &str) -> Vec<String> {
    let (program, rest) = exec_start
        .split_once(' ')
        .unwrap_or_else(|| panic!("no arguments in ExecStart {exec_start:?}"));
    let mut argv = vec![program.to_owned()];
    let mut words = serde_json::Deserializer::from_str(rest).into_iter::<String>();
    let mut start = 0;
    while let Some(word) = words.next() {
        let word = word.unwrap_or_else(|e| panic!("bad word in ExecStart {exec_start:?}: {e}"));
        let end = words.byte_offset();
        let raw = &rest[start..end];
        assert!(
            raw.starts_with('"'),
            "unquoted word {raw:?} in {exec_start:?}"
        );
        let bare = raw.replace("%%", "").replace("$$", "");
        assert!(
            !bare.contains('%') && !bare.contains('$'),
            "systemd would expand a % or $ in {raw:?}"
        );
        match &rest[end..] {
            "" => {}
            more => assert!(
                more.starts_with(' ') && !more.starts_with("  "),
                "words not one space apart at {more:?}"
            ),
        }
        start = end + 1;
        argv.push(word.replace("%%", "%").replace("$$", "$"));
    }
    argv
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn module_and_flake_parse() {
    for file in [
        "module.nix",
        "flake.nix",
        "integration/fixtures/eval-module.nix",
    ] {
        ok(nix_cmd("nix-instantiate")
            .arg("--parse")
            .arg(repo().join(file)));
    }
}

#[test]
fn module_defaults_give_a_five_minute_switching_timer() {
    let v = eval(&settings(json!({})), &[]);
    assert_eq!(v["failedAssertions"], json!([]));
    assert_eq!(
        v["defaults"],
        json!({
            "enable": false,
            "host": "foobar",
            "trustedKeys": [],
            "trustedKeyFiles": [],
            "trustedRoots": [],
            "watch": false,
            "rootThreshold": 1,
            "action": "switch",
            "interval": "*:0/5",
            "randomizedDelaySec": "60s",
            "healthChecks": [],
            "healthTimeout": "60s",
            "allowInsecureHttp": false,
            "netrcFile": null,
            "environmentFile": null,
            "identityFiles": ["/etc/ssh/ssh_host_ed25519_key"],
            "stateDir": "/var/lib/nixcast",
            "extraArgs": [],
            "reportTo": null,
            "reportInterval": "1h",
            "reportRecipients": [],
            "allowReboot": false,
            "rebootWindow": null,
            "keepGenerations": null,
        })
    );
    let s = service(&v);
    assert_eq!(
        exec_argv(s["serviceConfig"]["ExecStart"].as_str().unwrap()),
        strings(&[
            &format!("{PACKAGE}/bin/nixcast-pull"),
            "run",
            "--cache",
            "https://cache.example.org",
            "--host",
            "foobar",
            "--action",
            "switch",
            "--state-dir",
            "/var/lib/nixcast",
            "--health-timeout",
            "60s",
            "--trusted-key",
            KEY,
            "--identity",
            "/etc/ssh/ssh_host_ed25519_key",
        ])
    );
    assert_eq!(s["serviceConfig"]["StateDirectory"], "nixcast");
    assert_eq!(s["serviceConfig"]["StateDirectoryMode"], "0700");
    assert_eq!(s["serviceConfig"]["Type"], "oneshot");
    assert_eq!(s["restartIfChanged"], false);
    assert_eq!(s["unitConfig"], json!({ "X-StopOnRemoval": false }));
    assert_eq!(s["after"], json!(["network-online.target"]));
    assert_eq!(s["wants"], json!(["network-online.target"]));
    assert_eq!(
        s["environment"],
        json!({ "NIX_REMOTE": "daemon", "MALLOC_ARENA_MAX": "1" })
    );
    assert_eq!(
        s["path"],
        json!([
            "/nix/store/00000000000000000000000000000000-nix-2.8.0",
            "/nix/store/00000000000000000000000000000000-systemd-257",
            "/nix/store/00000000000000000000000000000000-bash-5.2",
        ])
    );
    assert_eq!(
        timer(&v),
        &json!({
            "description": "nixcast: check for a new system",
            "wantedBy": ["timers.target"],
            "timerConfig": {
                "OnCalendar": "*:0/5",
                "Persistent": true,
                "RandomizedDelaySec": "60s",
            },
        })
    );
}

#[test]
fn module_passes_every_setting_to_the_agent_and_hardens_the_unit() {
    // A health check with everything systemd or a shell would read: quotes,
    // a backslash, a specifier, a variable and a newline.
    let check = "curl -sf -w '%{http_code}' \"http://$HOST/\" it's\\ok\nsecond line";
    let v = eval(
        &settings(json!({
            "cache": "http://10.0.0.1:8080",
            "trustedKeys": [KEY, "fleet-2:AAAA"],
            "trustedKeyFiles": ["/etc/nixcast/fleet-3.pub"],
            "action": "boot",
            "interval": "hourly",
            "randomizedDelaySec": 300,
            "healthChecks": ["systemctl is-active --quiet nginx.service", check],
            "healthTimeout": "2min",
            "allowInsecureHttp": true,
            "stateDir": "/var/lib/nixcast/agent",
            "extraArgs": ["--jobs", "4"],
        })),
        &["--argstr", "hostName", "vm-7"],
    );
    assert_eq!(v["failedAssertions"], json!([]));
    let s = service(&v);
    let mut sc = s["serviceConfig"].clone();
    let exec = sc
        .as_object_mut()
        .unwrap()
        .remove("ExecStart")
        .expect("ExecStart");
    assert_eq!(
        exec_argv(exec.as_str().unwrap()),
        strings(&[
            &format!("{PACKAGE}/bin/nixcast-pull"),
            "run",
            "--cache",
            "http://10.0.0.1:8080",
            "--host",
            "vm-7",
            "--action",
            "boot",
            "--state-dir",
            "/var/lib/nixcast/agent",
            "--health-timeout",
            "2min",
            "--trusted-key",
            KEY,
            "--trusted-key",
            "fleet-2:AAAA",
            "--trusted-key-file",
            "/etc/nixcast/fleet-3.pub",
            "--identity",
            "/etc/ssh/ssh_host_ed25519_key",
            "--health-check",
            "systemctl is-active --quiet nginx.service",
            "--health-check",
            check,
            "--allow-insecure-http",
            "--jobs",
            "4",
        ])
    );
    // The whole service section: the hardening is what the module's comments
    // say it is, and nothing else slipped in.
    assert_eq!(
        sc,
        json!({
            "Type": "oneshot",
            "TimeoutStartSec": "45min",
            "StateDirectory": "nixcast/agent",
            "StateDirectoryMode": "0700",
            "UMask": "0077",
            "ProtectSystem": "strict",
            "ReadWritePaths": ["/nix/var/nix/profiles"],
            "ProtectHome": true,
            "PrivateTmp": true,
            "PrivateDevices": true,
            "ProtectKernelTunables": true,
            "ProtectKernelModules": true,
            "ProtectKernelLogs": true,
            "ProtectControlGroups": true,
            "ProtectClock": true,
            "ProtectHostname": true,
            "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
            "IPAddressDeny": ["169.254.169.254/32", "fd00:ec2::254/128"],
            "RestrictNamespaces": true,
            "NoNewPrivileges": true,
            "RestrictSUIDSGID": true,
            "RestrictRealtime": true,
            "LockPersonality": true,
            "SystemCallArchitectures": "native",
            "MemoryDenyWriteExecute": true,
            "SystemCallFilter": ["@system-service"],
            "SystemCallErrorNumber": "EPERM",
        })
    );
    assert_eq!(
        timer(&v)["timerConfig"],
        json!({ "OnCalendar": "hourly", "Persistent": true, "RandomizedDelaySec": 300 })
    );
}

#[test]
fn module_hands_private_cache_credentials_over_as_systemd_credentials() {
    let v = eval(
        &settings(json!({
            "cache": "s3://fleet/prod?region=eu-west-1",
            "netrcFile": "/etc/nixcast/netrc",
            "environmentFile": "/etc/nixcast/aws.env",
        })),
        &[],
    );
    assert_eq!(v["failedAssertions"], json!([]));
    let sc = &service(&v)["serviceConfig"];
    assert_eq!(
        sc["LoadCredential"],
        json!([
            "netrc:/etc/nixcast/netrc",
            "environment:/etc/nixcast/aws.env"
        ])
    );
    let argv = exec_argv(sc["ExecStart"].as_str().unwrap());
    let tail = &argv[argv.len() - 4..];
    assert_eq!(
        tail,
        strings(&[
            "--netrc-file",
            "/run/credentials/nixcast-pull.service/netrc",
            "--environment-file",
            "/run/credentials/nixcast-pull.service/environment",
        ])
    );
    assert!(!argv.iter().any(|a| a.starts_with("/etc/nixcast/")));

    // A secret in the store would be readable by every user.
    let v = eval(
        &settings(json!({
            "netrcFile": "/nix/store/00000000000000000000000000000000-netrc",
        })),
        &[],
    );
    let failed = v["failedAssertions"].to_string();
    assert!(failed.contains("outside the Nix store"), "{failed}");
}

#[test]
fn module_copies_a_key_file_given_as_a_path_into_the_store() {
    let dir = tempfile::Builder::new()
        .prefix("nixcast-module-")
        .tempdir()
        .unwrap();
    let key = dir.path().join("fleet-9.pub");
    std::fs::write(&key, "fleet-9:AAAA").unwrap();
    let v = eval(
        &settings(json!({ "trustedKeyFiles": ["/etc/nixcast/fleet-3.pub"] })),
        &["--arg", "keyFileLiteral", key.to_str().unwrap()],
    );
    let argv = exec_argv(service(&v)["serviceConfig"]["ExecStart"].as_str().unwrap());
    let files: Vec<&String> = argv
        .iter()
        .zip(argv.iter().skip(1))
        .filter(|(flag, _)| *flag == "--trusted-key-file")
        .map(|(_, file)| file)
        .collect();
    assert_eq!(files.len(), 2, "{argv:?}");
    assert_eq!(files[0], "/etc/nixcast/fleet-3.pub");
    assert!(
        files[1].starts_with("/nix/store/") && files[1].ends_with("-fleet-9.pub"),
        "a path literal is copied into the store, got {}",
        files[1]
    );
}

#[test]
fn module_disabled_adds_nothing() {
    for s in [
        json!({}),
        json!({ "enable": false, "cache": "https://c", "action": "boot" }),
    ] {
        let v = eval(&s, &[]);
        assert_eq!(v["config"], json!({}), "{s}");
        assert_eq!(v["failedAssertions"], json!([]), "{s}");
    }
}

#[test]
fn module_passes_root_keys_instead_of_signing_keys() {
    let v = eval(
        &settings(json!({
            "trustedKeys": [],
            "trustedRoots": ["root-1:AAAA", "root-2:BBBB"],
            "rootThreshold": 2,
        })),
        &["--argstr", "hostName", "vm-7"],
    );
    assert_eq!(v["failedAssertions"], json!([]));
    let exec = service(&v)["serviceConfig"]["ExecStart"].clone();
    let argv = exec_argv(exec.as_str().unwrap());
    let at = argv
        .iter()
        .position(|a| a == "--root-key")
        .expect("--root-key");
    assert_eq!(
        argv[at..at + 6],
        strings(&[
            "--root-key",
            "root-1:AAAA",
            "--root-key",
            "root-2:BBBB",
            "--root-threshold",
            "2"
        ])
    );
    assert!(!argv.contains(&"--trusted-key".to_owned()), "{argv:?}");
    let failed = |more: Value| -> Vec<String> {
        let v = eval(&settings(more), &[]);
        serde_json::from_value(v["failedAssertions"].clone()).unwrap()
    };
    // Pinned keys and roots are one or the other.
    let msgs = failed(json!({ "trustedRoots": ["root-1:AAAA"] }));
    assert!(msgs.len() == 1 && msgs[0].contains("not both"), "{msgs:?}");
    let msgs =
        failed(json!({ "trustedKeys": [], "trustedRoots": ["root-1:AAAA"], "rootThreshold": 2 }));
    assert!(
        msgs.len() == 1 && msgs[0].contains("rootThreshold"),
        "{msgs:?}"
    );
}

#[test]
fn module_watching_makes_a_long_running_agent_restarted_after_each_switch() {
    let v = eval(&settings(json!({ "watch": true })), &[]);
    assert_eq!(v["failedAssertions"], json!([]));
    let s = service(&v);
    assert_eq!(s["serviceConfig"]["Type"], "simple");
    assert_eq!(s["serviceConfig"]["Restart"], "always");
    let argv = exec_argv(s["serviceConfig"]["ExecStart"].as_str().unwrap());
    assert!(
        argv.ends_with(&strings(&["--watch", "--exit-after-apply"])),
        "{argv:?}"
    );
    // The switch must not restart it while its run waits for the switch.
    assert_eq!(s["restartIfChanged"], false);
    assert!(timer(&v)["wantedBy"].to_string().contains("timers.target"));
    let plain = eval(&settings(json!({})), &[]);
    assert_eq!(service(&plain)["serviceConfig"]["Type"], "oneshot");
    assert!(service(&plain)["serviceConfig"].get("Restart").is_none());
}

#[test]
fn module_refuses_bad_settings() {
    let failed = |more: Value, extra: &[&str]| -> Vec<String> {
        let v = eval(&settings(more), extra);
        serde_json::from_value(v["failedAssertions"].clone()).unwrap()
    };
    for dir in ["/srv/nixcast", "/var/lib/", "/var/library/x"] {
        let msgs = failed(json!({ "stateDir": dir }), &[]);
        assert_eq!(msgs.len(), 1, "{dir}: {msgs:?}");
        assert!(
            msgs[0].contains("/var/lib/") && msgs[0].contains(dir),
            "{msgs:?}"
        );
    }
    let msgs = failed(json!({ "trustedKeys": [] }), &[]);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].contains("trustedKeys"), "{msgs:?}");
    let key = "/nix/store/00000000000000000000000000000000-ssh_host_ed25519_key";
    let msgs = failed(json!({ "identityFiles": [key] }), &[]);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].contains("identityFiles"), "{msgs:?}");
    let msgs = failed(json!({}), &["--argstr", "hostName", ""]);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].contains("host"), "{msgs:?}");

    // The option types, as the stub checks them.
    let err = eval_error(&settings(json!({ "action": "test" })));
    assert!(err.contains("services.nixcast-pull.action"), "{err}");
    let err = eval_error(&settings(json!({ "trustedKeyFiles": ["relative.pub"] })));
    assert!(
        err.contains("services.nixcast-pull.trustedKeyFiles"),
        "{err}"
    );
    let err = eval_error(&settings(json!({ "randomizedDelaySec": true })));
    assert!(
        err.contains("services.nixcast-pull.randomizedDelaySec"),
        "{err}"
    );
    let err = eval_error(&settings(json!({ "intervall": "hourly" })));
    assert!(err.contains("intervall"), "{err}");
    let msgs = failed(json!({ "rebootWindow": "02:00-05:00" }), &[]);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].contains("allowReboot"), "{msgs:?}");
    let err = eval_error(&settings(json!({ "keepGenerations": 0 })));
    assert!(err.contains("keepGenerations"), "{err}");
}

#[test]
fn module_passes_the_fleet_settings_and_opens_a_report_directory() {
    let v = eval(
        &settings(json!({
            "reportTo": "file:///srv/fleet-reports",
            "reportInterval": "30min",
            "reportRecipients": ["age1operator", "ssh-ed25519 AAAA op"],
            "allowReboot": true,
            "rebootWindow": "23:00-01:30",
            "keepGenerations": 3,
        })),
        &[],
    );
    assert_eq!(v["failedAssertions"], json!([]));
    let sc = &service(&v)["serviceConfig"];
    let argv = exec_argv(sc["ExecStart"].as_str().unwrap());
    let tail = &argv[argv.iter().position(|a| a == "--report-to").unwrap()..];
    assert_eq!(
        tail,
        strings(&[
            "--report-to",
            "file:///srv/fleet-reports",
            "--report-interval",
            "30min",
            "--report-recipient",
            "age1operator",
            "--report-recipient",
            "ssh-ed25519 AAAA op",
            "--allow-reboot",
            "--reboot-window",
            "23:00-01:30",
            "--keep-generations",
            "3",
        ])
    );
    assert_eq!(
        sc["ReadWritePaths"],
        json!(["/nix/var/nix/profiles", "-/srv/fleet-reports"])
    );
    // Reports sent over the network need no writable path.
    let v = eval(
        &settings(json!({ "reportTo": "https://fleet.example.org" })),
        &[],
    );
    assert_eq!(
        service(&v)["serviceConfig"]["ReadWritePaths"],
        json!(["/nix/var/nix/profiles"])
    );
}

#[test]
fn module_merges_a_hosts_overrides_as_nixos_does() {
    let with =
        |module: &str| -> Vec<String> { vec!["--arg".into(), "extraModule".into(), module.into()] };
    // What the module's comments tell users to write: more ReadWritePaths
    // (for --metrics-file) and `lib.mkForce false` for a JIT health check.
    let args = with(
        r#"{ lib, ... }: { systemd.services.nixcast-pull.serviceConfig = {
             ReadWritePaths = [ "/var/lib/prometheus-node-exporter" ];
             MemoryDenyWriteExecute = lib.mkForce false; }; }"#,
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = eval(&settings(json!({})), &args);
    let sc = &service(&v)["serviceConfig"];
    let mut rw: Vec<String> = serde_json::from_value(sc["ReadWritePaths"].clone()).unwrap();
    rw.sort();
    assert_eq!(
        rw,
        ["/nix/var/nix/profiles", "/var/lib/prometheus-node-exporter"]
    );
    assert_eq!(sc["MemoryDenyWriteExecute"], false);

    // Without mkForce the two definitions conflict, as on NixOS; a misspelt
    // or undeclared option, and a value no unit file can hold, fail.
    for (module, expect) in [
        (
            "{ systemd.services.nixcast-pull.serviceConfig.MemoryDenyWriteExecute = false; }",
            "conflicting definition values",
        ),
        (
            "{ systemd.services.nixcast-pull.serviceConfg.Nice = 5; }",
            "serviceConfg' does not exist",
        ),
        (
            "{ systemd.timers.nixcast-pull.timerConfig.OnCalendar = { hourly = true; }; }",
            "is not of type",
        ),
    ] {
        let out = eval_cmd(&settings(json!({})), &["--arg", "extraModule", module])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{module} should fail");
        assert!(stderr(&out).contains(expect), "{module}: {}", stderr(&out));
    }
}

#[test]
fn module_evaluation_without_nixpkgs_says_how_to_provide_it() {
    let out = eval_cmd(&settings(json!({})), &[])
        .env_remove("NIX_PATH")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("set NIX_PATH=nixpkgs=DIR"),
        "{}",
        stderr(&out)
    );
}

/// flake.nix's outputs, with a stub nixpkgs whose `buildRustPackage` returns
/// its arguments (file paths are turned into strings before printing, so that
/// nothing is copied into the store).
const FLAKE_EVAL: &str = r#"
{ repo }:
let
  flake = import (/. + repo + "/flake.nix");
  nixpkgs = {
    lib = {
      genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);
      fileset = {
        unions = list: list;
        toSource = { root, fileset }: { inherit root fileset; };
      };
      licenses = { mit = "mit"; asl20 = "asl20"; };
      platforms.linux = [ "linux" ];
      optionalString = cond: s: if cond then s else "";
    };
    legacyPackages = builtins.listToAttrs (map (system: {
      name = system;
      value = {
        rustPlatform.buildRustPackage = args: args // { inherit system; };
        installShellFiles = "installShellFiles";
        stdenv = { buildPlatform.canExecute = _: true; hostPlatform = system; };
      };
    }) [ "x86_64-linux" "aarch64-linux" ]);
  };
  self = flake.outputs { inherit self nixpkgs; };
  pkg = self.packages.x86_64-linux.default;
  module = self.nixosModules.default {
    lib.mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
    pkgs.stdenv.hostPlatform.system = "aarch64-linux";
  };
  package = module.services.nixcast-pull.package;
in
{
  inherit (flake) description;
  inputs = flake.inputs;
  systems = builtins.attrNames self.packages;
  package = {
    inherit (pkg) pname version cargoBuildFlags cargoTestFlags meta system nativeBuildInputs postInstall;
    lockFile = toString pkg.cargoLock.lockFile;
    srcRoot = toString pkg.src.root;
    srcFiles = map toString pkg.src.fileset;
  };
  members = (builtins.fromTOML (builtins.readFile (/. + repo + "/Cargo.toml"))).workspace.members;
  module = {
    imports = map toString module.imports;
    packagePriority = package.priority;
    packageSystem = package.content.system;
  };
}
"#;

#[test]
fn flake_outputs_evaluate_with_a_stub_nixpkgs() {
    let repo = std::fs::canonicalize(repo()).unwrap();
    let at = |p: &str| repo.join(p).to_str().unwrap().to_owned();
    let out = ok(nix_cmd("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", FLAKE_EVAL])
        .args(["--argstr", "repo", repo.to_str().unwrap()]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["inputs"],
        json!({ "nixpkgs": { "url": "github:NixOS/nixpkgs/nixos-unstable" } })
    );
    assert_eq!(v["systems"], json!(["aarch64-linux", "x86_64-linux"]));
    let p = &v["package"];
    assert_eq!(p["pname"], "nixcast");
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(p["system"], "x86_64-linux");
    assert_eq!(p["lockFile"], at("Cargo.lock"));
    assert_eq!(p["srcRoot"], repo.to_str().unwrap());
    assert_eq!(
        p["cargoBuildFlags"],
        json!(["-p", "nixcast", "-p", "nixcast-pull"])
    );
    assert_eq!(
        p["cargoTestFlags"],
        json!([
            "-p",
            "nixcast-common",
            "-p",
            "nixcast-cli",
            "-p",
            "nixcast-cache",
            "-p",
            "nixcast",
            "-p",
            "nixcast-pull"
        ])
    );
    assert_eq!(p["meta"]["mainProgram"], "nixcast");
    assert_eq!(p["nativeBuildInputs"], json!(["installShellFiles"]));
    post_install_installs_completions_and_pages(p["postInstall"].as_str().unwrap());
    // The source holds the workspace manifest, the lock file and every
    // member, and nothing it names is missing.
    let files: Vec<String> = serde_json::from_value(p["srcFiles"].clone()).unwrap();
    let members: Vec<String> = serde_json::from_value(v["members"].clone()).unwrap();
    for needed in ["Cargo.toml", "Cargo.lock"]
        .iter()
        .map(|s| s.to_string())
        .chain(members)
    {
        assert!(
            files.contains(&at(&needed)),
            "{needed} not in the source: {files:?}"
        );
    }
    for f in &files {
        assert!(
            Path::new(f).exists(),
            "the source names {f}, which does not exist"
        );
    }
    // The module: module.nix, with the package defaulting (mkDefault) to
    // this flake's build for the host's platform.
    assert_eq!(
        v["module"],
        json!({
            "imports": [at("module.nix")],
            "packagePriority": 1000,
            "packageSystem": "aarch64-linux",
        })
    );
}

/// The package's `postInstall`, run with the binaries built here and
/// stand-ins for nixpkgs' `installShellCompletion` and `installManPage`
/// that install where those do: each program's bash, zsh and fish
/// completion and its man pages land in `$out/share`.
fn post_install_installs_completions_and_pages(script: &str) {
    let out = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(out.path().join("bin")).unwrap();
    let bins = nixcast_pull_path().parent().unwrap().to_owned();
    for prog in ["nixcast", "nixcast-pull"] {
        std::os::unix::fs::symlink(bins.join(prog), out.path().join("bin").join(prog)).unwrap();
    }
    let stubs = r#"
installShellCompletion() {
  local cmd
  while [ $# -gt 0 ]; do
    case "$1" in
      --cmd) cmd=$2 ;;
      --bash) d=bash-completion/completions; f=$cmd ;;
      --zsh) d=zsh/site-functions; f=_$cmd ;;
      --fish) d=fish/vendor_completions.d; f=$cmd.fish ;;
    esac
    if [ "$1" != --cmd ]; then mkdir -p "$out/share/$d" && cat "$2" > "$out/share/$d/$f"; fi
    shift 2
  done
}
installManPage() { mkdir -p "$out/share/man/man1" && cp "$@" "$out/share/man/man1/"; }
set -eu
"#;
    ok(Command::new("bash")
        .args(["-c", &format!("{stubs}{script}")])
        .env("out", out.path())
        .current_dir(work.path()));
    let share = out.path().join("share");
    for prog in ["nixcast", "nixcast-pull"] {
        for f in [
            format!("bash-completion/completions/{prog}"),
            format!("zsh/site-functions/_{prog}"),
            format!("fish/vendor_completions.d/{prog}.fish"),
            format!("man/man1/{prog}.1"),
            format!("man/man1/{prog}-completions.1"),
        ] {
            let text = std::fs::read_to_string(share.join(&f)).unwrap_or_default();
            assert!(text.contains(prog), "{f} is missing or empty");
        }
    }
    assert!(share.join("man/man1/nixcast-retire.1").exists());
    assert!(share.join("man/man1/nixcast-pull-run.1").exists());
}

/// The units as NixOS would write them, closely enough for systemd to judge:
/// lists become repeated lines, booleans `true`/`false`, `environment` and
/// `path` become `Environment=` lines.
fn render_units(v: &Value, dir: &Path) -> (PathBuf, PathBuf) {
    fn section(name: &str, entries: &[(&str, &Value)]) -> String {
        let mut out = format!("[{name}]\n");
        for (key, value) in entries {
            let items = match value {
                Value::Array(a) => a.clone(),
                other => vec![(*other).clone()],
            };
            for item in items {
                let text = match item {
                    Value::String(s) => s,
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    other => panic!("{key}: cannot render {other}"),
                };
                out.push_str(&format!("{key}={text}\n"));
            }
        }
        out
    }
    let s = service(v);
    let mut unit = vec![
        ("Description", &s["description"]),
        ("After", &s["after"]),
        ("Wants", &s["wants"]),
    ];
    unit.extend(
        s["unitConfig"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v)),
    );
    let mut env: Vec<String> = s["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    let path: Vec<String> = s["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}/bin", p.as_str().unwrap()))
        .collect();
    env.push(format!("PATH={}", path.join(":")));
    let env: Value = env.iter().map(|e| json!(json!(e).to_string())).collect();
    let mut svc = vec![("Environment", &env)];
    svc.extend(
        s["serviceConfig"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v)),
    );
    let service_file = dir.join("nixcast-pull.service");
    std::fs::write(
        &service_file,
        section("Unit", &unit) + &section("Service", &svc),
    )
    .unwrap();

    let t = timer(v);
    let timer_cfg: Vec<(&str, &Value)> = t["timerConfig"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let timer_file = dir.join("nixcast-pull.timer");
    std::fs::write(
        &timer_file,
        section("Unit", &[("Description", &t["description"])])
            + &section("Timer", &timer_cfg)
            + &section("Install", &[("WantedBy", &t["wantedBy"])]),
    )
    .unwrap();
    (service_file, timer_file)
}

#[test]
fn module_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // verify wants ExecStart's program to exist and be executable.
    let package = dir.path().join("package");
    std::fs::create_dir_all(package.join("bin")).unwrap();
    let program = package.join("bin/nixcast-pull");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let v = eval(
        &settings(json!({
            "package": package.to_str().unwrap(),
            "healthChecks": ["curl -sf -w '%{http_code}' \"http://$HOST/\" it's\\ok\nline 2"],
            "trustedKeyFiles": ["/etc/nixcast/fleet-3.pub"],
        })),
        &[],
    );
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let (service_file, timer_file) = render_units(&v, &units);
    let out = systemd_analyze()
        .args(["verify", "--man=no"])
        .arg(&service_file)
        .arg(&timer_file)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&service_file).unwrap();
    assert!(
        out.status.success() && stderr(&out).trim().is_empty(),
        "systemd-analyze verify complained ({}):\n{}\n{text}",
        out.status,
        stderr(&out)
    );

    // The default calendar expression is one systemd reads as every five minutes.
    let out = ok(systemd_analyze().args(["calendar", "*:0/5"]));
    assert!(stdout(&out).contains("*-*-* *:00/5:00"), "{}", stdout(&out));

    // For the record (not a pass mark: the score moves between systemd
    // versions): how exposed systemd judges the unit.
    let out = systemd_analyze()
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&service_file)
        .output()
        .unwrap();
    if let Some(line) = stdout(&out)
        .lines()
        .find(|l| l.contains("Overall exposure"))
    {
        eprintln!("{line}");
    }
}

/// Runs `argv` as the unit would: a fresh machine's /nix (see `Vm`) served by
/// a nix-daemon outside the sandbox; inside, /nix read-only except
/// `rw_paths`, /root inaccessible when `protect_home`, a fresh /var/lib
/// holding the state directory (the daemon's too: it reads the staging cache), and `NIX_REMOTE` as the unit sets it. The
/// stand-in switch's log stays writable: a real switch runs in a transient
/// unit, outside this sandbox.
fn run_sandboxed(
    vm: &Vm,
    rw_paths: &[String],
    protect_home: bool,
    state_directory: &str,
    nix_remote: &str,
    argv: &[String],
) -> Output {
    const OUTER: &str = r#"
set -eu
mount --bind "$VM_NIX" /nix
mkdir -p /nix/var/nix/profiles /nix/var/nix/daemon-socket
touch /nix/var/nixcast-test-switch.log
nix-store --init
# The state directory is the host's, as systemd's StateDirectory= is: the
# daemon reads the agent's staging cache there when it imports.
mount -t tmpfs -o mode=0755 tmpfs /var/lib
mkdir -m 0700 -p "/var/lib/$STATE_DIRECTORY"
NIX_REMOTE=local nix-daemon 2>"$WORK/daemon.log" &
daemon=$!
trap 'kill $daemon' EXIT
i=0
while [ ! -S /nix/var/nix/daemon-socket/socket ]; do
  i=$((i + 1))
  [ "$i" -lt 200 ] || { echo "nix-daemon did not start" >&2; cat "$WORK/daemon.log" >&2; exit 1; }
  sleep 0.05
done
unshare -m --propagation private sh -c "$INNER" inner "$@"
"#;
    const INNER: &str = r#"
set -eu
mount --bind /nix /nix
mount -o remount,bind,ro /nix
for p in $RW_PATHS /nix/var/nixcast-test-switch.log; do
  mount --bind "$p" "$p"
  mount -o remount,bind,rw "$p"
done
if [ "$PROTECT_HOME" = true ]; then
  mkdir -m 0000 "$WORK/inaccessible"
  mount --bind "$WORK/inaccessible" /root
  mount -o remount,bind,ro /root
fi
unset HOME
export NIX_REMOTE="$UNIT_NIX_REMOTE"
exec "$@"
"#;
    let work = tempfile::tempdir().unwrap();
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", OUTER, "outer"])
        .args(argv)
        .env("VM_NIX", vm.nix())
        .env("WORK", work.path())
        .env("INNER", INNER)
        .env("RW_PATHS", rw_paths.join(" "))
        .env("PROTECT_HOME", protect_home.to_string())
        .env("STATE_DIRECTORY", state_directory)
        .env("UNIT_NIX_REMOTE", nix_remote)
        .env("NIX_REMOTE", "local")
        .env_remove("NIX_PATH")
        .output()
        .unwrap()
}

#[test]
fn module_sandbox_lets_the_agent_import_set_the_profile_and_switch() {
    let found = Command::new("nix-daemon").arg("--version").output().is_ok();
    assert!(
        found,
        "nix-daemon is missing: this test needs it; install it with `apt-get install -y nix-bin`"
    );
    let (_work, cache, keys) = scene();
    let gen1 = Fixture {
        n: 2,
        version: "module1",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &gen1, &keys, &[]);

    let v = eval(
        &settings(json!({
            "cache": format!("file://{}", cache.display()),
            "trustedKeys": [keys.public_text.trim()],
            "healthChecks": ["test -L /nix/var/nix/profiles/system"],
        })),
        &[],
    );
    let s = service(&v);
    let sc = &s["serviceConfig"];
    assert_eq!(sc["ProtectSystem"], "strict");
    let mut argv = exec_argv(sc["ExecStart"].as_str().unwrap());
    argv[0] = nixcast_pull_path().to_str().unwrap().to_owned();
    let rw_paths: Vec<String> = serde_json::from_value(sc["ReadWritePaths"].clone()).unwrap();
    let protect_home = sc["ProtectHome"] == true;
    let state_directory = sc["StateDirectory"].as_str().unwrap();
    let nix_remote = s["environment"]["NIX_REMOTE"].as_str().unwrap();

    // The emulation is a real sandbox: without the unit's ReadWritePaths the
    // profile cannot be set.
    let vm = Vm::new();
    let out = run_sandboxed(&vm, &[], protect_home, state_directory, nix_remote, &argv);
    assert!(
        !out.status.success() && stderr(&out).contains("Read-only file system"),
        "without ReadWritePaths the run should fail on the profile: {}\n{}",
        out.status,
        stderr(&out)
    );
    assert_eq!(vm.profile_link("system"), None);

    // With the unit's settings the whole run succeeds.
    let vm = Vm::new();
    let out = run_sandboxed(
        &vm,
        &rw_paths,
        protect_home,
        state_directory,
        nix_remote,
        &argv,
    );
    assert!(
        out.status.success(),
        "the agent failed in the unit's sandbox: {}\n{}",
        out.status,
        stderr(&out)
    );
    assert!(vm.valid(&closure(&gen1)), "closure not valid in the VM");
    assert_eq!(vm.profile_link("system").as_deref(), Some("system-1-link"));
    assert_eq!(
        vm.profile_link("system-1-link").as_deref(),
        Some(gen1.as_str())
    );
    assert_eq!(vm.switch_log(), [format!("switch {gen1}")]);
}
