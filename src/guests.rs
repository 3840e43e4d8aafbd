//! The default guest: Debian's i386 kernel and a busybox initramfs, and the
//! syslinux disk image holding them, built by the scripts in `guests/` on
//! first use and cached (see guests/README.md); and Debian's SeaBIOS that
//! boots that disk. This module finds the cache, runs the build when
//! something is missing, and reads the `guest.env` it leaves behind.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("the guest recipes are not at {0} (set UMBRA_GUESTS_DIR to the guests/ folder of an umbra checkout)")]
    NoRecipes(PathBuf),
    #[error("cannot run {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error(
        "building the default guest failed (see the messages above); run {0} by hand to retry"
    )]
    BuildFailed(PathBuf),
    #[error("{0} is missing or incomplete after the build: {1}")]
    BadEnv(PathBuf, String),
    #[error("no SeaBIOS ({0} is missing): install Debian's `seabios` package (apt-get install seabios), or give --bios ROM, or boot a kernel directly with --kernel FILE")]
    NoSeaBios(PathBuf),
}

/// The files of a built guest.
#[derive(Clone, Debug)]
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Natively computed workload results.
    pub expected: Option<PathBuf>,
    /// The syslinux disk image (guests/build-disk.sh), once built.
    pub disk: Option<PathBuf>,
}

/// The guest cache: `$UMBRA_GUEST_CACHE`, else `~/.cache/umbra/guests`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("UMBRA_GUEST_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/umbra/guests")
}

/// The `guests/` recipes: `$UMBRA_GUESTS_DIR`, else this checkout's.
pub fn recipes_dir() -> PathBuf {
    std::env::var_os("UMBRA_GUESTS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("guests"),
        PathBuf::from,
    )
}

/// The default guest, built first if the cache does not hold it.
pub fn default_guest() -> Result<Guest, GuestError> {
    let env = cache_dir().join("guest.env");
    if let Ok(g) = read_env(&env) {
        return Ok(g);
    }
    eprintln!("umbra: building the default guest (first run; it is cached for the next ones)");
    run_recipe("build.sh", BUILD_STEPS)?;
    read_env(&env)
}

/// The default guest's syslinux disk image, built first (guests/
/// build-disk.sh, which also builds the guest) if the cache does not
/// hold it.
pub fn default_disk() -> Result<PathBuf, GuestError> {
    let env = cache_dir().join("guest.env");
    if let Ok(Guest { disk: Some(d), .. }) = read_env(&env) {
        return Ok(d);
    }
    eprintln!("umbra: building the default guest's disk image (first run; it is cached for the next ones)");
    run_recipe("build-disk.sh", BUILD_STEPS + DISK_STEPS)?;
    read_env(&env)?
        .disk
        .ok_or_else(|| GuestError::BadEnv(env, "no DISK".to_string()))
}

/// Default firmware ROM: Debian's SeaBIOS (package `seabios`).
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios.bin";

/// Debian's SeaBIOS `bios.bin`: /usr/share/seabios (the `seabios`
/// package), else the copy guests/fetch-seabios.sh extracts into the
/// guest cache. With `fetch`, a missing one is fetched into the cache
/// first (apt-get download, nothing installed), as the default guest's
/// packages are.
pub fn seabios(fetch: bool) -> Result<PathBuf, GuestError> {
    let found = || umbra_firmware::seabios::find_debian_seabios().map(|d| d.join("bios.bin"));
    if let Some(b) = found() {
        return Ok(b);
    }
    if fetch && run_recipe("fetch-seabios.sh", 2).is_ok() {
        if let Some(b) = found() {
            return Ok(b);
        }
    }
    Err(GuestError::NoSeaBios(PathBuf::from(DEFAULT_BIOS)))
}

