//! README against the binary: the flags it names exist, its generated
//! section of flags and config-file keys is what the clap definition and
//! the config file accept, and its layout names the folders there are.
//! `cargo xtask docs` (`AGENT_BLESS=1`) rewrites the generated section.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;

use super::cli::Cli;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// Every visible long flag of the agent and its subcommands.
fn agent_flags() -> BTreeSet<String> {
    let cmd = Cli::command();
    let mut out = BTreeSet::from(["--help".to_string(), "--version".to_string()]);
    for c in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
        for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(l) = a.get_long() {
                out.insert(format!("--{l}"));
            }
        }
    }
    out
}

/// `cargo xtask`'s flags, from its clap fields (`#[arg(long …)] name:`).
fn xtask_flags() -> BTreeSet<String> {
    let src = std::fs::read_to_string(root().join("xtask/src/main.rs")).unwrap();
    let mut out = BTreeSet::new();
    let mut pending = false;
    for line in src.lines().map(str::trim) {
        if line.starts_with("#[arg(") && line.contains("long") {
            pending = true;
        } else if pending && !line.starts_with("#[") && !line.starts_with("///") {
            if let Some((name, _)) = line.split_once(':') {
                out.insert(format!("--{}", name.trim().replace('_', "-")));
            }
            pending = false;
        }
    }
    out
}

/// `--word` tokens of a text.
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        let starts = b[i] == b'-'
            && b[i + 1] == b'-'
            && b[i + 2].is_ascii_lowercase()
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-'));
        if starts {
            let end = (i + 2..b.len())
                .find(|&j| !(b[j].is_ascii_lowercase() || b[j].is_ascii_digit() || b[j] == b'-'))
                .unwrap_or(b.len());
            out.insert(text[i..end].trim_end_matches('-').to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Options of other programs that README names (examples of what the
/// scrubber removes; `systemctl enable --now`): not ours.
const NOT_OURS: &[&str] = &["--password", "--token", "--now"];

#[test]
fn every_flag_readme_names_exists() {
    let (agent, xtask) = (agent_flags(), xtask_flags());
    assert!(
        xtask.contains("--quick") && xtask.contains("--dir"),
        "{xtask:?}"
    );
    let missing: Vec<_> = flags_in(&readme())
        .into_iter()
        .filter(|f| !agent.contains(f) && !xtask.contains(f) && !NOT_OURS.contains(&f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README names flags that neither `agent` nor `cargo xtask` has: {missing:?}"
    );
}

/// The config file's keys, as serde sees `FileConfig` (its field list).
fn config_keys() -> Vec<&'static str> {
    /// A deserializer that only records the field names it is asked for.
    struct Fields(Vec<&'static str>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields.to_vec();
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut f = Fields(Vec::new());
    let _ = <crate::config::FileConfig as serde::Deserialize>::deserialize(&mut f);
    f.0
}

/// README's section of flags by heading and the config-file keys.
fn flags_section() -> String {
    let cmd = Cli::command();
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let (Some(l), Some(h)) = (a.get_long(), a.get_help_heading()) else {
            continue;
        };
        let flag = format!("`--{l}`");
        match groups.iter_mut().find(|(g, _)| g == h) {
            Some((_, v)) => v.push(flag),
            None => groups.push((h.to_string(), vec![flag])),
        }
    }
    let mut s = String::from(
        "<!-- flags: generated by `cargo xtask docs` from agent/src/app/cli.rs and agent/src/config.rs -->\n\
         | group | flags (`agent --help` says what each does, its default and variable) |\n|---|---|\n",
    );
    for (g, v) in &groups {
        s.push_str(&format!("| {g} | {} |\n", v.join(" ")));
    }
    let keys: Vec<String> = config_keys().iter().map(|k| format!("`{k}`")).collect();
    s.push_str(&format!(
        "\nConfig-file keys (TOML; a flag's name with `_` for `-`): {}.\n<!-- /flags -->",
        keys.join(", ")
    ));
    s
}

/// README's environment allow-list: the built-in names, exactly.
fn env_allow_section() -> String {
    let names: Vec<String> = crate::signal::exec::capture::DEFAULT_ENV_ALLOW
        .iter()
        .map(|n| format!("`{n}`"))
        .collect();
    format!(
        "<!-- env-allow: generated by `cargo xtask docs` from agent/src/signal/exec/capture.rs -->\n{}.\n<!-- /env-allow -->",
        names.join(", ")
    )
}

/// README with its section `tag` replaced by `section`; `cargo xtask docs`
/// (`AGENT_BLESS=1`) writes it, else README must already say it.
fn generated(tag: &str, section: &str) {
    let text = readme();
    let (open, close) = (format!("<!-- {tag}:"), format!("<!-- /{tag} -->"));
    let (Some(a), Some(b)) = (text.find(&open), text.find(&close)) else {
        panic!("README has no {open} --> … {close} section");
    };
    let want = format!("{}{section}{}", &text[..a], &text[b + close.len()..]);
    crate::signal::tests::generated("README.md", &want);
}

/// One test for both sections: under `AGENT_BLESS` they write the same file.
#[test]
fn readme_sections_are_generated_from_the_code() {
    generated("flags", &flags_section());
    generated("env-allow", &env_allow_section());
}

#[test]
fn every_config_key_is_a_flag() {
    let flags = agent_flags();
    let keys = config_keys();
    assert!(keys.len() > 10, "{keys:?}");
    for k in keys {
        assert!(
            flags.contains(&format!("--{}", k.replace('_', "-"))),
            "config key {k} has no flag of the same name"
        );
    }
}

#[test]
fn the_layout_names_every_folder_there_is() {
    let text = readme();
    let layout = &text[text.find("## Layout").expect("README has a Layout section")..];
    let layout = &layout[..layout[3..].find("\n## ").map_or(layout.len(), |i| i + 3)];
    let signals: BTreeSet<String> = std::fs::read_dir(root().join("agent/src/signal"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let listed = layout
        .split_once("signal/{")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(l, _)| l.split(',').map(str::to_string).collect::<BTreeSet<_>>())
        .expect("the layout lists signal/{…}/");
    assert_eq!(
        listed, signals,
        "README's signal/{{…}} against agent/src/signal"
    );
    for e in std::fs::read_dir(root().join("agent/src"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() && name != "signal" {
            assert!(
                layout.contains(&format!("`{name}/`")),
                "agent/src/{name}/ is not in README's layout"
            );
        }
    }
    for top in [
        "agent",
        "agent-ebpf",
        "agent-common",
        "agent-parse",
        "xtask",
        "tests",
        "deploy",
        "docs",
        "fuzz",
    ] {
        assert!(
            root().join(top).is_dir(),
            "{top}/ named in the layout is missing"
        );
        assert!(
            layout.contains(&format!("`{top}/`")),
            "{top}/ is not in README's layout"
        );
    }
}

#[test]
fn flags_are_found_in_text() {
    let f = flags_in("use `--dir ~/x` or --all-execs, not a--b or ---x; `--quick`.");
    assert_eq!(
        f.into_iter().collect::<Vec<_>>(),
        ["--all-execs", "--dir", "--quick"]
    );
}
