//! Pod attribution with the Kubernetes API opt-in (`--k8s-api`): a real
//! process is moved into a cgroup laid out as the kubelet lays out a pod's
//! container, and an HTTP endpoint of the test's own answers the pod list as
//! `kubectl proxy` would.

use std::{
    io::BufRead as _,
    process::{Command, Stdio},
};

use agent_tests::{json_lines, of_type, require_root, scratch};

const UID: &str = "5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn cgroup2_root() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .expect("a cgroup v2 mount")
}

struct PodCgroup(std::path::PathBuf);

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
        if let Some(p) = self.0.parent() {
            let _ = std::fs::remove_dir(p);
            if let Some(pp) = p.parent() {
                let _ = std::fs::remove_dir(pp);
            }
        }
    }
}

#[test]
fn pod_names_come_from_the_api_when_enabled() {
    require_root();
    let dir = std::path::Path::new(&cgroup2_root())
        .join("agent-it-kubepods")
        .join(format!("pod{UID}"))
        .join(CID);
    std::fs::create_dir_all(&dir).expect("mkdir pod cgroup");
    let _cg = PodCgroup(dir.clone());
    let api = format!(
        "import http.server,json\nbody=json.dumps({{'kind':'PodList','items':[{{'metadata':{{'name':'builder-7d9f','namespace':'ci','uid':'{UID}'}}}}]}}).encode()\nclass H(http.server.BaseHTTPRequestHandler):\n def do_GET(self):\n  ok=self.path.startswith('/api/v1/pods')\n  self.send_response(200 if ok else 404); self.end_headers(); self.wfile.write(body if ok else b'')\n def log_message(self,*a): pass\ns=http.server.HTTPServer(('127.0.0.1',0),H)\nprint(s.server_address[1],flush=True)\ns.serve_forever()\n"
    );
    let mut server = Command::new("python3")
        .args(["-c", &api])
        .stdout(Stdio::piped())
        .spawn()
        .expect("api server");
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let out_file = scratch("k8s").join("records.jsonl");
    let procs = dir.join("cgroup.procs").display().to_string();
    let out = Command::new(agent_tests::agent_bin())
        .args(["--format", "json", "--output"])
        .arg(&out_file)
        .args(["--k8s-api", &format!("http://127.0.0.1:{}", port.trim())])
        .args(["trace", "--", "sh", "-c"])
        .arg(format!(
            "echo $$ > {procs} && sleep 0.5 && exec python3 -c 'print(1)'"
        ))
        .env("NODE_NAME", "node-1")
        .output()
        .expect("agent trace");
    let _ = server.kill();
    let _ = server.wait();
    let lines = json_lines(&std::fs::read_to_string(&out_file).unwrap_or_default());
    let py = of_type(&lines, "exec")
        .into_iter()
        .find(|e| e["argv"][0] == "python3")
        .unwrap_or_else(|| {
            panic!(
                "no python3 exec; stderr {}\n{lines:#?}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(py["pod"]["pod_uid"], UID, "{py}");
    assert_eq!(py["pod"]["container_id"], CID);
    assert_eq!(py["pod"]["pod_name"], "builder-7d9f", "{py}");
    assert_eq!(py["pod"]["namespace"], "ci");
}
