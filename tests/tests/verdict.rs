//! The verdict of `agent trace` on real commands (real BPF, a real Go
//! toolchain, real TCP and DNS in network namespaces made here): the
//! network's fault, the toolchain's, neither, and a command that succeeded
//! though something failed on the way; `--exit-code` mapping the verdict.

use agent_tests::{
    GoModule,
    netlab::{NetLab, PORT_RESET},
    of_type, trace_json_status,
};

/// The `verdict` record and the report's, which must agree.
fn verdict(lines: &[serde_json::Value]) -> serde_json::Value {
    let v = of_type(lines, "verdict");
    assert_eq!(v.len(), 1, "one verdict record: {lines:#?}");
    let report = lines.last().expect("report");
    assert_eq!(report["verdict"], v[0]["verdict"], "{report:#}");
    assert_eq!(report["causes"], v[0]["causes"], "{report:#}");
    v[0].clone()
}

#[test]
fn a_goproxy_that_does_not_resolve_is_failed_network_and_exit_code_maps_it() {
    let mut lab = NetLab::new("vnet");
    lab.dns();
    let g = GoModule::new("vnet");
    let cmd = g.download_cmd();
    let goproxy = format!("http://nx.test:{PORT_RESET}");
    let argv = lab.in_client(&["sh", "-c", &cmd]);
    let (st, lines) = trace_json_status(&["--exit-code", "network=75"], &argv, &g.env(&goproxy));
    let v = verdict(&lines);
    assert_eq!(v["verdict"], "failed_network", "{v:#}");
    assert_eq!(v["causes"][0]["code"], "net.dns_failure", "{v:#}");
    assert_eq!(v["causes"][0]["blames"], "network", "{v:#}");
    assert_ne!(v["exit_code"], 0, "go mod download failed: {v:#}");
    assert_eq!(st.code(), Some(75), "--exit-code network=75");
    // Without the flag the command's own code is kept.
    let (st, lines) = trace_json_status(&[], &argv, &g.env(&goproxy));
    assert_eq!(verdict(&lines)["verdict"], "failed_network");
    assert_eq!(st.code(), Some(1), "go's own exit code");
    std::fs::remove_dir_all(&g.dir).ok();
}

#[test]
fn a_compile_error_on_a_healthy_machine_is_failed() {
    let g = GoModule::new("vcompile");
    std::fs::write(g.m.join("go.mod"), "module example.com/m\n\ngo 1.21\n").expect("go.mod");
    std::fs::write(
        g.m.join("main.go"),
        "package main\n\nfunc main() { undefined() }\n",
    )
    .expect("main.go");
    let cmd = format!("cd {} && go build ./...", g.m.display());
    let (st, lines) = trace_json_status(
        &["--exit-code", "network=75,toolchain=76"],
        &["sh".into(), "-c".into(), cmd],
        &g.env("off"),
    );
    let v = verdict(&lines);
    assert_eq!(v["verdict"], "failed", "{v:#}");
    assert_eq!(v["causes"], serde_json::json!([]), "{v:#}");
    assert_eq!(st.code(), Some(1), "a plain failure keeps go's code");
    std::fs::remove_dir_all(&g.dir).ok();
}

#[test]
fn a_go_too_old_for_go_mod_is_failed_toolchain() {
    let g = GoModule::new("vold");
    std::fs::write(g.m.join("go.mod"), "module example.com/m\n\ngo 1.99\n").expect("go.mod");
    std::fs::write(g.m.join("main.go"), "package main\n\nfunc main() {}\n").expect("main.go");
    let cmd = format!("cd {} && go build ./...", g.m.display());
    // GOTOOLCHAIN=local (in g.env): this go may not fetch go1.99.
    let (st, lines) = trace_json_status(
        &["--exit-code", "toolchain=76"],
        &["sh".into(), "-c".into(), cmd],
        &g.env("off"),
    );
    let v = verdict(&lines);
    assert_eq!(v["verdict"], "failed_toolchain", "{v:#}");
    assert_eq!(v["causes"][0]["code"], "go.version_too_old", "{v:#}");
    assert_eq!(st.code(), Some(76));
    std::fs::remove_dir_all(&g.dir).ok();
}

#[test]
fn a_command_that_succeeds_after_a_refused_connect_is_ok() {
    let lab = NetLab::new("vok");
    let code = format!(
        "import socket\ntry: socket.create_connection(('{}', {PORT_RESET}), timeout=5)\nexcept OSError as e: print('refused, going on:', e)\n",
        lab.srv_ip
    );
    let (st, lines) = trace_json_status(
        &["--exit-code", "network=75"],
        &lab.in_client(&["python3", "-c", &code]),
        &[],
    );
    assert!(st.success(), "{st}");
    let v = verdict(&lines);
    assert_eq!(v["verdict"], "ok", "{v:#}");
    let report = lines.last().expect("report");
    assert_eq!(
        report["problems"][0]["code"], "net.connect_refused",
        "the refused connect is still a problem to see: {report:#}"
    );
}
