//! The one JSON convention of every `--json` output (docs/json.md): one object, whose first
//! member `schema` names the document and its version (`vdisk-info/1`), snake_case keys, the
//! same key for the same thing across commands, qemu-img's names where the meaning is the
//! same (`filename`, `format`, `virtual_size`, `actual_size`, `cluster_size`).

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::Write;

/// Version of every document's schema; bumped per document when its meaning changes.
pub const VERSION: u32 = 1;

/// A document `vdisk-NAME/1` built from `body` (which must serialize to an object):
/// `schema` first, then `extra` members, then the body's, with `renames` applied to the
/// body's top-level keys (engine names to the documented ones).
pub fn document(
    name: &str,
    extra: &[(&str, Value)],
    body: impl Serialize,
    renames: &[(&str, &str)],
) -> Result<Value> {
    let Value::Object(b) = serde_json::to_value(body)? else {
        bail!("internal: the {name} document is not an object");
    };
    let mut m = Map::new();
    m.insert(
        "schema".into(),
        Value::String(format!("vdisk-{name}/{VERSION}")),
    );
    for (k, v) in extra {
        m.insert((*k).to_string(), v.clone());
    }
    for (k, v) in b {
        let k = renames
            .iter()
            .find(|(from, _)| *from == k)
            .map(|(_, to)| (*to).to_string())
            .unwrap_or(k);
        m.entry(k).or_insert(v);
    }
    Ok(Value::Object(m))
}

/// Prints [`document`] pretty on stdout.
pub fn print(
    name: &str,
    extra: &[(&str, Value)],
    body: impl Serialize,
    renames: &[(&str, &str)],
) -> Result<()> {
    let v = document(name, extra, body, renames)?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &v)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_first_renames_applied() {
        let v = document(
            "x",
            &[("filename", json!("d"))],
            json!({"path": "p", "a": 1}),
            &[("path", "location")],
        )
        .unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["schema", "filename", "location", "a"]);
        assert_eq!(v["schema"], "vdisk-x/1");
        assert!(document("x", &[], json!([1]), &[]).is_err());
    }
}
