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
        // The pod's own files, resolved inside its root (an absolute link
        // such as /etc/hostname -> /etc/shadow names the pod's file, never
        // the node's); a symlink to /dev/zero or a FIFO must not block or
        // exhaust memory; a hostname is at most 253 bytes.
        let view = crate::process::fsview::FsView::of_process(proc_root, pid);
        let read = |p: &str| {
            view.read_head(p, 256)
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .filter(|s| !s.is_empty() && s.len() < 254)
        };
        info.pod_name = read("/etc/hostname");
        info.namespace = read("/var/run/secrets/kubernetes.io/serviceaccount/namespace");
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A pod whose /etc/hostname is a link to a node file: the pod's own
    /// file of that name is read (or nothing), never the node's.
    #[test]
    fn a_pods_hostname_link_cannot_read_the_nodes_files() {
        let node = crate::process::fsview::tests::tempdir("k8s-node");
        std::fs::write(node.join("shadow"), "root:SECRET-HASH").unwrap();
        let proc_root = crate::process::fsview::tests::tempdir("k8s-proc");
        let pod_root = crate::process::fsview::tests::tempdir("k8s-podroot");
        let pid = proc_root.join("42");
        std::fs::create_dir_all(pid.join("ns")).unwrap();
        std::fs::create_dir_all(proc_root.join("self/ns")).unwrap();
        std::os::unix::fs::symlink("mnt:[4026531841]", proc_root.join("self/ns/mnt")).unwrap();
        std::os::unix::fs::symlink("mnt:[4026532999]", pid.join("ns/mnt")).unwrap();
        std::os::unix::fs::symlink(&pod_root, pid.join("root")).unwrap();
        std::fs::write(
            pid.join("cgroup"),
            format!("0::/kubepods/besteffort/pod5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{ID}\n"),
        )
        .unwrap();
        std::fs::create_dir_all(pod_root.join("etc")).unwrap();
        std::os::unix::fs::symlink(node.join("shadow"), pod_root.join("etc/hostname")).unwrap();
        let info = of_process(&proc_root, 42);
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(info.pod_name, None, "{info:?}");
        // The pod's own file at that path is what a link names.
        let inside = pod_root.join(node.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("shadow"), "builder-7d9f\n").unwrap();
        assert_eq!(
            of_process(&proc_root, 42).pod_name.as_deref(),
            Some("builder-7d9f")
        );
        for d in [node, proc_root, pod_root] {
            std::fs::remove_dir_all(d).ok();
        }
    }

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

/// Pod names and namespaces by pod UID, from the Kubernetes API (opt-in:
/// `--k8s-api`). Filled by a background task; read at analysis time.
#[derive(Clone, Debug, Default)]
pub struct PodDirectory(
    std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, (String, String)>>>,
);

impl PodDirectory {
    /// (name, namespace) of a pod.
    pub fn get(&self, uid: &str) -> Option<(String, String)> {
        self.0.read().ok().and_then(|m| m.get(uid).cloned())
    }

    fn replace(&self, pods: std::collections::HashMap<String, (String, String)>) {
        if let Ok(mut m) = self.0.write() {
            *m = pods;
        }
    }
}

/// Why the pod list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error(
        "Kubernetes API URL {0:?}: only http://host:port (a `kubectl proxy` sidecar) is supported"
    )]
    Url(String),
    #[error("Kubernetes API {url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("Kubernetes API {url}: HTTP status {status}")]
    Status { url: String, status: String },
    #[error("Kubernetes API {url}: {msg}")]
    Body { url: String, msg: String },
}

/// `uid → (name, namespace)` from a `PodList` JSON document.
pub fn parse_pod_list(
    body: &[u8],
) -> Result<std::collections::HashMap<String, (String, String)>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let items = v["items"].as_array().ok_or("no `items` in the pod list")?;
    Ok(items
        .iter()
        .filter_map(|p| {
            let m = &p["metadata"];
            Some((
                m["uid"].as_str()?.to_string(),
                (
                    m["name"].as_str()?.to_string(),
                    m["namespace"].as_str()?.to_string(),
                ),
            ))
        })
        .collect())
}

