//! `nixcast hosts` and `nixcast diff`: what a cache holds, read from its
//! pointers and manifests (verified with the publisher's public key when one
//! is given, since these commands may read a cache someone else can write).
//!
//! `hosts` prints one tab-separated line a host when its output is a pipe
//! (scripts and tests read that form), and aligned tables with a header on
//! a terminal (`table.rs`); retired hosts (a tombstone in place of the
//! pointer) come after the others, apart, in every form.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use nixcast_cli::fmt::human_bytes;
use nixcast_common::layout;
use nixcast_common::manifest::Manifest;
use nixcast_common::pointer::{Head, Pointer, Tombstone};
use nixcast_common::seal::{Identity, Recipients};
use nixcast_common::{PublicKey, StorePath};
use serde::Serialize;

use crate::cache::{read_head, read_manifest, read_pointer};
use crate::target::Target;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HostRow {
    host: String,
    generation: u64,
    /// `None` for a sealed host whose manifest could not be opened.
    store_path: Option<StorePath>,
    sealed: bool,
    issued_at: String,
    expires_at: Option<String>,
    paths: Option<usize>,
    closure_nar_size: Option<u64>,
    closure_file_size: Option<u64>,
    /// With `--recipients-file`: what the host reported, and its flags.
    #[serde(flatten)]
    fleet: Option<crate::fleet::Columns>,
}

