use proptest::prelude::*;

use super::*;
use crate::{
    finding::{Blame, Finding},
    verdict::{Cause, Judgement, Verdict},
};

/// What the Actions runner does to a command's data and properties.
fn unescape(s: &str) -> String {
    s.replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%3A", ":")
        .replace("%2C", ",")
        .replace("%25", "%")
}

proptest! {
    #[test]
    fn escaped_data_round_trips_and_stays_on_one_line(s in any::<String>()) {
        let e = escape_data(&s);
        prop_assert!(!e.contains('\n') && !e.contains('\r'));
        prop_assert_eq!(unescape(&e), s);
    }

    #[test]
    fn escaped_properties_round_trip_without_separators(s in any::<String>()) {
        let e = escape_property(&s);
        prop_assert!(!e.contains([':', ',', '\n', '\r']));
        prop_assert_eq!(unescape(&e), s);
    }

    /// Whatever a finding says, XML stays well formed: no raw specials.
    #[test]
    fn xml_text_has_no_raw_specials(s in any::<String>()) {
        let x = xml(&s);
        prop_assert!(!x.contains(['<', '>', '"', '\'']));
        prop_assert!(x.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
            .replace("&quot;", "").replace("&apos;", "").find('&').is_none());
    }
}

fn finding(code: &'static str, severity: Severity, summary: &str) -> Finding {
    Finding {
        code,
        severity,
        pid: 7,
        summary: summary.into(),
        cause: "GOPROXY=https://p.test, from the environment".into(),
        fix: "unset GOPROXY, or: curl -v https://p.test".into(),
        evidence: Default::default(),
    }
}

fn result() -> TraceResult {
    let f = finding(
        "net.connect_refused",
        Severity::Error,
        "go → 10.0.0.5:443 (your GOPROXY) refused: 100% <down>",
    );
    TraceResult {
        root_pid: 7,
        exit_code: 1,
        outputs: vec![Output::Finding {
            finding: f.clone(),
            ktime_ns: 1,
        }],
        judgement: Judgement {
            verdict: Verdict::FailedNetwork,
            causes: vec![Cause {
                finding: f,
                blame: Blame::Network,
                ktime_ns: 1,
            }],
        },
        ..Default::default()
    }
}

#[test]
fn github_annotations_are_one_workflow_command_per_problem() {
    let a = github_annotations(&result());
    let lines: Vec<&str> = a.lines().collect();
    assert_eq!(lines.len(), 2, "{a}");
    assert_eq!(
        lines[0],
        "::error title=agent%3A net.connect_refused::go → 10.0.0.5:443 (your GOPROXY) refused: 100%25 <down>%0Acause: GOPROXY=https://p.test, from the environment%0Afix: unset GOPROXY, or: curl -v https://p.test"
    );
    assert_eq!(
        lines[1],
        "::notice title=agent verdict::failed_network (net.connect_refused)"
    );
}

#[test]
fn ci_is_detected_from_the_users_environment() {
    assert_eq!(Kind::detect(&[("GITHUB_ACTIONS", "true")]), Kind::GitHub);
    assert_eq!(Kind::detect(&[("GITLAB_CI", "true")]), Kind::GitLab);
    assert_eq!(Kind::detect(&[("GITHUB_ACTIONS", "false")]), Kind::None);
    assert_eq!(Kind::detect::<&str, &str>(&[]), Kind::None);
}

#[test]
fn junit_has_a_failure_per_cause_and_escapes_everything() {
    let x = junit(
        &result(),
        &["go".into(), "mod".into(), "<download>".into()],
        1.5,
    );
    assert!(
        x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites "),
        "{x}"
    );
    assert!(x.contains("name=\"go mod &lt;download&gt;\""), "{x}");
    assert_eq!(x.matches("<failure ").count(), 1, "{x}");
    assert!(
        x.contains("<failure type=\"failed_network\" message=\"net.connect_refused: go → 10.0.0.5:443 (your GOPROXY) refused: 100% &lt;down&gt;\">"),
        "{x}"
    );
    assert!(x.contains("failures=\"1\""), "{x}");
    // A command that succeeded passes, findings or not.
    let ok = TraceResult {
        exit_code: 0,
        judgement: Judgement::default(),
        ..result()
    };
    let x = junit(&ok, &["go".into()], 0.1);
    assert!(!x.contains("<failure"), "{x}");
    assert!(x.contains("failures=\"0\""), "{x}");
}

