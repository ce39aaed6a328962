//! The manifest parser on arbitrary bytes. What parses must serialise and
//! parse back, and its import order must put every dependency first. A delta
//! from it to itself must be empty and rebuild it byte for byte.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use nixcast_common::manifest::{Delta, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    let _ = m.total_nar_size();
    for e in &m.paths {
        assert_eq!(m.get(&e.store_path), Some(e));
    }

    // Entries in a reference cycle are left out; the others come once each,
    // after everything they reference.
    let order = m.topological();
    let mut done = BTreeSet::new();
    for e in &order {
        for r in &e.references {
            assert!(
                *r == e.store_path || done.contains(r),
                "{} comes before its reference {r}",
                e.store_path
            );
        }
        assert!(done.insert(&e.store_path), "{} comes twice", e.store_path);
    }

    let again = Manifest::parse(&m.to_json()).expect("a serialised manifest parses");
    assert_eq!(again, m);

    let d = Delta::between(&m, &m);
    assert!(d.removed.is_empty() && d.added.is_empty());
    let d = Delta::parse(&d.to_json()).expect("a serialised delta parses");
    assert_eq!(d.apply(&m).expect("rebuilds").to_json(), m.to_json());
    // The same bytes read as a delta against the manifest they make.
    if let Ok(d) = Delta::parse(data) {
        let _ = d.apply(&m);
    }
});
