//! Which container a process runs in, from `/proc/<pid>/cgroup`.
//!
//! The kubelet's runtime puts each container in a cgroup named after its
//! container ID, as the leaf of the cgroup path:
//!
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`
//! - systemd driver: `/kubepods.slice/…/cri-containerd-<id>.scope`
//!
//! A process cannot leave its container's cgroup for another container's
//! (that needs write access to the cgroup tree outside its namespace), so
//! the leaf identifies the container the process was started in.

/// Length of a container ID: 32 bytes in lowercase hex.
const CONTAINER_ID_LEN: usize = 64;

/// The container ID of a process, given the text of its `/proc/<pid>/cgroup`.
///
/// Every line (`hierarchy:controllers:path`; cgroup v2 has the single line
/// `0::path`, v1 one per hierarchy) whose path ends in a container ID names
/// that ID; they must all agree. `None` if no line names one (a process
/// outside any container, e.g. on the host) or if they disagree, which a
/// process inside one container cannot arrange; either way the caller gets
/// no container's identity.
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    let mut found: Option<&str> = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_hierarchy), Some(_controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some(id) = container_id_from_path(path) else {
            continue;
        };
        match found {
            None => found = Some(id),
            Some(previous) if previous == id => {}
            Some(_) => return None,
        }
    }
    found.map(str::to_owned)
}

/// The container ID that is the leaf of a cgroup path, if it is one.
fn container_id_from_path(path: &str) -> Option<&str> {
    let leaf = path.trim_end_matches('/').rsplit('/').next()?;
    let leaf = leaf.strip_prefix("cri-containerd-").unwrap_or(leaf);
    let leaf = leaf.strip_suffix(".scope").unwrap_or(leaf);
    let is_id = leaf.len() == CONTAINER_ID_LEN
        && leaf
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    is_id.then_some(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c8e5bd3a2cf0e1b7c1f2e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a";
    const OTHER: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn cgroup_v2_cgroupfs_driver() {
        let text =
            format!("0::/kubepods/besteffort/pod0d9c0a3e-8f5e-4c1b-9b7a-3c2d1e0f9a8b/{ID}\n");
        assert_eq!(container_id_from_cgroup(&text).as_deref(), Some(ID));
    }

    #[test]
    fn cgroup_v2_systemd_driver() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d9c0a3e_8f5e_4c1b_9b7a_3c2d1e0f9a8b.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_id_from_cgroup(&text).as_deref(), Some(ID));
    }

    #[test]
    fn cgroup_v1_every_hierarchy_agrees() {
        let text = format!(
            "12:pids:/kubepods/burstable/pod1234/{ID}\n\
             11:memory:/kubepods/burstable/pod1234/{ID}\n\
             10:cpu,cpuacct:/kubepods/burstable/pod1234/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod1234/{ID}\n\
             0::/\n"
        );
        assert_eq!(container_id_from_cgroup(&text).as_deref(), Some(ID));
    }

    #[test]
    fn cgroup_v1_systemd_driver() {
        let text = format!(
            "5:memory:/kubepods.slice/kubepods-pod1234.slice/cri-containerd-{ID}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-pod1234.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_id_from_cgroup(&text).as_deref(), Some(ID));
    }

    #[test]
    fn disagreeing_hierarchies_name_nobody() {
        let text = format!("11:memory:/kubepods/pod1/{ID}\n10:pids:/kubepods/pod1/{OTHER}\n");
        assert_eq!(container_id_from_cgroup(&text), None);
    }

    #[test]
    fn host_processes_and_odd_paths_name_nobody() {
        for text in [
            "0::/init.scope\n",
            "0::/system.slice/containerd.service\n",
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "",
            "garbage\n",
            // The ID must be the leaf: a child cgroup below a container is
            // not that container's identity.
            &format!("0::/kubepods/pod1/{ID}/child\n"),
            // Uppercase and wrong lengths are not container IDs.
            &format!("0::/kubepods/pod1/{}\n", ID.to_uppercase()),
            &format!("0::/kubepods/pod1/{}\n", &ID[1..]),
            &format!("0::/kubepods/pod1/{ID}0\n"),
            &format!("0::/kubepods/pod1/docker-{ID}.scope\n"),
        ] {
            assert_eq!(container_id_from_cgroup(text), None, "{text:?}");
        }
    }

    #[test]
    fn colons_in_the_path_are_kept() {
        // Only the first two colons separate fields.
        let text = format!("0::/odd:name/{ID}\n");
        assert_eq!(container_id_from_cgroup(&text).as_deref(), Some(ID));
    }
}
