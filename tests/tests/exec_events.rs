//! The exec/exit/fork programs, loaded for real, observed on real processes.

use std::{process::Command, time::Duration};

use agent::events::Event;
use agent_tests::{Live, rt};

#[test]
fn exec_reports_exact_path_argv_and_only_allow_listed_env() {
    rt().block_on(async {
        let mut live = Live::start_all_execs();
        let e = live
            .exec_of(
                Command::new("/bin/echo")
                    .args(["hello", "kernel world"])
                    .env_clear()
                    .env("PATH", "/usr/bin:/bin")
                    .env("GOROOT", "/opt/go")
                    .env("SECRET_TOKEN", "hunter2")
                    .env("PATHX", "not-path")
                    .env("HTTPS_PROXY", "http://user:pw@proxy:3128")
                    .stdout(std::process::Stdio::null()),
            )
            .await;
        assert!(e.ok());
        assert_eq!(e.filename, "/bin/echo");
        assert_eq!(e.exe, "/bin/echo");
        assert_eq!(e.argv, vec!["/bin/echo", "hello", "kernel world"]);
        assert_eq!(e.ppid, std::process::id(), "parent is this test");
        // SAFETY: getuid has no preconditions.
        assert_eq!(e.uid, unsafe { libc::getuid() });
        let mut names: Vec<&str> = e.env.iter().map(|(k, _)| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            vec!["GOROOT", "HTTPS_PROXY", "PATH"],
            "env {:?}",
            e.env
        );
        assert_eq!(e.env_var("GOROOT"), Some("/opt/go"));
        assert!(!e.argv_truncated && !e.env_truncated && !e.no_enter);
        // Redaction happens at output.
        let style = agent::render::Style {
            format: agent::render::Format::Json,
            color: false,
            clock_offset_ns: 0,
        };
        let j = agent::render::json_line(&agent::signal::exec::render::exec_json(&style, &e, None));
        assert!(!j.contains("pw@") && j.contains("***@proxy:3128"), "{j}");
    });
}

#[test]
fn failed_exec_has_errno_and_the_name_asked_for() {
    rt().block_on(async {
        let mut live = Live::start();
        let missing = format!("/nonexistent-{}/tool", std::process::id());
        let err = Command::new(&missing)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("GOROOT", "/opt/go")
            .env("SECRET_TOKEN", "hunter2")
            .env("PATHX", "not-path")
            .spawn()
            .expect_err("must fail");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        let e = live.exec_named(&missing).await;
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.exe, "");
        assert_eq!(e.argv, vec![missing.clone()]);
        assert_eq!(e.ppid, std::process::id());
        // The caller's environment, read from its live memory: only the
        // allow-listed entries, each the value that was checked.
        let mut names: Vec<&str> = e.env.iter().map(|(k, _)| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["GOROOT", "PATH"], "env {:?}", e.env);
        assert_eq!(e.env_var("GOROOT"), Some("/opt/go"));
        assert_eq!(e.env_var("PATH"), Some("/usr/bin:/bin"));
        assert!(!e.env_truncated);
    });
}

/// A failed `execveat` is reported like a failed `execve` (one exit program
/// serves both syscalls), and says it was `execveat`.
#[test]
fn failed_execveat_has_errno_and_the_name_asked_for() {
    rt().block_on(async {
        let mut live = Live::start();
        let missing = format!("/nonexistent-{}/at-tool", std::process::id());
        // From a child: the agent leaves its own process's execs out.
        // execveat is syscall 322 on x86-64 (-100: AT_FDCWD).
        let py = "import ctypes,os,sys\n\
                  libc=ctypes.CDLL(None,use_errno=True)\n\
                  p=sys.argv[1].encode()\n\
                  argv=(ctypes.c_char_p*2)(p,None)\n\
                  envp=(ctypes.c_char_p*1)(None)\n\
                  r=libc.syscall(322,-100,p,argv,envp,0)\n\
                  sys.exit(0 if r==-1 and ctypes.get_errno()==2 else 1)\n";
        let st = Command::new("python3")
            .args(["-c", py, &missing])
            .status()
            .expect("python3");
        assert!(
            st.success(),
            "execveat(AT_FDCWD, missing) did not fail with ENOENT"
        );
        let e = live.exec_named(&missing).await;
        assert!(e.execveat, "{e:?}");
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.exe, "");
        assert_eq!(e.argv, vec![missing.clone()]);
    });
}

