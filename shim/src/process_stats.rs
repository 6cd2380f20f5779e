//! What runs in a container, counted as cAdvisor counts it: the processes
//! of its cgroup, their threads, open file descriptors and sockets, and the
//! counters of the network interfaces its init sees. Every walk is bounded,
//! since it runs on the shim's one thread (a container of a few processes
//! takes well under a millisecond).
use std::path::Path;

use protocol::shim::InterfaceStats;

use crate::cgroup::Cgroups;

/// Processes looked at, at most (a fork bomb must not stall the shim).
const MAX_PROCESSES: usize = 4096;
/// Entries of one process's fd or task folder counted, at most.
const MAX_ENTRIES: usize = 64 * 1024;

/// The counts of one container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounts {
    /// Processes in the cgroup.
    pub processes: u64,
    /// Their threads.
    pub threads: u64,
    /// Their open file descriptors.
    pub file_descriptors: u64,
    /// The descriptors that are sockets.
    pub sockets: u64,
    /// The cgroup's pid limit (0: none).
    pub threads_max: u64,
}

/// Counts the processes of `cg`.
pub fn count(cg: &Cgroups) -> ProcessCounts {
    let mut c = ProcessCounts { threads_max: cg.pids_max().unwrap_or(0), ..Default::default() };
    let Some(procs) = cg.procs_file() else { return c };
    let text = std::fs::read_to_string(procs).unwrap_or_default();
    for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()).take(MAX_PROCESSES) {
        let proc_dir = format!("/proc/{pid}");
        let Ok(tasks) = std::fs::read_dir(format!("{proc_dir}/task")) else { continue };
        c.processes += 1;
        c.threads += count_entries(tasks);
        let Ok(fds) = std::fs::read_dir(format!("{proc_dir}/fd")) else { continue };
        for fd in fds.flatten().take(MAX_ENTRIES) {
            c.file_descriptors += 1;
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:")) {
                c.sockets += 1;
            }
        }
    }
    c
}

fn count_entries(dir: std::fs::ReadDir) -> u64 {
    u64::try_from(dir.take(MAX_ENTRIES).count()).unwrap_or(u64::MAX)
}

/// The interfaces (without `lo`) of the network namespace `pid` is in.
pub fn interfaces(pid: i32) -> Vec<InterfaceStats> {
    parse_net_dev(&std::fs::read_to_string(Path::new(&format!("/proc/{pid}/net/dev"))).unwrap_or_default())
}

/// Parses `/proc/net/dev`: after `name:`, eight receive counters (bytes,
/// packets, errs, drop, fifo, frame, compressed, multicast), then eight
/// transmit ones (bytes, packets, errs, drop, fifo, colls, carrier,
/// compressed).
fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            let f: Vec<u64> = rest.split_whitespace().map_while(|v| v.parse().ok()).collect();
            if name == "lo" || f.len() < 12 {
                return None;
            }
            let mut i = InterfaceStats::new();
            i.name = name.to_string();
            (i.rx_bytes, i.rx_packets, i.rx_errors, i.rx_dropped) = (f[0], f[1], f[2], f[3]);
            (i.tx_bytes, i.tx_packets, i.tx_errors, i.tx_dropped) = (f[8], f[9], f[10], f[11]);
            Some(i)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_gives_each_interface_but_lo() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0:    1500      12    1    2    0     0          0         0      900       9    3    4    0     0       0          0
";
        let i = parse_net_dev(text);
        assert_eq!(i.len(), 1);
        let e = &i[0];
        assert_eq!(e.name, "eth0");
        assert_eq!((e.rx_bytes, e.rx_packets, e.rx_errors, e.rx_dropped), (1500, 12, 1, 2));
        assert_eq!((e.tx_bytes, e.tx_packets, e.tx_errors, e.tx_dropped), (900, 9, 3, 4));
        assert!(parse_net_dev("garbage\n  eth1: 1 2 x\n").is_empty());
    }

    #[test]
    fn counts_this_process() {
        let Some(cg) = Cgroups::of(i32::try_from(std::process::id()).unwrap_or(0)) else { return };
        let _sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let c = count(&cg);
        if c.processes == 0 {
            // No cgroup.procs this user can read: nothing to check here.
            return;
        }
        assert!(c.threads >= c.processes && c.file_descriptors >= 3 && c.sockets >= 1, "{c:?}");
    }
}
