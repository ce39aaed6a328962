//! `nixcast bundle` and `nixcast-pull run --bundle`: a host across an air gap.

use crate::harness::*;

fn bundle(cache: &std::path::Path, out: &std::path::Path, base: &[&str]) -> String {
    let o = ok(nixcast()
        .args(["bundle", "--host", "foobar", "--cache"])
        .arg(cache)
        .arg("--output")
        .arg(out)
        .args(base));
    stdout(&o)
}

fn pull_bundle(vm: &Vm, file: &std::path::Path, keys: &Keys) -> std::process::Output {
    vm.agent(&[
        "run",
        "--bundle",
        file.to_str().unwrap(),
        "--host",
        "foobar",
        "--trusted-key",
        &keys.public_text,
        "--state-dir",
        "/nix/var/nixcast",
    ])
    .output()
    .unwrap()
}

#[test]
fn a_bundle_carries_a_host_across_an_air_gap() {
    let (work, cache, keys) = scene();
    let gen1 = Fixture {
        n: 6,
        version: "bundle1",
        ..Default::default()
    }
    .build();
    let gen2 = Fixture {
        n: 6,
        version: "bundle2",
        ..Default::default()
    }
    .build();
    publish(&cache, "foobar", &gen1, &keys, &[]);
    let (full1, full2, delta) = (
        work.path().join("full1.nixcast"),
        work.path().join("full2.nixcast"),
        work.path().join("delta.nixcast"),
    );
    bundle(&cache, &full1, &[]);
    publish(&cache, "foobar", &gen2, &keys, &[]);
    bundle(&cache, &full2, &[]);
    let text = bundle(&cache, &delta, &["--base", "1"]);
    let changed = closure(&gen2)
        .iter()
        .filter(|p| !closure(&gen1).contains(p))
        .count();
    assert!(text.contains(&format!("{changed} NARs of")), "{text}");
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&delta) * 3 < size(&full2),
        "delta {} vs full {}",
        size(&delta),
        size(&full2)
    );
    // The same with the base named by its store path.
    let by_path = work.path().join("by-path.nixcast");
    bundle(&cache, &by_path, &["--base-path", &gen1]);
    assert_eq!(size(&by_path), size(&delta));

    // A host at generation 1 (from the full bundle) switches to 2 with the delta.
    let vm = Vm::new();
    let out = pull_bundle(&vm, &full1, &keys);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = pull_bundle(&vm, &delta, &keys);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm.valid(&closure(&gen2)));
    assert_eq!(
        vm.switch_log(),
        [format!("switch {gen1}"), format!("switch {gen2}")]
    );
    assert_eq!(vm.status()["appliedGeneration"], 2);

    // A host without the base: refused before anything is fetched, naming what is missing.
    let bare = Vm::new();
    let out = pull_bundle(&bare, &delta, &keys);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let lib = closure(&gen1)
        .into_iter()
        .find(|p| p.contains("-base-lib"))
        .unwrap();
    assert!(stderr(&out).contains(&lib), "{}", stderr(&out));
    assert!(
        !bare.nix().join("var/nixcast/staging/nar").exists()
            || std::fs::read_dir(bare.nix().join("var/nixcast/staging/nar"))
                .unwrap()
                .count()
                == 0
    );
    assert!(bare.profile_link("system").is_none());

    // A flipped byte inside a NAR of the bundle is refused like a tampered download.
    let mut bytes = std::fs::read(&full2).unwrap();
    let at = bytes.len() - 2048; // inside the last NAR, before tar's end blocks
    bytes[at] ^= 0x55;
    let tampered = work.path().join("tampered.nixcast");
    std::fs::write(&tampered, bytes).unwrap();
    let fresh = Vm::new();
    let out = pull_bundle(&fresh, &tampered, &keys);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(fresh.profile_link("system").is_none());
    assert!(!fresh.valid(&[&gen2]));
}
