//! `nixcast hosts` and `nixcast diff`: what a cache holds, read from its
//! pointers and manifests (verified with the publisher's public key when one
//! is given, since these commands may read a cache someone else can write).

use std::collections::BTreeMap;

use std::path::Path;

use anyhow::{Context, Result};
use nixcast_cli::fmt::human_bytes;
use nixcast_common::layout;
use nixcast_common::manifest::Manifest;
use nixcast_common::seal::{Identity, Recipients};
use nixcast_common::{PublicKey, StorePath};
use serde::Serialize;

use crate::cache::{read_manifest, read_pointer};
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

pub fn hosts(
    target: &Target,
    keys: &[PublicKey],
    ids: &[Identity],
    json: bool,
    fleet: Option<&Recipients>,
    html: Option<&Path>,
) -> Result<()> {
    let now = std::time::SystemTime::now();
    let mut rows = Vec::new();
    let mut histories = Vec::new();
    // The timeline is read only for the page; the table needs the highest generation.
    let timeline = if html.is_some() {
        crate::fleet::TIMELINE
    } else {
        1
    };
    for key in target.list(layout::HOSTS_DIR)? {
        if !key.ends_with(".json") {
            continue;
        }
        let p = read_pointer(target, &key, keys).map_err(crate::fleet::untrusted)?;
        let sealed = p.manifest.sealed.is_some();
        let m = match read_manifest(target, &p, ids) {
            Ok((_, m)) => Some(m),
            Err(e) if sealed => {
                tracing::info!("{e:#}");
                None
            }
            Err(e) => return Err(e),
        };
        let (columns, history) = match fleet {
            Some(f) => {
                let (c, h) = crate::fleet::columns(target, &p, keys, f, ids, now, timeline)?;
                (Some(c), h)
            }
            None if html.is_some() => (
                None,
                crate::fleet::history(target, &p.host, keys, timeline)?,
            ),
            None => (None, Vec::new()),
        };
        histories.push(history);
        rows.push(HostRow {
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
            fleet: columns,
        });
    }
    if let Some(file) = html {
        write_html(file, &rows, &histories, now)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for r in rows {
        let what = match (
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
        };
        println!(
            "{}\tgeneration {}\t{what}\tissued {}\texpires {}{}",
            // Without --trusted-key-file a pointer is only decoded: its host
            // name is anyone's text.
            nixcast_cli::text::clean(&r.host),
            r.generation,
            r.issued_at,
            r.expires_at.as_deref().unwrap_or("never"),
            r.fleet.as_ref().map(fleet_text).unwrap_or_default(),
        );
    }
    Ok(())
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
            let outcome = match r.outcome {
                Outcome::Ok => "ok".to_owned(),
                Outcome::Failed => match &r.error {
                    Some(e) => format!("failed: {}: {}", e.kind, e.message),
                    None => "failed".to_owned(),
                },
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
        (None, None) => out.push_str("\tno report"),
    }
    for (on, flag) in [
        (c.behind, "BEHIND"),
        (c.failed, "FAILED"),
        (c.stale, "STALE"),
    ] {
        if on {
            out.push_str(&format!("\t{flag}"));
        }
    }
    out
}

/// Writes the fleet page, atomically, to `file`.
fn write_html(
    file: &Path,
    rows: &[HostRow],
    histories: &[Vec<nixcast_common::pointer::Pointer>],
    now: std::time::SystemTime,
) -> Result<()> {
    let empty = crate::fleet::Columns::default();
    let page_rows: Vec<crate::fleet::html::Row<'_>> = rows
        .iter()
        .zip(histories)
        .map(|(r, h)| crate::fleet::html::Row {
            host: &r.host,
            generation: r.generation,
            store_path: r.store_path.as_ref().map(|p| p.to_string()),
            sealed: r.sealed,
            columns: r.fleet.as_ref().unwrap_or(&empty),
            history: h,
        })
        .collect();
    let page = crate::fleet::html::page(&page_rows, now);
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