#[test]
fn long_argv_is_truncated_and_flagged() {
    rt().block_on(async {
        let mut live = Live::start();
        // A successful exec's argv is read in one piece from the new
        // program: everything up to ARGV_MAX bytes, whatever the count.
        let many: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
        let e = live.exec_of(Command::new("/bin/true").args(&many)).await;
        assert!(!e.argv_truncated, "100 short args fit");
        assert_eq!(e.argv.len(), 101);
        assert_eq!(e.argv[100], "a99");

        let lots: Vec<String> = (0..1000).map(|i| format!("b{i}")).collect();
        let e = live.exec_of(Command::new("/bin/true").args(&lots)).await;
        assert!(
            e.argv_truncated,
            "1000 args exceed ARGV_MAX and must be flagged"
        );
        assert_eq!(e.argv[1], "b0");
        let kept: usize = e.argv.iter().map(|a| a.len() + 1).sum();
        assert!(kept <= agent_common::ARGV_MAX + 1, "kept {kept} bytes");
        assert!(kept > agent_common::ARGV_MAX - 8, "kept only {kept} bytes");

        let long = "x".repeat(3000);
        let e = live.exec_of(Command::new("/bin/true").arg(&long)).await;
        assert!(e.argv_truncated);
        assert_eq!(
            e.argv[1].len(),
            agent_common::ARGV_MAX - "/bin/true\0".len()
        );

        // A failed exec's argv is read through the caller's pointers:
        // MAX_ARGS entries of at most ARG_LEN - 1 bytes.
        let missing = format!("/nonexistent-{}/many", std::process::id());
        let _ = Command::new(&missing)
            .args(&many)
            .spawn()
            .expect_err("must fail");
        let e = live.exec_named(&missing).await;
        assert!(
            e.argv_truncated,
            "100 args of a failed exec must be flagged"
        );
        assert_eq!(e.argv.len(), agent_common::MAX_ARGS as usize);
        let _ = Command::new(&missing)
            .arg(&long)
            .spawn()
            .expect_err("must fail");
        let (ev, _) = live
            .until(
                Duration::from_secs(10),
                |e| matches!(e, Event::Exec(x) if x.filename == missing && x.argv.len() == 2),
            )
            .await;
        let Some(Event::Exec(e)) = ev else {
            panic!("no failed exec event for {missing} with a long argument")
        };
        assert!(e.argv_truncated);
        assert_eq!(e.argv[1].len(), agent_common::ARG_LEN - 1);
    });
}

#[test]
fn exit_codes_and_lineage_through_a_forking_shell() {
    rt().block_on(async {
        let mut live = Live::start();
        // The subshell forks without exec; /bin/true's parent is the subshell.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "( /bin/true; exit 3 ); exit 7"])
            .spawn()
            .expect("spawn sh");
        let sh = child.id();
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(7));
        let mut table = agent::process::table::ProcTable::default();
        let mut exits = std::collections::HashMap::new();
        let mut true_pid = None;
        let _ = live
            .until(Duration::from_secs(10), |e| {
                match e {
                    Event::Fork(f) => table.on_fork(f),
                    Event::Tcp(_) | Event::Fs(_) | Event::Wire(_) | Event::TlsLib(_) => {}
                    Event::Exec(x) => {
                        table.on_exec(std::sync::Arc::new((**x).clone()));
                        if x.exe == "/bin/true" && table.in_tree(x.tgid, sh) {
                            true_pid = Some(x.tgid);
                        }
                    }
                    Event::Exit(x) => {
                        exits.insert(x.tgid, x.status());
                        table.on_exit(x);
                    }
                }
                exits.contains_key(&sh)
            })
            .await;
        assert_eq!(exits.get(&sh), Some(&Some(7)), "sh exit code");
        let t = true_pid.expect("/bin/true seen inside the sh tree");
        let anc = table.ancestors(t);
        assert!(
            anc.contains(&sh),
            "ancestors of /bin/true {anc:?} include sh {sh}"
        );
        assert_ne!(anc[0], sh, "direct parent is the subshell, not sh");
        assert_eq!(exits.get(&anc[0]), Some(&Some(3)), "subshell exit code");
    });
}

