//! A plugin's synchronization, in messages ttrpc can carry: the pods and
//! containers go in order, split where one message would pass the limit,
//! each but the last marked `more` (NRI's split sync).
use protobuf::Message;
use protocol::nri as api;

/// The most one Synchronize message carries: below ttrpc's 4 MiB, leaving
/// room for its framing.
pub const MAX_SYNC_BYTES: u64 = 3 << 20;

/// The Synchronize requests for `pods` and `containers`, each under
/// `max_bytes` (one object larger than that still goes, alone).
pub fn requests(
    pods: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
    max_bytes: u64,
) -> Vec<api::SynchronizeRequest> {
    let mut out = Vec::new();
    let mut cur = api::SynchronizeRequest::new();
    let mut size = 0u64;
    let mut push = |cur: &mut api::SynchronizeRequest, size: &mut u64, item: u64| {
        if *size > 0 && *size + item > max_bytes {
            out.push(std::mem::take(cur));
            *size = 0;
        }
        *size += item;
    };
    for p in pods {
        // Field tag, length prefix and body.
        push(&mut cur, &mut size, p.compute_size() + 6);
        cur.pods.push(p);
    }
    for c in containers {
        push(&mut cur, &mut size, c.compute_size() + 6);
        cur.containers.push(c);
    }
    out.push(cur);
    let last = out.len() - 1;
    for (i, r) in out.iter_mut().enumerate() {
        r.more = i < last;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(i: usize) -> api::PodSandbox {
        let mut p = api::PodSandbox::new();
        p.id = format!("{i:064}");
        p.annotations.insert("a".into(), "x".repeat(1000));
        p
    }

    #[test]
    fn a_large_state_is_split_in_order_with_more_on_all_but_the_last() {
        let pods: Vec<_> = (0..100).map(pod).collect();
        let one = pods[0].compute_size() + 6;
        let reqs = requests(pods, vec![api::Container::new()], one * 10);
        assert_eq!(reqs.len(), 11, "10 pods a message, the container in the last");
        assert!(reqs.iter().take(10).all(|r| r.more && r.pods.len() == 10));
        let last = reqs.last().unwrap();
        assert!(!last.more && last.containers.len() == 1);
        let ids: Vec<_> = reqs.iter().flat_map(|r| r.pods.iter().map(|p| p.id.clone())).collect();
        assert_eq!(ids, (0..100).map(|i| format!("{i:064}")).collect::<Vec<_>>());
        assert!(reqs.iter().all(|r| r.compute_size() <= one * 10 + 64));
    }

    #[test]
    fn a_small_state_is_one_message() {
        let reqs = requests(vec![pod(1)], vec![], MAX_SYNC_BYTES);
        assert_eq!(reqs.len(), 1);
        assert!(!reqs[0].more);
        assert_eq!(requests(vec![], vec![], MAX_SYNC_BYTES).len(), 1, "an empty node is one empty message");
    }
}
