//! The exec path used without kernel BTF (whole event built at `sys_enter`),
//! forced with AGENT_EXEC_AT_ENTER on this kernel: same events as the fast path.
//! One test per binary: the variable is set for the whole process.

use std::process::Command;

use agent_tests::{Live, rt};

#[test]
fn exec_events_built_at_sys_enter_match_the_fast_path() {
    // SAFETY: the only test of this binary, set before any thread reads the environment.
    unsafe { std::env::set_var(agent::bpf::kernel::EXEC_AT_ENTER_ENV, "1") };
    rt().block_on(async {
        let mut live = Live::start();
        // The fallback's whole-event table is sized for use (1 entry otherwise).
        let maps = Command::new("bpftool")
            .args(["map", "show", "-j"])
            .output()
            .expect("bpftool");
        let maps: serde_json::Value = serde_json::from_slice(&maps.stdout).expect("bpftool json");
        let full = maps
            .as_array()
            .expect("map list")
            .iter()
            .filter(|m| {
                m["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("EXEC_INFLIGHT_F"))
            })
            .filter_map(|m| m["max_entries"].as_u64())
            .max();
        assert!(
            full.is_some_and(|n| n > 1),
            "EXEC_INFLIGHT_FULL not in use: {full:?}"
        );
        let e = live
            .exec_of(
                Command::new("/bin/echo")
                    .args(["hello", "kernel world"])
                    .env_clear()
                    .env("PATH", "/usr/bin:/bin")
                    .env("GOROOT", "/opt/go")
                    .env("SECRET_TOKEN", "hunter2")
                    .stdout(std::process::Stdio::null()),
            )
            .await;
        assert!(e.ok());
        assert_eq!(e.filename, "/bin/echo");
        assert_eq!(e.exe, "/bin/echo");
        assert_eq!(e.argv, vec!["/bin/echo", "hello", "kernel world"]);
        let mut names: Vec<&str> = e.env.iter().map(|(k, _)| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["GOROOT", "PATH"], "env {:?}", e.env);
        assert!(!e.argv_truncated && !e.env_truncated && !e.no_enter);
        assert!(e.enter_ns > 0 && e.enter_ns <= e.ktime_ns);

        let missing = format!("/nonexistent-{}/tool", std::process::id());
        let _ = Command::new(&missing)
            .arg("a")
            .spawn()
            .expect_err("must fail");
        let e = live.exec_named(&missing).await;
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.argv, vec![missing.clone(), "a".into()]);
    });
}
