//! A scenario's results: human tables for the terminal and one flat JSON
//! object for `--json`, built together so the two never disagree.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// One titled table.
#[derive(Debug, Clone)]
struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Results of one scenario run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    title: String,
    notes: Vec<String>,
    tables: Vec<Table>,
    json: Map<String, Value>,
}

impl Report {
    /// An empty report.
    pub fn new(title: impl Into<String>) -> Self {
        Report { title: title.into(), ..Report::default() }
    }

    /// Starts a metric table (`what | value | unit`); later [`Report::metric`]
    /// calls add rows to it.
    pub fn section(&mut self, title: impl Into<String>) {
        self.tables.push(Table {
            title: title.into(),
            header: vec!["what".into(), "value".into(), "unit".into()],
            rows: Vec::new(),
        });
    }

    /// Adds a metric: a row in the current section and `key` in the JSON.
    pub fn metric(&mut self, key: &str, label: &str, value: f64, unit: &str) {
        if self.tables.is_empty() {
            self.section("results");
        }
        let shown = format_number(value);
        if let Some(t) = self.tables.last_mut() {
            t.rows.push(vec![label.into(), shown, unit.into()]);
        }
        self.json.insert(key.into(), json_number(value));
    }

    /// Sets a JSON-only value (options, nested tables, strings).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.json.insert(key.into(), value.into());
    }

    /// Adds a free-form table (shown in the human output only).
    pub fn table(&mut self, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
        self.tables.push(Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows,
        });
    }

    /// Adds a line printed after the tables.
    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    /// The single JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(self.json.clone())
    }

    /// The human-readable tables.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        for t in &self.tables {
            let _ = writeln!(out);
            let _ = writeln!(out, "## {}", t.title);
            out.push_str(&render_table(&t.header, &t.rows));
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "{n}");
            }
        }
        out
    }
}

/// A number as JSON: rounded to 3 decimals, integers stay integers.
pub fn json_number(v: f64) -> Value {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else if v.is_finite() {
        Value::from((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// Compact human formatting: thousands separators for big values, a few
/// significant decimals for small ones.
pub fn format_number(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 10_000.0 {
        let n = v.round() as i64;
        let s = n.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if n < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (i, w) in widths.iter().enumerate() {
            let c = cells.get(i).map(String::as_str).unwrap_or("");
            // First column left-aligned (labels), the rest right-aligned.
            if i == 0 {
                let _ = write!(s, " {c:<w$} |");
            } else {
                let _ = write!(s, " {c:>w$} |");
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header);
    out.push('|');
    for w in &widths {
        out.push_str(&"-".repeat(w + 2));
        out.push('|');
    }
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(format_number(12_345_678.4), "12,345,678");
        assert_eq!(format_number(55.25), "55.2");
        assert_eq!(format_number(0.5), "0.500");
        assert_eq!(json_number(3.0), Value::from(3));
        assert_eq!(json_number(1.23456), Value::from(1.235));
    }

    #[test]
    fn metrics_go_to_table_and_json() {
        let mut r = Report::new("t");
        r.section("s");
        r.metric("a_per_sec", "a", 1.5e6, "/s");
        let j = r.to_json();
        assert_eq!(j["a_per_sec"], Value::from(1_500_000));
        assert!(r.render().contains("1,500,000"));
    }
}
