//! The agent's state directory: `status.json` and the run lock.
//!
//! `status.json` holds both what the agent must remember to stay safe (the
//! highest generation it accepted, that pointer's digest and issue time: the
//! rollback and freeze floor) and what an operator wants to read (the last
//! check, its result and error, what is applied). It is written atomically
//! (`nixcast_cli::fs::write`: temporary file, fsync, rename, fsync of the
//! directory). A file that
//! cannot be read is an error, never a reset: resetting would lower the
//! rollback floor to zero.
//!
//! The format survives an upgrade and a downgrade of the agent: it carries a
//! `version`, a newer agent may only add fields (never change what one
//! means), and an older agent keeps the fields it does not know and writes
//! them back. The fields that make the rollback floor and the list of failed
//! generations are read strictly; a field an operator reads (the last result,
//! error, timings) that does not parse is dropped with a warning instead of
//! stopping the agent, since a newer agent may have a result this one does
//! not name.
//!
//! The run lock (`lock.rs`) is this directory's: `StateDir::lock` takes it,
//! and the Nix commands and the switch a run starts share it through
//! `StateDir::children`, so that a run killed with SIGKILL keeps the lock
//! until its last child has exited.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nixcast_common::pointer::Timestamp;
use nixcast_common::{Sha256Hash, StorePath};
use serde::{Deserialize, Serialize};

use crate::lock::{self, Lock, LockShare, RunInfo, LOCK_FILE};
use crate::source::Validators;
use crate::staging::Staging;

pub const STATUS_FILE: &str = "status.json";
/// Far above any status file this agent writes.
const MAX_STATE_FILE: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Applied,
    Unchanged,
    Refused,
    FetchFailed,
    ImportFailed,
    ActivationFailed,
    RolledBack,
    /// This host failed: its state directory, its disk, its Nix.
    LocalError,
    /// A tombstone in place of the pointer: the host applies nothing.
    Retired,
}

/// The `version` this agent writes in `status.json`.
pub const STATUS_VERSION: u32 = 1;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The format version of the file this status was read from (0: written
    /// before versions). Saving writes `STATUS_VERSION`, or the file's own
    /// version when that is newer, since the newer fields are kept.
    #[serde(default)]
    pub version: u32,
    /// The highest generation whose pointer verified: older ones are refused.
    #[serde(default)]
    pub highest_generation: u64,
    /// sha256 of that pointer's payload: the same generation with other content is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_digest: Option<Sha256Hash>,
    /// issuedAt of that pointer: a pointer issued earlier is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_issued_at: Option<Timestamp>,
    /// HTTP validators of the pointer last handled to the end (applied or
    /// unchanged), kept with its expiry (older agents kept them without it,
    /// under `validators`: those are not sent, so the pointer is read whole).
    #[serde(default, rename = "pointerValidators", deserialize_with = "lenient")]
    pub validators: Validators,
    #[serde(default, rename = "validators", skip_serializing)]
    pub legacy_validators: Validators,
    /// expiresAt of the pointer those validators belong to: a 304 answer
    /// stands for that pointer, and expires with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer_expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_store_path: Option<StorePath>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub applied_at: Option<Timestamp>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_check: Option<Timestamp>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_result: Option<Outcome>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_error: Option<String>,
    /// Generations whose switch or health check failed: not retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_generations: Vec<u64>,
    /// The end of the last run that ended well (applied or nothing to do).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_success: Option<Timestamp>,
    #[serde(default, deserialize_with = "lenient")]
    pub last_run_seconds: f64,
    #[serde(default, deserialize_with = "lenient")]
    pub last_run_fetched_bytes: u64,
    /// Paths the last run rebuilt from a NAR delta.
    #[serde(default, deserialize_with = "lenient")]
    pub last_run_delta_paths: u64,
    /// Paths the last run meant to rebuild from a delta and fetched whole
    /// instead (a base missing or damaged, a delta refused).
    #[serde(default, deserialize_with = "lenient")]
    pub last_run_delta_fallbacks: u64,
    /// sha256 of the plain manifest of the generation applied last: names
    /// the NAR-delta index to ask for when the manifest held is another.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub applied_manifest: Option<Sha256Hash>,
    /// Failed runs since the state directory was made, by kind.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Whether the last pointer verified was sealed: a report then names no
    /// store path unless it is sealed too (unknown counts as sealed).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub pointer_sealed: Option<bool>,
    /// The last run that failed, for reports.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_failure: Option<nixcast_common::report::LastFailure>,
    /// The last report delivered (`--report-to`).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_report: Option<ReportSent>,
    /// Reports that could not be delivered, since the state directory was made.
    #[serde(default, deserialize_with = "lenient")]
    pub report_failures: u64,
    /// A system installed for the next boot whose kernel differs from the
    /// running one, waiting for `--reboot-window` (`--allow-reboot`).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub reboot_pending: Option<RebootPending>,
    /// Fields of a newer agent, written back unchanged.
    #[serde(flatten)]
    pub unknown: serde_json::Map<String, serde_json::Value>,
}

