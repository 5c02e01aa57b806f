//! Pinning the server threads to CPUs, as nginx's `worker_cpu_affinity auto` does. The threads
//! share nothing on the request path (each has its own runtime, connections and pools), so a
//! thread that stays on its CPU keeps its caches, and two of them never queue on one CPU while
//! another sits idle: on a 2-CPU machine shared with other busy processes the kernel put both
//! threads on one CPU in about half of the benchmark's rounds, at a third less throughput.
//!
//! `auto` pins only when the process may run on no more CPUs than it has server threads, and
//! those CPUs are its own: a machine or VM, or a pod with an exclusive set (a Guaranteed pod
//! with whole CPUs under the static CPU manager). A pod that may run on every CPU of its node
//! shares them with other pods: pinned, a thread would wait behind another pod's work instead
//! of moving to an idle CPU, so it is left to the kernel's scheduler. So is a pod under a CPU
//! quota (it gets fewer threads than CPUs).

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pinning {
    /// Pin when every CPU the process may use gets a server thread.
    Auto,
    /// Pin thread `i` to the `i`-th CPU the process may use (round the set if more threads).
    Always,
    /// Never pin.
    Never,
}

/// The CPUs the process may run on, and whether other processes share them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpus {
    /// The CPUs the process may run on, in order.
    pub allowed: Vec<usize>,
    /// True in a Kubernetes pod that may run on every online CPU of its node.
    pub shared_node: bool,
}

impl Cpus {
    /// What the system says about the calling thread (call it before any thread is pinned).
    pub fn of_this_process() -> Self {
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|c| c.id).collect())
            .unwrap_or_default();
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|t| parse_list(&t));
        let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
        let shared_node = in_pod && online.is_none_or(|o| o.len() <= allowed.len());
        Self {
            allowed,
            shared_node,
        }
    }
}

/// The CPU each of `threads` server threads is pinned to; `None` when they are not pinned.
pub fn plan(mode: Pinning, threads: usize, cpus: &Cpus) -> Option<Vec<usize>> {
    let allowed = &cpus.allowed;
    match mode {
        Pinning::Never => None,
        _ if allowed.is_empty() || threads == 0 => None,
        Pinning::Auto if allowed.len() > threads || cpus.shared_node => None,
        Pinning::Auto | Pinning::Always => {
            Some((0..threads).map(|i| allowed[i % allowed.len()]).collect())
        }
    }
}

/// The CPUs of a list such as `0-3,8,10-11` (`/sys/devices/system/cpu/online`); `None` when
/// it is not one. At most 65,536 CPUs.
pub fn parse_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (usize, usize) = (lo.parse().ok()?, hi.parse().ok()?);
        if lo > hi || hi >= 65_536 || cpus.len() + (hi - lo) >= 65_536 {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    Some(cpus)
}

/// Pins the calling thread to `cpu`; false when the system refused.
pub fn pin_current(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(allowed: &[usize]) -> Cpus {
        Cpus {
            allowed: allowed.to_vec(),
            shared_node: false,
        }
    }

    #[test]
    fn auto_pins_only_when_every_allowed_cpu_gets_a_thread() {
        assert_eq!(plan(Pinning::Auto, 2, &own(&[0, 1])), Some(vec![0, 1]));
        // An exclusive cpuset of a pod: its own CPUs, wherever they lie.
        assert_eq!(plan(Pinning::Auto, 2, &own(&[6, 9])), Some(vec![6, 9]));
        assert_eq!(plan(Pinning::Auto, 3, &own(&[4, 5])), Some(vec![4, 5, 4]));
        // A quota on a larger node: fewer threads than allowed CPUs.
        assert_eq!(plan(Pinning::Auto, 2, &own(&[0, 1, 2, 3])), None);
    }

    #[test]
    fn auto_leaves_a_pod_on_a_shared_node_to_the_scheduler() {
        let shared = Cpus {
            allowed: (0..16).collect(),
            shared_node: true,
        };
        assert_eq!(plan(Pinning::Auto, 16, &shared), None);
        assert_eq!(plan(Pinning::Always, 2, &shared), Some(vec![0, 1]));
    }

    #[test]
    fn always_and_never_do_as_told() {
        assert_eq!(
            plan(Pinning::Always, 2, &own(&[0, 1, 2, 3])),
            Some(vec![0, 1])
        );
        assert_eq!(plan(Pinning::Always, 3, &own(&[2])), Some(vec![2, 2, 2]));
        assert_eq!(plan(Pinning::Never, 2, &own(&[0, 1])), None);
        assert_eq!(
            plan(Pinning::Always, 2, &own(&[])),
            None,
            "unknown CPUs: nothing to pin to"
        );
    }

    #[test]
    fn cpu_lists_parse_and_hostile_ones_are_refused() {
        assert_eq!(
            parse_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_list("0"), Some(vec![0]));
        for bad in [
            "",
            "a",
            "3-1",
            "0-",
            "0-4294967295",
            "0,,1",
            "0-65535,0-65535",
        ] {
            assert_eq!(parse_list(bad), None, "{bad:?}");
        }
    }
}
