//! A run's steps against a cache directory, an in-memory store and switch
//! (`crate::testing`): what is imported, what the profile and the switch
//! see, what the status records, and what is refused before anything is
//! fetched.

use std::sync::Arc;

use std::time::SystemTime;

use nixcast_common::manifest::{self, Delta};
use nixcast_common::pointer::{Pointer, Timestamp};
use nixcast_common::{layout, Sha256Hash};

use super::*;
use crate::activate::Action;
use crate::source::Source;
use crate::state::{StateDir, Status};
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
    let staged = std::fs::read_dir(cfg.ports.state.staging().nar_dir()).unwrap();
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
    let (new, _) = h.cache.publish(2, &testing::closure("v2", 20));
    *h.switch.failing_checks.lock().unwrap() = vec!["exit 7".into()];
    let mut cfg = h.config();
    cfg.apply.health_checks = vec!["true".into(), "exit 7".into(), "never run".into()];
    let err = h.run(&cfg).await.unwrap_err();
    assert_eq!(err.exit_code(), 5, "{err}");
    assert!(err.to_string().contains("health check \"exit 7\""), "{err}");
    assert!(
        err.to_string()
            .contains("rolled back to profile generation 1"),
        "{err}"
    );
    // In order, after the switch, up to the first that fails.
    assert_eq!(*h.switch.checks.lock().unwrap(), ["true", "exit 7"]);
    assert_eq!(h.switch.activated(), [old.clone(), new, old.clone()]);
    assert_eq!(h.store.profile(), Some(old));
    let st = h.status();
    assert_eq!(st.bad_generations, [2]);
    assert_eq!(st.last_result, Some(Outcome::ActivationFailed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_health_checks_keep_the_new_system() {
    let h = Host::new();
    let (top, _) = h.cache.publish(1, &testing::closure("v1", 10));
    let mut cfg = h.config();
    cfg.apply.health_checks = vec!["true".into(), "also true".into()];
    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Applied);
    assert_eq!(*h.switch.checks.lock().unwrap(), ["true", "also true"]);
    assert_eq!(h.switch.activated(), std::slice::from_ref(&top));
    assert_eq!(h.store.profile(), Some(top));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_generations_deletes_the_old_ones_and_asks_the_store_to_collect() {
    let h = Host::new();
    let mut cfg = h.config();
    cfg.after.keep_generations = Some(2);
    let mut systems = Vec::new();
    for g in 1..=4 {
        let (top, _) = h.cache.publish(g, &testing::closure("v", 10 * g as u8));
        assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Applied);
        systems.push(top);
    }
    let kept: Vec<u64> = h.store.lock().generations.iter().map(|(g, _)| *g).collect();
    assert_eq!(kept, [3, 4]);
    // One generation past the limit after the third run, one after the fourth.
    assert_eq!(
        h.store.lock().collected,
        [vec![systems[0].clone()], vec![systems[1].clone()]]
    );
    // Not without --keep-generations.
    h.cache.publish(5, &testing::closure("v", 50));
    h.run(&h.config()).await.unwrap();
    assert_eq!(h.store.lock().generations.len(), 3);
    assert_eq!(h.store.lock().collected.len(), 2);
}

/// A booted system whose kernel, initrd and modules differ from every
/// system the tests publish (those have no such links).
fn booted_system(dir: &std::path::Path) -> std::path::PathBuf {
    let b = dir.join("booted");
    std::fs::create_dir(&b).unwrap();
    for link in ["kernel", "initrd", "kernel-modules"] {
        std::os::unix::fs::symlink(format!("/nix/store/old-linux/{link}"), b.join(link)).unwrap();
    }
    b
}

/// A `--reboot-window` of an hour, `from_now` hours from now (local time).
fn window(from_now: i64) -> crate::window::Window {
    let start = chrono::Local::now() + chrono::Duration::hours(from_now);
    let end = start + chrono::Duration::hours(1);
    let text = format!("{}-{}", start.format("%H:%M"), end.format("%H:%M"));
    crate::window::Window::parse(&text).unwrap()
}

impl Host {
    /// A run of generation `g` with a new kernel under `reboot`; what the
    /// switch was asked for and the reboot commands run.
    async fn new_kernel(
        &self,
        g: u64,
        reboot: Option<crate::config::RebootPolicy>,
    ) -> (Vec<Action>, Vec<String>) {
        self.cache.publish(g, &testing::closure("v", 10 * g as u8));
        let mut cfg = self.config();
        cfg.ports.booted_system = booted_system(self.state.path());
        cfg.after.reboot = reboot;
        assert_eq!(self.run(&cfg).await.unwrap(), Outcome::Applied);
        let actions = self.switch.activated.lock().unwrap();
        let actions = actions.iter().map(|(_, a)| *a).collect();
        (actions, self.switch.reboots.lock().unwrap().clone())
    }
}

fn reboot_policy(window: Option<crate::window::Window>) -> Option<crate::config::RebootPolicy> {
    Some(crate::config::RebootPolicy {
        window,
        command: "reboot now".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kernel_is_booted_and_rebooted_into_at_once_without_a_window() {
    let h = Host::new();
    let (actions, reboots) = h.new_kernel(1, reboot_policy(None)).await;
    assert_eq!(actions, [Action::Boot]);
    assert_eq!(reboots, ["reboot now"]);
    let pending = h.status().reboot_pending.expect("pending until it runs");
    assert!(pending.requested_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kernel_waits_for_the_reboot_window() {
    let h = Host::new();
    let (actions, reboots) = h.new_kernel(1, reboot_policy(Some(window(2)))).await;
    assert_eq!(actions, [Action::Boot]);
    assert!(reboots.is_empty(), "outside the window: {reboots:?}");
    let pending = h.status().reboot_pending.expect("a reboot is owed");
    assert!(pending.requested_at.is_none());
    assert!(pending.window.is_some());
    // The next run, inside the window, makes it.
    let mut cfg = h.config();
    cfg.ports.booted_system = h.state.path().join("booted");
    cfg.after.reboot = reboot_policy(Some(window(0)));
    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Unchanged);
    assert_eq!(*h.switch.reboots.lock().unwrap(), ["reboot now"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kernel_is_never_rebooted_into_without_allow_reboot() {
    let h = Host::new();
    let (actions, reboots) = h.new_kernel(1, None).await;
    assert_eq!(actions, [Action::Switch]);
    assert!(reboots.is_empty());
    assert!(h.status().reboot_pending.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reboot_command_leaves_the_reboot_pending() {
    let h = Host::new();
    *h.switch.failing_reboot.lock().unwrap() = true;
    let (_, reboots) = h.new_kernel(1, reboot_policy(None)).await;
    assert_eq!(reboots, ["reboot now"]);
    let pending = h.status().reboot_pending.expect("still owed");
    assert!(pending.requested_at.is_none(), "tried again next run");
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
    let mut cfg = h.config();
    cfg.ports.source = Source::dir(other.path());
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
    let mut cfg = h.config();
    cfg.apply.dry_run = true;
    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Unchanged);
    assert!(h.store.lock().imported.is_empty());
    assert!(h.switch.activated().is_empty());
    assert!(!h.state.path().join(crate::state::STATUS_FILE).exists());
    assert!(!cfg
        .ports
        .state
        .staging()
        .nar_dir()
        .parent()
        .unwrap()
        .exists());
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
        &h.config().ports.profile,
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

/// A verified tombstone: nothing is applied or switched, the floor rises
/// to it and the outcome is `retired`; one for another host, below the
/// floor or signed by another key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_retires_the_host_and_changes_nothing_else() {
    use nixcast_common::pointer::Tombstone;
    let h = Host::new();
    let (top, _) = h.cache.publish(1, &testing::closure("v1", 10));
    let cfg = h.config();
    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Applied);
    let imported = h.store.lock().imported.len();
    let put = |t: &Tombstone, key: &nixcast_common::SecretKey| {
        std::fs::write(
            h.cache.path().join(layout::pointer(testing::HOST)),
            t.sign(key),
        )
        .unwrap();
    };
    let t = |host: &str, generation| Tombstone {
        host: host.into(),
        generation,
        issued_at: Timestamp::now(),
    };
    for (bad, why) in [
        (t("other", 2), "is for host \"other\""),
        (t(testing::HOST, 0), "generation is 0"),
    ] {
        put(&bad, &h.cache.key);
        let err = h.run(&cfg).await.unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains(why), "{err}");
    }
    let stranger = nixcast_common::SecretKey::generate("test-1").unwrap();
    put(&t(testing::HOST, 2), &stranger);
    let err = h.run(&cfg).await.unwrap_err();
    assert!(
        err.to_string().contains("not signed by any trusted key"),
        "{err}"
    );

    put(&t(testing::HOST, 2), &h.cache.key);
    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Retired);
    assert_eq!(h.run(&cfg).await.unwrap(), Outcome::Retired, "read again");
    assert_eq!(h.store.profile(), Some(top.clone()));
    assert_eq!(h.switch.activated(), [top]);
    assert_eq!(h.store.lock().imported.len(), imported);
    let st = h.status();
    assert_eq!(
        (st.applied_generation, st.highest_generation, st.last_result),
        (Some(1), 2, Some(Outcome::Retired))
    );
    assert_eq!(
        st.validators,
        Default::default(),
        "a 304 never stands for it"
    );
    // The floor held: an older pointer, or a tombstone below it, is refused.
    h.cache.publish(1, &testing::closure("v1", 10));
    assert_eq!(h.run(&cfg).await.unwrap_err().exit_code(), 3);
    put(&t(testing::HOST, 1), &h.cache.key);
    assert_eq!(h.run(&cfg).await.unwrap_err().exit_code(), 3);
}
