//! `nixcast gc`: what no kept generation reaches goes, the rest still pulls.

use std::collections::BTreeSet;

use crate::harness::*;

fn gc(cache: &std::path::Path, args: &[&str]) -> String {
    stdout(&ok(nixcast().args(["gc", "--cache"]).arg(cache).args(args)))
}

#[test]
fn gc_deletes_exactly_what_no_kept_generation_reaches() {
    let (_work, cache, keys) = scene();
    let gens: Vec<String> = ["gc1", "gc2", "gc3"]
        .iter()
        .map(|v| {
            Fixture {
                n: 2,
                version: v,
                ..Default::default()
            }
            .build()
        })
        .collect();
    for g in &gens {
        publish(&cache, "foobar", g, &keys, &[]);
    }
    let all_files = |c: &std::path::Path| -> BTreeSet<String> {
        let mut s: BTreeSet<String> = files(c, "").into_iter().map(|f| f.to_string()).collect();
        s.extend(files(c, "nar").into_iter().map(|f| format!("nar/{f}")));
        s.extend(
            files(c, "manifests")
                .into_iter()
                .map(|f| format!("manifests/{f}")),
        );
        s.extend(
            files(c, "hosts/foobar")
                .into_iter()
                .map(|f| format!("hosts/foobar/{f}")),
        );
        s
    };
    let before = all_files(&cache);

    // Young files survive the grace period; a dry run deletes nothing.
    gc(&cache, &["--keep", "2"]);
    assert_eq!(all_files(&cache), before);
    let dry = gc(&cache, &["--keep", "2", "--grace", "0s", "--dry-run"]);
    assert!(dry.contains("would delete"), "{dry}");
    assert_eq!(all_files(&cache), before);

    gc(&cache, &["--keep", "2", "--grace", "0s"]);
    let after = all_files(&cache);
    let removed: BTreeSet<String> = before.difference(&after).cloned().collect();
    // Exactly generation 1's own paths (narinfo and NAR each), its manifest and its history pointer.
    let kept_paths: BTreeSet<String> = closure(&gens[1])
        .into_iter()
        .chain(closure(&gens[2]))
        .collect();
    let only1: Vec<String> = closure(&gens[0])
        .into_iter()
        .filter(|p| !kept_paths.contains(p))
        .collect();
    assert_eq!(only1.len(), 2);
    let removed_narinfos: BTreeSet<String> = removed
        .iter()
        .filter(|f| f.ends_with(".narinfo"))
        .cloned()
        .collect();
    let expected: BTreeSet<String> = only1
        .iter()
        .map(|p| {
            format!(
                "{}.narinfo",
                &p["/nix/store/".len().."/nix/store/".len() + 32]
            )
        })
        .collect();
    assert_eq!(removed_narinfos, expected);
    assert_eq!(
        removed.iter().filter(|f| f.starts_with("nar/")).count(),
        2,
        "{removed:?}"
    );
    assert_eq!(
        removed
            .iter()
            .filter(|f| f.starts_with("manifests/"))
            .count(),
        1,
        "{removed:?}"
    );
    assert!(removed.contains("hosts/foobar/1.json"), "{removed:?}");
    assert_eq!(removed.len(), 6, "{removed:?}");
    // The deltas into kept manifests stay (an agent at generation 1 may still use 1→2).
    let deltas: Vec<&String> = after
        .iter()
        .filter(|f| f.contains(".from-") && !f.contains(".nars-from-"))
        .collect();
    assert_eq!(deltas.len(), 2, "{after:?}");
    for d in deltas {
        let new = format!("{}.json", d.split(".from-").next().unwrap());
        assert!(after.contains(&new), "{d} outlives {new}");
    }

    // Kept generations still pull, and Nix still accepts the cache.
    let vm = Vm::new();
    let out = vm.pull(&format!("file://{}", cache.display()), &keys, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm.valid(&closure(&gens[2])));
    let vm2 = Vm::new();
    let out = vm2.nix_copy_from(
        &format!("file://{}", cache.display()),
        &keys.public_text,
        &gens[1],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn planted_history_files_take_no_kept_generation_s_place() {
    let (_work, cache, keys) = scene();
    let gens: Vec<String> = ["gcp1", "gcp2"]
        .iter()
        .map(|v| {
            Fixture {
                version: v,
                ..Default::default()
            }
            .build()
        })
        .collect();
    for g in &gens {
        publish(&cache, "foobar", g, &keys, &[]);
    }
    let history = cache.join("hosts/foobar");
    // The current pointer again under a higher number, and an empty file.
    std::fs::copy(history.join("2.json"), history.join("999.json")).unwrap();
    std::fs::write(history.join("1000.json"), b"").unwrap();
    let out = ok(nixcast()
        .args(["gc", "--keep", "2", "--grace", "0s", "--cache"])
        .arg(&cache));
    assert!(stderr(&out).contains("999.json"), "{}", stderr(&out));
    // Generations 2 and 1 are the two kept: all of generation 1 stays.
    assert_eq!(
        files(&cache, "hosts/foobar"),
        ["1.json", "1000.json", "2.json", "999.json"]
    );
    assert_eq!(files(&cache, "nar").len(), {
        let mut all = closure(&gens[0]);
        all.extend(closure(&gens[1]));
        all.sort();
        all.dedup();
        all.len()
    });
}
