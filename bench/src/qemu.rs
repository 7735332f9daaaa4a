//! The qemu-img peer: image creation and `qemu-img bench` runs.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The installed qemu-img.
pub struct Qemu {
    pub version: String,
}

impl Qemu {
    pub fn find() -> Result<Qemu> {
        let o = Command::new("qemu-img")
            .arg("--version")
            .output()
            .context("qemu-img is not installed (apt-get install qemu-utils)")?;
        let v = String::from_utf8_lossy(&o.stdout);
        Ok(Qemu {
            version: v.lines().next().unwrap_or("").to_string(),
        })
    }

    /// Run qemu-img with arguments, failing with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let o = Command::new("qemu-img").args(args).output()?;
        if !o.status.success() {
            bail!("qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// `qemu-img bench`; returns seconds as qemu-img reports them (its own timer).
    #[allow(clippy::too_many_arguments)]
    pub fn bench(
        &self,
        fmt: &str,
        image: &Path,
        count: u64,
        block: u64,
        step: u64,
        write: bool,
    ) -> Result<f64> {
        let (c, s, st) = (count.to_string(), block.to_string(), step.to_string());
        let mut args = vec![
            "bench",
            "-f",
            fmt,
            "-t",
            "writeback",
            "-i",
            "threads",
            "-d",
            "1",
            "-c",
            &c,
            "-s",
            &s,
            "-S",
            &st,
        ];
        if write {
            args.push("-w");
        }
        let p = image.to_str().unwrap_or_default();
        args.push(p);
        let out = self.run(&args)?;
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("Run completed in ") {
                let secs: f64 = rest.trim_end_matches(" seconds.").trim().parse()?;
                return Ok(secs);
            }
        }
        bail!("qemu-img bench printed no time: {out}")
    }

    /// Stack `depth - 1` empty qcow2 overlays of `size` bytes on `base`, named
    /// `DIR/PREFIX-N.qcow2`; returns the top. `-u` keeps qemu-img from opening the backing
    /// chain at every step (O(depth) each, O(depth²) in all).
    pub fn overlay_chain(
        &self,
        base: &Path,
        dir: &Path,
        prefix: &str,
        depth: usize,
        size: u64,
    ) -> Result<std::path::PathBuf> {
        let mut top = base.to_path_buf();
        let size = size.to_string();
        for i in 1..depth {
            let next = dir.join(format!("{prefix}-{i}.qcow2"));
            let _ = std::fs::remove_file(&next);
            self.run(&[
                "create",
                "-q",
                "-u",
                "-f",
                "qcow2",
                "-b",
                top.to_str().unwrap_or_default(),
                "-F",
                "qcow2",
                next.to_str().unwrap_or_default(),
                &size,
            ])?;
            top = next;
        }
        Ok(top)
    }

    /// Wall time of a whole qemu-img/qemu-io command.
    pub fn time_cmd(&self, prog: &str, args: &[&str]) -> Result<f64> {
        let t = Instant::now();
        let o = Command::new(prog).args(args).output()?;
        if !o.status.success() {
            bail!("{prog} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(t.elapsed().as_secs_f64())
    }
}