/// A thread is not a process: a program that starts 50 threads and forks
/// once, from one of them, is seen to fork once. (Each thread reported as
/// a fork costs BPF time, an event and a process-table entry that no exit
/// would ever remove: the Go runtime starts several threads per program.)
#[test]
fn threads_are_not_reported_as_processes() {
    const SCRIPT: &str = "import os, threading
ts = [threading.Thread(target=lambda: None) for _ in range(50)]
[t.start() for t in ts]
[t.join() for t in ts]
r = {}
def f():
    p = os.fork()
    if p == 0:
        os._exit(0)
    r['p'] = p
    os.waitpid(p, 0)
t = threading.Thread(target=f)
t.start()
t.join()
print(r['p'])
";
    rt().block_on(async {
        let mut live = Live::start();
        let child = Command::new("/usr/bin/python3")
            .args(["-c", SCRIPT])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let py = child.id();
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
        let forked: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the forked pid");
        let mut forks = Vec::new();
        let _ = live
            .until(Duration::from_secs(10), |e| match e {
                Event::Fork(f) if f.parent_tgid == py => {
                    forks.push(f.child_pid);
                    false
                }
                Event::Exit(x) => x.tgid == py,
                _ => false,
            })
            .await;
        assert_eq!(forks, vec![forked], "forks reported for python3 {py}");
    });
}

#[test]
fn the_agent_does_not_see_itself_and_nothing_is_lost() {
    rt().block_on(async {
        let mut live = Live::start();
        let mut pids = Vec::new();
        for _ in 0..200 {
            let mut c = Command::new("/bin/true").spawn().expect("spawn");
            pids.push(c.id());
            c.wait().expect("wait");
        }
        let mut left: std::collections::HashSet<u32> = pids.iter().copied().collect();
        let _ = live
            .until(Duration::from_secs(20), |e| {
                if let Event::Exec(x) = e {
                    left.remove(&x.tgid);
                }
                left.is_empty()
            })
            .await;
        assert!(left.is_empty(), "{} of 200 execs not reported", left.len());
        for (cause, n) in live.collector.lost() {
            if cause != agent_common::LostCause::ExecNoEnter {
                assert_eq!(n, 0, "lost events ({})", cause.name());
            }
        }
    });
}