/// A retired host as `hosts` shows it: its tombstone, and what it reported.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiredRow {
    pub host: String,
    /// Always true: tells these rows from the others in `--json`.
    pub retired: bool,
    /// The tombstone's generation.
    pub generation: u64,
    pub retired_at: String,
    /// With `--recipients-file`: the outcome of its latest verified report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_report: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonRow<'a> {
    Live(&'a HostRow),
    Retired(&'a RetiredRow),
}

/// What `hosts` read: the live hosts, with their histories for the page,
/// and the retired ones.
struct Fleet {
    rows: Vec<HostRow>,
    histories: Vec<Vec<Pointer>>,
    retired: Vec<RetiredRow>,
}

pub fn hosts(
    target: &Target,
    keys: &[PublicKey],
    ids: &[Identity],
    json: bool,
    fleet: Option<&Recipients>,
    html: Option<&Path>,
) -> Result<()> {
    let now = std::time::SystemTime::now();
    let f = read_fleet(target, keys, ids, fleet, html.is_some(), now)?;
    if let Some(file) = html {
        write_html(file, &f, now)?;
    }
    if json {
        let all: Vec<JsonRow<'_>> = f
            .rows
            .iter()
            .map(JsonRow::Live)
            .chain(f.retired.iter().map(JsonRow::Retired))
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if std::io::stdout().is_terminal() {
        print!("{}", tables(&f.rows, &f.retired, fleet.is_some()));
    } else {
        for r in &f.rows {
            println!("{}", text_line(r));
        }
        for r in &f.retired {
            println!("{}", retired_line(r));
        }
    }
    Ok(())
}

fn read_fleet(
    target: &Target,
    keys: &[PublicKey],
    ids: &[Identity],
    fleet: Option<&Recipients>,
    page: bool,
    now: std::time::SystemTime,
) -> Result<Fleet> {
    let mut f = Fleet {
        rows: Vec::new(),
        histories: Vec::new(),
        retired: Vec::new(),
    };
    // The timeline is read only for the page; the table needs the highest generation.
    let timeline = if page { crate::fleet::TIMELINE } else { 1 };
    for key in target.list(layout::HOSTS_DIR)? {
        if !key.ends_with(".json") {
            continue;
        }
        let p = match read_head(target, &key, keys).map_err(crate::fleet::untrusted)? {
            Head::Pointer(p) => p,
            Head::Retired(t) => {
                f.retired.push(retired_row(target, t, fleet, ids, now));
                continue;
            }
        };
        let (columns, history) = match fleet {
            Some(fl) => {
                let (c, h) = crate::fleet::columns(target, &p, keys, fl, ids, now, timeline)?;
                (Some(c), h)
            }
            None if page => (
                None,
                crate::fleet::history(target, &p.host, keys, timeline)?,
            ),
            None => (None, Vec::new()),
        };
        f.histories.push(history);
        f.rows.push(host_row(target, &p, ids, columns)?);
    }
    Ok(f)
}

fn host_row(
    target: &Target,
    p: &Pointer,
    ids: &[Identity],
    fleet: Option<crate::fleet::Columns>,
) -> Result<HostRow> {
    let sealed = p.manifest.sealed.is_some();
    let m = match read_manifest(target, p, ids) {
        Ok((_, m)) => Some(m),
        Err(e) if sealed => {
            tracing::info!("{e:#}");
            None
        }
        Err(e) => return Err(e),
    };
    Ok(HostRow {
        host: p.host.clone(),
        generation: p.generation,
        store_path: m.as_ref().map(|m| m.store_path.clone()),
        sealed,
        issued_at: p.issued_at.to_string(),
        expires_at: p.expires_at.map(|t| t.to_string()),
        paths: m.as_ref().map(|m| m.paths.len()),
        closure_nar_size: m.as_ref().map(|m| m.total_nar_size()),
        closure_file_size: m
            .as_ref()
            .map(|m| m.paths.iter().map(|e| e.file_size).sum()),
        fleet,
    })
}

/// A retired host's row; with the recipients file, its latest verified
/// report's outcome (`retired` once its agent read the tombstone).
fn retired_row(
    target: &Target,
    t: Tombstone,
    fleet: Option<&Recipients>,
    ids: &[Identity],
    now: std::time::SystemTime,
) -> RetiredRow {
    let last_report =
        fleet.map(
            |f| match crate::fleet::read_report(target, &t.host, f, ids, None, now) {
                crate::fleet::Seen::Missing => "never reported".to_owned(),
                crate::fleet::Seen::Verified(r) => format!("{} at {}", r.outcome.as_str(), r.at),
                crate::fleet::Seen::Unverifiable(_) => "not trusted".to_owned(),
            },
        );
    RetiredRow {
        // Without --trusted-key-file a tombstone is only decoded: its host
        // name is anyone's text.
        host: nixcast_cli::text::clean(&t.host),
        retired: true,
        generation: t.generation,
        retired_at: t.issued_at.to_string(),
        last_report,
    }
}

/// A host's tab-separated line, for pipes and scripts.
fn text_line(r: &HostRow) -> String {
    format!(
        "{}\tgeneration {}\t{}\tissued {}\texpires {}{}",
        // Without --trusted-key-file a pointer is only decoded: its host
        // name is anyone's text.
        nixcast_cli::text::clean(&r.host),
        r.generation,
        what(r),
        r.issued_at,
        r.expires_at.as_deref().unwrap_or("never"),
        r.fleet.as_ref().map(fleet_text).unwrap_or_default(),
    )
}

/// A retired host's tab-separated line, after every live host's.
fn retired_line(r: &RetiredRow) -> String {
    format!(
        "{}\tRETIRED at generation {}\tsince {}{}",
        r.host,
        r.generation,
        r.retired_at,
        r.last_report
            .as_ref()
            .map(|s| format!("\treport: {s}"))
            .unwrap_or_default()
    )
}

/// What a host runs: its system and closure, or that it is sealed.
fn what(r: &HostRow) -> String {
    match (
        &r.store_path,
        r.paths,
        r.closure_nar_size,
        r.closure_file_size,
    ) {
        (Some(sp), Some(n), Some(nar), Some(file)) => format!(
            "{sp}{}\t{n} paths, {} ({} compressed)",
            if r.sealed { " (sealed)" } else { "" },
            human_bytes(nar),
            human_bytes(file)
        ),
        _ => "sealed (give --identity to read it)".to_owned(),
    }
}

/// The hosts as aligned tables for a terminal: the live ones, then the
/// retired ones apart.
fn tables(rows: &[HostRow], retired: &[RetiredRow], fleet: bool) -> String {
    let mut header = vec![
        "HOST", "GEN", "SYSTEM", "PATHS", "SIZE", "ISSUED", "EXPIRES",
    ];
    if fleet {
        header.extend(["STAGED", "APPLIED", "REPORTED", "FLAGS"]);
    }
    let cells: Vec<Vec<String>> = rows.iter().map(|r| table_row(r, fleet)).collect();
    let mut out = crate::table::render(&header, &cells);
    if !retired.is_empty() {
        let mut header = vec!["RETIRED HOST", "GEN", "SINCE"];
        if fleet {
            header.push("LAST REPORT");
        }
        let cells: Vec<Vec<String>> = retired
            .iter()
            .map(|r| {
                let mut row = vec![
                    r.host.clone(),
                    r.generation.to_string(),
                    r.retired_at.clone(),
                ];
                row.extend(r.last_report.clone());
                row
            })
            .collect();
        out.push('\n');
        out.push_str(&crate::table::render(&header, &cells));
    }
    out
}

fn table_row(r: &HostRow, fleet: bool) -> Vec<String> {
    let system = match (&r.store_path, r.sealed) {
        (Some(sp), true) => format!("{sp} (sealed)"),
        (Some(sp), false) => sp.to_string(),
        (None, _) => "sealed".to_owned(),
    };
    let mut row = vec![
        nixcast_cli::text::clean(&r.host),
        r.generation.to_string(),
        system,
        r.paths.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        r.closure_file_size
            .map_or_else(|| "-".to_owned(), human_bytes),
        r.issued_at.clone(),
        r.expires_at.clone().unwrap_or_else(|| "never".to_owned()),
    ];
    if fleet {
        let empty = crate::fleet::Columns::default();
        row.extend(fleet_cells(r.fleet.as_ref().unwrap_or(&empty)));
    }
    row
}

/// STAGED, APPLIED, REPORTED and FLAGS of a table row.
fn fleet_cells(c: &crate::fleet::Columns) -> [String; 4] {
    let staged = c
        .staged_generation
        .map_or_else(|| "-".to_owned(), |g| g.to_string());
    let (applied, reported) = match (&c.report, &c.report_problem) {
        (Some(r), _) => (
            format!(
                "{} ({})",
                r.applied_generation
                    .map_or_else(|| "none".to_owned(), |g| g.to_string()),
                r.outcome.as_str()
            ),
            format!(
                "{} ago",
                crate::fleet::human(std::time::Duration::from_secs(c.report_age.unwrap_or(0)))
            ),
        ),
        (None, Some(_)) => ("-".to_owned(), "NOT TRUSTED".to_owned()),
        (None, None) => ("-".to_owned(), "never reported".to_owned()),
    };
    [staged, applied, reported, flags(c).join(",")]
}

/// The flags a host's report raises.
fn flags(c: &crate::fleet::Columns) -> Vec<&'static str> {
    [
        (c.behind, "BEHIND"),
        (c.failed, "FAILED"),
        (c.stale, "STALE"),
    ]
    .into_iter()
    .filter_map(|(on, flag)| on.then_some(flag))
    .collect()
}

/// The report columns of a text row.
fn fleet_text(c: &crate::fleet::Columns) -> String {
    use nixcast_common::report::Outcome;
    let mut out = String::new();
    if let Some(g) = c.staged_generation {
        out.push_str(&format!("\tstaged {g}"));
    }
    match (&c.report, &c.report_problem) {
        (Some(r), _) => {
            let applied = r
                .applied_generation
                .map_or_else(|| "none".to_owned(), |g| g.to_string());
            let outcome = match (r.outcome, &r.error) {
                (Outcome::Failed, Some(e)) => format!("failed: {}: {}", e.kind, e.message),
                (o, _) => o.as_str().to_owned(),
            };
            let age =
                crate::fleet::human(std::time::Duration::from_secs(c.report_age.unwrap_or(0)));
            out.push_str(&format!(
                "\tapplied {applied} ({outcome}), reported {age} ago"
            ));
            if let Some(v) = r.key_list_version {
                out.push_str(&format!(", key list {v}"));
            }
        }
        (None, Some(why)) => out.push_str(&format!("\treport NOT TRUSTED: {why}")),
        (None, None) => out.push_str("\tnever reported"),
    }
    for flag in flags(c) {
        out.push_str(&format!("\t{flag}"));
    }
    out
}

/// Writes the fleet page, atomically, to `file`.
fn write_html(file: &Path, f: &Fleet, now: std::time::SystemTime) -> Result<()> {
    let empty = crate::fleet::Columns::default();
    let page_rows: Vec<crate::fleet::html::Row<'_>> = f
        .rows
        .iter()
        .zip(&f.histories)
        .map(|(r, h)| crate::fleet::html::Row {
            host: &r.host,
            generation: r.generation,
            store_path: r.store_path.as_ref().map(|p| p.to_string()),
            sealed: r.sealed,
            columns: r.fleet.as_ref().unwrap_or(&empty),
            history: h,
        })
        .collect();
    let retired: Vec<crate::fleet::html::Retired<'_>> = f
        .retired
        .iter()
        .map(|r| crate::fleet::html::Retired {
            host: &r.host,
            generation: r.generation,
            since: &r.retired_at,
            last_report: r.last_report.as_deref(),
        })
        .collect();
    let page = crate::fleet::html::page(&page_rows, &retired, now);
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, page.as_bytes())?;
    tmp.persist(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("wrote {}", file.display());
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Diff {
    host: String,
    from: u64,
    to: u64,
    added: Vec<(StorePath, u64)>,
    removed: Vec<(StorePath, u64)>,
    /// Bytes an agent at `from` downloads to reach `to`.
    download_bytes: u64,
}

/// Paths added and removed between two generations of a host (default: the
/// one before the latest, and the latest).
pub fn diff(
    target: &Target,
    host: &str,
    from: Option<u64>,
    to: Option<u64>,
    keys: &[PublicKey],
    ids: &[Identity],
    json: bool,
) -> Result<()> {
    let latest =
        read_pointer(target, &layout::pointer(host), keys).map_err(crate::fleet::untrusted)?;
    let to = to.unwrap_or(latest.generation);
    let from = from.unwrap_or(to.saturating_sub(1));
    let load = |g: u64| -> Result<Manifest> {
        let p = read_pointer(target, &layout::history(host, g), keys)
            .map_err(crate::fleet::untrusted)?;
        Ok(read_manifest(target, &p, ids)?.1)
    };
    let a = if from == 0 { None } else { Some(load(from)?) };
    let b = load(to)?;
    let old: BTreeMap<&StorePath, u64> = a
        .iter()
        .flat_map(|m| m.paths.iter().map(|e| (&e.store_path, e.nar_size)))
        .collect();
    let new: BTreeMap<&StorePath, u64> = b
        .paths
        .iter()
        .map(|e| (&e.store_path, e.nar_size))
        .collect();
    let added: Vec<(StorePath, u64)> = new
        .iter()
        .filter(|(p, _)| !old.contains_key(*p))
        .map(|(p, s)| ((*p).clone(), *s))
        .collect();
    let removed: Vec<(StorePath, u64)> = old
        .iter()
        .filter(|(p, _)| !new.contains_key(*p))
        .map(|(p, s)| ((*p).clone(), *s))
        .collect();
    let download_bytes = b
        .paths
        .iter()
        .filter(|e| !old.contains_key(&e.store_path))
        .map(|e| e.file_size)
        .sum();
    let d = Diff {
        host: host.to_owned(),
        from,
        to,
        added,
        removed,
        download_bytes,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!("{} generation {} → {}", d.host, d.from, d.to);
    for (p, s) in &d.added {
        println!("+ {p}\t{}", human_bytes(*s));
    }
    for (p, s) in &d.removed {
        println!("- {p}\t{}", human_bytes(*s));
    }
    let sum = |v: &[(StorePath, u64)]| v.iter().map(|(_, s)| s).sum::<u64>();
    println!(
        "{} paths added ({}), {} removed ({}); an agent at {} downloads {}",
        d.added.len(),
        human_bytes(sum(&d.added)),
        d.removed.len(),
        human_bytes(sum(&d.removed)),
        d.from,
        human_bytes(d.download_bytes)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, fleet: Option<crate::fleet::Columns>) -> HostRow {
        HostRow {
            host: host.into(),
            generation: 12,
            store_path: None,
            sealed: true,
            issued_at: "2026-12-06T10:00:00Z".into(),
            expires_at: None,
            paths: None,
            closure_nar_size: None,
            closure_file_size: None,
            fleet,
        }
    }

    /// A header over aligned columns, a host without a report flagged as
    /// never reported, and the retired hosts in a table of their own.
    #[test]
    fn a_terminal_gets_aligned_tables_and_the_retired_apart() {
        let never = crate::fleet::Columns {
            never_reported: true,
            ..Default::default()
        };
        let rows = [row("web1", Some(never)), row("database\x1b[2J", None)];
        let retired = [RetiredRow {
            host: "web3".into(),
            retired: true,
            generation: 4,
            retired_at: "2026-12-06T11:00:00Z".into(),
            last_report: Some("retired at 2026-12-06T11:05:00Z".into()),
        }];
        let t = tables(&rows, &retired, true);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "HOST                GEN   SYSTEM   PATHS   SIZE   ISSUED                 EXPIRES   \
             STAGED   APPLIED   REPORTED         FLAGS"
        );
        assert_eq!(
            lines[1],
            "web1                12    sealed   -       -      2026-12-06T10:00:00Z   never     \
             -        -         never reported"
        );
        assert!(
            !t.contains('\x1b') && lines[2].starts_with("database\\u{1b}[2J   12"),
            "{t}"
        );
        assert_eq!(lines[3], "");
        assert_eq!(
            lines[4],
            "RETIRED HOST   GEN   SINCE                  LAST REPORT"
        );
        assert_eq!(
            lines[5],
            "web3           4     2026-12-06T11:00:00Z   retired at 2026-12-06T11:05:00Z"
        );
        // Piped: the tab-separated lines scripts read.
        assert!(text_line(&rows[0]).ends_with("\tnever reported"));
        assert_eq!(
            retired_line(&retired[0]),
            "web3\tRETIRED at generation 4\tsince 2026-12-06T11:00:00Z\treport: retired at \
             2026-12-06T11:05:00Z"
        );
    }
}
