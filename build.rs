//! Build script: stamps the git commit into the binary for `nsready_build_info{git_sha}`.
//!
//! Reads `git rev-parse --short=12 HEAD`; without git, or outside a repository (a source
//! tarball, a container build without `.git`), the sha is "unknown" and the build goes on.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let sha = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=NSREADY_GIT_SHA={sha}");
    // Rebuild when HEAD moves (a commit, a checkout); paths only when they exist, since
    // cargo reruns the script on every build for a path that does not.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = ["HEAD", "packed-refs"]
        .into_iter()
        .map(String::from)
        .chain(branch)
        .filter_map(|rel| git(&["rev-parse", "--git-path", &rel]))
        .filter(|p| Path::new(p).exists());
    for p in watched {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
