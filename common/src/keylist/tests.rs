use super::*;

fn key(name: &str) -> SecretKey {
    SecretKey::generate(name).unwrap()
}

struct Fleet {
    roots: Vec<SecretKey>,
    fleet1: SecretKey,
    fleet2: SecretKey,
}

impl Fleet {
    fn new() -> Self {
        Fleet {
            roots: vec![key("root-1"), key("root-2"), key("root-3")],
            fleet1: key("fleet-1"),
            fleet2: key("fleet-2"),
        }
    }

    fn trust(&self, threshold: u32) -> Trust {
        Trust {
            threshold,
            keys: self.roots.iter().map(|k| k.public()).collect(),
        }
    }

    fn list(&self, version: u64, threshold: u32, signing: &[&SecretKey]) -> KeyList {
        let issued = Timestamp::now();
        KeyList {
            version,
            issued_at: issued,
            expires_at: issued.plus(Duration::from_secs(86_400 * 365)),
            roots: Roots {
                threshold,
                keys: self.roots.iter().map(|k| k.public()).collect(),
            },
            signing: signing
                .iter()
                .map(|k| SigningKey {
                    key: k.public(),
                    hosts: vec![],
                })
                .collect(),
        }
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

#[test]
fn a_threshold_of_roots_makes_a_list_trusted() {
    let f = Fleet::new();
    let list = f.list(1, 2, &[&f.fleet1]);
    let two = list.sign(&[&f.roots[0], &f.roots[2]]);
    let a = accept(&two, &f.trust(2), None, None)
        .and_then(|a| a.fresh(now()))
        .unwrap();
    assert_eq!(a.get(), &list);
    assert_eq!(a.signing_keys_for("web1"), [f.fleet1.public()]);
    // One root is not two, and one root twice is still one.
    let one = list.sign(&[&f.roots[0]]);
    let err = accept(&one, &f.trust(2), None, None)
        .and_then(|a| a.fresh(now()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            KeyListError::Threshold {
                got: 1,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    let twice = list.sign(&[&f.roots[0], &f.roots[0]]);
    let err = accept(&twice, &f.trust(2), None, None)
        .and_then(|a| a.fresh(now()))
        .unwrap_err();
    assert!(
        matches!(err, KeyListError::Threshold { got: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_root_given_twice_counts_once() {
    let f = Fleet::new();
    let list = f.list(1, 2, &[&f.fleet1]);
    let twice = Trust {
        threshold: 2,
        keys: vec![
            f.roots[0].public(),
            f.roots[0].public(),
            f.roots[1].public(),
        ],
    };
    let err = accept(&list.sign(&[&f.roots[0]]), &twice, None, None).unwrap_err();
    assert!(
        matches!(err, KeyListError::Threshold { got: 1, .. }),
        "{err}"
    );
}

/// A host that slept through versions walks lists that have expired since;
/// only the one it ends on must be in force.
#[test]
fn a_walk_passes_expired_lists_and_ends_on_a_fresh_one() {
    let f = Fleet::new();
    let mut v1 = f.list(1, 1, &[&f.fleet1]);
    v1.issued_at =
        Timestamp::from_system_time(now().system_time() - Duration::from_secs(800 * 86_400));
    v1.expires_at = v1.issued_at.plus(Duration::from_secs(365 * 86_400));
    let a1 = accept(&v1.sign(&[&f.roots[0]]), &f.trust(1), None, Some(1)).unwrap();
    assert!(a1.clone().fresh(now()).is_err());
    let v2 = f.list(2, 1, &[&f.fleet2]);
    let a2 = accept(&v2.sign(&[&f.roots[0]]), &a1.trust(), Some(&a1), Some(2)).unwrap();
    assert_eq!(a2.fresh(now()).unwrap().get().version, 2);
}

#[test]
fn a_key_that_is_no_root_signs_nothing() {
    let f = Fleet::new();
    let list = f.list(1, 1, &[&f.fleet1]);
    // The fleet's own signing key, renamed as a root, is not a root.
    let impostor =
        SecretKey::parse(&f.fleet1.to_file_string().replacen("fleet-1", "root-1", 1)).unwrap();
    let env = list.sign(&[&f.fleet1, &impostor]);
    let err = accept(&env, &f.trust(1), None, None)
        .and_then(|a| a.fresh(now()))
        .unwrap_err();
    assert!(
        matches!(err, KeyListError::Threshold { got: 0, .. }),
        "{err}"
    );
}

#[test]
fn a_host_never_goes_back_nor_accepts_a_fork() {
    let f = Fleet::new();
    let v1 = f.list(1, 1, &[&f.fleet1]);
    let v2 = f.list(2, 1, &[&f.fleet1, &f.fleet2]);
    let a1 = accept(&v1.sign(&[&f.roots[0]]), &f.trust(1), None, None)
        .and_then(|a| a.fresh(now()))
        .unwrap();
    let a2 = accept(&v2.sign(&[&f.roots[0]]), &a1.trust(), Some(&a1), None).unwrap();
    // The older file, planted again: refused, whoever signed it.
    let err = accept(&v1.sign(&[&f.roots[1]]), &a2.trust(), Some(&a2), None).unwrap_err();
    assert!(
        matches!(err, KeyListError::RolledBack { got: 1, held: 2 }),
        "{err}"
    );
    // The held version again is fine as it is, refused as another list.
    let again = accept(&v2.sign(&[&f.roots[1]]), &a2.trust(), Some(&a2), None).unwrap();
    assert_eq!(again.digest(), a2.digest());
    let fork = f.list(2, 1, &[&f.fleet1]);
    let err = accept(&fork.sign(&[&f.roots[0]]), &a2.trust(), Some(&a2), None).unwrap_err();
    assert!(matches!(err, KeyListError::Forked { version: 2 }), "{err}");
    // A walk asks for each version: another one is no answer.
    let err = accept(&v2.sign(&[&f.roots[0]]), &a1.trust(), Some(&a1), Some(3)).unwrap_err();
    assert!(
        matches!(err, KeyListError::WrongVersion { got: 2, want: 3 }),
        "{err}"
    );
}

#[test]
fn expired_and_future_lists_are_refused_with_the_remedy() {
    let f = Fleet::new();
    let mut list = f.list(1, 1, &[&f.fleet1]);
    let t0 = list.issued_at;
    list.expires_at = t0.plus(Duration::from_secs(60));
    let env = list.sign(&[&f.roots[0]]);
    let a = accept(&env, &f.trust(1), None, None).unwrap();
    let later = t0.plus(Duration::from_secs(61));
    let err = a.clone().fresh(later).unwrap_err();
    assert!(err.to_string().contains("nixcast keys sign"), "{err}");
    let earlier = Timestamp::from_system_time(t0.system_time() - Duration::from_secs(3600));
    let err = a.clone().fresh(earlier).unwrap_err();
    assert!(matches!(err, KeyListError::FromTheFuture { .. }), "{err}");
    // Within the allowed skew, a list issued a moment ahead is fine.
    let skewed = Timestamp::from_system_time(t0.system_time() - Duration::from_secs(60));
    a.fresh(skewed).unwrap();
}

/// A 2-of-3 root rotation: the list that replaces a root is signed by two
/// old roots and two of the new set; a host that skipped it cannot jump to
/// the version after, since that one verifies only with the new roots.
#[test]
fn roots_rotate_only_with_both_thresholds_and_a_walk_follows() {
    let f = Fleet::new();
    let v1 = f.list(1, 2, &[&f.fleet1]);
    let a1 = accept(
        &v1.sign(&[&f.roots[0], &f.roots[1]]),
        &f.trust(2),
        None,
        None,
    )
    .unwrap();
    let root4 = key("root-4");
    let mut v2 = f.list(2, 2, &[&f.fleet1]);
    v2.roots.keys = vec![f.roots[1].public(), f.roots[2].public(), root4.public()];
    // The old roots alone cannot hand the fleet over.
    let old_only = v2.sign(&[&f.roots[0], &f.roots[1]]);
    let err = accept(&old_only, &a1.trust(), Some(&a1), Some(2))
        .and_then(|a| a.fresh(now()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            KeyListError::Threshold {
                got: 1,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    // Nor the new ones alone.
    let new_only = v2.sign(&[&f.roots[2], &root4]);
    let err = accept(&new_only, &a1.trust(), Some(&a1), Some(2))
        .and_then(|a| a.fresh(now()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            KeyListError::Threshold {
                got: 1,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    let both = v2.sign(&[&f.roots[0], &f.roots[1], &root4]);
    let a2 = accept(&both, &a1.trust(), Some(&a1), Some(2))
        .and_then(|a| a.fresh(now()))
        .unwrap();
    // Version 3, signed by the new roots root-3 and root-4: a host on version
    // 1 must walk through 2 to trust it.
    let mut v3 = v2.clone();
    v3.version = 3;
    let env3 = v3.sign(&[&f.roots[2], &root4]);
    let err = accept(&env3, &a1.trust(), Some(&a1), Some(3))
        .and_then(|a| a.fresh(now()))
        .unwrap_err();
    assert!(matches!(err, KeyListError::Threshold { .. }), "{err}");
    let a3 = accept(&env3, &a2.trust(), Some(&a2), Some(3))
        .and_then(|a| a.fresh(now()))
        .unwrap();
    assert_eq!(a3.get().version, 3);
}

#[test]
fn revoked_keys_and_host_limits() {
    let f = Fleet::new();
    let mut list = f.list(2, 1, &[&f.fleet2]);
    let ci = key("ci-1");
    list.signing.push(SigningKey {
        key: ci.public(),
        hosts: vec!["web1".into()],
    });
    let a = accept(&list.sign(&[&f.roots[0]]), &f.trust(1), None, None)
        .and_then(|a| a.fresh(now()))
        .unwrap();
    assert!(!a.signing_keys_for("web1").contains(&f.fleet1.public()));
    assert_eq!(a.signing_keys_for("web1"), [f.fleet2.public(), ci.public()]);
    assert_eq!(a.signing_keys_for("db1"), [f.fleet2.public()]);
}

#[test]
fn malformed_lists_are_refused() {
    let f = Fleet::new();
    let sign = |l: &KeyList| l.sign(&[&f.roots[0]]);
    let check = |l: KeyList, what: &str| {
        let err = accept(&sign(&l), &f.trust(1), None, None)
            .and_then(|a| a.fresh(now()))
            .unwrap_err();
        assert!(err.to_string().contains(what), "{what}: {err}");
    };
    let mut l = f.list(1, 1, &[&f.fleet1]);
    l.version = 0;
    check(l, "version 0");
    check(f.list(1, 4, &[&f.fleet1]), "threshold");
    let mut l = f.list(1, 1, &[&f.fleet1, &f.fleet1]);
    check(l.clone(), "signing key is named twice");
    l.signing.truncate(1);
    l.signing[0].key = f.roots[0].public();
    check(l, "roots stay offline");
    let mut l = f.list(1, 1, &[&f.fleet1]);
    l.signing[0].hosts = vec!["a/b".into()];
    check(l, "invalid host name");
    // Too many signatures are refused before any is verified.
    let mut env: Envelope = serde_json::from_slice(&sign(&f.list(1, 1, &[&f.fleet1]))).unwrap();
    let one = env.signatures[0].clone();
    env.signatures = vec![one; MAX_SIGNATURES + 1];
    let bytes = serde_json::to_vec(&env).unwrap();
    let err = accept(&bytes, &f.trust(1), None, None)
        .and_then(|a| a.fresh(now()))
        .unwrap_err();
    assert!(matches!(err, KeyListError::TooManySignatures(_)), "{err}");
    // A pointer's envelope is not a key list, even signed by a root.
    env.payload_type = crate::pointer::PAYLOAD_TYPE.into();
    let bytes = serde_json::to_vec(&env).unwrap();
    let err = accept(&bytes, &f.trust(1), None, None)
        .and_then(|a| a.fresh(now()))
        .unwrap_err();
    assert!(matches!(err, KeyListError::PayloadType(_)), "{err}");
}

#[test]
fn unknown_fields_are_refused_after_the_signatures() {
    let f = Fleet::new();
    let list = f.list(1, 1, &[&f.fleet1]);
    let mut body = serde_json::to_value(&list).unwrap();
    body["extra"] = serde_json::json!(1);
    let body = serde_json::to_vec(&body).unwrap();
    let sig = f.roots[0].sign(&pae(PAYLOAD_TYPE, &body));
    let env = Envelope {
        payload_type: PAYLOAD_TYPE.into(),
        payload: BASE64.encode(&body),
        signatures: vec![EnvelopeSignature {
            keyid: "root-1".into(),
            sig: BASE64.encode(sig.bytes()),
        }],
    };
    let bytes = serde_json::to_vec(&env).unwrap();
    let err = accept(&bytes, &f.trust(1), None, None)
        .and_then(|a| a.fresh(now()))
        .unwrap_err();
    assert!(matches!(err, KeyListError::Payload(_)), "{err}");
    assert_eq!(decode_unverified(&list.sign(&[&f.roots[0]])).unwrap(), list);
}
