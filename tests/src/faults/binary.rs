//! Finding the `keel-bench` binary the node processes run.
//!
//! Cargo gives a test the path of its own package's binaries only (`CARGO_BIN_EXE_*`), and
//! keel-bench is another package. `cargo test --workspace` builds every binary before any test
//! runs, but `cargo test -p keel-tests` does not build keel-bench at all, and would run a stale
//! one after an engine change. So the first test that needs it runs `cargo build -p keel-bench`
//! (with the profile and target directory of the running test binary; a no-op when it is fresh)
//! and then finds it beside the test binary's `deps/` directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of an up-to-date `keel-bench`, built on first use; panics with the reason when it
/// cannot be built.
pub fn keel_bench() -> &'static Path {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(build) {
        Ok(path) => path,
        Err(e) => panic!("cannot provide the keel-bench binary: {e}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target>/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in a cargo target directory", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", profile_dir.display()))?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("keel-tests lives in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // Cargo gave this test process its own package's variables (CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR...). Build scripts (ring's) rerun when those change, so passing them on
    // would rebuild half the dependency tree here and again in the next outer build.
    for (name, _) in std::env::vars_os() {
        let inherited = name
            .to_str()
            .is_some_and(|n| (n.starts_with("CARGO_") && n != "CARGO_HOME") || n == "OUT_DIR");
        if inherited {
            command.env_remove(&name);
        }
    }
    command
        .args([
            "build",
            "--quiet",
            "-p",
            "keel-bench",
            "--bin",
            "keel-bench",
        ])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir);
    if release {
        command.arg("--release");
    }
    let status = command
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    let binary = profile_dir.join("keel-bench");
    if !status.success() {
        return Err(format!("cargo build -p keel-bench failed ({status})"));
    }
    if !binary.exists() {
        return Err(format!("{} was not built", binary.display()));
    }
    Ok(binary)
}
