//! `nixcast publish` writes a cache that Nix itself accepts.

use std::process::{Command, Output};

use nixcast_common::pointer::Pointer;

use crate::harness::*;

#[test]
fn nix_copy_accepts_every_compression_and_keeps_our_signature() {
    let top = Fixture::default().build();
    let paths = closure(&top);
    for compression in ["xz", "zstd", "none"] {
        let work = tempfile::tempdir().unwrap();
        let cache = work.path().join("cache");
        let keys = keygen(work.path(), "fleet-1");
        publish(
            &cache,
            "foobar",
            &top,
            &keys,
            &["--compression", compression],
        );
        let ext = match compression {
            "xz" => ".nar.xz",
            "zstd" => ".nar.zst",
            _ => ".nar",
        };
        let nars = files(&cache, "nar");
        assert_eq!(nars.len(), paths.len(), "{compression}: {nars:?}");
        assert!(
            nars.iter().all(|n| n.ends_with(ext)),
            "{compression}: {nars:?}"
        );

        let vm = Vm::new();
        let out = vm.nix_copy_from(
            &format!("file://{}", cache.display()),
            &keys.public_text,
            &top,
        );
        assert!(
            out.status.success(),
            "{compression}: nix copy refused our cache: {}",
            stderr(&out)
        );
        assert!(vm.valid(&paths));
        let out = ok(&mut vm.cmd(&[
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--sigs",
            "-r",
            &top,
        ]));
        let text = stdout(&out);
        assert_eq!(text.lines().count(), paths.len());
        assert!(
            text.lines().all(|l| l.contains("fleet-1:")),
            "{compression}: {text}"
        );
    }
}

