//! Container and pod attribution of a process, from its cgroup path alone
//! (no Kubernetes API access): container id (docker, containerd, CRI-O;
//! cgroupfs and systemd drivers), pod UID, and, where the container's own
//! files say so, pod name (`/etc/hostname`) and namespace (the service
//! account's `namespace` file).
//!
//! Owns: pure parsing, plus reads through `/proc/<pid>` at analysis time.

use std::path::Path;

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl PodInfo {
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Container id in a cgroup path (`/proc/<pid>/cgroup` text or one path).
pub fn container_id(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or(line);
        for seg in path.rsplit('/') {
            let seg = seg.trim_end_matches(".scope");
            let id = seg.rsplit(['-', ':']).next().unwrap_or(seg);
            if is_hex64(id) {
                return Some(id.to_string());
            }
        }
    }
    None
}

/// Pod UID: `pod<uid>` (cgroupfs: dashes) or `...-pod<uid>.slice` (systemd: underscores).
pub fn pod_uid(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or(line);
        for seg in path.split('/') {
            let seg = seg.trim_end_matches(".slice");
            let Some(i) = seg.rfind("pod") else { continue };
            let uid = seg[i + 3..].replace('_', "-");
            let parts: Vec<&str> = uid.split('-').collect();
            let shape = [8, 4, 4, 4, 12];
            if parts.len() == 5
                && parts
                    .iter()
                    .zip(shape)
                    .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Some(uid);
            }
        }
    }
    None
}

/// Attribution of process `pid` (`proc_root` is `/proc` outside tests).
pub fn of_process(proc_root: &Path, pid: u32) -> PodInfo {
    let dir = proc_root.join(pid.to_string());
    let Ok(cg) = std::fs::read_to_string(dir.join("cgroup")) else {
        return PodInfo::default();
    };
    let mut info = PodInfo {
        container_id: container_id(&cg),
        pod_uid: pod_uid(&cg),
        ..Default::default()
    };
    if info.pod_uid.is_some() {
        let read = |p: &str| {
            std::fs::read_to_string(dir.join("root").join(p))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && s.len() < 254)
        };
        info.pod_name = read("etc/hostname");
        info.namespace = read("var/run/secrets/kubernetes.io/serviceaccount/namespace");
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn real_world_cgroup_paths() {
        let samples = [
            // containerd, systemd driver, cgroup v2
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/cri-containerd-{ID}.scope"
                ),
                Some("5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"),
            ),
            // containerd, cgroupfs driver
            (
                format!("0::/kubepods/besteffort/pod5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{ID}"),
                Some("5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"),
            ),
            // CRI-O, systemd, guaranteed QoS
            (
                format!(
                    "0::/kubepods.slice/kubepods-pod5f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/crio-{ID}.scope"
                ),
                Some("5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"),
            ),
            // docker outside Kubernetes, cgroup v1 lines
            (format!("12:memory:/docker/{ID}\n11:cpu:/docker/{ID}"), None),
        ];
        for (path, uid) in samples {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
            assert_eq!(pod_uid(&path).as_deref(), uid, "{path}");
        }
        let host = "0::/user.slice/user-1000.slice/session-2.scope";
        assert_eq!((container_id(host), pod_uid(host)), (None, None));
        assert_eq!(pod_uid("0::/kubepods/podnot-a-uid/x"), None);
    }

    #[test]
    fn a_host_process_has_no_pod() {
        let me = of_process(Path::new("/proc"), std::process::id());
        assert_eq!(me.pod_uid, None);
    }
}
