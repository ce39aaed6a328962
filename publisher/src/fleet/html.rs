//! `nixcast hosts --html FILE`: the fleet as one self-contained page.
//!
//! No script, no external asset, no web font: a table (the columns of
//! `hosts`) and, per host, a timeline of its generations from the history
//! and its report. Every text that comes from the cache is escaped.

use std::fmt::Write;
use std::time::SystemTime;

use nixcast_common::pointer::{Pointer, Timestamp};

use super::{human, Columns};

/// One host as the page shows it.
pub struct Row<'a> {
    pub host: &'a str,
    pub generation: u64,
    pub store_path: Option<String>,
    pub sealed: bool,
    pub columns: &'a Columns,
    /// Highest generation first.
    pub history: &'a [Pointer],
}

/// A retired host as the page shows it, apart from the others.
pub struct Retired<'a> {
    pub host: &'a str,
    pub generation: u64,
    pub since: &'a str,
    /// With the recipients file: its latest report's outcome.
    pub last_report: Option<&'a str>,
}

const STYLE: &str = "
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
tr.behind td { background: #fff3c4; }
tr.stale td { background: #e4e4e4; }
tr.failed td { background: #ffd0d0; }
.flag { display: inline-block; padding: 0 .4em; margin-right: .2em; border-radius: .3em; color: #fff; font-size: .85em; }
.flag.behind { background: #b58900; }
.flag.failed { background: #c0392b; }
.flag.stale { background: #777; }
.flag.untrusted { background: #6c3483; }
.flag.never { background: #555; }
table#retired td { color: #777; }
.timeline { display: flex; flex-wrap: wrap; gap: .3em; margin: .3em 0 1.2em; }
.gen { border: 1px solid #999; padding: .2em .5em; border-radius: .3em; background: #fafafa; }
.gen.current { border: 2px solid #1f4e9c; font-weight: bold; }
.gen.staged { border: 2px dashed #1f4e9c; }
.gen.applied { background: #c8f0c8; }
.gen.failed { background: #ffb3b3; }
code { font-size: .9em; }
";

/// Escapes text for HTML content and attribute values, after
/// `nixcast_cli::text::clean` (control and direction-changing characters,
/// which would reorder what the page shows, written as escapes).
pub fn escape(text: &str) -> String {
    let text = nixcast_cli::text::clean(text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn page(rows: &[Row<'_>], retired: &[Retired<'_>], now: SystemTime) -> String {
    let mut h = String::new();
    let generated = Timestamp::from_system_time(now);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>nixcast fleet</title><style>{STYLE}</style></head><body>\n\
         <h1>nixcast fleet</h1><p>{} hosts, as of {generated}.</p>\n<table id=\"hosts\">\n\
         <tr><th>host</th><th>published</th><th>staged</th><th>applied</th><th>outcome</th>\
         <th>error</th><th>report</th><th>flags</th></tr>\n",
        rows.len()
    );
    for r in rows {
        let c = r.columns;
        let mut classes = Vec::new();
        for (on, name) in [
            (c.behind, "behind"),
            (c.stale, "stale"),
            (c.failed, "failed"),
        ] {
            if on {
                classes.push(name);
            }
        }
        let report = c.report.as_ref();
        let applied = report
            .and_then(|s| s.applied_generation)
            .map_or_else(|| "-".to_owned(), |g| g.to_string());
        let outcome = report.map_or("-", |s| s.outcome.as_str());
        let error = report
            .and_then(|s| s.error.as_ref())
            .map_or_else(String::new, |e| format!("{}: {}", e.kind, e.message));
        let age = match (report, &c.report_problem) {
            (Some(s), _) => format!("{} ago", human(super::age(s.at, now))),
            (None, Some(_)) => "untrusted".to_owned(),
            (None, None) => "none".to_owned(),
        };
        let mut flags: String = classes
            .iter()
            .map(|f| format!("<span class=\"flag {f}\">{f}</span>"))
            .collect();
        if c.never_reported {
            flags.push_str("<span class=\"flag never\">never reported</span>");
        }
        if let Some(why) = &c.report_problem {
            let _ = write!(
                flags,
                "<span class=\"flag untrusted\" title=\"{}\">report not trusted</span>",
                escape(why)
            );
        }
        let path = match (&r.store_path, r.sealed) {
            (Some(p), _) => format!("<br><code>{}</code>", escape(p)),
            (None, true) => "<br>(sealed)".to_owned(),
            (None, false) => String::new(),
        };
        let _ = writeln!(
            h,
            "<tr class=\"{}\" id=\"host-{host}\"><td>{host}</td><td>{}{path}</td><td>{}</td>\
             <td>{applied}</td><td>{outcome}</td><td>{}</td><td>{age}</td><td>{flags}</td></tr>",
            classes.join(" "),
            r.generation,
            c.staged_generation
                .map_or_else(|| "-".to_owned(), |g| g.to_string()),
            escape(&error),
            host = escape(r.host),
        );
    }
    h.push_str("</table>\n");
    retired_table(&mut h, retired);
    h.push_str(
        "<h2>Generations</h2>\n<p class=\"legend\">\
         <span class=\"gen current\">current pointer</span> \
         <span class=\"gen staged\">staged</span> \
         <span class=\"gen applied\">applied</span> \
         <span class=\"gen failed\">failed</span></p>\n",
    );
    for r in rows {
        let report = r.columns.report.as_ref();
        let applied = report.and_then(|s| s.applied_generation);
        let failed_gen = report.and_then(|s| {
            s.last_failure
                .as_ref()
                .filter(|f| s.applied_at.is_none_or(|a| f.at >= a))
                .and_then(|f| f.generation)
        });
        let _ = write!(
            h,
            "<h3>{host}</h3><div class=\"timeline\" id=\"timeline-{host}\">",
            host = escape(r.host)
        );
        for p in r.history.iter().rev() {
            let g = p.generation;
            let mut class = vec!["gen"];
            let mut notes = vec![format!("issued {}", p.issued_at)];
            if g == r.generation {
                class.push("current");
                notes.push("current pointer".into());
            } else if g > r.generation {
                class.push("staged");
                notes.push("staged".into());
            }
            if Some(g) == failed_gen {
                class.push("failed");
                notes.push("failed".into());
            } else if Some(g) == applied {
                class.push("applied");
                notes.push("applied".into());
            }
            let _ = write!(
                h,
                "<span class=\"{}\" title=\"{}\">{g}</span>",
                class.join(" "),
                escape(&notes.join(", "))
            );
        }
        h.push_str("</div>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// The retired hosts, in a table of their own (none: nothing).
fn retired_table(h: &mut String, retired: &[Retired<'_>]) {
    if retired.is_empty() {
        return;
    }
    h.push_str(
        "<h2>Retired hosts</h2>\n<table id=\"retired\">\n<tr><th>host</th>\
         <th>tombstone generation</th><th>since</th><th>last report</th></tr>\n",
    );
    for r in retired {
        let _ = writeln!(
            h,
            "<tr id=\"retired-{host}\"><td>{host}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.generation,
            escape(r.since),
            escape(r.last_report.unwrap_or("-")),
            host = escape(r.host),
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_cache_is_escaped() {
        assert_eq!(
            escape("<script>\"a\"&'b'</script>"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
        let c = Columns {
            staged_generation: None,
            report: None,
            report_problem: Some("<img src=x>".into()),
            report_age: None,
            behind: false,
            failed: false,
            stale: false,
            never_reported: true,
        };
        let page = page(
            &[Row {
                host: "web",
                generation: 1,
                store_path: None,
                sealed: false,
                columns: &c,
                history: &[],
            }],
            &[Retired {
                host: "old<b>",
                generation: 4,
                since: "2026-12-06T10:00:00Z",
                last_report: Some("retired at 2026-12-06T10:05:00Z"),
            }],
            SystemTime::now(),
        );
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("never reported"), "{page}");
        assert!(page.contains("<td>old&lt;b&gt;</td><td>4</td>"), "{page}");
        assert!(page.contains("report not trusted"));
        assert!(!page.contains("<script") && !page.contains("src=\"http"));
    }
}