#[test]
fn a_scripts_argv_is_the_callers_and_big_environments_are_flagged() {
    rt().block_on(async {
        let mut live = Live::start_all_execs();
        // A `#!` script runs as [interpreter, script, args]; the event
        // carries the argv the caller passed.
        let dir = std::env::temp_dir().join(format!("agent-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let script = dir.join("myscript");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = format!("{}:/usr/bin:/bin", dir.display());
        let e = live
            .exec_of(Command::new("myscript").arg("x y").env("PATH", &path))
            .await;
        let script = script.to_string_lossy().into_owned();
        assert_eq!(e.filename, script);
        assert_eq!(e.exe, script);
        assert_eq!(e.argv, vec!["myscript", "x y"]);
        assert!(!e.argv_truncated);
        assert_eq!(e.env_var("PATH"), Some(path.as_str()));

        // Environment strings past ENV_BLOCK bytes are left out, and flagged.
        // (Command passes the environment sorted by name.)
        let big = "x".repeat(agent_common::ENV_BLOCK + 100);
        let e = live
            .exec_of(
                Command::new("/bin/true")
                    .env_clear()
                    .env("AAA_BIG", &big)
                    .env("GOPATH", "/g"),
            )
            .await;
        assert!(e.env_truncated, "env {:?}", e.env);
        assert_eq!(e.env_var("GOPATH"), None);
        let fits = "x".repeat(agent_common::ENV_BLOCK / 2);
        let e = live
            .exec_of(
                Command::new("/bin/true")
                    .env_clear()
                    .env("AAA_BIG", &fits)
                    .env("GOPATH", "/g"),
            )
            .await;
        assert!(!e.env_truncated, "env {:?}", e.env);
        assert_eq!(e.env_var("GOPATH"), Some("/g"));

        // More than MAX_ENV_SCAN variables: the ones past it are left out, flagged.
        let mut cmd = Command::new("/bin/true");
        cmd.env_clear();
        for i in 0..agent_common::MAX_ENV_SCAN + 44 {
            cmd.env(format!("V{i:03}"), "v");
        }
        cmd.env("GOROOT", "/early").env("VIRTUAL_ENV", "/late");
        let e = live.exec_of(&mut cmd).await;
        assert!(e.env_truncated, "env {:?}", e.env);
        assert_eq!(e.env_var("GOROOT"), Some("/early"));
        assert_eq!(e.env_var("VIRTUAL_ENV"), None);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// The new program's vectors (argv, envp, auxv) sit a random distance, up
/// to 8 KiB, below its strings; the pages of that gap that nothing was
/// written to are not mapped. Every exec must still carry its environment:
/// a read that ran on into the gap failed for ~2 % of execs.
#[test]
fn every_exec_carries_its_environment_whatever_the_stack_layout() {
    const N: usize = 600;
    rt().block_on(async {
        let mut live = Live::start_all_execs();
        let mut pids = std::collections::HashSet::new();
        for _ in 0..N {
            let mut child = Command::new("/bin/true")
                .args(["netns", "exec", "ns", "curl"])
                .env_clear()
                .env("HOME", "/root")
                .env("HTTPS_PROXY", "http://proxy.test:3128")
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .spawn()
                .expect("spawn /bin/true");
            pids.insert(child.id());
            child.wait().expect("wait");
        }
        let mut bad = Vec::new();
        let mut seen = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen < N && std::time::Instant::now() < deadline {
            let (ev, _) = live
                .until(
                    Duration::from_secs(5),
                    |e| matches!(e, Event::Exec(x) if pids.contains(&x.tgid)),
                )
                .await;
            let Some(Event::Exec(e)) = ev else { break };
            seen += 1;
            if e.env_truncated || e.env_var("HTTPS_PROXY").is_none() {
                bad.push(e.tgid);
            }
        }
        assert_eq!(seen, N, "exec events seen");
        assert!(
            bad.is_empty(),
            "{} of {N} execs lost their environment",
            bad.len()
        );
    });
}

/// By default the environment is read only where it is used: toolchain
/// commands (by name, `python*`, or as a `#!` script's interpreter), their
/// descendants, and the network clients whose findings cite it. Any other
/// exec skips it, says so, and still carries its argv.
#[test]
fn the_environment_is_read_only_for_toolchains_their_trees_and_network_clients() {
    rt().block_on(async {
        let mut live = Live::start();
        let dir = std::env::temp_dir().join(format!("agent-envpolicy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        use std::os::unix::fs::PermissionsExt;
        let script = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).expect("write script");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            p
        };
        let python = std::path::PathBuf::from("/usr/bin/python3");
        let py_tool = script("mytool", &format!("#!{}\n", python.display()));
        let child_of_tool = script(
            "child-of-tool",
            &format!(
                "#!{}\nimport subprocess\nsubprocess.run(['/bin/echo', 'from-python'])\n",
                python.display()
            ),
        );
        let with_env = |cmd: &mut Command| {
            cmd.env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("GOROOT", "/opt/go")
                .stdout(std::process::Stdio::null());
        };

        let mut c = Command::new("/bin/echo");
        with_env(c.arg("plain"));
        let e = live.exec_of(&mut c).await;
        assert!(
            !e.env_read,
            "a plain exec skips the environment: {:?}",
            e.env
        );
        assert!(e.env.is_empty() && !e.env_truncated);
        assert_eq!(e.argv, vec!["/bin/echo", "plain"]);

        let mut c = Command::new(&python);
        with_env(c.args(["-c", "pass"]));
        let e = live.exec_of(&mut c).await;
        assert!(
            e.env_read && e.env_var("GOROOT") == Some("/opt/go"),
            "python3: {e:?}"
        );

        let mut c = Command::new(&py_tool);
        with_env(&mut c);
        let e = live.exec_of(&mut c).await;
        assert!(
            e.env_read && e.env_var("GOROOT") == Some("/opt/go"),
            "#! python script: {e:?}"
        );

        let mut c = Command::new("curl");
        with_env(c.arg("--version"));
        let e = live.exec_of(&mut c).await;
        assert!(
            e.env_read && e.env_var("GOROOT") == Some("/opt/go"),
            "curl: {e:?}"
        );

        // /bin/echo started by a python program: in the tracked tree.
        let mut c = Command::new(&child_of_tool);
        with_env(&mut c);
        let parent = c.spawn().expect("spawn");
        let ppid = parent.id();
        let mut parent = parent;
        parent.wait().expect("wait");
        let (ev, _) = live
            .until(
                Duration::from_secs(10),
                |e| matches!(e, Event::Exec(x) if x.ppid == ppid && x.exe == "/bin/echo"),
            )
            .await;
        let Some(Event::Exec(e)) = ev else {
            panic!("no exec of /bin/echo under the python script")
        };
        assert!(
            e.env_read && e.env_var("GOROOT") == Some("/opt/go"),
            "child of a tool: {e:?}"
        );

        let style = agent::render::Style {
            format: agent::render::Format::Json,
            color: false,
            clock_offset_ns: 0,
        };
        let mut c = Command::new("/bin/true");
        with_env(&mut c);
        let e = live.exec_of(&mut c).await;
        let j = serde_json::to_value(agent::signal::exec::render::exec_json(&style, &e, None))
            .expect("record");
        assert_eq!(j["env_read"], serde_json::json!(false), "{j}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