/// GET the pods of `node` (all pods when `None`) from `base` (`http://host:port`).
pub async fn fetch_pods(
    base: &str,
    node: Option<&str>,
) -> Result<std::collections::HashMap<String, (String, String)>, K8sError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hostport = base
        .strip_prefix("http://")
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .ok_or_else(|| K8sError::Url(base.to_string()))?;
    let mut path = "/api/v1/pods".to_string();
    if let Some(n) = node {
        path.push_str("?fieldSelector=spec.nodeName%3D");
        path.extend(n.bytes().map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        }));
    }
    let io = |source| K8sError::Io {
        url: base.to_string(),
        source,
    };
    let mut s = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(hostport),
    )
    .await
    .map_err(|_| io(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
    .map_err(io)?;
    // HTTP/1.0: the answer is not chunked and ends when the server closes.
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nAccept: application/json\r\n\r\n")
            .as_bytes(),
    )
    .await
    .map_err(io)?;
    let mut resp = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        (&mut s).take(256 << 20).read_to_end(&mut resp),
    )
    .await
    .map_err(|_| io(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
    .map_err(io)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| K8sError::Body {
            url: base.to_string(),
            msg: "no end of headers".into(),
        })?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let status = head.lines().next().unwrap_or("").to_string();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(K8sError::Status {
            url: base.to_string(),
            status,
        });
    }
    parse_pod_list(&resp[split + 4..]).map_err(|msg| K8sError::Body {
        url: base.to_string(),
        msg,
    })
}

/// Refresh `dir` from the API every `every`, logging failures once a minute.
pub fn spawn_pod_refresher(
    base: String,
    node: Option<String>,
    dir: PodDirectory,
    every: std::time::Duration,
) {
    tokio::spawn(async move {
        let mut last_warn: Option<std::time::Instant> = None;
        loop {
            match fetch_pods(&base, node.as_deref()).await {
                Ok(pods) => {
                    tracing::debug!(pods = pods.len(), "pod list refreshed");
                    dir.replace(pods);
                }
                Err(e) => {
                    if last_warn.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60)) {
                        tracing::warn!("pod names unavailable: {e}");
                        last_warn = Some(std::time::Instant::now());
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    });
}

#[cfg(test)]
mod api_tests {
    use super::*;

    #[test]
    fn pod_list_from_a_real_shaped_document() {
        let body = br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[
          {"metadata":{"name":"builder-7d9f","namespace":"ci","uid":"5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"},"spec":{"nodeName":"n1"}},
          {"metadata":{"name":"no-uid"}}]}"#;
        let m = parse_pod_list(body).unwrap();
        assert_eq!(
            m.get("5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"),
            Some(&("builder-7d9f".to_string(), "ci".to_string()))
        );
        assert_eq!(m.len(), 1);
        assert!(parse_pod_list(b"{}").is_err());
        assert!(parse_pod_list(b"not json").is_err());
    }

    #[test]
    fn fetches_from_an_http_endpoint_and_reports_errors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let mut seen = Vec::new();
                for status in ["200 OK", "403 Forbidden"] {
                    let (mut s, _) = l.accept().await.unwrap();
                    let mut req = vec![0u8; 4096];
                    let n = s.read(&mut req).await.unwrap();
                    seen.push(String::from_utf8_lossy(&req[..n]).into_owned());
                    let body =
                        r#"{"items":[{"metadata":{"name":"p","namespace":"ns","uid":"u1"}}]}"#;
                    s.write_all(
                        format!(
                            "HTTP/1.0 {status}\r\nContent-Type: application/json\r\n\r\n{body}"
                        )
                        .as_bytes(),
                    )
                    .await
                    .unwrap();
                }
                seen
            });
            let base = format!("http://{addr}");
            let pods = fetch_pods(&base, Some("node-1")).await.unwrap();
            assert_eq!(pods.get("u1"), Some(&("p".into(), "ns".into())));
            let err = fetch_pods(&base, None).await.unwrap_err();
            assert!(err.to_string().contains("403"), "{err}");
            let seen = server.await.unwrap();
            assert!(
                seen[0]
                    .starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1 HTTP/1.0"),
                "{}",
                seen[0]
            );
            assert!(matches!(
                fetch_pods("https://10.0.0.1", None).await,
                Err(K8sError::Url(_))
            ));
        });
    }
}
