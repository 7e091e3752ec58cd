//! README as a user follows it: every `agent` command of its table runs
//! here (its command after `--` replaced by `true`, placeholders by real
//! values), `agent completions bash` completes in a real bash, and
//! `agent man` renders in man.

use std::{
    io::BufRead as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_tests::{agent_bin, agent_cmd, require_root, scratch, signal};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap()
}

/// The first cell of each row of README's table of commands, backticks off.
fn table_commands(text: &str) -> Vec<String> {
    let start = text
        .find("| command | what it does |")
        .expect("README's table of commands");
    text[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cell = l.trim_start_matches('|').split(" | ").next()?.trim();
            Some(cell.trim_matches('`').replace("\\|", "|"))
        })
        .collect()
}

/// A row as arguments of `agent`: `None` for rows that are not the agent
/// (cargo xtask, kubectl) or need a service (an OTLP collector, the
/// Kubernetes API) or run until stopped (live mode, tested elsewhere).
fn runnable(cmd: &str, file: &Path) -> Option<Vec<String>> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let args: Vec<&str> = match words.first()? {
        &"agent" => words[1..].to_vec(),
        w if w.starts_with("--") => words.clone(),
        _ => return None,
    };
    if args.is_empty() || args.contains(&"--k8s-api") {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for a in &args {
        match *a {
            // The traced command: `true` instead.
            "--" => {
                out.extend(["--".into(), "true".into()]);
                break;
            }
            "FILE" => out.push(file.display().to_string()),
            // `full|scrubbed|none`: one of them.
            v if v.contains('|') => out.push(v.split('|').next()?.to_string()),
            v => out.push(v.to_string()),
        }
    }
    // A flag row on its own: with `agent trace -- true` around it.
    if out[0].starts_with("--") {
        out.extend(["trace", "--", "true"].map(String::from));
    }
    Some(out)
}

#[test]
fn the_commands_of_readmes_table_run_here() {
    require_root();
    // `agent trace --user dev …`: the account README names.
    agent_tests::ensure_user("dev", &[]);
    let dir = scratch("readme-commands");
    let rows = table_commands(&readme());
    assert!(rows.len() > 10, "{rows:?}");
    let mut ran = 0;
    for row in &rows {
        let Some(args) = runnable(row, &dir.join("records.jsonl")) else {
            continue;
        };
        let out = Command::new(agent_bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "README's `{row}` as {args:?}: {err}"
        );
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} of README's commands ran: {rows:?}");

    // `agent` itself: watches until Ctrl-C, then exits 0.
    let mut agent = agent_cmd()
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(agent.stderr.take().unwrap());
    let (mut line, t) = (String::new(), Instant::now());
    while !line.contains("agent: watching") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "agent ended before watching"
        );
        assert!(t.elapsed() < Duration::from_secs(30));
    }
    signal(agent.id(), "-INT");
    assert_eq!(
        agent.wait().unwrap().code(),
        Some(0),
        "Ctrl-C ends live mode with 0"
    );
}

#[test]
fn completions_complete_in_bash_and_the_man_page_renders() {
    let dir = scratch("readme-completions");
    for (args, file) in [
        (&["completions", "bash"][..], "agent.bash"),
        (&["completions", "zsh"], "_agent"),
        (&["completions", "fish"], "agent.fish"),
        (&["man"], "agent.1"),
    ] {
        let out = Command::new(agent_bin()).args(args).output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{args:?}");
        std::fs::write(dir.join(file), &out.stdout).unwrap();
    }
    // A real bash: the function is registered, and it completes a flag.
    let script = format!(
        ". {}; complete -p agent; COMP_WORDS=(agent --all-e); COMP_CWORD=1; \
         _agent agent --all-e agent; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        dir.join("agent.bash").display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("complete -o bashdefault -o default -o nosort -F _agent agent")
            && text.lines().any(|l| l == "--all-execs"),
        "bash: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `man ./agent.1` renders, with every section.
    let out = Command::new("man")
        .arg("-l")
        .arg(dir.join("agent.1"))
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [
        "NAME",
        "SYNOPSIS",
        "OUTPUT",
        "FILTERS",
        "AGENT TRACE",
        "EXIT STATUS",
        "--otlp-endpoint",
    ] {
        assert!(
            page.contains(s),
            "{s} missing from the rendered page: {page}"
        );
    }
}