#[test]
fn the_step_summary_gets_the_markdown_and_the_outputs_the_verdict() {
    let dir = std::env::temp_dir().join(format!("ci-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let open = |n: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(n))
            .ok()
    };
    let mut ci = Ci {
        kind: Kind::GitHub,
        summary: open("summary"),
        outputs: open("output"),
        junit: None,
    };
    let mut stdout = Vec::new();
    ci.finish(&result(), &["go".into()], 1.0, &mut stdout);
    let summary = std::fs::read_to_string(dir.join("summary")).unwrap_or_default();
    assert!(
        summary.starts_with("### agent trace: \\`go\\`"),
        "{summary}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("output")).unwrap_or_default(),
        "verdict=failed_network\n"
    );
    assert!(String::from_utf8_lossy(&stdout).starts_with("::error title="));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rules of the JUnit schema Jenkins validates against (xunit-plugin's
/// `junit-10.xsd`, which GitLab's and Buildkite's parsers accept too),
/// checked on a real XML parse of what we write for a hostile command line.
#[test]
fn junit_follows_the_schema_jenkins_validates_against() {
    let argv: Vec<String> = [
        "sh",
        "-c",
        "echo ']]> <x a=\"1\"> & \u{1}\u{7}\u{1b}[31m \u{feff}é 日本 \u{10ffff}'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ok = TraceResult {
        exit_code: 0,
        judgement: Judgement::default(),
        ..result()
    };
    let unexplained = TraceResult {
        exit_code: 2,
        judgement: Judgement::default(),
        ..result()
    };
    for r in [result(), ok, unexplained] {
        let x = junit(&r, &argv, 12_345.678);
        let doc = roxmltree::Document::parse(&x).unwrap_or_else(|e| panic!("{e}: {x}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        // SUREFIRE_TIME: digits, optionally a fraction.
        let time_ok = |t: &str| {
            let (i, f) = t.split_once('.').unwrap_or((t, ""));
            !i.is_empty()
                && i.bytes().all(|b| b.is_ascii_digit())
                && f.bytes().all(|b| b.is_ascii_digit())
        };
        for n in root.descendants().filter(|n| n.is_element()) {
            let tag = n.tag_name().name();
            let (required, children): (&[&str], &[&str]) = match tag {
                "testsuites" => (&[], &["testsuite"]),
                "testsuite" => (
                    &["name", "tests", "failures", "errors"],
                    &[
                        "testsuite",
                        "properties",
                        "testcase",
                        "system-out",
                        "system-err",
                    ],
                ),
                "testcase" => (
                    &["name"],
                    &["skipped", "error", "failure", "system-out", "system-err"],
                ),
                "failure" | "error" | "skipped" | "system-out" | "system-err" => (&[], &[]),
                other => panic!("{other} is not in the schema: {x}"),
            };
            for a in required {
                assert!(n.attribute(*a).is_some(), "{tag} lacks {a}: {x}");
            }
            for c in n.children().filter(|c| c.is_element()) {
                assert!(
                    children.contains(&c.tag_name().name()),
                    "{tag} > {:?}: {x}",
                    c.tag_name()
                );
            }
            if matches!(tag, "testsuites" | "testsuite")
                && let Some(t) = n.attribute("time")
            {
                assert!(time_ok(t), "{tag} time={t}");
            }
        }
        let case = root
            .descendants()
            .find(|n| n.has_tag_name("testcase"))
            .unwrap_or_else(|| panic!("no testcase: {x}"));
        // The command survives the escaping, minus what XML cannot carry.
        let name = case.attribute("name").unwrap_or_default();
        assert!(name.contains("]]> <x a=\"1\"> & "), "{name}");
        assert!(name.contains("é 日本 \u{10ffff}"), "{name}");
        let failures = case
            .children()
            .filter(|c| c.has_tag_name("failure"))
            .count();
        let counted: usize = root
            .attribute("failures")
            .and_then(|f| f.parse().ok())
            .unwrap_or(99);
        assert_eq!(counted, usize::from(failures > 0), "{x}");
        assert_eq!(failures > 0, r.exit_code != 0, "{x}");
    }
}
