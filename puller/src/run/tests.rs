//! A run's steps against a cache directory, an in-memory store and switch
//! (`crate::testing`): what is imported, what the profile and the switch
//! see, what the status records, and what is refused before anything is
//! fetched.

use std::sync::Arc;

use super::*;
use crate::source::Source;
use crate::testing::{self, Cache, FakeStore, FakeSwitch};

struct Host {
    cache: Cache,
    state: tempfile::TempDir,
    store: Arc<FakeStore>,
    switch: Arc<FakeSwitch>,
}

impl Host {
    /// A host whose store holds `libc` already.
    fn new() -> Self {
        Host {
            cache: Cache::new(),
            state: tempfile::tempdir().unwrap(),
            store: FakeStore::with_valid(&[&testing::store_path("libc", 200)]),
            switch: Arc::new(FakeSwitch::default()),
        }
    }

    fn config(&self) -> Config {
        testing::config(
            &self.cache,
            self.state.path(),
            self.store.clone(),
            self.switch.clone(),
        )
    }

    /// One run, as `nixcast-pull run` makes it (lock, status, metrics).
    /// Each test's state directory has its lock of its own: tests run at once.
    async fn run(&self, cfg: &Config) -> Result<Outcome, RunError> {
        run(cfg).await
    }

    fn status(&self) -> Status {
        StateDir::new(self.state.path()).load().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_is_imported_set_and_switched_to_once() {
    let h = Host::new();
    let (top, _) = h.cache.publish(1, &testing::closure("v1", 10));
    let cfg = h.config();
    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Applied);
    let lib = testing::store_path("lib", 11);
    // Dependencies first; what the store had is not fetched.
    assert_eq!(h.store.lock().imported, [lib, top.clone()]);
    assert_eq!(h.store.profile(), Some(top.clone()));
    assert_eq!(h.switch.activated(), std::slice::from_ref(&top));
    let st = h.status();
    assert_eq!(
        (st.applied_generation, st.highest_generation, st.last_result),
        (Some(1), 1, Some(Outcome::Applied))
    );
    assert_eq!(st.applied_store_path, Some(top.clone()));
    assert!(st.last_run_fetched_bytes > 0);
    let staged = std::fs::read_dir(cfg.state.staging().nar_dir()).unwrap();
    assert_eq!(staged.count(), 0, "the staging cache is emptied");
    // Nix was asked once, what is missing: the import itself vouches that
    // the system it imported is valid.
    assert_eq!(h.store.lock().queries, 1);

    // The same pointer again: nothing to do.
    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Unchanged);
    assert_eq!(h.switch.activated().len(), 1);
    assert_eq!(h.store.lock().imported.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_switch_rolls_back_and_the_generation_is_not_tried_again() {
    let h = Host::new();
    let (old, _) = h.cache.publish(1, &testing::closure("v1", 10));
    let cfg = h.config();
    h.run(&cfg).await.unwrap();
    let (new, _) = h.cache.publish(2, &testing::closure("v2", 20));
    *h.switch.failing.lock().unwrap() = Some(new.clone());

    let err = h.run(&cfg).await.unwrap_err();
    assert_eq!(err.exit_code(), 5, "{err}");
    assert!(
        err.to_string()
            .contains("rolled back to profile generation 1"),
        "{err}"
    );
    assert_eq!(
        h.switch.activated(),
        [old.clone(), new.clone(), old.clone()]
    );
    assert_eq!(h.store.profile(), Some(old.clone()));
    assert_eq!(
        h.store.lock().generations.len(),
        1,
        "the failed generation is deleted"
    );
    let st = h.status();
    assert_eq!(st.bad_generations, [2]);
    assert_eq!(st.applied_generation, Some(1));
    assert_eq!(st.last_result, Some(Outcome::ActivationFailed));
    assert_eq!(st.failures.get("activation-failed"), Some(&1));

    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Unchanged);
    assert_eq!(
        h.switch.activated().len(),
        3,
        "a bad generation is not switched to again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_rolls_back() {
    let h = Host::new();
    let (old, _) = h.cache.publish(1, &testing::closure("v1", 10));
    h.run(&h.config()).await.unwrap();
    h.cache.publish(2, &testing::closure("v2", 20));
    *h.switch.failing_checks.lock().unwrap() = vec!["exit 7".into()];
    let cfg = Config {
        health_checks: vec!["true".into(), "exit 7".into()],
        ..h.config()
    };
    let err = h.run(&cfg).await.unwrap_err();
    assert!(err.to_string().contains("health check \"exit 7\""), "{err}");
    assert_eq!(h.store.profile(), Some(old));
    assert_eq!(h.status().bad_generations, [2]);
}

type Edit = Box<dyn Fn(&mut Pointer)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pointers_against_the_policy_are_refused_before_the_store_is_asked() {
    let h = Host::new();
    let (_, m) = h.cache.publish(5, &testing::closure("v1", 10));
    let cfg = h.config();
    h.run(&cfg).await.unwrap();
    let queries = h.store.lock().queries;
    let epoch = std::time::UNIX_EPOCH;
    let cases: Vec<(&str, Edit)> = vec![
        ("not \"web1\"", Box::new(|p| p.host = "web2".into())),
        (
            "not \"x86_64-linux\"",
            Box::new(|p| p.system = "aarch64-linux".into()),
        ),
        (
            "lower than the highest accepted (5)",
            Box::new(|p| p.generation = 4),
        ),
        (
            "other content than the one accepted",
            Box::new(|p| {
                p.expires_at = Some(Timestamp::from_system_time(
                    SystemTime::now() + std::time::Duration::from_secs(86400),
                ))
            }),
        ),
        (
            "expired at",
            Box::new(move |p| {
                p.issued_at = Timestamp::from_system_time(epoch);
                p.expires_at = Some(Timestamp::from_system_time(
                    epoch + std::time::Duration::from_secs(60),
                ));
            }),
        ),
        (
            "more than --max-generation-jump",
            Box::new(|p| p.generation = 5000),
        ),
    ];
    for (needle, edit) in cases {
        h.cache.publish_manifest(5, &m, edit);
        let err = h.run(&cfg).await.unwrap_err();
        assert_eq!(err.exit_code(), 3, "{needle}: {err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
    assert_eq!(h.store.lock().queries, queries, "the store was not asked");
    assert_eq!(h.status().highest_generation, 5, "the floor stays");

    // Signed by another key: refused too.
    let other = Cache::new();
    other.publish(6, &testing::closure("v2", 20));
    let cfg = Config {
        source: Source::Dir(other.path().to_owned()),
        ..h.config()
    };
    let err = h.run(&cfg).await.unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
    assert_eq!(h.store.lock().queries, queries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_nar_or_manifest_is_refused_and_nothing_is_imported() {
    let h = Host::new();
    let (top, m) = h.cache.publish(1, &testing::closure("v1", 10));
    let e = m.get(&top).unwrap();
    let nar = h.cache.path().join(&e.url);
    let mut bytes = std::fs::read(&nar).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 1;
    std::fs::write(&nar, &bytes).unwrap();
    let err = h.run(&h.config()).await.unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(err.to_string().contains(&top.to_string()), "{err}");
    assert!(!h.store.lock().imported.contains(&top));
    assert_eq!(h.store.profile(), None);
    assert!(h.switch.activated().is_empty());

    // The manifest the pointer pins, changed by one byte.
    let h = Host::new();
    let (_, m) = h.cache.publish(1, &testing::closure("v1", 10));
    let path = h
        .cache
        .path()
        .join(layout::manifest(&Sha256Hash::digest(&m.to_json())));
    let mut text = std::fs::read(&path).unwrap();
    *text.last_mut().unwrap() = b' ';
    std::fs::write(&path, &text).unwrap();
    let err = h.run(&h.config()).await.unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(err.to_string().contains("with sha256"), "{err}");
    assert!(h.store.lock().imported.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing() {
    let h = Host::new();
    h.cache.publish(1, &testing::closure("v1", 10));
    let cfg = Config {
        dry_run: true,
        ..h.config()
    };
    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Unchanged);
    assert!(h.store.lock().imported.is_empty());
    assert!(h.switch.activated().is_empty());
    assert!(!h.state.path().join(crate::state::STATUS_FILE).exists());
    assert!(!cfg.state.staging().nar_dir().parent().unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_by_hand_goes_to_the_previous_generation_and_marks_the_applied_one_bad() {
    let h = Host::new();
    let (old, _) = h.cache.publish(1, &testing::closure("v1", 10));
    h.run(&h.config()).await.unwrap();
    let (new, _) = h.cache.publish(2, &testing::closure("v2", 20));
    h.run(&h.config()).await.unwrap();
    assert_eq!(h.store.profile(), Some(new));
    let state = StateDir::new(h.state.path());
    let msg = rollback_by_hand(
        &*h.store,
        &*h.switch,
        &h.config().profile,
        &state,
        Action::Switch,
    )
    .unwrap();
    assert!(msg.contains("generation 1"), "{msg}");
    assert_eq!(h.store.profile(), Some(old.clone()));
    assert_eq!(h.switch.activated().last(), Some(&old));
    let st = h.status();
    assert_eq!(
        (st.bad_generations, st.last_result),
        (vec![2], Some(Outcome::RolledBack))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_manifest_is_rebuilt_from_the_last_one_and_a_delta() {
    let h = Host::new();
    let (_, old) = h.cache.publish(1, &testing::closure("v1", 10));
    h.run(&h.config()).await.unwrap();
    let (new_top, new) = h.cache.publish(2, &testing::closure("v2", 20));
    let (old_sha, new_sha) = (
        Sha256Hash::digest(&old.to_json()),
        Sha256Hash::digest(&new.to_json()),
    );
    let delta = Delta::between(&old, &new).to_json();
    std::fs::write(
        h.cache
            .path()
            .join(manifest::delta_path(&new_sha, &old_sha)),
        delta,
    )
    .unwrap();
    // Only the delta can give the new manifest now.
    std::fs::remove_file(h.cache.path().join(layout::manifest(&new_sha))).unwrap();
    assert_eq!(h.run(&h.config()).await.unwrap(), Outcome::Applied);
    assert_eq!(h.store.profile(), Some(new_top));

    // A delta that does not make the pinned manifest is not used.
    let (_, newer) = h.cache.publish(3, &testing::closure("v3", 30));
    let newer_sha = Sha256Hash::digest(&newer.to_json());
    std::fs::write(
        h.cache
            .path()
            .join(manifest::delta_path(&newer_sha, &new_sha)),
        Delta::between(&new, &old).to_json(),
    )
    .unwrap();
    std::fs::remove_file(h.cache.path().join(layout::manifest(&newer_sha))).unwrap();
    let err = h.run(&h.config()).await.unwrap_err();
    assert_eq!(err.exit_code(), 4, "fetched whole, and missing: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_is_tried_once_more_from_an_empty_staging_directory() {
    let h = Host::new();
    let (top, _) = h.cache.publish(1, &testing::closure("v1", 10));
    h.store.lock().failing_imports = 1;
    assert_eq!(h.run(&h.config()).await.unwrap(), Outcome::Applied);
    assert_eq!(h.store.profile(), Some(top));

    let h = Host::new();
    h.cache.publish(1, &testing::closure("v1", 10));
    h.store.lock().failing_imports = 2;
    let err = h.run(&h.config()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::ImportFailed, "{err}");
    assert!(err.to_string().contains("a test's failure"), "{err}");
    assert!(h.switch.activated().is_empty());
    assert_eq!(h.status().failures.get("import-failed"), Some(&1));
}
