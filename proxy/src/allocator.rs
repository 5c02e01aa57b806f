//! The allocator's settings. mimalloc keeps memory a burst took, for two reasons:
//! - transparent huge pages: it asks the kernel for 2 MiB pages, and a huge page that is
//!   partly in use stays whole in RSS, whatever was freed around it;
//! - freed pages go back to the system a moment after they were freed (`purge_delay`, 1 s),
//!   but only when a later free on some thread looks at them, which an idle pod never does.
//!
//! So huge pages are off (read from the environment before `main`: the binary starts itself
//! again once with the setting, see [`settle`]), and each server thread frees one large block
//! every few seconds ([`release_idle_memory`]), which lets the allocator purge what waited.
//! Measured (`bench/scale.sh`, 1,000 concurrent clients for 5 s, then 110 s idle): RSS 28 MiB
//! idle and +41 MiB after the burst with mimalloc's defaults; 14 MiB idle and +3 MiB after
//! with both, at the same CPU per request. Purging at once (`MIMALLOC_PURGE_DELAY=0`) got there
//! too but cost a sixth more CPU per request under load.

use std::ffi::OsString;
use std::time::Duration;

/// No transparent huge pages (mimalloc then also tells the kernel so for the whole process).
pub const DEFAULTS: [(&str, &str); 1] = [("MIMALLOC_ALLOW_THP", "0")];

/// How often a server thread lets the allocator purge.
const RELEASE_EVERY: Duration = Duration::from_secs(5);
/// Large enough to be a block of its own: its free makes the allocator look at its purges.
const RELEASE_BLOCK: usize = 8 << 20;

/// The settings of [`DEFAULTS`] missing from an environment (read through `get`).
pub fn missing(get: impl Fn(&str) -> Option<OsString>) -> Vec<(&'static str, &'static str)> {
    DEFAULTS
        .into_iter()
        .filter(|(name, _)| get(name).is_none())
        .collect()
}

/// Replaces this process with itself plus the missing settings; returns when nothing is missing
/// or the new start failed (then it runs on with the allocator's own defaults, which only costs
/// memory). Same process id, arguments and descriptors; a value set by the operator is kept.
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

/// Runs on a server thread for its lifetime: every [`RELEASE_EVERY`], one block of
/// [`RELEASE_BLOCK`] is taken and given back (never written, so it costs no RSS itself).
pub async fn release_idle_memory() {
    loop {
        tokio::time::sleep(RELEASE_EVERY).await;
        drop(std::hint::black_box(Vec::<u8>::with_capacity(
            RELEASE_BLOCK,
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_the_environment_lacks_are_added() {
        assert_eq!(missing(|_| None), DEFAULTS.to_vec());
        assert!(missing(|_| Some("1".into())).is_empty());
    }
}
