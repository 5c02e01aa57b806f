//! The allocator's settings. mimalloc reads them from the environment once, before `main`, and
//! its defaults keep memory a burst took: pages are committed a whole arena at a time and freed
//! pages go back to the system only when the thread that freed them allocates again, which an
//! idle pod's threads do not. Measured (`bench/scale.sh`, 1,000 concurrent clients for 5 s, then
//! 110 s idle): RSS 25 MiB idle and +14 MiB after the burst with the defaults; 13 MiB idle and
//! +2 MiB after with [`DEFAULTS`], at the same throughput.
//!
//! Without `unsafe` the options cannot be set from inside, so the binary starts itself again
//! once with the missing ones in its environment (same process id, arguments and descriptors).
//! A value set by the operator is kept.

use std::ffi::OsString;

/// Commit memory as it is used, and give freed pages back at once.
pub const DEFAULTS: [(&str, &str); 2] = [
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ("MIMALLOC_PURGE_DELAY", "0"),
];

/// The settings of [`DEFAULTS`] missing from an environment (read through `get`).
pub fn missing(get: impl Fn(&str) -> Option<OsString>) -> Vec<(&'static str, &'static str)> {
    DEFAULTS
        .into_iter()
        .filter(|(name, _)| get(name).is_none())
        .collect()
}

/// Replaces this process with itself plus the missing settings; returns when nothing is missing
/// or the new start failed (then it runs on with the allocator's own defaults, which only costs
/// memory).
#[cfg(target_os = "linux")]
pub fn settle() {
    use std::os::unix::process::CommandExt;
    let missing = missing(|name| std::env::var_os(name));
    if missing.is_empty() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "gemini-proxy".into());
    // The running image, even when its file was replaced or removed since it started.
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .envs(missing)
        .exec();
    eprintln!(
        "gemini-proxy: allocator settings not applied ({error}); running with mimalloc's defaults"
    );
}

#[cfg(not(target_os = "linux"))]
pub fn settle() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_the_environment_lacks_are_added() {
        assert_eq!(missing(|_| None), DEFAULTS.to_vec());
        assert!(missing(|_| Some("5".into())).is_empty());
        assert_eq!(
            missing(|name| (name == "MIMALLOC_PURGE_DELAY").then(|| "100".into())),
            vec![("MIMALLOC_ARENA_EAGER_COMMIT", "0")]
        );
    }
}