/// What the last delivered report said, so that a quiet run sends none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportSent {
    pub at: Timestamp,
    pub outcome: nixcast_common::report::Outcome,
    #[serde(default)]
    pub applied_generation: Option<u64>,
    #[serde(default)]
    pub reboot_pending: bool,
}

/// A reboot the agent owes: `system` was installed with `boot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebootPending {
    pub system: StorePath,
    pub since: Timestamp,
    /// The `--reboot-window` it waits for (none: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// When the reboot command was run for it: it is run once per system,
    /// so a boot loader that keeps booting the old kernel cannot make a
    /// reboot loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<Timestamp>,
}

/// A field an operator reads: one that does not parse (a newer agent's
/// value) reads as absent rather than stopping the agent.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        tracing::warn!("ignoring a status field this agent cannot read ({e}): {v}");
        T::default()
    }))
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
            Outcome::FetchFailed => "fetch-failed",
            Outcome::ImportFailed => "import-failed",
            Outcome::ActivationFailed => "activation-failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::LocalError => "local-error",
            Outcome::Retired => "retired",
        }
    }
}

/// Prometheus text-format metrics, for node_exporter's textfile collector.
pub fn metrics(s: &Status) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    let secs = |t: Option<Timestamp>| {
        t.and_then(|t| t.system_time().duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    gauge(
        "nixcast_last_success_timestamp_seconds",
        "End of the last run that applied or found nothing to do.",
        secs(s.last_success).to_string(),
    );
    gauge(
        "nixcast_last_check_timestamp_seconds",
        "End of the last run.",
        secs(s.last_check).to_string(),
    );
    gauge(
        "nixcast_applied_generation",
        "The pointer generation this host runs.",
        s.applied_generation.unwrap_or(0).to_string(),
    );
    gauge(
        "nixcast_highest_generation",
        "The highest pointer generation accepted.",
        s.highest_generation.to_string(),
    );
    gauge(
        "nixcast_last_run_duration_seconds",
        "How long the last run took.",
        format!("{:.3}", s.last_run_seconds),
    );
    gauge(
        "nixcast_last_run_fetched_bytes",
        "Bytes downloaded by the last run.",
        s.last_run_fetched_bytes.to_string(),
    );
    gauge(
        "nixcast_last_run_delta_paths",
        "Paths the last run rebuilt from NAR deltas.",
        s.last_run_delta_paths.to_string(),
    );
    gauge(
        "nixcast_last_run_delta_fallbacks",
        "Paths the last run fetched whole after their delta could not be used.",
        s.last_run_delta_fallbacks.to_string(),
    );
    gauge(
        "nixcast_last_report_timestamp_seconds",
        "When the last report was delivered (--report-to).",
        secs(s.last_report.as_ref().map(|r| r.at)).to_string(),
    );
    gauge(
        "nixcast_retired",
        "1 once the last run read a tombstone: the host applies nothing any more.",
        u8::from(s.last_result == Some(Outcome::Retired)).to_string(),
    );
    gauge(
        "nixcast_reboot_pending",
        "1 while a system with another kernel waits for a reboot.",
        u8::from(s.reboot_pending.is_some()).to_string(),
    );
    counters(s, &mut out);
    out
}

/// The counters of `metrics`: undelivered reports, failed runs by kind.
fn counters(s: &Status, out: &mut String) {
    out.push_str(&format!(
        "# HELP nixcast_report_failures_total Reports that could not be delivered.\n\
         # TYPE nixcast_report_failures_total counter\nnixcast_report_failures_total {}\n",
        s.report_failures
    ));
    out.push_str("# HELP nixcast_failures_total Failed runs, by kind.\n# TYPE nixcast_failures_total counter\n");
    for kind in [
        "refused",
        "fetch-failed",
        "import-failed",
        "activation-failed",
        "local-error",
    ] {
        let n = s.failures.get(kind).copied().unwrap_or(0);
        out.push_str(&format!("nixcast_failures_total{{kind=\"{kind}\"}} {n}\n"));
    }
}

pub struct StateDir {
    dir: PathBuf,
    /// Where this directory's held lock is kept for the run's children.
    share: LockShare,
}

impl StateDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            share: LockShare::default(),
        }
    }

    /// The slot this directory's held lock is shared through: the real
    /// store and switch are made with it (`host::NixStore::new`).
    pub fn children(&self) -> LockShare {
        self.share.clone()
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The staging cache Nix imports from, and the run's GC roots.
    pub fn staging(&self) -> Staging {
        Staging::in_state(&self.dir)
    }

    /// The newest key list this agent accepted (`--root-key`).
    pub fn key_list(&self) -> PathBuf {
        self.dir.join("keys.json")
    }

    /// The last manifest this agent verified: the base for a delta.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    /// Makes the directory (root's alone), or checks that an existing one
    /// is: staged NARs are imported as verified, and `status.json` holds the
    /// rollback floor, so whoever else can write here controls the host.
    pub fn create(&self) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let made = fs::DirBuilder::new().mode(0o700).create(&self.dir);
        match made {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&self.dir)
                .with_context(|| format!("cannot create {}", self.dir.display()))?,
        }
        let meta = fs::symlink_metadata(&self.dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?;
        let me = fs::metadata("/proc/self").map(|m| m.uid()).ok();
        if !meta.is_dir() {
            bail!(
                "the state directory {} is not a directory (a symlink?); refusing to use it",
                self.dir.display()
            );
        }
        if Some(meta.uid()) != me {
            bail!(
                "the state directory {} is owned by uid {}, not by this user: whoever owns it \
                 can plant NARs and lower the rollback floor; chown it, or pick another --state-dir",
                self.dir.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o022 != 0 {
            bail!(
                "the state directory {} is writable by group or others (mode {:o}): whoever can \
                 write there can plant NARs and lower the rollback floor; chmod 700 it",
                self.dir.display(),
                meta.mode() & 0o7777
            );
        }
        Ok(())
    }

    /// Takes the run lock without waiting, or waits for it with `wait`.
    pub fn lock(&self, wait: bool) -> Result<Option<Lock>> {
        lock::take(&self.dir.join(LOCK_FILE), wait, &self.share)
    }

    /// The run that holds the lock or held it last without releasing it, if any.
    pub fn running(&self) -> Option<RunInfo> {
        lock::running(&self.dir.join(LOCK_FILE))
    }

    /// The saved status; a missing file is a first run, a damaged one (or
    /// one that is not a small regular file) an error.
    pub fn load(&self) -> Result<Status> {
        let p = self.dir.join(STATUS_FILE);
        let bytes = match nixcast_cli::fs::read_small(&p, MAX_STATE_FILE) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Status::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        match serde_json::from_slice(&bytes) {
            Ok(s) => Ok(s),
            Err(e) => bail!(
                "the state file {} is damaged ({e}); refusing to run, since starting afresh would \
                 forget the highest accepted generation. Restore it from a backup, or repair it \
                 by hand (only highestGeneration, highestDigest, lastIssuedAt and \
                 badGenerations must be readable; other fields may go), or, if you accept any \
                 generation again, delete it and run again",
                p.display()
            ),
        }
    }

    pub fn save(&self, status: &Status) -> Result<()> {
        let status = Status {
            version: status.version.max(STATUS_VERSION),
            ..status.clone()
        };
        let mut bytes = serde_json::to_vec_pretty(&status)?;
        bytes.push(b'\n');
        nixcast_cli::fs::write(&self.dir.join(STATUS_FILE), &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damaged_file() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        assert_eq!(s.load().unwrap(), Status::default());
        let st = Status {
            highest_generation: 4,
            bad_generations: vec![3],
            last_result: Some(Outcome::Applied),
            ..Default::default()
        };
        s.save(&st).unwrap();
        assert_eq!(
            s.load().unwrap(),
            Status {
                version: STATUS_VERSION,
                ..st
            }
        );
        let bytes = fs::read(d.path().join(STATUS_FILE)).unwrap();
        fs::write(d.path().join(STATUS_FILE), &bytes[..bytes.len() / 2]).unwrap();
        let err = s.load().unwrap_err().to_string();
        assert!(
            err.contains("damaged") && err.contains("highest accepted generation"),
            "{err}"
        );
    }

    /// A newer agent's status (an extra field, a result this agent does not
    /// name, a newer version) is read, keeps the floor, and is written back
    /// with what this agent does not know.
    #[test]
    fn a_newer_agents_status_is_read_and_its_fields_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let text = r#"{
            "version": 7,
            "highestGeneration": 12,
            "badGenerations": [11],
            "lastResult": "sealed-refused",
            "lastRunSeconds": "not a number",
            "rollout": {"wave": 3}
        }"#;
        fs::write(d.path().join(STATUS_FILE), text).unwrap();
        let st = s.load().unwrap();
        assert_eq!(st.highest_generation, 12);
        assert_eq!(st.bad_generations, [11]);
        assert_eq!(st.last_result, None);
        assert_eq!(st.last_run_seconds, 0.0);
        s.save(&st).unwrap();
        let back: serde_json::Value =
            serde_json::from_slice(&fs::read(d.path().join(STATUS_FILE)).unwrap()).unwrap();
        assert_eq!(back["version"], 7);
        assert_eq!(back["highestGeneration"], 12);
        assert_eq!(back["rollout"]["wave"], 3);
    }

    /// What makes the rollback floor is read strictly: a value this agent
    /// cannot read stops it rather than lowering the floor.
    #[test]
    fn an_unreadable_floor_stops_the_agent() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        for text in [
            r#"{"highestGeneration": "twelve"}"#,
            r#"{"highestGeneration": 12, "highestDigest": 5}"#,
            r#"{"highestGeneration": 12, "lastIssuedAt": "yesterday"}"#,
            r#"{"highestGeneration": 12, "badGenerations": "none"}"#,
        ] {
            fs::write(d.path().join(STATUS_FILE), text).unwrap();
            let err = s.load().unwrap_err().to_string();
            assert!(err.contains("damaged"), "{text}: {err}");
        }
    }

    #[test]
    fn second_lock_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        assert!(s.running().is_none());
        let held = s.lock(false).unwrap();
        assert!(held.is_some());
        let info = s.running().unwrap();
        assert_eq!(info.pid, std::process::id());
        assert!(info.alive());
        assert!(s.lock(false).unwrap().is_none());
        drop(held);
        assert!(s.running().is_none(), "a released lock names no run");
        assert!(s.lock(false).unwrap().is_some());
    }

    /// A child started with the lock's `stdin` holds the lock until it exits,
    /// even once the run has let go of it (as when the agent is killed).
    #[test]
    fn a_child_keeps_the_lock_until_it_exits() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let held = s.lock(false).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .stdin(s.children().stdin())
            .spawn()
            .unwrap();
        drop(held);
        assert!(s.lock(false).unwrap().is_none(), "the child holds it");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(s.lock(false).unwrap().is_some());
    }
}
