//! `publish --upstream`: paths an upstream cache serves are not uploaded,
//! and the agent fetches them from there.

use crate::harness::*;

#[test]
fn upstream_paths_are_not_uploaded_and_the_agent_fetches_them_there() {
    let work = tempfile::tempdir().unwrap();
    let (ours, up) = (work.path().join("cache"), work.path().join("upstream"));
    let keys = keygen(work.path(), "fleet-1");
    let upkeys = keygen(work.path(), "upstream-1");
    let top = Fixture {
        version: "up",
        ..Default::default()
    }
    .build();
    let all = closure(&top);
    // The upstream, written by Nix itself, has the packages and the base library.
    let shared: Vec<&String> = all.iter().filter(|p| p.contains("-pkg-")).collect();
    nix_copy_to(up.as_path(), &upkeys, &shared);
    let upstream = Server::start(&up);

    // With a key the upstream does not sign with, nothing counts as served there.
    let wrong = keygen(work.path(), "wrong-1");
    let scratch = work.path().join("scratch");
    publish(
        &scratch,
        "foobar",
        &top,
        &keys,
        &[
            "--upstream",
            &upstream.url,
            "--upstream-key",
            &wrong.public_text,
        ],
    );
    assert_eq!(files(&scratch, "nar").len(), all.len());

    let out = publish(
        &ours,
        "foobar",
        &top,
        &keys,
        &[
            "--upstream",
            &upstream.url,
            "--upstream-key",
            &upkeys.public_text,
        ],
    );
    let from_upstream = shared.len() + 1; // the packages and base-lib
    assert!(
        stdout(&out).contains(&format!("{from_upstream} from upstream")),
        "{}",
        stdout(&out)
    );
    assert_eq!(files(&ours, "nar").len(), all.len() - from_upstream);
    let narinfos = files(&ours, "")
        .into_iter()
        .filter(|f| f.ends_with(".narinfo"))
        .count();
    assert_eq!(narinfos, all.len() - from_upstream);

    let server = Server::start(&ours);
    upstream.take_requests();
    let vm = Vm::new();
    let out = vm.pull(&server.url, &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm.valid(&all));
    assert_eq!(vm.switch_log(), [format!("switch {top}")]);
    let up_nars = upstream
        .take_requests()
        .iter()
        .filter(|r| r.starts_with("/nar/"))
        .count();
    assert_eq!(up_nars, from_upstream);

    // With the upstream down, a fresh host fails clearly and changes nothing.
    drop(upstream);
    let vm2 = Vm::new();
    let out = vm2.pull(&server.url, &keys, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("fetch failed"), "{}", stderr(&out));
    assert!(!vm2.valid(&[&top]));
    assert!(vm2.profile_link("system").is_none());
    assert!(vm2.switch_log().is_empty());
}

#[test]
fn an_endless_upstream_narinfo_is_refused_at_its_size_limit() {
    let (work, cache, keys) = scene();
    let top = Fixture {
        version: "endless",
        ..Default::default()
    }
    .build();
    let root = work.path().join("upstream");
    std::fs::create_dir(&root).unwrap();
    let upstream = nixcast_integration::Hostile::start(root);
    let hash = top
        .strip_prefix("/nix/store/")
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    upstream.set(
        &format!("/{hash}.narinfo"),
        nixcast_integration::Rule::Endless,
    );
    let out = nixcast()
        .args(["publish", "--host", "foobar", "--path", &top, "--cache"])
        .arg(&cache)
        .arg("--secret-key-file")
        .arg(&keys.secret)
        .args(["--upstream", &upstream.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("narinfo larger than 1048576 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(!cache.join("hosts/foobar.json").exists());
}
