//! A root agent on a shared host reads what any user controls. Files a user
//! planted must not freeze it (a FIFO where a conda list or a tool binary
//! should be) or blow its memory up (a 300 MB executable named `go`).

use std::{
    io::BufRead as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_tests::{agent_bin, json_lines, require_root, scratch};

const USER: &str = "agenthostile";

fn user_home() -> std::path::PathBuf {
    agent_tests::ensure_user(USER, &[])
}

fn as_user(script: &str) -> std::process::ExitStatus {
    Command::new("setpriv")
        .args([
            "--reuid",
            USER,
            "--regid",
            USER,
            "--init-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", format!("/home/{USER}"))
        .status()
        .unwrap()
}

/// The agent's own peak RSS (MiB), from its trace report (VmHWM of the
/// agent process: a traced command's memory is not the agent's, and
/// RUSAGE_CHILDREN would count it, and every earlier test's children).
fn agent_peak_mib(report: &serde_json::Value) -> u64 {
    report["stats"]["agent_memory"]["peak_rss_kib"]
        .as_u64()
        .unwrap_or_else(|| panic!("no agent_memory in {:#}", report["stats"]))
        / 1024
}

#[test]
fn fifos_planted_by_a_user_freeze_nothing() {
    let home = user_home();
    // `mkfifo ~/.conda/environments.txt`, as the user.
    assert!(
        as_user(
            "rm -rf ~/.conda ~/bin; mkdir -p ~/.conda ~/bin && mkfifo ~/.conda/environments.txt"
        )
        .success()
    );
    let out = scratch("fifo").join("records.jsonl");
    let t = Instant::now();
    let mut agent = agent_tests::agent_cmd()
        .args(["--format", "json", "--all-execs", "--output"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = agent.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("agent: watching") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = agent.kill();
        panic!("the agent never started watching (a FIFO blocked it?)");
    }
    eprintln!("watching after {:?}", t.elapsed());
    // A FIFO swapped over a tool binary right after it was run.
    assert!(as_user("cp /usr/lib/go-1.19/bin/go ~/bin/go && (~/bin/go version >/dev/null &) ; rm -f ~/bin/go; mkfifo ~/bin/go; sleep 0.5").success());
    // Later execs are still reported.
    let marker = format!("agent-fifo-{}", std::process::id());
    assert!(
        Command::new("/bin/echo")
            .arg(&marker)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains(&marker) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "later execs not reported:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent_tests::signal(agent.id(), "-INT");
    let t = Instant::now();
    let st = agent.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stopped after {:?}",
        t.elapsed()
    );
    assert!(st.success(), "{st}");
    let _ = std::fs::remove_dir_all(home.join(".conda"));
    let _ = std::fs::remove_dir_all(home.join("bin"));
}

#[test]
fn a_300_mb_go_binary_keeps_memory_bounded() {
    require_root();
    let dir = scratch("bigbin");
    let go = dir.join("go");
    std::fs::copy("/usr/lib/go-1.19/bin/go", &go).expect("Debian's golang-go");
    // 300 MB: the real Go binary and zeros after it (a sparse file: cheap to
    // make, and a reader that reads it whole pays the full 300 MB).
    let f = std::fs::OpenOptions::new().write(true).open(&go).unwrap();
    f.set_len(300 << 20).unwrap();
    drop(f);
    let records = dir.join("records.jsonl");
    let out = Command::new(agent_bin())
        .args(["--format", "json", "--output"])
        .arg(&records)
        .args(["trace", "--", "sh", "-c", "go version"])
        .env("PATH", format!("{}:/usr/bin:/bin", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = json_lines(&std::fs::read_to_string(&records).unwrap());
    let peak_mib = agent_peak_mib(recs.last().expect("report"));
    eprintln!("agent peak RSS with a 300 MB go on PATH: {peak_mib} MiB");
    let exec = recs
        .iter()
        .find(|r| r["type"] == "exec" && r["argv"][0] == "go")
        .expect("exec of the big go");
    // Its build info is still read (from the headers and the section alone).
    assert_eq!(exec["identity"]["go_version"], "go1.19.8", "{exec}");
    assert!(peak_mib < 128, "peak RSS {peak_mib} MiB");
}

/// A process's BPF link descriptors (one per attached uprobe, besides the
/// signals' own links).
fn link_fds(pid: u32) -> usize {
    fds_where(pid, |l| l.contains("bpf_link"))
}

/// How many of a process's descriptors point at something whose link text
/// satisfies `pred`.
fn fds_where(pid: u32, pred: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| pred(&l.to_string_lossy())))
                .count()
        })
        .unwrap_or(0)
}

/// `go test ./...` on a CI host builds, runs and deletes a Go program per
/// package. Each is probed (crypto/tls); once deleted, its probe must be
/// given back: descriptors stay bounded and the deleted files are freed
/// (2,000 distinct programs, 200 at a time).
#[test]
fn deleted_go_programs_give_their_probes_back() {
    require_root();
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 200;
    let client = agent_tests::go_build(
        std::path::Path::new("/usr/lib/go-1.19/bin/go"),
        "probe-lifecycle",
        "package main\n\nimport (\n\t\"crypto/tls\"\n\t\"os\"\n)\n\nfunc main() {\n\tc, err := tls.Dial(\"tcp\", os.Args[1], &tls.Config{})\n\tif err == nil {\n\t\tc.Close()\n\t}\n}\n",
    );
    let dir = scratch("probe-lifecycle-bins");
    let records = dir.join("records.jsonl");
    let mut agent = agent_tests::start_live_agent(&records);
    let pid = agent.id();
    let base = link_fds(pid);
    let mut peak = base;
    for round in 0..ROUNDS {
        // Distinct files (each its own inode), named as Go toolchains are
        // (`go1.*`) so the agent analyses and probes them; each runs once.
        let bins: Vec<_> = (0..PER_ROUND)
            .map(|i| {
                let p = dir.join(format!("go1.99.{round}{i:03}"));
                std::fs::copy(&client, &p).unwrap();
                p
            })
            .collect();
        for b in &bins {
            let _ = Command::new(b).arg("127.0.0.1:1").output().unwrap();
        }
        // Probed: one link each.
        let t = Instant::now();
        while link_fds(pid) < base + PER_ROUND * 9 / 10 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "round {round}: probes not attached: {} link fds, {base} at start",
                link_fds(pid)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        peak = peak.max(link_fds(pid));
        for b in &bins {
            std::fs::remove_file(b).unwrap();
        }
        // Given back within a sweep (every 5 s) and its detach.
        let t = Instant::now();
        while link_fds(pid) > base + 5 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "round {round}: probes of deleted programs kept: {} link fds, {base} at start",
                link_fds(pid)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let after = link_fds(pid);
    // Nothing of the agent's (nor its file workers') holds a deleted file.
    let deleted_held = |p: u32| fds_where(p, |l| l.ends_with("(deleted)"));
    let mut held = deleted_held(pid);
    for w in agent_tests::children_of(pid) {
        held += deleted_held(w);
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("")
        .to_string();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    eprintln!(
        "after {} programs: {fds} fds, {rss}, {held} deleted files held",
        ROUNDS * PER_ROUND
    );
    assert_eq!(held, 0, "deleted programs still held open");
    agent_tests::signal(pid, "-INT");
    assert!(agent.wait().unwrap().success());
    let recs = json_lines(&std::fs::read_to_string(&records).unwrap());
    let stats = recs
        .iter()
        .rev()
        .find(|r| r["type"] == "stats")
        .expect("stats record");
    eprintln!(
        "link fds: {base} at start, {peak} at a round's peak, {after} at the end; uprobes {}",
        stats["uprobes"]
    );
    let released = stats["uprobes"]["released_gone"].as_u64().unwrap_or(0);
    assert!(
        released >= (ROUNDS * PER_ROUND * 9 / 10) as u64,
        "{}",
        stats["uprobes"]
    );
    assert!(after <= base + 5, "{after} link fds, {base} at start");
}

/// A traced command with 4,300 threads inside `open()` at once (each
/// blocked on a FIFO with no writer yet) overfills the kernel's in-flight
/// file-access table (4,096): the accesses it cannot follow are counted
/// under `fs_table_full`, the agent carries on, and the command finishes.
#[test]
fn a_full_file_access_table_is_counted() {
    let dir = scratch("fs-table");
    let fifo = dir.join("fifo");
    let script = format!(
        r#"
import os, threading, time
os.mkfifo({fifo:?})
threading.stack_size(64 * 1024)
def reader():
    with open({fifo:?}, 'rb'):
        pass
ts = [threading.Thread(target=reader) for _ in range(4300)]
for t in ts:
    t.start()
time.sleep(2)
w = os.open({fifo:?}, os.O_WRONLY | os.O_NONBLOCK)
os.close(w)
for t in ts:
    t.join()
print('done')
"#,
        fifo = fifo.display().to_string()
    );
    let lines = agent_tests::trace_json(&["python3".to_string(), "-c".to_string(), script], &[]);
    let report = lines.last().expect("report");
    assert_eq!(report["exit_code"], 0, "{report:#}");
    let full = report["stats"]["lost"]["fs_table_full"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("fs_table_full: {full}");
    assert!(full >= 100, "{:#}", report["stats"]);
    std::fs::remove_dir_all(dir).ok();
}

/// One process that re-execs itself 20,000 times under `agent trace`: the
/// agent's memory stays bounded (the process table keeps the first and
/// latest 15 execs, and so does the report), and the report says how many
/// it did not keep.
#[test]
fn twenty_thousand_re_execs_of_one_pid_stay_bounded() {
    let script =
        r#"n=$0; if [ "$n" -gt 0 ]; then exec /bin/sh -c "$1" $((n-1)) "$1"; fi; echo done"#;
    let dir = scratch("reexec");
    let records = dir.join("records.jsonl");
    let out = Command::new(agent_bin())
        .args(["--format", "json", "--output"])
        .arg(&records)
        .args(["trace", "--", "/bin/sh", "-c", script, "20000", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    let recs = json_lines(&std::fs::read_to_string(&records).unwrap());
    let report = recs.last().unwrap();
    let stats = &report["stats"];
    eprintln!("{}", stats["process_table"]);
    assert!(
        stats["process_table"]["execs_dropped"].as_u64() >= Some(19_900),
        "{stats}"
    );
    assert!(
        stats["report_execs_not_kept"].as_u64() >= Some(19_900),
        "{stats}"
    );
    let peak_mib = agent_peak_mib(report);
    eprintln!("agent peak RSS through 20,000 re-execs: {peak_mib} MiB");
    assert!(peak_mib < 128, "peak RSS {peak_mib} MiB");
    std::fs::remove_dir_all(dir).ok();
}

/// A user's FUSE server that answers every process but the agent (what
/// any user's FUSE mount, or a hung NFS server, can do to the files a
/// root agent looks at; the kernel's wait for the answer ends only with a
/// fatal signal). The agent gives up on those files at the file-work
/// deadline and stops asking under that directory while it is stuck; it
/// keeps analysing and reporting other execs, its threads and descriptors
/// stay bounded, and SIGINT still stops it within 2 s.
#[test]
fn a_file_server_that_never_answers_the_agent_delays_nothing_else() {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let _home = user_home();
    let dir = std::path::PathBuf::from(format!("/tmp/agent-it-fuse-{}", std::process::id()));
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.join("go.sh");
    std::fs::write(&script, "#!/bin/sh\necho hostile-ran\n").unwrap();
    let out = scratch("fuse").join("records.jsonl");
    let mut agent = agent_tests::agent_cmd()
        .args(["--format", "json", "--all-execs", "--output"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Cleanup(u32, Option<std::process::Child>, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
            if let Some(s) = &mut self.1 {
                let _ = s.kill();
                let _ = s.wait();
            }
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.2.join("mnt"))
                .status();
            let _ = std::fs::remove_dir_all(&self.2);
        }
    }
    let mut cleanup = Cleanup(agent.id(), None, dir.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let err = agent.stderr.take().unwrap();
    let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let keep = stderr_lines.clone();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("agent: watching") {
                let _ = tx.send(());
            }
            keep.lock().unwrap().push(l);
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the agent started watching");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile_fuse.py");
    let mut server = Command::new("/usr/bin/python3")
        .arg(&fixture)
        .arg(&mnt)
        .arg("go")
        .arg(&script)
        .arg(agent.id().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    server
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .expect("the FUSE server mounted");
    assert_eq!(&first[..7], b"mounted");
    let server_out = server.stdout.take().unwrap();
    std::thread::spawn(
        move || {
            for _ in std::io::BufReader::new(server_out).lines() {}
        },
    );
    cleanup.1 = Some(server);
    // The user runs a tool from the mount, by several names (each looked at).
    let m = mnt.display();
    let t = Instant::now();
    assert!(
        as_user(&format!(
            "{m}/go version; ln -sf {m}/go ~/go; ~/go env; cd {m} && ./go build"
        ))
        .success()
    );
    eprintln!("the user's runs took {:?}", t.elapsed());
    // Meanwhile a healthy toolchain elsewhere is analysed, and later execs reported.
    let marker = format!("agent-fuse-{}", std::process::id());
    assert!(
        as_user(&format!(
            "/usr/lib/go-1.19/bin/go version >/dev/null; /bin/echo {marker} >/dev/null"
        ))
        .success()
    );
    let t = Instant::now();
    let records = loop {
        let recs = json_lines(&std::fs::read_to_string(&out).unwrap_or_default());
        let go119 = recs.iter().any(|r| {
            r["type"] == "exec"
                && r["exe"] == "/usr/lib/go-1.19/bin/go"
                && r["identity"]["go_version"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("go1.19"))
        });
        let marked = recs
            .iter()
            .any(|r| r["type"] == "exec" && r["argv"].to_string().contains(&marker));
        if go119 && marked {
            break recs;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "later execs not analysed or reported (go1.19 {go119}, marker {marked})"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let hostile: Vec<_> = records
        .iter()
        .filter(|r| {
            r["type"] == "exec"
                && r["exe"]
                    .as_str()
                    .is_some_and(|e| e.contains("agent-it-fuse"))
        })
        .collect();
    assert!(!hostile.is_empty(), "the mount's execs are reported");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap();
    let threads: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", agent.id()))
        .unwrap()
        .count();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("")
        .to_string();
    eprintln!("agent: {threads} threads, {fds} fds, {rss}");
    // main, 2 runtime workers, a few blocking threads: file work is in
    // worker processes.
    assert!(threads <= 16, "{threads} threads");
    assert!(fds <= 256, "{fds} fds");
    let said = stderr_lines.lock().unwrap().join("\n");
    assert!(
        said.contains("did not answer within"),
        "the stall is said:\n{said}"
    );
    // Ctrl-C while the server still does not answer.
    agent_tests::signal(agent.id(), "-INT");
    let t = Instant::now();
    let st = agent.wait().unwrap();
    let stop = t.elapsed();
    assert!(stop < Duration::from_secs(2), "stopped after {stop:?}");
    assert!(st.success(), "{st}");
    let recs = json_lines(&std::fs::read_to_string(&out).unwrap());
    let stats = recs
        .iter()
        .rev()
        .find(|r| r["type"] == "stats")
        .expect("final stats");
    let fa = &stats["file_analysis"];
    eprintln!("stopped after {stop:?}; file_analysis {fa}");
    assert!(fa["timeouts"].as_u64().unwrap_or(0) >= 1, "{fa}");
    assert!(fa["stuck_now"].as_u64().unwrap_or(99) <= 8, "{fa}");
    assert!(
        fa["refused_stalled"].as_u64().unwrap_or(0) >= 1,
        "later looks under the mount were refused at once: {fa}"
    );
}

/// A traced command with 70,000 client connections in SYN_SENT at once (to
/// a port whose SYNs the lab's server drops): more than the kernel's
/// connection table holds (65,536). The ones it cannot follow are counted
/// under `tcp_table_full` (the table does not silently push out the owner
/// of a live connection), every entry goes when its socket closes, and a
/// connection made afterwards is attributed as before.
#[test]
fn a_full_connection_table_is_counted_and_empties_on_close() {
    use agent_tests::netlab::{NetLab, PORT_DROP, PORT_RESET};
    let lab = NetLab::new("conntab");
    // 64,512 ports per destination in the client's namespace, and SYNs
    // retried for as long as the kernel allows (the lab shortens it): every
    // connection is still in SYN_SENT when the last one starts.
    for setting in [
        "net.ipv4.ip_local_port_range=1024 65535",
        "net.ipv4.tcp_syn_retries=127",
    ] {
        let sysctl = lab.in_client(&["sysctl", "-qw", setting]);
        let ok = Command::new(&sysctl[0]).args(&sysctl[1..]).status();
        assert!(ok.is_ok_and(|s| s.success()), "{sysctl:?}");
    }
    // Five processes of 14,000 sockets each: a process may hold 20,000
    // descriptors on these machines, and root cannot raise that (no
    // CAP_SYS_RESOURCE).
    let script = format!(
        r#"
import os, socket, time
def hold(fam, dst, n, ready, go):
    socks = []
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(dst)
        except BlockingIOError:
            pass
        socks.append(s)
    os.write(ready, b'r')
    os.read(go, 1)
    for s in socks:
        s.close()
    os._exit(0)
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
kids = []
for fam, dst in [(socket.AF_INET, ({v4:?}, {drop}))] * 3 + [(socket.AF_INET6, ({v6:?}, {drop}))] * 2:
    pid = os.fork()
    if pid == 0:
        hold(fam, dst, 14000, ready_w, go_r)
    kids.append(pid)
for _ in kids:
    os.read(ready_r, 1)
print('open', 14000 * len(kids), flush=True)
os.write(go_w, b'g' * len(kids))
for k in kids:
    assert os.waitpid(k, 0)[1] == 0
time.sleep(2)
try:
    socket.create_connection(({v4:?}, {reset}), timeout=3)
except OSError:
    pass
print('done')
"#,
        v4 = lab.srv_ip,
        v6 = lab.srv_ip6,
        drop = PORT_DROP,
        reset = PORT_RESET,
    );
    let lines = agent_tests::trace_json(&lab.in_client(&["python3", "-c", &script]), &[]);
    let report = lines.last().expect("report");
    assert_eq!(report["exit_code"], 0, "{:#}", report["stats"]);
    let lost = &report["stats"]["lost"];
    let full = lost["tcp_table_full"].as_u64().unwrap_or(0);
    eprintln!("tcp_table_full: {full}, lost: {lost}");
    assert!(
        // 70,000 - 65,536, and a few more if the machine connects too.
        (4_464..=5_000).contains(&full),
        "70,000 connections over 65,536 entries: {lost}"
    );
    // Entries were freed at close: the later connection has its owner.
    let dst = format!("{}:{PORT_RESET}", lab.srv_ip);
    assert!(
        lines.iter().any(|l| l["type"] == "tcp_connect"
            && l["destination"] == dst.as_str()
            && l["outcome"] == "refused"
            && l["comm"] == "python3"),
        "no attributed refused connection to {dst}: {lost}"
    );
    let peak_mib = agent_peak_mib(report);
    eprintln!("agent peak RSS through 70,000 connections: {peak_mib} MiB");
    assert!(peak_mib < 128, "peak RSS {peak_mib} MiB");
}
