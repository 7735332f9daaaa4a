//! Every `--json` output against docs/json.md: a key the command prints must be documented,
//! and a documented key not marked optional must be printed.

use std::collections::BTreeSet;
use std::fs;
use vdisk_tests::{rnd, vdisk_ok, workspace_root};

/// A documented key list: schema, optional `format=` condition, required and optional keys.
struct Doc {
    schema: String,
    format: Option<String>,
    required: BTreeSet<String>,
    optional: BTreeSet<String>,
    open: Vec<String>,
}

fn docs() -> Vec<Doc> {
    let text = fs::read_to_string(workspace_root().join("docs/json.md")).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        let Some(head) = l.strip_prefix("```keys ") else {
            continue;
        };
        let mut h = head.split_whitespace();
        let schema = h.next().unwrap().to_string();
        let format = h
            .next()
            .and_then(|f| f.strip_prefix("format="))
            .map(String::from);
        let mut d = Doc {
            schema,
            format,
            required: BTreeSet::new(),
            optional: BTreeSet::new(),
            open: Vec::new(),
        };
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            for k in l.split_whitespace() {
                let (opt, k) = match k.strip_prefix('?') {
                    Some(k) => (true, k),
                    None => (false, k),
                };
                if let Some(prefix) = k.strip_suffix(".*") {
                    d.open.push(prefix.to_string());
                } else if opt {
                    d.optional.insert(k.to_string());
                } else {
                    d.required.insert(k.to_string());
                }
            }
        }
        out.push(d);
    }
    out
}

fn keys(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                keys(x, &p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                keys(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// Checks one output against its documented list; returns the schema it named.
fn check(all: &[Doc], args: &[&str]) -> String {
    let out = vdisk_ok(args);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
    let schema = v["schema"]
        .as_str()
        .unwrap_or_else(|| panic!("{args:?}: no schema"))
        .to_string();
    let format = v["format"].as_str();
    let doc = all
        .iter()
        .find(|d| d.schema == schema && (d.format.is_none() || d.format.as_deref() == format))
        .unwrap_or_else(|| panic!("{args:?}: {schema} (format {format:?}) is not in docs/json.md"));
    let mut got = BTreeSet::new();
    keys(&v, "", &mut got);
    for k in &got {
        let open = doc.open.iter().any(|p| {
            k.strip_prefix(p.as_str())
                .is_some_and(|r| r.starts_with('.') || r.starts_with("[]."))
        });
        assert!(
            open || doc.required.contains(k) || doc.optional.contains(k),
            "{args:?}: key {k:?} of {schema} is not documented in docs/json.md"
        );
    }
    for k in &doc.required {
        // Members of array elements are required of the elements there are.
        if let Some((arr, _)) = k.split_once("[]") {
            let elems = format!("{arr}[].");
            if !got.iter().any(|g| g.starts_with(&elems)) {
                continue;
            }
        }
        assert!(
            got.contains(k),
            "{args:?}: documented key {k:?} of {schema} is missing: {out}"
        );
    }
    schema
}

#[test]
fn every_json_output_is_documented() {
    let all = docs();
    assert!(
        all.len() >= 13,
        "docs/json.md lists only {} documents",
        all.len()
    );
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n).to_str().unwrap().to_string();
    let d = p("d.vdisk");
    vdisk_ok(&["create", &d, "--size", "16M"]);
    fs::write(p("a"), rnd(1, 300_000)).unwrap();
    vdisk_ok(&["write", &d, "--offset", "0", "--input", &p("a")]);
    vdisk_ok(&["snapshot", "create", &d, "s1"]);
    vdisk_ok(&["write", &d, "--offset", "4M", "--input", &p("a")]);
    vdisk_ok(&["snapshot", "create", &d, "s2"]);
    vdisk_ok(&["write", &d, "--offset", "8M", "--input", &p("a")]);
    vdisk_ok(&["snapshot", "create", &d, "s3"]);
    vdisk_ok(&["snapshot", "pin", &d, "s1"]);
    vdisk_ok(&["policy", "set", &d, "--keep-last", "1"]);
    let mut seen = BTreeSet::new();
    for args in [
        vec!["info", &d, "--json"],
        vec!["snapshot", "list", &d, "--json"],
        vec!["map", &d, "--json"],
        vec!["map", &d, "--snapshot", "s1", "--json"],
        vec!["check", &d, "--json"],
        vec!["diff", &d, "s1", "s2", "--json"],
        vec!["diff", &d, "s1", "--stat", "--json"],
        vec!["policy", "show", &d, "--json"],
        vec!["maintain", &d, "--dry-run", "--json"],
        vec!["measure", &d, "--json"],
        vec!["measure", "--size", "1G", "-O", "vmdk", "--json"],
    ] {
        seen.insert(check(&all, &args));
    }
    let stream = p("s.vdelta");
    seen.insert(check(
        &all,
        &["export-diff", &d, "--to", "s2", "-o", &stream, "--json"],
    ));
    let r = p("r.vdisk");
    vdisk_ok(&["create", &r, "--size", "16M"]);
    seen.insert(check(&all, &["import-diff", &r, &stream, "--json"]));
    seen.insert(check(&all, &["maintain", &d, "--json"]));
    seen.insert(check(&all, &["merge", &d, "s1", "--force", "--json"]));
    seen.insert(check(&all, &["commit", &d, "--json"]));
    seen.insert(check(&all, &["compact", &d, "--json"]));
    seen.insert(check(&all, &["check", &d, "--repair", "--json"]));
    let vmdk = p("x.vmdk");
    vdisk_ok(&["convert", &d, &vmdk]);
    check(&all, &["info", &vmdk, "--json"]);
    let ova = p("x.ova");
    vdisk_ok(&["ovf", "export", &d, &ova]);
    seen.insert(check(&all, &["ovf", "inspect", &ova, "--json"]));
    // Every documented document was produced by some command above.
    for doc in &all {
        assert!(
            seen.contains(&doc.schema),
            "{} is documented but not tested",
            doc.schema
        );
    }
}