#[test]
fn nix_copy_with_another_key_fails() {
    let top = Fixture::default().build();
    let (work, cache, keys) = scene();
    let other = keygen(work.path(), "other-1");
    publish(&cache, "foobar", &top, &keys, &[]);
    let vm = Vm::new();
    let out = vm.nix_copy_from(
        &format!("file://{}", cache.display()),
        &other.public_text,
        &top,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("lacks a valid signature"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn republish_is_a_no_op_and_a_change_writes_only_changed_nars() {
    let (_work, cache, keys) = scene();
    let gen1 = Fixture {
        version: "inc1",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &gen1, &keys, &[]);
    let nars1 = files(&cache, "nar");
    let pointer1 = std::fs::read(cache.join("hosts/foobar.json")).unwrap();

    let out = publish(&cache, "foobar", &gen1, &keys, &[]);
    assert!(
        stdout(&out).contains("nothing to publish"),
        "{}",
        stdout(&out)
    );
    assert_eq!(files(&cache, "nar"), nars1);
    assert_eq!(
        std::fs::read(cache.join("hosts/foobar.json")).unwrap(),
        pointer1
    );
    assert_eq!(files(&cache, "hosts/foobar"), ["1.json"]);

    let gen2 = Fixture {
        version: "inc2",
        ..Default::default()
    }
    .build();
    let out = publish(&cache, "foobar", &gen2, &keys, &[]);
    assert!(stdout(&out).contains("generation 2"), "{}", stdout(&out));
    let new: Vec<String> = files(&cache, "nar")
        .into_iter()
        .filter(|n| !nars1.contains(n))
        .collect();
    let changed = closure(&gen2)
        .into_iter()
        .filter(|p| !closure(&gen1).contains(p))
        .count();
    assert_eq!(new.len(), changed, "{new:?}");
    assert_eq!(files(&cache, "hosts/foobar"), ["1.json", "2.json"]);
}

#[test]
fn the_pointer_verifies_with_our_key_only_and_another_key_cannot_take_over() {
    let (work, cache, keys) = scene();
    let other = keygen(work.path(), "fleet-1-forged");
    let top = Fixture {
        version: "ptr",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &top, &keys, &[]);
    let bytes = std::fs::read(cache.join("hosts/foobar.json")).unwrap();
    let pk = nixcast_common::PublicKey::parse(&keys.public_text).unwrap();
    let opk = nixcast_common::PublicKey::parse(&other.public_text).unwrap();
    let v = nixcast_common::pointer::verify(&bytes, &[pk]).unwrap();
    assert_eq!(v.get().store_path.as_ref().unwrap().to_string(), top);
    assert_eq!(v.get().generation, 1);
    assert!(nixcast_common::pointer::verify(&bytes, &[opk]).is_err());

    let top2 = Fixture {
        version: "ptr2",
        ..Default::default()
    }
    .build();
    let out = nixcast()
        .args(["publish", "--host", "foobar", "--path", &top2, "--cache"])
        .arg(&cache)
        .arg("--secret-key-file")
        .arg(&other.secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    publish(&cache, "foobar", &top2, &other, &["--force"]);
    assert_eq!(files(&cache, "hosts/foobar"), ["1.json", "2.json"]);
}

#[test]
fn a_key_from_nix_store_generate_binary_cache_key_works() {
    let work = tempfile::tempdir().unwrap();
    let (sk, pk) = (work.path().join("sk"), work.path().join("pk"));
    ok(Command::new("nix-store")
        .args(["--generate-binary-cache-key", "nixmade-1"])
        .arg(&sk)
        .arg(&pk));
    let keys = Keys {
        public_text: std::fs::read_to_string(&pk).unwrap(),
        secret: sk,
    };
    let top = Fixture::default().build();
    let cache = work.path().join("cache");
    publish(&cache, "foobar", &top, &keys, &[]);
    let vm = Vm::new();
    let out = vm.nix_copy_from(
        &format!("file://{}", cache.display()),
        &keys.public_text,
        &top,
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn publish_builds_a_flake() {
    let work = tempfile::tempdir().unwrap();
    let flake = work.path().join("flake");
    std::fs::create_dir(&flake).unwrap();
    std::fs::copy(FIXTURE, flake.join("fixture.nix")).unwrap();
    std::fs::write(
        flake.join("flake.nix"),
        r#"{ outputs = { self }: {
  nixosConfigurations.foobar.config.system.build.toplevel =
    import ./fixture.nix { host = "foobar"; version = "flake"; n = 2; system = "x86_64-linux"; };
}; }"#,
    )
    .unwrap();
    let keys = keygen(work.path(), "fleet-1");
    let cache = work.path().join("cache");
    let out = ok(nixcast()
        .args(["publish", "--host", "foobar", "--flake"])
        .arg(format!("path:{}", flake.display()))
        .arg("--cache")
        .arg(format!("file://{}", cache.display()))
        .arg("--secret-key-file")
        .arg(&keys.secret));
    let text = stdout(&out);
    assert!(
        text.contains("published foobar generation 1: /nix/store/"),
        "{text}"
    );
    assert!(text.contains("-nixos-system-foobar-flake"), "{text}");
    assert!(cache.join("hosts/foobar/1.json").exists());
}

#[test]
fn keygen_refuses_to_overwrite_and_keeps_the_secret_private() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let keys = keygen(work.path(), "fleet-1");
    let mode = std::fs::metadata(&keys.secret)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(&keys.secret).unwrap();
    let again = |force: bool| {
        let mut c = nixcast();
        c.args(["keygen", "--name", "fleet-2", "--secret-key-file"])
            .arg(&keys.secret)
            .arg("--public-key-file")
            .arg(work.path().join("fleet-2.pub"));
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let out = again(false);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&keys.secret).unwrap(), before);
    ok_output(again(true));
    assert_ne!(std::fs::read(&keys.secret).unwrap(), before);
    // The file is Nix's format: nix-store can use it to sign.
    let text = std::fs::read_to_string(&keys.secret).unwrap();
    assert!(text.starts_with("fleet-2:") && !text.ends_with('\n'));
}

#[test]
fn hosts_and_diff_describe_the_cache() {
    let (work, cache, keys) = scene();
    let pubfile = work.path().join("fleet-1.pub");
    let gen1 = Fixture {
        version: "diff1",
        ..Default::default()
    }
    .build();
    let gen2 = Fixture {
        version: "diff2",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &gen1, &keys, &[]);
    publish(&cache, "foobar", &gen2, &keys, &["--expires-in", "never"]);
    publish(&cache, "other", &gen1, &keys, &[]);

    let out = ok(nixcast()
        .args(["hosts", "--json", "--cache"])
        .arg(&cache)
        .arg("--trusted-key-file")
        .arg(&pubfile));
    // The earlier spellings stay accepted, hidden: the same answer.
    let old = ok(nixcast()
        .args(["hosts", "--json", "--to"])
        .arg(&cache)
        .arg("--public-key-file")
        .arg(&pubfile));
    assert_eq!(old.stdout, out.stdout);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["host"], "foobar");
    assert_eq!(rows[0]["generation"], 2);
    assert_eq!(rows[0]["storePath"], gen2.as_str());
    assert_eq!(rows[0]["expiresAt"], serde_json::Value::Null);
    assert_eq!(rows[0]["paths"], closure(&gen2).len());
    assert_eq!(rows[1]["host"], "other");
    assert!(rows[1]["expiresAt"].is_string());

    let out = ok(nixcast()
        .args(["diff", "--json", "--host", "foobar", "--cache"])
        .arg(&cache));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((d["from"].as_u64(), d["to"].as_u64()), (Some(1), Some(2)));
    let names = |k: &str| -> Vec<String> {
        d[k].as_array()
            .unwrap()
            .iter()
            .map(|e| e[0].as_str().unwrap().to_owned())
            .collect()
    };
    let (c1, c2) = (closure(&gen1), closure(&gen2));
    let mut added: Vec<String> = c2.iter().filter(|p| !c1.contains(p)).cloned().collect();
    let mut removed: Vec<String> = c1.iter().filter(|p| !c2.contains(p)).cloned().collect();
    added.sort();
    removed.sort();
    assert_eq!(names("added"), added);
    assert_eq!(names("removed"), removed);
    assert!(d["downloadBytes"].as_u64().unwrap() > 0);

    // Verification with another key fails and says where.
    let other = keygen(work.path(), "other-1");
    let _ = other;
    let out = nixcast()
        .args(["hosts", "--cache"])
        .arg(&cache)
        .arg("--trusted-key-file")
        .arg(work.path().join("other-1.pub"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("hosts/foobar.json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn publish_all_hosts_of_a_flake_shares_paths_and_survives_a_broken_host() {
    let work = tempfile::tempdir().unwrap();
    let flake = work.path().join("flake");
    std::fs::create_dir(&flake).unwrap();
    std::fs::copy(FIXTURE, flake.join("fixture.nix")).unwrap();
    std::fs::write(
        flake.join("flake.nix"),
        r#"{ outputs = { self }: let
  sys = import ./fixture.nix;
in {
  nixosConfigurations.alpha.config.system.build.toplevel = sys { host = "alpha"; version = "all"; n = 2; system = "x86_64-linux"; };
  nixosConfigurations.beta.config.system.build.toplevel = sys { host = "beta"; version = "all"; n = 2; system = "x86_64-linux"; };
  nixosConfigurations.broken.config.system.build.toplevel = derivation {
    name = "broken"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "exit 1" ];
  };
}; }"#,
    )
    .unwrap();
    let keys = keygen(work.path(), "fleet-1");
    let cache = work.path().join("cache");
    let out = nixcast()
        .args(["publish", "--all", "--flake"])
        .arg(format!("path:{}", flake.display()))
        .arg("--cache")
        .arg(&cache)
        .arg("--secret-key-file")
        .arg(&keys.secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("published alpha generation 1"), "{text}");
    assert!(text.contains("published beta generation 1"), "{text}");
    assert!(
        stderr(&out).contains("1 of 3 hosts failed: broken"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        files(&cache, "hosts"),
        ["alpha", "alpha.json", "beta", "beta.json"]
    );
    // The base library and the packages are shared: written once.
    let tops: Vec<String> = ["alpha", "beta"]
        .iter()
        .map(|h| {
            let p = nixcast_common::pointer::verify(
                &std::fs::read(cache.join(format!("hosts/{h}.json"))).unwrap(),
                &[nixcast_common::PublicKey::parse(&keys.public_text).unwrap()],
            )
            .unwrap();
            p.get().store_path.as_ref().unwrap().to_string()
        })
        .collect();
    let union: std::collections::BTreeSet<String> = tops.iter().flat_map(|t| closure(t)).collect();
    assert!(union.len() < closure(&tops[0]).len() * 2);
    assert_eq!(files(&cache, "nar").len(), union.len());
}

/// The pointer `hosts/foobar.json` of `cache`, changed by `edit` and signed
/// again with `keys`: what a key holder (or a wrong clock) could have written.
fn resigned(cache: &std::path::Path, keys: &Keys, edit: impl FnOnce(&mut Pointer)) -> Vec<u8> {
    let bytes = std::fs::read(cache.join("hosts/foobar.json")).unwrap();
    let mut p = nixcast_common::pointer::decode_unverified(&bytes).unwrap();
    edit(&mut p);
    let secret = std::fs::read_to_string(&keys.secret).unwrap();
    p.sign(&nixcast_common::SecretKey::parse(&secret).unwrap())
}

fn publish_output(cache: &std::path::Path, top: &str, keys: &Keys, extra: &[&str]) -> Output {
    nixcast()
        .args(["publish", "--host", "foobar", "--path", top, "--cache"])
        .arg(cache)
        .arg("--secret-key-file")
        .arg(&keys.secret)
        .args(extra)
        .output()
        .unwrap()
}

fn generation_of(cache: &std::path::Path) -> u64 {
    let bytes = std::fs::read(cache.join("hosts/foobar.json")).unwrap();
    nixcast_common::pointer::decode_unverified(&bytes)
        .unwrap()
        .generation
}

#[test]
fn planted_history_files_do_not_set_the_next_generation() {
    let (work, cache, keys) = scene();
    let other = keygen(work.path(), "intruder-1");
    let top = |v| Fixture {
        version: v,
        ..Default::default()
    };
    let (gen1, gen2, gen3) = (
        top("plant1").build(),
        top("plant2").build(),
        top("plant3").build(),
    );
    publish(&cache, "foobar", &gen1, &keys, &[]);
    let history = cache.join("hosts/foobar");
    // An empty file, a pointer signed by another key under its own number,
    // and our own generation 1 under a number it does not carry.
    std::fs::write(history.join("18446744073709551614.json"), b"").unwrap();
    let forged = resigned(&cache, &other, |p| p.generation = 18446744073709551613);
    std::fs::write(history.join("18446744073709551613.json"), forged).unwrap();
    std::fs::copy(history.join("1.json"), history.join("4000000000.json")).unwrap();

    let out = publish(&cache, "foobar", &gen2, &keys, &[]);
    assert_eq!(generation_of(&cache), 2, "{}", stderr(&out));
    assert!(history.join("2.json").exists());
    let err = stderr(&out);
    for planted in ["18446744073709551614", "18446744073709551613", "4000000000"] {
        assert!(
            err.contains(&format!("hosts/foobar/{planted}.json")),
            "{err}"
        );
    }

    // Even a pointer of ours at the last generation there is cannot make
    // the next one wrap: the publish is refused before anything is written.
    let last = resigned(&cache, &keys, |p| p.generation = u64::MAX);
    std::fs::write(history.join("18446744073709551615.json"), last).unwrap();
    let nars = files(&cache, "nar");
    let out = publish_output(&cache, &gen3, &keys, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the last there can be"),
        "{}",
        stderr(&out)
    );
    assert_eq!(files(&cache, "nar"), nars);
    assert_eq!(generation_of(&cache), 2);
}

#[test]
fn a_clock_behind_the_last_pointer_refuses_to_publish_unless_forced() {
    let (_work, cache, keys) = scene();
    let top = |v| Fixture {
        version: v,
        ..Default::default()
    };
    let (gen1, gen2) = (top("clock1").build(), top("clock2").build());
    publish(&cache, "foobar", &gen1, &keys, &[]);
    // Generation 1 as a publisher whose clock is a day ahead would have made it.
    let ahead = resigned(&cache, &keys, |p| {
        let day = std::time::Duration::from_secs(86_400);
        p.issued_at = p.issued_at.plus(day);
        p.expires_at = p.expires_at.map(|t| t.plus(day));
    });
    std::fs::write(cache.join("hosts/foobar.json"), &ahead).unwrap();
    std::fs::write(cache.join("hosts/foobar/1.json"), &ahead).unwrap();

    let nars = files(&cache, "nar");
    let out = publish_output(&cache, &gen2, &keys, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("clock"), "{}", stderr(&out));
    assert_eq!(files(&cache, "nar"), nars, "nothing is written");
    assert_eq!(generation_of(&cache), 1);

    let out = publish(&cache, "foobar", &gen2, &keys, &["--force"]);
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(generation_of(&cache), 2);
}

#[test]
fn expires_in_values_that_overflow_are_refused_before_anything_is_written() {
    let (_work, cache, keys) = scene();
    let top = Fixture {
        version: "expiry",
        ..Default::default()
    }
    .build();
    for bad in ["500000000years", "0s", "584942417355y"] {
        let out = publish_output(&cache, &top, &keys, &["--expires-in", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--expires-in"), "{}", stderr(&out));
        assert!(files(&cache, "nar").is_empty(), "{bad}");
    }
    publish(&cache, "foobar", &top, &keys, &["--expires-in", "100y"]);
}

#[test]
fn a_secret_key_given_as_a_public_key_is_refused_and_not_echoed() {
    let (work, cache, keys) = scene();
    let top = Fixture {
        version: "secretpub",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &top, &keys, &[]);
    let secret = std::fs::read_to_string(&keys.secret).unwrap();
    let material = secret.split_once(':').unwrap().1;
    let check = |out: Output| {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(e.contains("is a secret key, not a public key"), "{e}");
        // Not even a part of the key material.
        for part in [material, &material[..12], &material[material.len() - 12..]] {
            assert!(!e.contains(part) && !o.contains(part), "{e}");
        }
    };
    for cmd in [&["hosts"][..], &["diff", "--host", "foobar"]] {
        check(
            nixcast()
                .args(cmd)
                .arg("--cache")
                .arg(&cache)
                .arg("--trusted-key-file")
                .arg(&keys.secret)
                .output()
                .unwrap(),
        );
    }
    check(
        nixcast()
            .args(["publish", "--host", "foobar", "--path", &top, "--cache"])
            .arg(work.path().join("other"))
            .arg("--secret-key-file")
            .arg(&keys.secret)
            .args([
                "--upstream",
                "http://127.0.0.1:9",
                "--upstream-key",
                &secret,
            ])
            .output()
            .unwrap(),
    );
}

/// The publisher reads its main flags from the same variables as the agent;
/// a flag given on the command line wins over its variable.
#[test]
fn the_publisher_reads_nixcast_variables() {
    let (work, cache, keys) = scene();
    let top = Fixture {
        version: "envvars",
        ..Default::default()
    }
    .build();
    ok(nixcast()
        .args(["publish", "--host", "foobar", "--path", &top])
        .env("NIXCAST_CACHE", &cache)
        .env("NIXCAST_SECRET_KEY_FILE", &keys.secret));
    assert_eq!(generation_of(&cache), 1);

    keygen(work.path(), "other-1");
    let hosts = |key: &std::path::Path| {
        nixcast()
            .args(["hosts", "--json"])
            .env("NIXCAST_CACHE", &cache)
            .env("NIXCAST_TRUSTED_KEY_FILES", key)
            .output()
            .unwrap()
    };
    let out = hosts(&work.path().join("fleet-1.pub"));
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["storePath"], top.as_str());
    let out = hosts(&work.path().join("other-1.pub"));
    assert!(
        !out.status.success() && stderr(&out).contains("hosts/foobar.json"),
        "the variable's key is used: {}",
        stderr(&out)
    );

    let elsewhere = work.path().join("elsewhere");
    let out = nixcast()
        .args(["hosts", "--cache"])
        .arg(&elsewhere)
        .env("NIXCAST_CACHE", &cache)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && stderr(&out).contains("elsewhere"),
        "the flag wins: {}",
        stderr(&out)
    );
}

#[test]
fn each_hosts_error_is_a_json_event_under_log_format_json() {
    let (_work, cache, keys) = scene();
    let top = Fixture {
        version: "jsonerr",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &top, &keys, &[]);
    // foobar has nothing staged; nosuch has no generation at all.
    let out = nixcast()
        .args(["--log-format", "json", "promote", "--host", "foobar"])
        .args(["--host", "nosuch", "--cache"])
        .arg(&cache)
        .arg("--secret-key-file")
        .arg(&keys.secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let events: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .filter(|e| e["level"] == "ERROR")
        .map(|e| e["fields"]["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 2, "{err}");
    assert!(messages[0].starts_with("nosuch: "), "{err}");
    assert!(messages[1].contains("1 of 2 hosts failed: nosuch"), "{err}");
}
