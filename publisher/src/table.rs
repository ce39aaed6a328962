//! Rows for a terminal: a header and columns aligned, as `kubectl get` and
//! `docker ps` print them. The cells are text made safe already
//! (`nixcast_cli::text`); widths count characters.

/// The table as lines: each column as wide as its widest cell, three
/// spaces between columns, no padding after the last.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_header() {
        let rows = vec![
            vec!["web1".to_owned(), "12".to_owned(), "ok".to_owned()],
            vec!["database-é".to_owned(), "3".to_owned(), String::new()],
        ];
        let t = render(&["HOST", "GENERATION", "REPORT"], &rows);
        assert_eq!(
            t,
            "HOST         GENERATION   REPORT\n\
             web1         12           ok\n\
             database-é   3\n"
        );
    }
}
