//! Retention policy: which snapshots `maintain` merges away (keep-last, hourly, daily, max
//! chain length), oldest first, never a pinned one.

use crate::disk::Disk;
use crate::error::Result;
use crate::format::manifest::{Manifest, Policy};
use crate::merge::MergeReport;
use serde::Serialize;
use std::collections::HashSet;

const HOUR_NS: u64 = 3_600_000_000_000;
const DAY_NS: u64 = 24 * HOUR_NS;

/// What `maintain` decided and did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct MaintainReport {
    /// The policy applied.
    pub policy: Option<Policy>,
    /// Snapshots kept, and why.
    pub kept: Vec<KeptSnapshot>,
    /// Snapshots merged away (oldest first).
    pub removed: Vec<String>,
    /// Chain depth of the head before and after.
    pub chain_before: usize,
    /// Chain depth after.
    pub chain_after: usize,
    /// The merge that did it.
    pub merge: Option<MergeReport>,
    /// Notes (e.g. a max-chain that pinned snapshots prevent).
    pub notes: Vec<String>,
}

/// A snapshot the policy keeps, and the rule that keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KeptSnapshot {
    /// Snapshot name.
    pub name: String,
    /// Why it stays (`pinned`, `keep-last`, `hourly`, …).
    pub why: String,
}

/// Depth of the head's chain once the snapshots `remove` are merged away: a layer of the
/// chain stays when it is the active layer, a remaining snapshot names it, or branches share
/// it (a merge keeps such a layer); every other layer is folded into a neighbour.
pub fn chain_after(m: &Manifest, remove: &[String]) -> usize {
    let named: HashSet<_> = m
        .snapshots
        .iter()
        .filter(|s| !remove.contains(&s.name))
        .map(|s| s.layer)
        .collect();
    m.chain(m.active_layer)
        .into_iter()
        .filter(|l| *l == m.active_layer || named.contains(l) || m.children(*l).len() >= 2)
        .count()
}

/// Decide which snapshots the policy removes (oldest first) and why the others stay.
pub fn plan(m: &Manifest, policy: &Policy) -> (Vec<String>, Vec<(String, String)>, Vec<String>) {
    let mut snaps: Vec<_> = m.snapshots.iter().collect();
    snaps.sort_by_key(|s| (s.created_ns, s.name.clone()));
    let mut why: Vec<(String, String)> = Vec::new();
    let mut keep: HashSet<String> = HashSet::new();
    let mark = |name: &str,
                reason: String,
                why: &mut Vec<(String, String)>,
                keep: &mut HashSet<String>| {
        if keep.insert(name.to_string()) {
            why.push((name.to_string(), reason));
        }
    };
    for s in &snaps {
        if s.pinned {
            mark(&s.name, "pinned".into(), &mut why, &mut keep);
        }
    }
    let any_rule = policy.keep_last.is_some() || policy.hourly.is_some() || policy.daily.is_some();
    if !any_rule {
        for s in &snaps {
            mark(&s.name, "no retention rule".into(), &mut why, &mut keep);
        }
    }
    if let Some(n) = policy.keep_last {
        for s in snaps.iter().rev().take(n as usize) {
            mark(&s.name, format!("one of the last {n}"), &mut why, &mut keep);
        }
    }
    for (count, bucket, label) in [
        (policy.hourly, HOUR_NS, "hour"),
        (policy.daily, DAY_NS, "day"),
    ] {
        let Some(count) = count else { continue };
        let mut seen = Vec::new();
        for s in snaps.iter().rev() {
            let b = s.created_ns / bucket;
            if !seen.contains(&b) {
                if seen.len() >= count as usize {
                    break;
                }
                seen.push(b);
                mark(
                    &s.name,
                    format!("newest of its {label} (last {count} {label}s)"),
                    &mut why,
                    &mut keep,
                );
            }
        }
    }
    let mut remove: Vec<String> = snaps
        .iter()
        .filter(|s| !keep.contains(&s.name))
        .map(|s| s.name.clone())
        .collect();
    // max_chain: fold the oldest unpinned snapshots of the head's chain until it fits.
    let mut notes = Vec::new();
    if let Some(max) = policy.max_chain {
        let chain = m.chain(m.active_layer);
        let on_chain: Vec<&String> = snaps
            .iter()
            .filter(|s| chain.contains(&s.layer) && !remove.contains(&s.name))
            .map(|s| &s.name)
            .collect();
        // Depth after the removals above: one layer per remaining snapshot on the chain, plus
        // the active layer (anonymous layers fold away).
        let mut depth = on_chain.len() + 1;
        for name in on_chain {
            if depth <= max as usize {
                break;
            }
            let pinned = m.snapshot(name).is_some_and(|s| s.pinned);
            if pinned {
                continue;
            }
            remove.push(name.clone());
            why.retain(|(n, _)| n != name);
            depth -= 1;
        }
        if depth > max as usize {
            notes.push(format!(
                "pinned snapshots keep the chain at depth {depth} (max {max})"
            ));
        }
    }
    remove.sort_by_key(|n| m.snapshot(n).map(|s| s.created_ns).unwrap_or(0));
    why.retain(|(n, _)| !remove.contains(n));
    (remove, why, notes)
}

impl Disk {
    /// Store a retention policy in the manifest (`None` clears it).
    pub fn set_policy(&self, policy: Option<Policy>) -> Result<()> {
        let mut st = self.write_state()?;
        let (m, ()) = crate::disk::update_manifest(self.store.as_ref(), move |m| {
            m.policy = policy;
            Ok(())
        })?;
        st.manifest = m;
        Ok(())
    }

    /// Apply the retention policy: merge away the snapshots it does not keep. With
    /// `dry_run`, only report.
    pub fn maintain(&self, dry_run: bool) -> Result<MaintainReport> {
        let m = self.manifest();
        let mut rep = MaintainReport {
            policy: m.policy.clone(),
            chain_before: m.chain(m.active_layer).len(),
            ..Default::default()
        };
        let Some(policy) = m.policy.clone() else {
            rep.notes
                .push("no retention policy set (vdisk policy set)".into());
            rep.chain_after = rep.chain_before;
            return Ok(rep);
        };
        let (remove, kept, notes) = plan(&m, &policy);
        rep.kept = kept
            .into_iter()
            .map(|(name, why)| KeptSnapshot { name, why })
            .collect();
        rep.notes = notes;
        rep.removed = remove.clone();
        if !dry_run && !remove.is_empty() {
            rep.merge = Some(self.merge_snapshots(&remove)?);
        }
        let after = self.manifest();
        rep.chain_after = if dry_run {
            chain_after(&m, &remove)
        } else {
            after.chain(after.active_layer).len()
        };
        Ok(rep)
    }
}