/// Run guests/`script` with the cache directory, showing its steps as a
/// progress bar.
fn run_recipe(script: &str, steps: u64) -> Result<(), GuestError> {
    let script = recipes_dir().join(script);
    if !script.is_file() {
        return Err(GuestError::NoRecipes(script));
    }
    let mut child = Command::new("bash")
        .arg(&script)
        .env("UMBRA_GUEST_CACHE", cache_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GuestError::Spawn(script.clone(), e))?;
    if let Some(err) = child.stderr.take() {
        show_progress(err, steps);
    }
    let status = child
        .wait()
        .map_err(|e| GuestError::Spawn(script.clone(), e))?;
    if !status.success() {
        return Err(GuestError::BuildFailed(script));
    }
    Ok(())
}

/// Steps guests/build-disk.sh announces beyond build.sh's (modules,
/// initramfs, disk, two ISOs).
const DISK_STEPS: u64 = 5;

/// The natively computed workload results (guests/expected.sh writes
/// `name result...` lines) as (name, result) pairs; a guest's line
/// `WORKLOAD name result... <time>s` matches when it starts with the
/// result.
pub fn read_expected(path: &Path) -> std::io::Result<Vec<(String, String)>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

/// Steps guests/build.sh announces with a `umbra-guests: ... ...` line on
/// a first build (download and extract two packages, the initramfs, the
/// expected results).
const BUILD_STEPS: u64 = 6;

/// A progress bar over the build script's step lines; any other line (an
/// error, a path) is printed above it.
fn show_progress(stderr: impl std::io::Read, steps: u64) {
    let pb = ProgressBar::new(steps);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        match line.strip_prefix("umbra-guests: ") {
            // An error stays on screen (the bar is cleared at the end;
            // `println` would print nothing when stderr is not a terminal).
            Some(err) if err.starts_with("error:") => pb.suspend(|| eprintln!("{line}")),
            Some(step) if step.ends_with("...") => {
                pb.inc(1);
                pb.set_message(step.trim_end_matches(" ...").to_string());
            }
            Some(info) => pb.set_message(info.to_string()),
            None => pb.suspend(|| eprintln!("{line}")),
        }
    }
    pb.finish_and_clear();
}

/// Parse `KEY=VALUE` lines and check the files exist.
fn read_env(path: &Path) -> Result<Guest, GuestError> {
    let bad = |why: &str| GuestError::BadEnv(path.to_path_buf(), why.to_string());
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    let vars: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
        .collect();
    let file = |key: &str| -> Result<PathBuf, GuestError> {
        let p = PathBuf::from(vars.get(key).ok_or_else(|| bad(&format!("no {key}")))?);
        if p.is_file() {
            Ok(p)
        } else {
            Err(bad(&format!("{key}={} does not exist", p.display())))
        }
    };
    Ok(Guest {
        kernel: file("KERNEL")?,
        initrd: file("INITRD")?,
        expected: file("EXPECTED").ok(),
        disk: file("DISK").ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_needs_existing_files() {
        let dir = std::env::temp_dir().join(format!("umbra-guest-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = dir.join("vmlinuz");
        let i = dir.join("initramfs.cpio.gz");
        std::fs::write(&k, b"k").unwrap();
        let env = dir.join("guest.env");
        std::fs::write(
            &env,
            format!("KERNEL={}\nINITRD={}\n", k.display(), i.display()),
        )
        .unwrap();
        assert!(matches!(read_env(&env), Err(GuestError::BadEnv(..))));
        std::fs::write(&i, b"i").unwrap();
        let g = read_env(&env).unwrap();
        assert_eq!(g.kernel, k);
        assert!(g.expected.is_none());
        assert!(g.disk.is_none());
        let d = dir.join("disk.img");
        std::fs::write(&d, b"d").unwrap();
        let mut text = std::fs::read_to_string(&env).unwrap();
        text.push_str(&format!("DISK={}\n", d.display()));
        std::fs::write(&env, text).unwrap();
        assert_eq!(read_env(&env).unwrap().disk, Some(d));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
