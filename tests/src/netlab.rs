//! A two-host lab in network namespaces made here: a client and a server
//! joined by a veth pair, IPv4 and IPv6, with nftables rules on the server
//! that refuse, drop, drop-once and ICMP-reject chosen ports. Only addresses
//! of these namespaces are ever contacted. Dropped on test end.

use std::process::{Child, Command, Stdio};

/// Server ports and what the server does with them.
pub const PORT_OPEN: u16 = 8080;
pub const PORT_RESET: u16 = 8081;
pub const PORT_DROP: u16 = 8083;
pub const PORT_DROP_FIRST_SYN: u16 = 8084;
pub const PORT_ICMP_UNREACH: u16 = 8085;

pub struct NetLab {
    /// veth ends in the client and the server namespace.
    pub cli_dev: String,
    pub srv_dev: String,
    pub cli: String,
    pub srv: String,
    pub cli_ip: String,
    pub srv_ip: String,
    pub srv_ip6: String,
    server: Option<Child>,
    /// Further servers started with `spawn_server`.
    servers: Vec<Child>,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetLab {
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let id = std::process::id() % 50_000;
        let n = (id % 200) + 20;
        let lab = NetLab {
            cli_dev: format!("vc{id}"),
            srv_dev: format!("vs{id}"),
            cli: format!("agtc-{tag}-{id}"),
            srv: format!("agts-{tag}-{id}"),
            cli_ip: format!("10.201.{n}.1"),
            srv_ip: format!("10.201.{n}.2"),
            srv_ip6: format!("fd00:201:{n}::2"),
            server: None,
            servers: Vec::new(),
        };
        let (c, s) = (lab.cli.as_str(), lab.srv.as_str());
        let (vc, vs) = (format!("vc{id}"), format!("vs{id}"));
        sh(&["ip", "netns", "add", c]);
        sh(&["ip", "netns", "add", s]);
        sh(&[
            "ip", "link", "add", &vc, "netns", c, "type", "veth", "peer", "name", &vs, "netns", s,
        ]);
        for (ns, dev, v4, v6) in [
            (c, &vc, &lab.cli_ip, format!("fd00:201:{n}::1")),
            (s, &vs, &lab.srv_ip, lab.srv_ip6.clone()),
        ] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                dev,
            ]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Short SYN retries in the client: a timeout takes 3 s instead of ~2 min.
        sh(&[
            "ip",
            "netns",
            "exec",
            c,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_syn_retries=1",
        ]);
        // Kernels >= 6.7 retransmit the first SYNs at a linear 1 s: pin the classic
        // exponential schedule so the count is exact (SYN at 0 s, 1 s; gives up at 3 s).
        if std::path::Path::new("/proc/sys/net/ipv4/tcp_syn_linear_timeouts").exists() {
            sh(&[
                "ip",
                "netns",
                "exec",
                c,
                "sysctl",
                "-qw",
                "net.ipv4.tcp_syn_linear_timeouts=0",
            ]);
        }
        let rules = format!(
            "table inet lab {{ chain input {{ type filter hook input priority 0; policy accept;
               tcp dport {PORT_RESET} reject with tcp reset
               tcp dport {PORT_DROP} drop
               tcp dport {PORT_DROP_FIRST_SYN} tcp flags & (syn|ack) == syn quota until 100 bytes drop
               tcp dport {PORT_ICMP_UNREACH} reject with icmpx type host-unreachable
            }}
            }}"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", s, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft (apt-get install nftables)");
        {
            use std::io::Write as _;
            nft.stdin
                .take()
                .expect("stdin")
                .write_all(rules.as_bytes())
                .expect("write rules");
        }
        assert!(nft.wait().expect("nft").success(), "nft rules failed");
        lab
    }

    /// Start a listener on PORT_OPEN and PORT_DROP_FIRST_SYN (IPv4 and IPv6) in the server.
    pub fn serve(&mut self) {
        let code = format!(
            "import socket,select\nls=[]\nfor fam,a in ((socket.AF_INET,'0.0.0.0'),(socket.AF_INET6,'::')):\n for p in ({PORT_OPEN},{PORT_DROP_FIRST_SYN}):\n  s=socket.socket(fam); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n  if fam==socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)\n  s.bind((a,p)); s.listen(64); ls.append(s)\nprint('ready',flush=True)\nwhile True:\n r,_,_=select.select(ls,[],[])\n for s in r:\n  c,_=s.accept(); c.close()\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.srv, "python3", "-c", &code])
            .stdout(Stdio::piped())
            .spawn()
            .expect("server");
        let mut line = String::new();
        use std::io::BufRead as _;
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server ready");
        assert_eq!(line.trim(), "ready");
        self.server = Some(child);
    }

    /// Run `args` in the server namespace until the lab is dropped; when
    /// `ready` is given, wait for the first line of its stdout to be it.
    pub fn spawn_server(&mut self, args: &[&str], ready: Option<&str>) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.srv])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        if let Some(want) = ready {
            let mut line = String::new();
            use std::io::BufRead as _;
            std::io::BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("server ready");
            assert_eq!(line.trim(), want, "{args:?} did not start");
        }
        self.servers.push(child);
    }

    /// Set the MTU of the link on both ends (segments get this small).
    pub fn set_mtu(&self, mtu: u32) {
        for (ns, dev) in [(&self.cli, &self.cli_dev), (&self.srv, &self.srv_dev)] {
            sh(&["ip", "-n", ns, "link", "set", dev, "mtu", &mtu.to_string()]);
        }
    }

    /// Wait until something listens on `port` (TCP) in the server namespace.
    pub fn wait_listening(&self, port: u16) {
        for _ in 0..100 {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.srv, "ss", "-Htln"])
                .arg(format!("sport = :{port}"))
                .output()
                .expect("ss");
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("nothing listens on {port} in {}", self.srv);
    }

    /// The test DNS server (tests/fixtures/dnsd.py) on the server's address,
    /// answering `ok.test` with the server's address, and the client's
    /// resolver pointed at it (1 s timeout, 2 attempts): `ip netns exec`
    /// bind-mounts /etc/netns/<client>/resolv.conf over /etc/resolv.conf.
    pub fn dns(&mut self) {
        let dir = format!("/etc/netns/{}", self.cli);
        std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/<client>");
        std::fs::write(
            format!("{dir}/resolv.conf"),
            format!("nameserver {}\noptions timeout:1 attempts:2\n", self.srv_ip),
        )
        .expect("resolv.conf");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/dnsd.py");
        let ip = self.srv_ip.clone();
        self.spawn_server(&["python3", script, &ip, &ip], Some("ready"));
    }

    /// Inode of the client namespace (what the agent reports as `netns`).
    pub fn cli_netns_inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/run/netns/{}", self.cli))
            .expect("netns file")
            .ino()
    }

    /// `ip netns exec <client> args...` as a command line.
    pub fn in_client(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            self.cli.clone(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for mut c in self.server.take().into_iter().chain(self.servers.drain(..)) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.cli));
        for ns in [&self.cli, &self.srv] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
