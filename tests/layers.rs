//! The layout reads as the flow: every module of `src/` may use only the layers below its own
//! (issue 9). Layers, bottom up:
//! dicom | findings | backoff | tls → config → db → audit → ingest → receive | analyse → report → send → ops → worker → admin | daemon.
//! Checked on the source text: every `crate::<layer>` path outside comments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

const LAYERS: &[(&str, u32)] = &[
    ("dicom", 0),
    ("findings", 0),
    ("backoff", 0),
    ("tls", 0),
    ("config", 1),
    ("db", 2),
    ("audit", 3),
    ("ingest", 4),
    ("receive", 5),
    ("analyse", 5),
    ("report", 6),
    ("send", 7),
    ("ops", 8),
    ("worker", 9),
    ("admin", 10),
    ("daemon", 10),
];

fn rank(layer: &str) -> Option<u32> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The layers a file names as `crate::<layer>` (also inside `use crate::{a, b}`).
fn used_layers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for part in group[..end].split(',') {
                    let name = part.trim().split("::").next().unwrap_or("");
                    out.push(name.to_string());
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        }
    }
    out.retain(|n| !n.is_empty());
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let layer = top.trim_end_matches(".rs");
        if matches!(layer, "lib" | "main") {
            continue;
        }
        let own = rank(layer).unwrap_or_else(|| panic!("{} is in no layer", rel.display()));
        let text = std::fs::read_to_string(&file).unwrap();
        for used in used_layers(&text) {
            if used == layer {
                continue;
            }
            let Some(theirs) = rank(&used) else {
                violations.push(format!("{}: crate::{used} is in no layer", rel.display()));
                continue;
            };
            if theirs >= own {
                violations.push(format!(
                    "{} ({layer}) uses crate::{used}, which is not below it",
                    rel.display()
                ));
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_nested_paths() {
    let t = "use crate::{db, ops::metrics};\nlet x = crate::dicom::uid::is_received_uid(s); // crate::worker\n";
    assert_eq!(used_layers(t), vec!["db", "ops", "dicom"]);
}

/// Whether a line of code (comments dropped) runs or spells SQL.
fn is_sql(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    ["sqlx::query", "query_as(", "query_scalar(", "query_as::<"]
        .iter()
        .any(|p| code.contains(p))
        || [
            "\"SELECT ",
            "\"INSERT INTO",
            "\"UPDATE ",
            "\"DELETE FROM",
            "\"WITH ",
        ]
        .iter()
        .any(|p| code.contains(p))
}

#[test]
fn every_sql_statement_lives_in_db() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut outside = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        if rel.starts_with("db") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if is_sql(line) {
                outside.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        outside.is_empty(),
        "SQL outside src/db:\n{}",
        outside.join("\n")
    );
}

#[test]
fn the_sql_checker_sees_queries_and_statements() {
    assert!(is_sql("let r = sqlx::query(\"x\")"));
    assert!(is_sql("    \"SELECT id FROM jobs\","));
    assert!(!is_sql("// sqlx::query in a comment"));
    assert!(!is_sql("let x = 1;"));
}
