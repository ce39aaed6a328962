//! `nixcast-pull status`: what the agent last did, from its state directory,
//! as text or JSON.

use std::path::PathBuf;

use anyhow::Result;

use super::Failure;
use crate::lock::RunInfo;
use crate::state::{self, Status};
use nixcast_cli::text;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "NIXCAST_STATE_DIR", default_value = "/var/lib/nixcast")]
    state_dir: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn status(a: &Args) -> Result<(), Failure> {
    show(a).map_err(|e| Failure {
        code: 1,
        message: format!("{e:#}"),
    })
}

fn show(a: &Args) -> Result<()> {
    let state = state::StateDir::new(&a.state_dir);
    let st = state.load()?;
    let running = state.running();
    let link = |p: &str| {
        std::fs::canonicalize(p)
            .ok()
            .map(|p| p.display().to_string())
    };
    let (current, booted) = (link("/run/current-system"), link("/run/booted-system"));
    if a.json {
        return json(&st, running.as_ref(), current, booted);
    }
    show_text(&st, running.as_ref(), current, booted);
    Ok(())
}

fn json(
    st: &Status,
    running: Option<&RunInfo>,
    current: Option<String>,
    booted: Option<String>,
) -> Result<()> {
    let mut v = serde_json::to_value(st)?;
    v["currentSystem"] = current.into();
    v["bootedSystem"] = booted.into();
    if let Some(r) = running {
        v["run"] = serde_json::json!({
            "pid": r.pid,
            "startedAt": r.started_at,
            "alive": r.alive(),
        });
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn show_text(
    st: &Status,
    running: Option<&RunInfo>,
    current: Option<String>,
    booted: Option<String>,
) {
    let show = |o: Option<String>| o.unwrap_or_else(|| "-".to_owned());
    println!(
        "applied generation: {}",
        show(st.applied_generation.map(|g| g.to_string()))
    );
    println!(
        "applied store path: {}",
        show(st.applied_store_path.as_ref().map(|p| p.to_string()))
    );
    println!("current system:     {}", show(current));
    println!("booted system:      {}", show(booted));
    println!("highest accepted:   {}", st.highest_generation);
    let run = match running {
        None => "no".to_owned(),
        Some(r) if r.alive() => format!("since {} (pid {})", r.started_at, r.pid),
        Some(r) => format!(
            "no (pid {}, started at {}, ended without releasing the lock: killed?)",
            r.pid, r.started_at
        ),
    };
    println!("running:            {run}");
    println!(
        "last check:         {}",
        show(st.last_check.map(|t| t.to_string()))
    );
    println!(
        "last success:       {}",
        show(st.last_success.map(|t| t.to_string()))
    );
    println!(
        "last result:        {}",
        show(st.last_result.map(|r| r.as_str().to_owned()))
    );
    println!(
        "last error:         {}",
        show(st.last_error.as_deref().map(text::clean))
    );
    show_after(st);
}

/// The lines shown only when there is something to say: failed
/// generations, a pending reboot, reports.
fn show_after(st: &Status) {
    if !st.bad_generations.is_empty() {
        println!("bad generations:    {:?}", st.bad_generations);
    }
    if let Some(r) = &st.reboot_pending {
        let when = match (&r.requested_at, &r.window) {
            (Some(t), _) => format!("requested at {t}"),
            (None, Some(w)) => format!("in the window {}", text::clean(w)),
            (None, None) => "at the next run".to_owned(),
        };
        println!(
            "reboot pending:     into {} since {} ({when})",
            r.system, r.since
        );
    }
    if let Some(r) = &st.last_report {
        println!("last report:        {} ({:?})", r.at, r.outcome);
    }
    if st.report_failures > 0 {
        println!("reports not sent:   {}", st.report_failures);
    }
}
